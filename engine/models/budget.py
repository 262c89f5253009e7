"""Cost budgets that reserve the worst case before a model call and settle the truth after.

Popular proxies account after the spend, so fifty concurrent calls can all pass a check
that only ten fit in. Here every call first reserves its worst-case cost (input tokens at
the input price plus `max_tokens` at the output price); the reservation counts against the
budget until the call settles with its actual cost. Reservations are synchronous (no
await between check and update), so concurrent tasks of one event loop cannot interleave
inside them, and recorded spend never passes the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import BudgetExceeded

__all__ = ["RequestBudget", "Reservation"]


@dataclass(slots=True)
class Reservation:
    """Money held for one call until it settles."""

    amount: float
    """The worst-case cost reserved, in dollars."""
    open: bool = True
    """False once settled or released."""


class RequestBudget:
    """A cost budget (per request, or per run) with worst-case reservations.

    Args:
        limit_usd: dollars that may be spent; None means unlimited (still tracks spend).
        label: what the budget belongs to, for messages (`request`, `run`).
    """

    def __init__(self, limit_usd: float | None = None, *, label: str = "request") -> None:
        if limit_usd is not None and (math.isnan(limit_usd) or limit_usd < 0):
            raise ValueError(f"budget limit must be a non-negative number, got {limit_usd!r}")
        self.limit_usd = limit_usd
        self.label = label
        self._spent = 0.0
        self._reserved = 0.0
        self._open = 0
        """Reservations not yet settled: with none, nothing is reserved, exactly (the sum
        of many added and taken back amounts leaves rounding dust otherwise)."""

    @property
    def spent_usd(self) -> float:
        """Dollars actually spent by settled calls."""
        return self._spent

    @property
    def reserved_usd(self) -> float:
        """Dollars held by calls in flight."""
        return self._reserved

    @property
    def remaining_usd(self) -> float | None:
        """Dollars neither spent nor reserved, or None for an unlimited budget."""
        if self.limit_usd is None:
            return None
        return max(0.0, self.limit_usd - self._spent - self._reserved)

    def can_afford(self, amount: float) -> bool:
        """Whether `amount` could be reserved now."""
        remaining = self.remaining_usd
        return remaining is None or amount <= remaining + 1e-12

    def reserve(self, amount: float) -> Reservation:
        """Hold `amount` dollars for one call.

        Raises:
            BudgetExceeded: the amount does not fit in what remains.
        """
        if amount < 0:
            raise ValueError(f"cannot reserve a negative amount ({amount!r})")
        if not self.can_afford(amount):
            raise BudgetExceeded(
                f"{self.label} cost budget: a call needing up to ${amount:.6f} does not fit "
                f"in the ${self.remaining_usd:.6f} left of ${self.limit_usd:.6f}; raise "
                f"`budget.cost_usd`, lower `max_tokens` or route to a cheaper model"
            )
        self._reserved += amount
        self._open += 1
        return Reservation(amount)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Replace a reservation by the call's actual cost (recorded even if larger)."""
        if not reservation.open:
            return
        reservation.open = False
        self._open -= 1
        self._reserved = max(0.0, self._reserved - reservation.amount) if self._open else 0.0
        self._spent += max(0.0, actual_usd)

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unspent (the call never reached the provider)."""
        self.settle(reservation, 0.0)

    def __repr__(self) -> str:
        limit = "unlimited" if self.limit_usd is None else f"${self.limit_usd:.6f}"
        return f"<RequestBudget {self.label} {limit} spent=${self._spent:.6f}>"
