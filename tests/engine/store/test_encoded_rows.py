"""Pre-encoded rows (`encode_records`, a Ray worker's side) store exactly what the records
themselves would, and `without` drops whole requests."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

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
