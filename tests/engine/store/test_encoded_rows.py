"""Pre-encoded rows (`encode_records`, a Ray worker's side) store exactly what the records
themselves would, and `without` drops whole requests."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from engine.cluster.encoder import RowEncoder
from engine.events import OrchestrationEvent
from engine.store.codec import frame_packer, load_dictionary
from engine.store.rows import encode_records
from engine.store.schema import connect
from engine.store.store import Store
from engine.store.writer import StoreWriter
from tests.support.store_rows import TABLES, request_records


def _dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(db) as conn:
        return {
            table: sorted(
                (
                    tuple(row[1:]) if table != "requests" else tuple(row)
                    for row in conn.execute(f"SELECT * FROM {table}")
                ),
                key=repr,
            )
            for table in TABLES
        }


def test_encoded_rows_store_what_the_records_would(tmp_path: Path) -> None:
    at = time.time()
    records = [r for seq in range(3) for r in request_records("run-1", seq, at)]
    with StoreWriter(tmp_path / "a.db") as plain:
        for record in records:
            plain.record(record)
    with StoreWriter(tmp_path / "b.db") as encoded:
        encoded.record(encode_records(records[:10]))
        encoded.record(encode_records(records[10:]))
    assert _dump(tmp_path / "a.db") == _dump(tmp_path / "b.db")
    assert len(_dump(tmp_path / "b.db")["requests"]) == 3


def test_without_drops_every_row_of_the_named_requests(tmp_path: Path) -> None:
    at = time.time()
    records = [r for seq in range(3) for r in request_records("run-1", seq, at)]
    rows = encode_records(records).without({"run-1-000001"})
    with StoreWriter(tmp_path / "c.db") as writer:
        writer.record(rows)
    dumped = _dump(tmp_path / "c.db")
    assert all("run-1-000001" not in repr(table) for table in dumped.values())
    assert len(dumped["requests"]) == 2
    assert rows.count == len(records) * 2 // 3


def test_a_record_of_no_stored_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="not a store record"):
        encode_records(["nope"])  # type: ignore[list-item]


def test_rows_compressed_by_another_process_read_back_as_written(tmp_path: Path) -> None:
    def payload_event(seq: int) -> OrchestrationEvent:
        payload = {"modules_planned": ["retrieve", "draft", "critic"], "score": seq % 7, "n": seq}
        return OrchestrationEvent(
            "run-1", f"run-1-{seq:06d}", 0, "plan", "planner", "PLAN", seq, payload=payload
        )

    db = tmp_path / "d.db"
    with StoreWriter(db) as writer:  # enough payloads for the writer to train its dictionary
        for seq in range(2_100):
            writer.record(payload_event(seq))
    conn = connect(db, readonly=True)
    dictionary = load_dictionary(conn)
    conn.close()
    assert dictionary is not None
    later = [payload_event(seq) for seq in range(5_000, 5_010)]
    rows = encode_records(later, frame_packer(dictionary.as_bytes()))
    assert all(isinstance(row[14], bytes) for row in rows.tables[0])
    with StoreWriter(db) as writer:
        writer.record(rows)
    with Store.open(db) as store:
        stored = store.query(
            "SELECT payload_json FROM orchestration_events WHERE sequence >= 5000 ORDER BY sequence"
        )
    assert [row["payload"] for row in stored] == [dict(e.payload or {}) for e in later]


def _codes(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {text: code for code, text in conn.execute("SELECT code, text FROM strings")}


def _identity(text: str | None) -> str | bytes | None:
    return text


def test_compact_rows_store_what_the_records_would(tmp_path: Path) -> None:
    at = time.time()
    first = request_records("run-1", 0, at)
    later = [request_records("run-1", seq, at + seq) for seq in range(1, 5)]
    with StoreWriter(tmp_path / "a.db") as plain:
        for record in first + [r for group in later for r in group]:
            plain.record(record)
    with StoreWriter(tmp_path / "b.db") as writer:
        writer.record(encode_records(first))
    encoder = RowEncoder(_codes(tmp_path / "b.db"), _identity)
    rows = encoder.encode(later, [])
    assert len(rows.requests) == 4  # every text was coded: no request fell back
    assert [len(table) for table in rows.tables] == [16, 8, 4, 4]
    assert rows.rest.count == 4  # the `requests` rows
    with StoreWriter(tmp_path / "b.db") as writer:
        writer.record(rows)
    assert _dump(tmp_path / "a.db") == _dump(tmp_path / "b.db")


def test_a_request_naming_an_uncoded_text_is_sent_as_contract_rows(tmp_path: Path) -> None:
    at = time.time()
    records = [request_records("run-1", seq, at) for seq in range(3)]
    with StoreWriter(tmp_path / "a.db") as plain:
        for group in records:
            for record in group:
                plain.record(record)
    with StoreWriter(tmp_path / "b.db") as writer:
        writer.record(encode_records(records[0]))
    codes = _codes(tmp_path / "b.db")
    del codes["CACHE_MISS"]  # as if the store had not coded it yet
    rows = RowEncoder(codes, _identity).encode(records[1:], [])
    assert rows.requests == [] and rows.rest.count == len(records[1]) * 2
    with StoreWriter(tmp_path / "b.db") as writer:
        writer.record(rows)
    assert _dump(tmp_path / "a.db") == _dump(tmp_path / "b.db")


def test_compact_rows_without_a_request_drop_all_its_rows(tmp_path: Path) -> None:
    at = time.time()
    records = [request_records("run-1", seq, at) for seq in range(3)]
    with StoreWriter(tmp_path / "c.db") as writer:
        writer.record(encode_records(records[0]))
    rows = RowEncoder(_codes(tmp_path / "c.db"), _identity).encode(records[1:], [])
    with StoreWriter(tmp_path / "c.db") as writer:
        writer.record(rows.without({"run-1-000001"}))
    dumped = _dump(tmp_path / "c.db")
    assert all("run-1-000001" not in repr(table) for table in dumped.values())
    assert len(dumped["requests"]) == 2 and len(dumped["orchestration_events"]) == 8


def test_a_short_text_seen_often_is_asked_to_be_coded(tmp_path: Path) -> None:
    at = time.time()
    records = [request_records("run-1", seq, at) for seq in range(4)]
    with StoreWriter(tmp_path / "d.db") as writer:
        writer.record(encode_records(records[0]))
    encoder = RowEncoder(_codes(tmp_path / "d.db"), _identity)
    encoder.codes.pop("small", None)  # a decision text, stored inline until coded
    rows = encoder.encode(records[1:], [])
    assert "small" in rows.intern  # its third sighting (the other decisions too)
    with StoreWriter(tmp_path / "d.db") as writer:
        writer.record(rows)
    assert "small" in _codes(tmp_path / "d.db")
    with Store.open(tmp_path / "d.db") as store:
        decisions = store.query(
            "SELECT decision FROM orchestration_events WHERE component = 'router'"
        )
    assert [row["decision"] for row in decisions] == ["small"] * 4
