"""The sim fills any schema it is asked for, hostile ones too: never an exception, never an
endless or huge answer, and what it can honour (patterns, multiples, enums of any types) is
honoured."""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.graph.spec import FaultRates, ModelSpec
from engine.models import ProviderRequest, SimProvider
from engine.models._schema_fill import fill_schema, fits_schema
from engine.plugin.context import RequestInfo

_WIDE = {"type": "object", "properties": {k: {"$ref": "#"} for k in "abcdefghij"}}
_HOSTILE: dict[str, Any] = {
    "true": True,
    "false": False,
    "empty enum": {"enum": []},
    "enum that is no list": {"enum": 5},
    "empty anyOf": {"anyOf": []},
    "empty oneOf": {"oneOf": []},
    "anyOf that is a schema": {"anyOf": {"type": "string"}},
    "anyOf of booleans": {"anyOf": [True, False]},
    "allOf that is a schema": {"allOf": {"type": "string"}},
    "allOf of a boolean": {"allOf": [True]},
    "self reference": {"$ref": "#"},
    "reference loop": {
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
        "$ref": "#/$defs/a",
    },
    "every property refers back": _WIDE,
    "every required property refers back": {**_WIDE, "required": list("abcdefghij")},
    "items refer back": {"type": "array", "minItems": 5, "items": {"$ref": "#"}},
    "huge minItems": {"type": "array", "minItems": 10**9},
    "huge maxItems": {"type": "array", "maxItems": 10**12, "minItems": 10**12},
    "huge minLength": {"type": "string", "minLength": 10**9},
    "a bound that is text": {"type": "number", "minimum": "abc", "maximum": "z"},
    "a bound too large for a float": {"type": "integer", "minimum": 10**400},
    "minItems that is text": {"type": "array", "minItems": "x"},
    "properties that are a list": {"type": "object", "properties": ["a"]},
    "required that is text": {
        "type": "object",
        "required": "a",
        "properties": {"a": {"type": "string"}},
    },
    "defs that are a list": {"$defs": [1], "$ref": "#/$defs/0"},
    "a reference that is a number": {"$ref": 5},
    "a pattern that does not compile": {"type": "string", "pattern": "(["},
    "a pattern that backtracks for ever": {"type": "string", "pattern": "^(a+)+$"},
    "a back-reference": {"type": "string", "pattern": "(a)\\1"},
    "a pattern too long": {"type": "string", "pattern": "a" * 5000},
    "a pattern repeated very often": {"type": "string", "pattern": "a{100000}"},
}


def _bounded(schema: Any, hints: Any = None) -> Any:
    started = time.perf_counter()
    value = fill_schema(schema, random.Random(7), hints)
    assert time.perf_counter() - started < 2.0
    assert len(json.dumps(value)) < 200_000
    return value


@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_a_hostile_schema_gets_an_answer_quickly(name: str) -> None:
    _bounded(_HOSTILE[name], {"risk_score": 0.3, "a": "x"})
    fits_schema(None, _HOSTILE[name]) if isinstance(_HOSTILE[name], dict) else None


def test_a_schema_every_property_of_which_refers_back_stays_small() -> None:
    value = _bounded(_HOSTILE["every required property refers back"])
    assert isinstance(value, dict) and set(value) == set("abcdefghij")


_PATTERNS = [
    r"^[A-Z]{3}-\d{4}$",
    r"^\+?[0-9]{1,3}( [0-9]{3}){2,3}$",
    r"^(red|green|blue)-[a-f0-9]{6}$",
    r"[a-z]+@[a-z]+\.(com|org)",
    r"^\w+\s\w*$",
    r"^[^0-9]{2,4}\.$",
    r"^(?:ab|cd)+x?$",
    r"^.{3}$",
]


@pytest.mark.parametrize("pattern", _PATTERNS)
@pytest.mark.parametrize("seed", range(5))
def test_a_string_follows_its_pattern(pattern: str, seed: int) -> None:
    value = fill_schema({"type": "string", "pattern": pattern}, random.Random(seed), "hint")
    assert re.search(pattern, value), (pattern, value)


def test_a_hint_is_not_kept_where_a_pattern_asks_for_more() -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^C\\d+$"}}}
    value = fill_schema(schema, random.Random(1), {"code": "not a code"})
    assert re.fullmatch(r"C\d+", value["code"])


@pytest.mark.parametrize("kind", ["integer", "number"])
@pytest.mark.parametrize("step", [7, 0.25, 3])
def test_a_number_is_a_multiple_of_its_multiple_of(kind: str, step: float) -> None:
    if kind == "integer" and not float(step).is_integer():
        return
    schema = {"type": kind, "multipleOf": step, "minimum": 1, "maximum": 100}
    for seed in range(20):
        value = fill_schema(schema, random.Random(seed), None)
        assert fits_schema(value, schema), value
        assert 1 <= value <= 100


def test_an_enum_of_mixed_types_gives_one_of_its_values() -> None:
    options = [1, "a", None, [1], {"k": 2}, True, 2.5]
    seen = [fill_schema({"enum": options}, random.Random(s), None) for s in range(40)]
    assert all(v in options for v in seen) and len({json.dumps(v) for v in seen}) > 3


_SCHEMA_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = ["type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf", "allOf",
         "$ref", "$defs", "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum",
         "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "pattern", "format",
         "additionalProperties"]  # fmt: skip
_SCHEMAS = st.recursive(
    st.dictionaries(st.sampled_from(_KEYS), _SCHEMA_VALUES, max_size=5) | st.booleans(),
    lambda inner: st.dictionaries(
        st.sampled_from(_KEYS),
        inner
        | st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_size=5,
    ),
    max_leaves=20,
)


@settings(max_examples=50, deadline=None)
@given(schema=_SCHEMAS, hints=_SCHEMA_VALUES, seed=st.integers(0, 2**32))
def test_any_schema_whatever_its_keywords_hold_gets_a_value(
    schema: Any, hints: Any, seed: int
) -> None:
    value = fill_schema(schema, random.Random(seed), hints)
    json.dumps(value, allow_nan=True)
    if isinstance(schema, dict):
        fits_schema(value, schema)


def test_the_provider_answers_a_hostile_schema_with_json() -> None:
    spec = ModelSpec(
        provider="sim", profile="small", time_scale=0, faults=FaultRates(malformed=0.0)
    )  # type: ignore[arg-type]
    sim = SimProvider(spec)
    info = RequestInfo(id="r", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    for i, name in enumerate(sorted(_HOSTILE)):
        schema = _HOSTILE[name]
        if not isinstance(schema, dict):
            continue
        call = ProviderRequest(
            model="m", messages=[{"role": "user", "content": "hi"}], request=info,
            node_id="n", cycle=0, attempt=i, task="risk", schema=schema,
        )  # fmt: skip
        json.loads(anyio.run(sim.complete, call).text)
