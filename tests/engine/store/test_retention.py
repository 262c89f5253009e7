"""Retention (`engine.store.retention`): whole runs go with everything of theirs, running
runs stay, space comes back, and another process keeps writing meanwhile."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.errors import StoreError
from engine.store import retention
from engine.store.retention import PruneResult, prune
from engine.store.schema import MIGRATIONS, connect, file_lock, migrate, user_version
from engine.store.store import Store
from tests.support.store_rows import TABLES, count_rows, stored_run

ROOT = Path(__file__).resolve().parents[3]
DAY = 86_400.0


def _gone(db: Path, run_id: str) -> bool:
    return not any(count_rows(db, run_id).values())


def test_keep_runs_deletes_older_runs_with_every_row_and_keeps_the_newest(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    now = time.time()
    old = stored_run(db, 5, at=now - 3 * DAY, crashed=2)
    mid = stored_run(db, 4, at=now - 2 * DAY)
    new = stored_run(db, 3, at=now - DAY)
    kept_before = count_rows(db, new)

    result = prune(db, keep_runs=1)

    assert result.runs == [old, mid]
    assert result.requests == 9
    assert _gone(db, old) and _gone(db, mid)
    assert count_rows(db, new) == kept_before
    assert kept_before["requests"] == 3 and kept_before["run_events"] == 1
    with Store.open(db, readonly=True) as store:
        assert [run["id"] for run in store.list_runs()] == [new]
        assert store.list_policies() == []  # nothing else touched
    # per stored request 9 rows, per crashed one 8, per run a run-level event and its row
    assert result.rows == (5 * 9 + 2 * 8 + 2) + (4 * 9 + 2)


def test_before_prunes_runs_that_ended_before_the_date(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    now = time.time()
    old = stored_run(db, 2, at=now - 10 * DAY)
    recent = stored_run(db, 2, at=now - 1 * DAY)

    result = prune(db, before=now - 5 * DAY)

    assert result.runs == [old]
    assert _gone(db, old)
    assert count_rows(db, recent)["requests"] == 2


def test_a_run_being_written_is_never_pruned(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    running = stored_run(db, 3, at=time.time() - 10 * DAY, finish=False)  # owner: this pid

    result = prune(db, keep_runs=0)

    assert result.runs == [] and result.skipped == [running]
    assert count_rows(db, running)["requests"] == 3


def test_a_run_whose_process_died_is_pruned(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    died = stored_run(db, 3, at=time.time() - 10 * DAY, finish=False)
    with Store.open(db) as store, store._tx() as conn:
        conn.execute(
            "UPDATE runs SET config_json = json_set(config_json, '$.owner.pid', 2147483646)"
        )

    result = prune(db, keep_runs=0)

    assert result.runs == [died]
    assert _gone(db, died)


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    run = stored_run(db, 3)
    before = count_rows(db, run)

    result = prune(db, keep_runs=0, dry_run=True)

    assert result.runs == [run] and result.requests == 3
    assert count_rows(db, run) == before


def test_a_dry_run_leaves_an_older_store_unconverted(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    conn = connect(db)
    migrate(conn, db, MIGRATIONS[:2])
    conn.execute("INSERT INTO runs VALUES ('r-1', 'g', 'h', 10.0, 20.0, 'finished', 1, 1, '{}')")
    conn.execute(
        "INSERT INTO requests (id, run_id, seq, status, started_at, finished_at, latency_ms, "
        "cost_usd) VALUES ('r-1-000000', 'r-1', 0, 'ok', 10.0, 11.0, 1000.0, 0.001)"
    )
    conn.close()
    content = db.read_bytes()

    result = prune(db, keep_runs=0, dry_run=True)

    assert result.runs == ["r-1"] and result.requests == 1
    conn = sqlite3.connect(db)
    try:
        assert user_version(conn) == 2
    finally:
        conn.close()
    assert db.read_bytes() == content


def test_incremental_vacuum_gives_the_space_back(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 3000)
    keep = stored_run(db, 10)
    size = db.stat().st_size

    result = prune(db, keep_runs=1)

    assert result.vacuum == "incremental"
    assert db.stat().st_size < size / 4
    assert count_rows(db, keep)["requests"] == 10


def test_an_old_store_shrinks_only_with_a_full_vacuum(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)  # WAL before any table: auto-vacuum stays NONE, as before
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    stored_run(db, 2000)
    keep = stored_run(db, 5)
    size = db.stat().st_size

    assert prune(db, keep_runs=1).vacuum == "none"
    assert db.stat().st_size >= size * 0.9
    result = prune(db, keep_runs=1, vacuum=True)
    assert result.vacuum == "full"
    assert db.stat().st_size < size / 4
    assert count_rows(db, keep)["requests"] == 5
    assert prune(db, keep_runs=1).vacuum == "incremental"  # converted by the VACUUM


def test_a_full_vacuum_refused_while_a_run_is_written_deletes_nothing_first(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)  # an older store: auto-vacuum NONE
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    old = stored_run(db, 20, at=time.time() - 3 * DAY)
    running = stored_run(db, 2, finish=False)  # this process's: being written
    before = count_rows(db, old)

    with pytest.raises(StoreError, match=r"nothing was pruned: --vacuum asks for a full VACUUM, "
                       r"and a run is being written.*prune without --vacuum now"):  # fmt: skip
        prune(db, keep_runs=1, vacuum=True)

    assert count_rows(db, old) == before  # not deleted, then refused
    result = prune(db, keep_runs=1)  # without --vacuum: pruned, the pages kept for reuse
    assert (result.runs, result.vacuum) == ([old], "none")
    assert count_rows(db, running)["requests"] == 2


_WRITER = """
import sys, time
from pathlib import Path
from engine.store.store import Store
from tests.support.store_rows import request_records

db, total = Path(sys.argv[1]), int(sys.argv[2])
with Store.open(db) as store:
    run_id = store.create_run("g", "hash", total)
    with store.writer() as writer:
        print(time.time(), flush=True)
        for seq in range(total):
            for item in request_records(run_id, seq, time.time()):
                writer.record(item)
            if seq % 100 == 99:
                writer.flush()
                time.sleep(0.01)
    store.finish_run(run_id, "finished")
print(time.time(), flush=True)
"""


def test_prune_is_safe_while_another_process_writes(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    olds = [stored_run(db, 1000, at=time.time() - (5 - i) * DAY) for i in range(3)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), "2000"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert writer.stdout is not None
        writer_started = float(writer.stdout.readline())
        pruned_at = time.time()
        result = prune(db, before=time.time() - DAY)
        pruned_by = time.time()
    finally:
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    writer_ended = float(out.split()[-1])
    assert writer_started < pruned_by and pruned_at < writer_ended  # they overlapped
    assert result.runs == olds
    assert all(_gone(db, run) for run in olds)
    with Store.open(db, readonly=True) as store:
        (new,) = store.list_runs()
        assert new["requests_done"] == 2000
    rows = count_rows(db, new["id"])
    assert {table: rows[table] for table in TABLES} == {
        "requests": 2000,
        "orchestration_events": 8000,
        "node_runs": 4000,
        "llm_calls": 2000,
        "decision_traces": 2000,
    }


def test_two_prunes_at_once_each_report_only_what_they_deleted(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    run = stored_run(db, 1200)
    rows = sum(count_rows(db, run).values())
    results: list[PruneResult] = []
    with file_lock(db):  # both select the run, then wait for the write lock
        threads = [
            threading.Thread(target=lambda: results.append(prune(db, keep_runs=0)))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
    for thread in threads:
        thread.join(timeout=60)

    # the run is the one's that deleted its row; the other names it as pruned elsewhere
    assert sorted((r.runs, r.skipped, r.elsewhere) for r in results) == [
        ([], [], [run]),
        ([run], [], []),
    ]
    assert sum(r.requests for r in results) == 1200
    assert sum(r.rows for r in results) == rows
    assert _gone(db, run)


def test_space_reported_is_what_the_prune_freed_not_a_wal_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 3000)
    keep = stored_run(db, 10)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # another writer's pages wait in the WAL
    conn.execute("UPDATE requests SET output_json = '\"' || hex(randomblob(200)) || '\"'")
    conn.commit()  # (kept open: the last connection to close would checkpoint the WAL)
    assert Path(f"{db}-wal").stat().st_size > 1_000_000

    nothing = prune(db, keep_runs=5)  # prunes nothing; checkpoints the WAL away

    assert Path(f"{db}-wal").stat().st_size == 0
    conn.close()
    assert (nothing.runs, nothing.requests, nothing.bytes_freed) == ([], 0, 0)
    assert nothing.bytes_returned == 0
    assert nothing.bytes_before == nothing.bytes_after

    pruned = prune(db, keep_runs=1)

    assert pruned.requests == 3000
    page = 4096
    assert pruned.bytes_freed > 500 * page  # thousands of requests' pages
    assert pruned.bytes_returned >= pruned.bytes_freed  # all of it, at once
    assert pruned.bytes_before - pruned.bytes_after == pruned.bytes_returned
    assert db.stat().st_size == pruned.bytes_after
    assert count_rows(db, keep)["requests"] == 10


def test_exactly_one_selection_is_required(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 1)
    with pytest.raises(ValueError, match="exactly one"):
        prune(db)


def test_a_run_a_prune_has_started_deleting_cannot_be_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed, it would answer again the requests already deleted. A prune that stopped
    halfway (here: killed after its first chunk) leaves the run marked `pruning`; the
    resume is refused and says what to do, and the next prune finishes the run."""
    db = tmp_path / "s.db"
    run_id = stored_run(db, 5, at=time.time() - DAY)
    stored_run(db, 1)
    monkeypatch.setattr(retention, "_CHUNK", 2)
    real = retention._delete_requests
    calls = 0

    def killed_after_one_chunk(conn: sqlite3.Connection, ids: list[str]) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise KeyboardInterrupt  # the prune's process stops here
        return real(conn, ids)

    monkeypatch.setattr(retention, "_delete_requests", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        prune(db, keep_runs=1)
    monkeypatch.undo()
    with Store.open(db) as store:
        assert store.require_run(run_id)["status"] == "pruning"
        assert len(store.finished_request_seqs(run_id)) == 3
        with pytest.raises(StoreError, match=r"being deleted by `moat prune`.*start a new run"):
            store.claim_run(run_id)
    assert prune(db, keep_runs=1).runs == [run_id]
    assert _gone(db, run_id)
