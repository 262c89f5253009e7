"""The simulated models fill a JSON Schema from hints read off the request's text: any
number a text can hold (NaN, infinities, integers too large for a float) is a hint or no
hint, never a crash of the call."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from engine.models._schema_fill import fill_schema, fits_schema

_numbers = st.one_of(
    st.floats(),  # NaN and both infinities included
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
)
_bounds = st.one_of(st.none(), st.floats(), st.integers(-(10**6), 10**6))


@given(hint=_numbers, kind=st.sampled_from(["integer", "number"]), lo=_bounds, hi=_bounds)
def test_any_numeric_hint_gives_a_finite_number_or_none_at_all(
    hint: object, kind: str, lo: object, hi: object
) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"qty": {"type": kind}}}
    if lo is not None:
        schema["properties"]["qty"]["minimum"] = lo  # type: ignore[index]
    if hi is not None:
        schema["properties"]["qty"]["maximum"] = hi  # type: ignore[index]
    value = fill_schema(schema, random.Random(0), {"qty": hint})
    qty = value["qty"]
    assert isinstance(qty, int | float) and not isinstance(qty, bool)
    assert math.isfinite(qty)
    assert kind == "number" or float(qty).is_integer()


def test_a_finite_hint_inside_the_bounds_is_kept() -> None:
    schema = {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 0}}}
    assert fill_schema(schema, random.Random(0), {"qty": 7}) == {"qty": 7}
    filled = fill_schema(schema, random.Random(0), {"qty": float("nan")})
    assert fits_schema(filled, schema)


def test_bounds_near_the_float_limit_give_a_finite_number() -> None:
    schema = {"type": "number", "minimum": 8.98e307, "maximum": float("-inf")}
    assert math.isfinite(fill_schema(schema, random.Random(0)))
