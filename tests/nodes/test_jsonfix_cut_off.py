"""The lenient parser told that a text may stop anywhere: every prefix of an object reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes._support.jsonfix import JsonFixError, parse_lenient

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=st.dictionaries(st.text(), _JSON, max_size=5), ascii_only=st.booleans(), cut=st.data())
def test_every_prefix_of_an_object_reads_as_an_object_when_cut_off(
    value: dict[str, Any], ascii_only: bool, cut: st.DataObject
) -> None:
    whole = json.dumps(value, ensure_ascii=ascii_only)
    text = whole[: cut.draw(st.integers(1, len(whole)))]
    parsed = parse_lenient(text, cut_off=True)
    assert isinstance(parsed.value, dict) and set(parsed.value) <= set(value)
    json.dumps(parsed.value).encode("utf-8")  # no lone surrogate from half a pair


@pytest.mark.parametrize(
    ("text", "value", "by_default"),
    [
        ('{"name": "Ann Lee", "total": ', {"name": "Ann Lee"}, None),
        ('{"name": "Ann Lee", "tot', {"name": "Ann Lee"}, None),
        ('{"ok": tru', {}, None),
        ('{"xs": [1, 2.', {"xs": [1]}, None),
        ('{"a": "x\\', {"a": "x"}, None),
        ('{"a": "x\\u00', {"a": "x"}, None),
        ('{"a": "x\\ud83d', {"a": "x"}, {"a": "x\ud83d"}),
        ('{"a": "x\\\\', {"a": "x\\"}, {"a": "x\\"}),
        ('{"a": "x", "b": 4', {"a": "x", "b": 4}, {"a": "x", "b": 4}),
    ],
)
def test_a_cut_drops_what_it_left_half_written_only_when_told(
    text: str, value: Any, by_default: Any
) -> None:
    assert parse_lenient(text, cut_off=True).value == value
    if by_default is None:  # the default reading is unchanged: not JSON
        with pytest.raises(JsonFixError):
            parse_lenient(text)
    else:
        assert parse_lenient(text).value == by_default
