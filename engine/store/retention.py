"""Retention: deleting whole old runs from a store and giving their space back.

`prune` picks runs (older than a date, or all but the newest N), never one that is still
being written (status `running` with a live owner, see `run_state`), and deletes each with
everything that belongs to it: its requests, their events, node runs, LLM calls and decision
traces, its run-level events (policy events), leftovers of crashed requests, and the run
row last. It deletes in short write transactions of whole requests (`_CHUNK` at a time), so
a process writing to the same store waits at most one chunk for the write lock, and a
crash mid-prune leaves only whole requests behind (the next prune finishes the run). The
first of those transactions marks the run `pruning`: `moat run --resume` refuses it from
then on, rather than answer again the requests already deleted.

Two prunes may run at once (two operators, a cron job beside a hand-run one): both pick
the same runs and take turns deleting their requests, and the run row goes with whichever
deletes the last request. Each reports what it deleted itself: a run counts as pruned by
the prune that deleted its row; the other lists it under `elsewhere`.

Space: deleted pages go to SQLite's free list, where new rows reuse them; the file only
shrinks when they are vacuumed. What a prune reports is measured inside its own write
transactions (the pages its deletes freed, the pages its vacuum steps cut off the file),
never from the file sizes around it, which other writers and WAL checkpoints change too. A
store created by this moat uses `auto_vacuum = INCREMENTAL`, so `prune` hands the free
pages back in short `incremental_vacuum` steps that other writers interleave with. An older
store (`auto_vacuum = NONE`) can only shrink by a full `VACUUM`, which rewrites the whole
file under the write lock; `prune` runs it only when asked (`vacuum=True`) and only when no
run is being written, because another process's writer would otherwise wait for the entire
rewrite.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import StoreError
from engine.store import tallies
from engine.store.compact import RUN_KEYS, delete_keys, keys_of
from engine.store.schema import (
    WRITE_PATIENCE_S,
    check_version,
    connect,
    describe_error,
    file_lock,
    is_busy,
    migrate,
    write_transaction,
)
from engine.store.store import being_written

__all__ = ["PruneResult", "prune", "select_runs"]

_CHUNK = 500
"""Requests deleted per write transaction: a few milliseconds of write lock each."""
_VACUUM_PAGES = 2_000
"""Free pages handed back per `incremental_vacuum` transaction (8 MB at 4 KB pages)."""


@dataclass(slots=True)
class PruneResult:
    """What a prune did (or, with `dry_run`, would do)."""

    runs: list[str] = field(default_factory=list)
    """The runs deleted, oldest first."""
    skipped: list[str] = field(default_factory=list)
    """Runs that matched but are still being written (never pruned)."""
    elsewhere: list[str] = field(default_factory=list)
    """Runs that matched but another prune (another process) deleted meanwhile; the
    requests of theirs this one deleted before that are counted in `requests`."""
    requests: int = 0
    """Stored requests deleted."""
    rows: int = 0
    """Rows deleted over every table."""
    bytes_freed: int = 0
    """Bytes of the pages this prune's deletes freed (for new records, or to vacuum)."""
    bytes_returned: int = 0
    """Bytes this prune's vacuum cut off the file (its own freed pages, and any free pages
    the store held before)."""
    bytes_before: int = 0
    """The database's size (its pages; the WAL beside it is not counted) before."""
    bytes_after: int = 0
    """Its size after the prune and the vacuum (other writers may have grown it meanwhile)."""
    vacuum: str = "none"
    """How space was reclaimed: `incremental`, `full` or `none` (free pages kept for reuse);
    `skipped` when a full vacuum was asked for but a run started being written meanwhile."""
    seconds: float = 0.0

    def as_json(self) -> dict[str, object]:
        """The result as JSON-able data (`moat prune --format json`)."""
        return {name: getattr(self, name) for name in self.__slots__}


def _pages(conn: sqlite3.Connection) -> tuple[int, int]:
    """The database's pages: (all of them, the free ones)."""
    total = int(conn.execute("PRAGMA page_count").fetchone()[0])
    return total, int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _size(conn: sqlite3.Connection) -> int:
    """The database's size in bytes: its pages, as committed (a WAL's content included,
    the WAL file's own length not: a checkpoint changes that, not the data)."""
    return _pages(conn)[0] * int(conn.execute("PRAGMA page_size").fetchone()[0])


def select_runs(
    conn: sqlite3.Connection,
    *,
    before: float | None = None,
    keep_runs: int | None = None,
) -> list[tuple[str, str, str | None]]:
    """The runs a prune would consider, oldest first: `(id, status, config_json)`.

    `before`: runs that ended (or, never finished, started) before this epoch time.
    `keep_runs`: every run but the `keep_runs` most recently started.
    """
    if (before is None) == (keep_runs is None):
        raise ValueError("give exactly one of before and keep_runs")
    if before is not None:
        sql = (
            "SELECT id, status, config_json FROM runs "
            "WHERE COALESCE(finished_at, started_at) < ? ORDER BY started_at, id"
        )
        return list(conn.execute(sql, (before,)))
    sql = (
        "SELECT id, status, config_json FROM runs WHERE id NOT IN "
        "(SELECT id FROM runs ORDER BY started_at DESC, id DESC LIMIT ?) "
        "ORDER BY started_at, id"
    )
    return list(conn.execute(sql, (keep_runs,)))


def _request_chunk(conn: sqlite3.Connection, run_id: str) -> list[str]:
    """Ids of up to `_CHUNK` requests of the run: stored ones first, then leftovers of
    crashed requests (rows with no `requests` row, attributed to the run by their events)."""
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM requests WHERE run_id = ? LIMIT ?", (run_id, _CHUNK)
        )
    ]
    if ids:
        return ids
    return [
        row[0]
        for row in conn.execute(
            f"SELECT DISTINCT id FROM ({RUN_KEYS}) WHERE id != '' LIMIT :n",
            {"run": run_id, "n": _CHUNK},
        )
    ]


def _delete_requests(conn: sqlite3.Connection, ids: Sequence[str]) -> tuple[int, int]:
    """Delete the requests `ids` and every row of theirs; return (requests, rows)."""
    marks = ",".join("?" * len(ids))
    rows = delete_keys(conn, keys_of(conn, list(ids)))
    requests = conn.execute(f"DELETE FROM requests WHERE id IN ({marks})", ids).rowcount
    return requests, rows + requests


def _run_status(conn: sqlite3.Connection, run_id: str) -> str:
    """`gone` (another prune deleted it meanwhile: its row goes last), `running` or `idle`."""
    row = conn.execute("SELECT status, config_json FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        return "gone"
    return "running" if being_written(row[0], row[1]) else "idle"


def _prune_run(conn: sqlite3.Connection, path: Path, run_id: str, result: PruneResult) -> str:
    """Delete one run chunk by chunk: `pruned` once this prune deleted its row, `gone`
    if another prune deleted it meanwhile, `running` if it started being written."""
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    while True:
        with write_transaction(conn, path):
            status = _run_status(conn, run_id)
            if status != "idle":
                return status
            # Resuming the run now would answer again the requests already deleted:
            # `Store.claim_run` refuses a run marked `pruning`, as the next prune takes it.
            conn.execute("UPDATE runs SET status = 'pruning' WHERE id = ?", (run_id,))
            # Under the write lock no other connection changes the pages: what changes
            # between here and the commit is this transaction's doing.
            pages, free = _pages(conn)
            ids = _request_chunk(conn, run_id)
            if not ids:
                run_level = [
                    int(row[0]) for row in conn.execute(RUN_KEYS, {"run": run_id}) if row[1] == ""
                ]
                result.rows += delete_keys(conn, run_level)
                tallies.forget(conn, run_id)
                result.rows += conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount
            else:
                requests, rows = _delete_requests(conn, ids)
                result.requests += requests
                result.rows += rows
            pages_after, free_after = _pages(conn)
            result.bytes_freed += max(0, free_after - free + pages - pages_after) * page_size
            if not ids:
                return "pruned"


def _vacuum_step(conn: sqlite3.Connection, path: Path) -> int:
    """Hand `_VACUUM_PAGES` free pages back in one write transaction; return how many
    pages the file lost. `executescript` because `PRAGMA incremental_vacuum` frees one
    page per step, and only `sqlite3_exec` steps it to the end; the pages are counted
    before and after under this process's turn to write (`file_lock`), which every moat
    writer of the file takes."""
    deadline = time.monotonic() + WRITE_PATIENCE_S
    with file_lock(path):
        while True:
            try:
                before = _pages(conn)[0]
                conn.executescript(
                    f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({_VACUUM_PAGES}); COMMIT;"
                )
                return max(0, before - _pages(conn)[0])
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)


def _auto_vacuum(conn: sqlite3.Connection) -> int:
    """The store's `auto_vacuum` mode: 2 is INCREMENTAL (this moat's), 0 NONE (older)."""
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])


def _any_running(conn: sqlite3.Connection) -> bool:
    """Whether a live process writes some run of the store."""
    return any(
        being_written(status, config)
        for status, config in conn.execute("SELECT status, config_json FROM runs")
    )


def _vacuum(
    conn: sqlite3.Connection, path: Path, full: bool, running: bool, result: PruneResult
) -> str:
    mode = _auto_vacuum(conn)
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    if mode == 2:  # INCREMENTAL: hand free pages back in short steps
        while _pages(conn)[1]:
            returned = _vacuum_step(conn, path)
            result.bytes_returned += returned * page_size
            if not returned:  # another connection holds the pages meanwhile: not ours
                break
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return "incremental"
    if full:
        if running:  # (refused before deleting anything; it started meanwhile)
            return "skipped"
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect with the VACUUM
        with file_lock(path):
            before = _pages(conn)[0]
            conn.execute("VACUUM")
            result.bytes_returned += max(0, before - _pages(conn)[0]) * page_size
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return "full"
    return "none"


def prune(
    path: str | Path,
    *,
    before: float | None = None,
    keep_runs: int | None = None,
    vacuum: bool = False,
    dry_run: bool = False,
) -> PruneResult:
    """Delete whole runs (see the module docstring) and reclaim their space.

    Args:
        path: the store file (migrated first if it is of an older schema, unless `dry_run`).
        before: prune runs that ended before this epoch time.
        keep_runs: prune every run but the newest `keep_runs`.
        vacuum: on a store without incremental auto-vacuum, run a full `VACUUM` afterwards
            (refused while a run is being written).
        dry_run: only say what would be pruned.

    Raises:
        StoreError: a write failed, or a full vacuum was asked for while a run is running
            (before anything is deleted).
    """
    started = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store; give the store with --db PATH")
    result = PruneResult()
    conn = connect(path, existing=True)
    try:
        # A dry run writes nothing: it reads `runs` and `requests`, the same in every schema,
        # and leaves converting an older store (minutes on a large one) to a real prune.
        if dry_run:
            check_version(conn, path)
        else:
            migrate(conn, path)
        result.bytes_before = _size(conn)  # (a conversion's growth is not the prune's)
        if vacuum and not dry_run and _auto_vacuum(conn) != 2 and _any_running(conn):
            raise StoreError(
                f"{path}: nothing was pruned: --vacuum asks for a full VACUUM, and a run is "
                "being written, whose writer would wait for the whole rewrite; prune without "
                "--vacuum now (the freed space is reused by new records), and run `moat prune "
                "--vacuum` again when no run is running"
            )
        candidates = select_runs(conn, before=before, keep_runs=keep_runs)
        for run_id, status, config_json in candidates:
            (result.skipped if being_written(status, config_json) else result.runs).append(run_id)
        if dry_run:
            for run_id in result.runs:
                result.requests += conn.execute(
                    "SELECT COUNT(*) FROM requests WHERE run_id = ?", (run_id,)
                ).fetchone()[0]
        else:
            for run_id in list(result.runs):
                outcome = _prune_run(conn, path, run_id, result)
                if outcome != "pruned":
                    result.runs.remove(run_id)
                    (result.skipped if outcome == "running" else result.elsewhere).append(run_id)
            result.vacuum = _vacuum(conn, path, vacuum, _any_running(conn), result)
        result.bytes_after = _size(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: pruning the store failed: {describe_error(exc, path)}") from exc
    finally:
        conn.close()
    result.seconds = time.perf_counter() - started
    return result
