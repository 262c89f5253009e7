"""Pre-encoded rows (`encode_records`, a Ray worker's side) store exactly what the records
themselves would, and `without` drops whole requests."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from engine.store.writer import StoreWriter, encode_records
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
