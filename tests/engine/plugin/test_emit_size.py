"""An event keeps an explanation, not data: each of `ctx.emit`'s `inputs`, `outputs` and
`payload` (and `ctx.trace`'s payload) takes at most `EMIT_JSON_LIMIT` bytes (64 KiB) of
JSON as the store writes it. A bigger one fails the node, saying the limit and what to
store instead, and nothing of it reaches the store."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.plugin.context import EMIT_JSON_LIMIT
from engine.store.rows import _encode
from tests.engine.plugin.test_emit_arguments import _record

BIG = "x" * EMIT_JSON_LIMIT


@pytest.mark.parametrize("name", ["payload", "inputs", "outputs"])
def test_an_emit_over_64_kib_of_json_fails_the_node_saying_the_limit_and_the_fix(
    name: str,
) -> None:
    result, sink = anyio.run(_record, {name: {"text": BIG}})
    assert result.status == "failed"
    assert result.error.startswith(
        f"node 'rec': ctx.emit: `{name}` takes 65,547 bytes of JSON, over the limit of "
        f"65,536 (64 KiB) an event keeps; put a summary in `{name}`"
    ), result.error
    assert "a reference to where the data is kept" in result.error
    assert not [e for e in sink.events() if e.event_type == "RECORDED"]


def test_a_trace_over_64_kib_of_json_fails_the_node() -> None:
    result, sink = anyio.run(_record, {}, ("RISK_ASSESSMENT", {"text": BIG}))
    assert result.status == "failed"
    assert result.error.startswith("node 'rec': ctx.trace: `payload` takes 65,547 bytes")
    assert not sink.traces()


def test_the_limit_counts_json_as_stored_escapes_included() -> None:
    """A text of 11,000 emoji is 11,000 characters, and 132,000 bytes of stored JSON."""
    result, _ = anyio.run(_record, {"payload": {"t": "\U0001f600" * 11_000}})
    assert result.status == "failed" and "132,008 bytes" in result.error


def test_a_payload_that_refers_to_itself_fails_the_node() -> None:
    payload: dict[str, Any] = {"a": 1}
    payload["self"] = payload
    result, _ = anyio.run(_record, {"payload": payload})
    assert result.status == "failed"
    assert "`payload` cannot be written as JSON (it refers to itself" in result.error


_TEXT = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["a", "é", '"', "\n", "\U0001f600", "word "]),
    st.integers(0, 14_000),
)
_SCALAR = st.one_of(
    _TEXT,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
_VALUE = st.one_of(
    _SCALAR,
    st.lists(_TEXT, max_size=6),
    st.lists(_SCALAR, max_size=6),
    st.dictionaries(st.text(max_size=8), _SCALAR, max_size=6),
    st.dictionaries(st.text(max_size=8), st.lists(_TEXT, max_size=3), max_size=3),
)
_KEY = st.one_of(st.text(max_size=12), st.builds(lambda n: "k" * n, st.integers(0, 9_000)))


@settings(max_examples=150, deadline=None, database=None)
@given(payload=st.dictionaries(_KEY, _VALUE, max_size=12))
def test_a_payload_is_refused_exactly_when_its_stored_json_is_over_the_limit(
    payload: dict[str, Any],
) -> None:
    result, sink = anyio.run(_record, {"payload": payload})
    stored = len(_encode(payload))
    assert (result.status == "ok") == (stored <= EMIT_JSON_LIMIT), (stored, result.error)
    if result.status == "ok":
        [event] = [e for e in sink.events() if e.event_type == "RECORDED"]
        assert event.payload == payload
