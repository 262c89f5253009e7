"""A per-model circuit breaker: stop calling a model that keeps failing, probe it later.

Closed: calls pass; `threshold` consecutive transient failures open it. Open: calls are
refused with `CircuitOpen`, which says what the last failure was, until `cooldown_s` has
passed. Half-open: exactly one probe call passes; its success closes the breaker, its
failure opens it again. Calls admitted before the breaker opened may still be in flight
then: their failures and cancellations are the probe's business only when the caller says
which call was the probe (`probe=`), so a late one neither frees the probe's place for a
second probe nor ends the probe's trial. Time is read from `anyio.current_time()`, so a
mock clock drives it in tests.
"""

from __future__ import annotations

from enum import StrEnum

import anyio

from engine.errors import CircuitOpen

__all__ = ["BreakerState", "CircuitBreaker"]

_CAUSE_LIMIT = 300
"""The most characters of the last failure's message an open breaker's refusal repeats."""


class BreakerState(StrEnum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    """Calls pass."""
    OPEN = "open"
    """Calls are refused until the cool-down passes."""
    HALF_OPEN = "half_open"
    """One probe call is in flight; others are refused."""


class CircuitBreaker:
    """The breaker of one model.

    Args:
        model: the logical model name, for messages.
        threshold: consecutive failures that open the breaker.
        cooldown_s: seconds the breaker stays open before a probe may pass.
    """

    def __init__(self, model: str, *, threshold: int = 5, cooldown_s: float = 30.0) -> None:
        if threshold < 1:
            raise ValueError(f"breaker threshold must be at least 1, got {threshold}")
        self.model = model
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.last_failure: str | None = None
        """What the latest of the consecutive failures said (None after a success)."""
        self._opened_at = 0.0
        self._probing = False

    def before_call(self) -> bool:
        """Admit one call, or refuse it.

        Returns:
            True when this call is the half-open probe (the caller announces it).

        Raises:
            CircuitOpen: the breaker is open, or a probe is already in flight.
        """
        if self.state is BreakerState.CLOSED:
            return False
        wait = self._opened_at + self.cooldown_s - anyio.current_time()
        if self._probing or wait > 0:
            detail = "a probe call is in flight" if self._probing else f"retry in {wait:.1f} s"
            last = f"; last: {self.last_failure}" if self.last_failure else ""
            raise CircuitOpen(
                f"model '{self.model}': circuit breaker is open after {self.failures} "
                f"consecutive failures ({detail}){last}; check the provider, or route to "
                "another model"
            )
        self.state = BreakerState.HALF_OPEN
        self._probing = True
        return True

    def on_success(self) -> bool:
        """Record a success. Returns True when this closed an open breaker."""
        self.failures = 0
        self.last_failure = None
        self._probing = False
        if self.state is BreakerState.CLOSED:
            return False
        self.state = BreakerState.CLOSED
        return True

    def on_failure(self, cause: str | None = None, *, probe: bool | None = None) -> bool:
        """Record a transient failure, and what it said (`cause`, for the message of the
        refusals while open). `probe`: whether the failed call was the one `before_call`
        let through as the probe (None: the caller does not say, so a failure while a
        probe is in flight is taken for the probe's). Returns True when this opened the
        breaker."""
        self.failures += 1
        if cause is not None:
            cut = len(cause) > _CAUSE_LIMIT
            self.last_failure = cause[:_CAUSE_LIMIT] + "..." if cut else cause
        if self._probing and (probe is None or probe):
            self._probing = False
            self._open()
            return True
        if self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self._open()
            return True
        return False

    def on_abandon(self, *, probe: bool | None = None) -> None:
        """The call ended without a verdict (cancelled, refused): free the probe's place
        if it was the probe (`probe`, as for `on_failure`)."""
        if self._probing and (probe is None or probe):
            self._probing = False
            self.state = BreakerState.OPEN

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = anyio.current_time()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.model!r} {self.state.value} failures={self.failures}>"
