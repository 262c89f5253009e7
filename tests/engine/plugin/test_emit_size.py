"""An event keeps an explanation, not data: each of `ctx.emit`'s `inputs`, `outputs` and
`payload` (and `ctx.trace`'s payload) is stored whole up to `EMIT_JSON_LIMIT` bytes (64
KiB) of JSON. A bigger one is stored as what it was (its size, the limit, its SHA-256 and
its first characters), so the store does not balloon; the node runs on, and the record,
not a failure, says what was left out. The writer applies it where it encodes the value
anyway: `ctx.emit` pays nothing for it on the request path."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.store.rows import EMIT_JSON_LIMIT, _encode
from engine.store.store import Store
from tests.engine.plugin.test_emit_arguments import _record

BIG = "x" * EMIT_JSON_LIMIT


def _stored(folder: Path, emitted: dict[str, Any], traced: Any = None) -> dict[str, Any]:
    """What the store keeps of the recorder's one event (or trace) after a run."""
    result, sink = anyio.run(_record, emitted, traced)
    assert result.status == "ok", result.error
    with Store.open(folder / "moat.db") as store:
        with store.writer() as writer:
            for item in sink.items:
                writer.record(item)
        if traced is not None:
            (row,) = store.decision_traces(result.request_id)
            return dict(row)
        (row,) = [r for r in store.events(result.request_id) if r["event_type"] == "RECORDED"]
        return dict(row)


def _oversized(value: Any) -> dict[str, Any]:
    text = _encode(value)
    return {
        "oversized": {
            "bytes": len(text),
            "limit": EMIT_JSON_LIMIT,
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "head": text[:200],
        }
    }


@pytest.mark.parametrize("name", ["payload", "inputs", "outputs"])
def test_an_emit_over_64_kib_of_json_is_stored_as_its_size_and_digest(
    tmp_path: Path, name: str
) -> None:
    value = {"text": BIG}
    row = _stored(tmp_path, {name: value, "decision": "kept"})
    assert row[name] == _oversized(value)
    assert row[name]["oversized"]["bytes"] == 65_547
    assert row["decision"] == "kept"  # the rest of the event is kept as given


def test_a_trace_over_64_kib_of_json_is_stored_the_same_way(tmp_path: Path) -> None:
    value = {"text": BIG}
    row = _stored(tmp_path, {}, ("RISK_ASSESSMENT", value))
    assert row["payload"] == _oversized(value)


def test_the_limit_counts_json_as_stored_escapes_included(tmp_path: Path) -> None:
    """A text of 11,000 emoji is 11,000 characters, and 132,008 bytes of stored JSON."""
    row = _stored(tmp_path, {"payload": {"t": "\U0001f600" * 11_000}})
    assert row["payload"]["oversized"]["bytes"] == 132_008


_TEXT = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["a", "é", '"', "\n", "\U0001f600", "word "]),
    st.integers(0, 14_000),
)
_SCALAR = st.one_of(
    _TEXT,
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
_VALUE = st.one_of(
    _SCALAR,
    st.lists(_TEXT, max_size=6),
    st.dictionaries(st.text(max_size=8), _SCALAR, max_size=6),
)
_KEY = st.one_of(st.text(max_size=12), st.builds(lambda n: "k" * n, st.integers(0, 9_000)))


@settings(max_examples=60, deadline=None, database=None)
@given(payload=st.dictionaries(_KEY, _VALUE, max_size=12))
def test_a_payload_is_kept_whole_exactly_when_its_stored_json_is_within_the_limit(
    payload: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        row = _stored(Path(folder), {"payload": payload})
    fits = len(_encode(payload)) <= EMIT_JSON_LIMIT
    assert row["payload"] == (payload if fits else _oversized(payload))
