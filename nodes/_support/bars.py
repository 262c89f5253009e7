"""Thresholds of one config that must come in order (`revise_at <= refuse_at`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationInfo, field_validator

from engine import at_check

__all__ = ["in_order"]


def in_order(field: str, earlier: str, *, earlier_is_lower: bool, why: str) -> Any:
    """A field validator of `field`: it and `earlier` (a field declared before it) must be
    in order, `earlier <= field` when `earlier_is_lower`, else `field <= earlier`.

    Assign it in the config's class body (`_bars = in_order(...)`); give `field`
    `validate_default=True`, so a default out of order with a written `earlier` is judged
    too. At `moat check` a threshold an expression sets (`{{ policy.x }}`) is known only
    at run time, where the same rule is applied to the values the request brings.
    """

    def check(cls: type, value: float, info: ValidationInfo) -> float:
        other = info.data.get(earlier)
        if other is None or (other <= value if earlier_is_lower else value <= other):
            return value
        if at_check(info) and not at_check(info, earlier, field):
            return value  # an expression sets one: the request's values are judged
        low, high = (earlier, field) if earlier_is_lower else (field, earlier)
        side = "under" if earlier_is_lower else "above"
        raise ValueError(
            f"{field} ({value:g}) is {side} {earlier} ({other:g}): {why}; make {low} <= {high}"
        )

    return field_validator(field)(check)
