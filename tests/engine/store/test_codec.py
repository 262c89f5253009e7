"""Compact JSON columns (`engine.store.codec`): large payloads are stored as zstd frames
against a dictionary the store keeps, and every reader gets the same data back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.events import DecisionTrace, RequestRecord, RequestStatus
from engine.store import codec
from engine.store.store import Store


def _trace(i: int) -> DecisionTrace:
    return DecisionTrace(
        f"q{i}",
        1,
        "CYCLE_SUMMARY",
        {
            "loop": "deliberate",
            "cycle": 1 + i % 3,
            "modules_planned": ["revised", "consequences", "critique", "converge"],
            "modules_executed": ["critique", "converge"][: 1 + i % 2],
            "score": round(i / 7919, 4),
            "next_action": "continue" if i % 2 else "stop",
        },
    )


def test_large_payloads_are_compressed_and_read_back_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    traces = [_trace(i) for i in range(6000)]
    with Store.open(db) as store:
        with store.writer(batch_size=500) as writer:
            for i, trace in enumerate(traces):
                writer.record(trace)
                if i % 500 == 499:
                    writer.flush()
            writer.record(
                RequestRecord("q1", "run", 1, RequestStatus.OK, 0, 1, 1, 0, {"answer": "x" * 500})
            )
        assert [row["payload"] for row in store.decision_traces("q5999")] == [traces[-1].payload]
        assert store.get_request("q1")["output"] == {"answer": "x" * 500}  # type: ignore[index]
    raw = sqlite3.connect(db)
    kinds = dict(
        raw.execute("SELECT typeof(payload_json), COUNT(*) FROM decision_traces GROUP BY 1")
    )
    dictionaries = raw.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'zstd_dict:%'").fetchone()
    sizes = raw.execute(
        "SELECT AVG(length(payload_json)) FROM decision_traces WHERE typeof(payload_json) = 'blob'"
    ).fetchone()
    raw.close()
    assert kinds["blob"] > 3000 and kinds["text"] >= 1000  # text until the dictionary exists
    assert dictionaries == (1,)
    assert sizes[0] < 60  # from about 190 bytes of JSON text
    with Store.open(db, readonly=True) as reader:  # another connection reads them too
        rows = reader.query("SELECT payload_json FROM decision_traces ORDER BY id")
        assert [row["payload"] for row in rows] == [t.payload for t in traces]


def test_a_new_writer_reuses_the_store_dictionary(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        for part in range(2):
            with store.writer(batch_size=500) as writer:
                for i in range(3000 * part, 3000 * part + 3000):
                    writer.record(_trace(i))
        count = store.query("SELECT COUNT(*) AS n FROM meta WHERE key LIKE 'zstd_dict:%'")
        assert count[0]["n"] == 1
        blobs = store.query(
            "SELECT COUNT(*) AS n FROM decision_traces WHERE typeof(payload_json) = 'blob' "
            "AND request_id IN ('q3000', 'q3001')"
        )
        assert blobs[0]["n"] == 2  # the second writer compressed from its first record


def test_small_payloads_stay_json_text(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        with store.writer() as writer:
            for i in range(3000):
                writer.record(DecisionTrace(f"q{i}", 1, "S", {"i": i}))
        kinds = store.query("SELECT DISTINCT typeof(payload_json) AS t FROM decision_traces")
        assert kinds == [{"t": "text"}]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@given(
    name=st.sampled_from([*codec.SHAPES, "output"]),
    value=_JSON.map(json.dumps) | st.text(max_size=20) | st.binary(max_size=20),
)
def test_a_column_value_reads_back_as_its_kind_or_as_none_flagged(
    name: str, value: str | bytes
) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE meta (key TEXT, value BLOB)")
    decoded, ok = codec.decode_column(conn, name, value)
    conn.close()

    kind = codec.SHAPES.get(name, object)
    if ok:
        assert isinstance(decoded, kind) and _strict(value) == decoded
    else:  # never an exception: a viewer shows the rest of the row
        assert decoded is None
    if isinstance(value, str) and name == "output":
        try:
            expected = _strict(value)
        except ValueError:
            return
        assert ok and decoded == expected


def _strict(text: str | bytes) -> object:
    """`text` read as strict JSON: NaN and Infinity are not JSON."""

    def refuse(name: str) -> object:
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", ["NaN", "-Infinity", '{"score": NaN}', "[1, Infinity]"])
def test_nan_and_infinity_read_as_none_flagged_as_moat_never_writes_them(value: str) -> None:
    conn = sqlite3.connect(":memory:")
    assert codec.decode_column(conn, "output", value) == (None, False)
    assert codec.decode_column(conn, "payload", value) == (None, False)
