"""A token bucket that keeps uploads within a bandwidth cap (`moat sync --max-kbps`).

Tokens are bytes; they accrue at the cap's rate up to `burst`. Taking more than is there
leaves the bucket in debt and sleeps until the debt is repaid, so a batch larger than the
burst still goes out whole while the average rate stays at the cap. The bucket starts
empty, so from the first byte the average never exceeds the cap; over any window of W
seconds at most `rate * W + burst` bytes go out (after an idle spell). Time is
`anyio.current_time()`, so a mock clock drives it in tests.
"""

from __future__ import annotations

import anyio

__all__ = ["TokenBucket"]


class TokenBucket:
    """Bytes per second with a burst allowance.

    Args:
        rate: bytes per second (must be positive).
        burst: the most bytes that may go out at once after an idle spell (default one
            second's worth).
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._tokens = 0.0
        self._at: float | None = None

    @classmethod
    def from_kbps(cls, kbps: float) -> TokenBucket:
        """A bucket for a cap in kilobits per second (1 kbps = 1000 bits/s)."""
        return cls(kbps * 1000 / 8)

    def _refill(self) -> None:
        now = anyio.current_time()
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    async def take(self, nbytes: int) -> float:
        """Wait until `nbytes` may be sent; returns the seconds waited."""
        self._refill()
        self._tokens -= nbytes
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        await anyio.sleep(wait)
        self._refill()
        return wait
