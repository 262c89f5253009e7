"""The writer's shortcuts store exactly what it stored without them: a payload object met
again (`Compactor.payloads`), the last request's key, and NULL written into the INSERT."""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from engine.events import OrchestrationEvent
from engine.store import compact
from engine.store.codec import Packer
from engine.store.compact import Compactor
from engine.store.rows import OFTEN_NULL, SLOT, TABLES
from engine.store.schema import connect, migrate
from engine.store.writer import _insert

_BUILD = TABLES[SLOT[OrchestrationEvent]][2]
_SQL = TABLES[SLOT[OrchestrationEvent]][1]

SHORT = {"consumer": "critique", "status": "finished"}
LONG = {"when": "policy.deliberation.cycles > 0 and not request.degraded and cycle < 3"}
ONCE = {"for": "answer"}


def _store(path: Path, *, dictionary: bool) -> sqlite3.Connection:
    conn = connect(path)
    migrate(conn, path)
    if dictionary:  # a trained one, so large payloads are compressed frames
        samples = [
            json.dumps({"when": f"{LONG['when']} or x{i}", "n": i}).encode() for i in range(600)
        ]
        trained = zstandard.train_dictionary(4_096, samples)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            (f"zstd_dict:{trained.dict_id()}", trained.as_bytes()),
        )
    return conn


class _Writer:
    """The writer's encoding side, one transaction at a time."""

    def __init__(self, path: Path, *, dictionary: bool = True) -> None:
        self.conn = _store(path, dictionary=dictionary)
        self.packer = Packer(self.conn)
        self.cx = Compactor()
        self.seq = 0

    def transaction(self, payloads: list[Any], *, commit: bool = True) -> list[Any]:
        self.conn.execute("BEGIN IMMEDIATE")
        self.cx.begin(self.conn)
        rows = []
        for payload in payloads:
            self.seq += 1
            event = OrchestrationEvent(
                "run", "run-1", 0, "node", "gate", "GATE_DECISION", self.seq, "skip",
                started_at=100.0 + self.seq, payload=payload,
            )  # fmt: skip
            rows.append(_BUILD(self.cx, self.packer.pack, event))
        if commit:
            self.conn.execute("COMMIT")
            self.cx.commit()
            self.packer.committed()
        else:
            self.conn.execute("ROLLBACK")
            self.cx.rollback()
        return rows


def _transactions(shared: bool) -> Iterator[tuple[list[Any], bool]]:
    """The same payloads as one object each (`shared`, as the scheduler records them) or
    as a new copy on every event; one transaction in three rolls back."""
    short, long = SHORT, LONG
    for round_ in range(6):
        payloads = [short, long, ONCE, short, long, short, short, long]
        if not shared:
            payloads = [copy.deepcopy(payload) for payload in payloads]
        yield payloads, round_ % 3 != 1


@pytest.mark.parametrize("dictionary", [True, False])
def test_a_shared_payload_is_stored_as_its_copies_would_be(
    tmp_path: Path, dictionary: bool
) -> None:
    """Text while it is counted, a code only once committed (within its transaction an
    interned text is still stored inline after that), a frame while the text has no code;
    a code of a rolled-back transaction never again."""
    rows = _both(tmp_path, dictionary)
    assert rows[True] == rows[False]
    text = json.dumps(SHORT, separators=(",", ":"))
    first, _, third = ([row[14] for row in tx] for tx in rows[True][:3])
    assert [first[0], first[3], first[6]] == [text, text, text]
    assert isinstance(first[5], int) and [third[0], third[3]] == [first[5], first[5]]
    long = [row[14] for tx in rows[True] for row in tx[1::3]]
    assert all(isinstance(value, bytes) is dictionary for value in long)


def _both(tmp_path: Path, dictionary: bool = True) -> dict[bool, list[list[Any]]]:
    """The rows of `_transactions`, shared and copied."""
    rows = {}
    for shared in (True, False):
        writer = _Writer(tmp_path / f"{shared}.db", dictionary=dictionary)
        rows[shared] = [
            writer.transaction(payloads, commit=commit)
            for payloads, commit in _transactions(shared)
        ]
    return rows


def test_a_shared_payload_is_counted_again_once_the_codes_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's codes in memory are cleared when they grow too many; a text is then
    counted towards its code again (stored inline meanwhile), shared or not."""
    monkeypatch.setattr(compact, "_CACHE_MAX", 20)
    writer = _Writer(tmp_path / "s.db")
    interned = writer.transaction([SHORT, SHORT, SHORT])[2][14]
    assert writer.transaction([SHORT])[0][14] == interned
    writer.transaction([])
    for i in range(21):  # a transaction of many new names: the codes known are cleared
        writer.cx.begin(writer.conn)
        writer.cx.code(f"name-{i}")
    writer.cx.commit()
    assert writer.transaction([SHORT])[0][14] == json.dumps(SHORT, separators=(",", ":"))


def test_a_payload_interned_in_a_rolled_back_transaction_is_text_again(tmp_path: Path) -> None:
    writer = _Writer(tmp_path / "s.db")
    interned = writer.transaction([SHORT, SHORT, SHORT], commit=False)
    assert isinstance(interned[2][14], int)
    again = writer.transaction([SHORT])
    assert again[0][14] == json.dumps(SHORT, separators=(",", ":"))


def test_a_kept_frame_gives_way_to_a_code_of_its_text(tmp_path: Path) -> None:
    """Should the payload's very text be given a code (as a name, say), the payload is
    stored as that code from then on, as a copy of it would be."""
    writer = _Writer(tmp_path / "s.db")
    assert isinstance(writer.transaction([LONG, LONG])[1][14], bytes)
    writer.conn.execute("BEGIN IMMEDIATE")
    writer.cx.begin(writer.conn)
    code = writer.cx.code(json.dumps(LONG, separators=(",", ":")))
    writer.conn.execute("COMMIT")
    writer.cx.commit()
    assert writer.transaction([LONG])[0][14] == code


def test_a_request_key_made_in_a_rolled_back_transaction_is_made_again(tmp_path: Path) -> None:
    writer = _Writer(tmp_path / "s.db")
    lost = writer.transaction([None], commit=False)[0]
    kept = writer.transaction([None])[0]
    stored = writer.conn.execute("SELECT key, t0 FROM request_keys WHERE id = 'run-1'").fetchall()
    assert stored == [(kept[0], 102.0)]
    assert (lost[0], lost[9], kept[9]) == (kept[0], 0, 0)  # (each the first of its key)


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
        conn = _store(tmp_path / f"{name}.db", dictionary=False)
        write(conn)
        read.append(conn.execute("SELECT * FROM event_rows ORDER BY id").fetchall())
    assert read[0] == read[1]
    assert [row[1:] for row in read[0]] == rows
