"""The writer's shortcuts store exactly what it stored without them: NULL written into
the INSERT."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from engine.events import OrchestrationEvent
from engine.store.rows import OFTEN_NULL, SLOT, TABLES
from engine.store.schema import connect, migrate
from engine.store.writer import _insert

_SQL = TABLES[SLOT[OrchestrationEvent]][1]


def _store(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    migrate(conn, path)
    return conn


def _event_row(i: int, **values: Any) -> tuple[Any, ...]:
    row: list[Any] = [1, 2, 0, 3, 4, 5, "ok", None, i, i * 10, None, 6, None, None, None]
    for column, value in values.items():
        row[int(column[1:])] = value
    return tuple(row)


def test_rows_with_null_written_into_the_insert_read_back_as_bound(tmp_path: Path) -> None:
    """Whole statements of NULL columns, a statement where one row has a value in each
    such column, and the rows after the last whole statement."""
    rows = [_event_row(i) for i in range(32)]
    rows += [_event_row(i, c7=11, c13="{}") if i == 40 else _event_row(i) for i in range(32, 64)]
    rows += [
        _event_row(i, c10=1.5, c12=b"\x01") if i == 66 else _event_row(i) for i in range(64, 70)
    ]
    rows += [_event_row(i) for i in range(70, 73)]
    assert OFTEN_NULL[SLOT[OrchestrationEvent]] == (7, 10, 12, 13)
    read = []
    for name, write in (
        ("a", lambda conn: _insert(conn, _SQL, rows, OFTEN_NULL[SLOT[OrchestrationEvent]])),
        ("b", lambda conn: conn.executemany(_SQL, rows)),
    ):
        conn = _store(tmp_path / f"{name}.db")
        write(conn)
        read.append(conn.execute("SELECT * FROM event_rows ORDER BY id").fetchall())
    assert read[0] == read[1]
    assert [row[1:] for row in read[0]] == rows
