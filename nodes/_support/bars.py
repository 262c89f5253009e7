"""Thresholds of one config that must come in order (`revise_at <= refuse_at`)."""

from __future__ import annotations

from pydantic import ValidationInfo

from engine import at_check

__all__ = ["out_of_order"]


def out_of_order(
    info: ValidationInfo, earlier: str, value: float, *, earlier_is_lower: bool
) -> float | None:
    """The value of the field `earlier` (declared before the field being validated) when
    it and `value`, the field's own, are out of order; None when they are in order or
    cannot be judged yet.

    Args:
        info: the field validator's info.
        earlier: the other threshold's field name.
        value: the validated field's value.
        earlier_is_lower: `earlier` must be at most `value` (else at least).

    At `moat check` a threshold an expression sets (`{{ policy.x }}`) is known only at run
    time, where the same rule is applied to the values the request brings.
    """
    other = info.data.get(earlier)
    if other is None or (other <= value if earlier_is_lower else other >= value):
        return None
    field = info.field_name
    if field is None or (at_check(info) and not at_check(info, earlier, field)):
        return None
    return float(other)
