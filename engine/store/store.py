"""The embedded SQLite store: opening it, run lifecycle, policy tables and reads.

Writes on the request path go through `StoreWriter` (a batching `Sink`, re-exported here);
`Store` covers everything else: runs, policy snapshots and activations, orphan cleanup and
the reads the CLI, the report and the TUI make. Readers work while another process writes
(WAL): every read is a short transaction of its own. `Store.cache_persistence` lends the
`cache` node the `cache_entries` table (`engine.store.cache`), so cached answers survive
restarts.

Read helpers return plain dicts keyed by column name, except that JSON columns come back
decoded under their name without the `_json` suffix (`payload_json` -> `payload`).

Run ids are `r-YYYYMMDD-HHMMSS-xxxx`: UTC start time plus 4 random hex digits, so they sort
by start time and stay short enough to type.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import SpecError, StoreError
from engine.events import result_line
from engine.store import codec
from engine.store import policy_tables as _policy
from engine.store.cache import StoreCachePersistence
from engine.store.codec import strict_json
from engine.store.compact import RUN_KEYS, delete_keys, keys_of
from engine.store.schema import (
    SCHEMA_VERSION,
    check_version,
    connect,
    describe_error,
    empty_store,
    migrate,
    write_transaction,
)
from engine.store.writer import StoreWriter, WriterStats

__all__ = [
    "SCHEMA_VERSION",
    "Row",
    "Store",
    "StoreCachePersistence",
    "StoreWriter",
    "WriterStats",
    "being_written",
    "new_run_id",
    "row_result_line",
    "run_state",
    "store_path",
]

Row = dict[str, Any]
_Params = tuple[Any, ...] | Mapping[str, Any]

_STORED_OF_RUN = "SELECT id FROM requests WHERE run_id = :run"
_UNATTRIBUTED = (
    "SELECT k.key FROM request_keys k WHERE k.run = 10 AND k.id != '' AND NOT EXISTS "
    "(SELECT 1 FROM requests r WHERE r.id = k.id) AND NOT EXISTS "
    "(SELECT 1 FROM request_keys o WHERE o.id = k.id AND o.run != 10)"
)
"""Keys (of rows naming no run: `strings` code 10 is `''`) of ids with no request row and
no event: leftovers of a crash no run can claim."""


# Which process owns a run lives in its `config_json` (`owner: {pid, host}`, `heartbeat_at`),
# so the contract's columns stay as they are.
HEARTBEAT_S = 2.0
"""How often a running run's process records that it is alive."""
STALE_AFTER_S = 60.0
"""A `running` run whose owner has not beaten for this long is shown as `died`."""
_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (someone else's), or we cannot tell: assume alive
    return True


def run_state(row: Mapping[str, Any], at: float | None = None) -> str:
    """The run's status as readers should show it: a `running` run whose process is gone
    (on this host: no such pid; elsewhere: no heartbeat for `STALE_AFTER_S`) is `died`."""
    status = str(row.get("status"))
    config = row.get("config")
    if status != "running" or not isinstance(config, Mapping):
        return status
    owner = config.get("owner") or {}
    pid, host, beat = owner.get("pid"), owner.get("host"), config.get("heartbeat_at")
    if isinstance(pid, int) and host == _HOST:  # on this machine the process itself tells
        return status if _pid_alive(pid) else "died"
    if isinstance(beat, int | float):
        return "died" if (at if at is not None else time.time()) - beat > STALE_AFTER_S else status
    return status


def _owner(stamp: float) -> dict[str, Any]:
    """The `config_json` keys saying which process runs a run, and when it last beat."""
    return {"owner": {"pid": os.getpid(), "host": _HOST}, "heartbeat_at": stamp}


def _config(text: str | None) -> dict[str, Any]:
    """A run's `config_json` as a dict (empty if absent or not a JSON object)."""
    try:
        config = json.loads(text) if text else None
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def being_written(status: str, config_json: str | None) -> bool:
    """Whether a run's stored `status` and `config_json` say a live process writes it."""
    return run_state({"status": status, "config": _config(config_json)}) == "running"


def _with_state(row: Row) -> Row:
    state = run_state(row)
    if state != row.get("status"):
        row = {**row, "status": state, "stored_status": row.get("status")}
    return row


def store_path(value: str | None) -> str:
    """The store file a command opens: `value` (`--db`), else `$MOAT_DB`, else `moat.db`,
    a leading `~` expanded (a shell leaves `--db=~/x.db` alone).

    Raises:
        SpecError: an empty `--db` (a shell variable that was not set would otherwise open
            the store of the working directory), or `-`: a store is a file SQLite opens by
            name, never standard input or output (nor a file called `-`).
    """
    env = os.environ.get("MOAT_DB")
    source, given = ("--db", value) if value is not None else ("$MOAT_DB", env or "")
    if value is not None and not value.strip():
        raise SpecError(
            f"--db {value!r}: an empty path (a shell variable that is not set?); give the "
            "store file, or leave --db out for $MOAT_DB or moat.db"
        )
    if given.strip() == "-":
        raise SpecError(
            f"{source} -: a store is a SQLite file that moat opens by name, not standard "
            "input or output; give a file path such as moat.db (./- for a file named -)"
        )
    return os.path.expanduser(given) if given.strip() else "moat.db"


class _RunIds:
    """Run ids handed out in this process in the current second (by its stamp).

    Four hex digits leave 65,536 ids a second: a storeless pipeline answering thousands
    of `Pipeline.run` calls a second (each a run of its own) drew the same one twice
    within a second about once in 60 requests, and with it the same request id. The ids
    of one second are remembered until the next, so none is handed out twice; a store
    also refuses an id another process took. The digits are drawn from a generator seeded
    from the operating system's randomness, in each process and again in a forked child,
    rather than asked of the system for each id (a system call every `Pipeline.run`
    without a run made).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._second = -1
        self._stamp = ""
        self._taken: set[str] = set()
        self._random = random.Random()  # (seeded from os.urandom)
        os.register_at_fork(after_in_child=self._random.seed)

    def new(self) -> str:
        second = int(time.time())
        with self._lock:
            if second != self._second:
                self._second, self._taken = second, set()
                self._stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(second))
            taken = self._taken
            bits = 16 if len(taken) < 32_768 else 32  # past half of a second's ids: wider
            draw, digits = self._random.getrandbits, bits // 4
            while (run_id := f"r-{self._stamp}-{draw(bits):0{digits}x}") in taken:
                pass
            taken.add(run_id)
            return run_id


_RUN_IDS = _RunIds()


def new_run_id() -> str:
    """A fresh run id, `r-YYYYMMDD-HHMMSS-xxxx` (UTC), sortable by start time; never one
    this process has handed out before in the same second."""
    return _RUN_IDS.new()


def row_result_line(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `--out` line of a stored request (a row of `Store.get_request` or
    `Store.list_requests`)."""
    return result_line(
        row["id"],
        row["status"],
        row["output"],
        row["latency_ms"],
        row["cost_usd"],
        row["policy_version"],
        row["error"],
    )


def _dumps(value: Any, what: str) -> str:
    return strict_json(value, what, sort_keys=True)


class Store:
    """One open store file. Thread-safe: calls share one connection under a lock.

    Use `Store.open`; close with `close()` or a `with` block.

    Attributes:
        path: the database file.
        damaged: the stored JSON values reads met that did not decode (a damaged page, a
            hand edit), read as None: `payload_json of row 12`.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()
        self._cache: StoreCachePersistence | None = None
        self.damaged: list[str] = []

    @classmethod
    def open(cls, path: str | Path = "moat.db", *, readonly: bool = False) -> Store:
        """Open (creating and migrating unless `readonly`) the store at `path`.

        Args:
            path: the database file.
            readonly: never create or migrate; for viewers (`moat report`, the TUI).

        Raises:
            StoreError: the file is not a moat store, is missing (when `readonly`), or was
                written by a newer moat.
        """
        target = Path(path)
        conn = connect(target, readonly=readonly)
        try:
            version = migrate(conn, target) if not readonly else check_version(conn, target)
            if version == 0:
                raise empty_store(target)
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{target}: store schema version {version} is older than this moat "
                    f"({SCHEMA_VERSION}); the next `moat run` or `moat prune` on it converts it in "
                    "place (about 20 minutes per million requests), then it reads as before"
                )
        except StoreError:
            conn.close()
            raise
        return cls(conn, target)

    def close(self) -> None:
        """Close the connection (and commit pending cache entries). Idempotent."""
        with self._lock:
            cache, self._cache = self._cache, None
            try:
                if cache is not None:
                    cache.close()
            finally:
                self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {str(self.path)!r}>"

    def writer(self, **options: Any) -> StoreWriter:
        """A new batching `StoreWriter` on the same file (see its arguments)."""
        return StoreWriter(self.path, **options)

    def cache_persistence(self) -> StoreCachePersistence:
        """The `cache_entries` table as the `cache` node's persistence, so cached answers
        survive restarts. One per store, written in the background, closed with the store."""
        with self._lock:
            if self._cache is None:
                self._cache = StoreCachePersistence(self.path)
            return self._cache

    @property
    def schema_version(self) -> int:
        """The schema version of the open file (`PRAGMA user_version`)."""
        return int(self._one("PRAGMA user_version")[0])

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see the store as of one moment (one read transaction), whatever
        other connections commit meanwhile; other threads' calls wait until it ends."""
        with self._lock:
            if self._conn.in_transaction:  # already inside one
                yield
                return
            with self._tx("DEFERRED"):
                yield

    # -- plumbing ---------------------------------------------------------------------

    @contextmanager
    def _tx(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction: `IMMEDIATE` for writes, `DEFERRED` for consistent reads."""
        with self._lock:
            conn = self._conn
            try:
                if mode == "IMMEDIATE":
                    with write_transaction(conn, self.path):
                        yield conn
                    return
                conn.execute(f"BEGIN {mode}")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(
                    f"{self.path}: store operation failed: {describe_error(exc, self.path)}"
                ) from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params: _Params = ()) -> list[Row]:
        try:
            with self._lock:
                return codec.decode_rows(self._conn.execute(sql, params), self.damaged)
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.path}: reading the store failed: {describe_error(exc, self.path)}"
            ) from exc

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        try:
            with self._lock:
                row = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.path}: reading the store failed: {describe_error(exc, self.path)}"
            ) from exc
        return tuple(row) if row is not None else ()

    def query(self, sql: str, params: _Params = ()) -> list[Row]:
        """Run a read-only SQL query; rows as dicts with JSON columns decoded."""
        return self._rows(sql, params)

    def version(self) -> tuple[int, int]:
        """A value that differs once anything changed the file since it was last read:
        another connection's commit (`PRAGMA data_version`), or this one's own changes.
        Readers key what they remember of the store on it."""
        with self._lock:
            (changed_elsewhere,) = self._conn.execute("PRAGMA data_version").fetchone()
            return int(changed_elsewhere), self._conn.total_changes

    # -- runs -------------------------------------------------------------------------

    def create_run(
        self,
        graph_name: str,
        graph_hash: str | None,
        requests_total: int | None,
        config: Mapping[str, Any] | None = None,
    ) -> str:
        """Record a new run with status `running`; return its id.

        Args:
            graph_name: the graph's `name:`.
            graph_hash: a hash of the graph file, to tell edited graphs apart.
            requests_total: how many requests the run will make, if known.
            config: the run's settings (CLI options, model bindings) as JSON-able data.
        """
        for _ in range(5):
            run_id = new_run_id()
            try:
                with self._tx() as conn:
                    stamp = time.time()
                    conn.execute(
                        "INSERT INTO runs (id, graph_name, graph_hash, started_at, status, "
                        "requests_total, requests_done, config_json) "
                        "VALUES (?, ?, ?, ?, 'running', ?, 0, ?)",
                        (
                            run_id,
                            graph_name,
                            graph_hash,
                            stamp,
                            requests_total,
                            _dumps({**(config or {}), **_owner(stamp)}, "the run's config"),
                        ),
                    )
                return run_id
            except StoreError as exc:
                if not isinstance(exc.__cause__, sqlite3.IntegrityError):
                    raise
        raise StoreError(f"{self.path}: could not find a free run id; try again")

    def update_run_progress(self, run_id: str, done: int) -> None:
        """Set how many requests of the run have finished; also a heartbeat of its owner."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET requests_done = ?, config_json = "
                "json_set(COALESCE(config_json, '{}'), '$.heartbeat_at', ?) WHERE id = ?",
                (done, time.time(), run_id),
            )

    def claim_run(self, run_id: str) -> None:
        """Make this process the owner of a run being resumed: `running`, beating now.

        Raises:
            StoreError: no such run, its owner is still running it, or `moat prune` is
                deleting it.
        """
        self.require_run(run_id)
        with self._tx() as conn:  # checked under the write lock: a prune cannot slip in
            row = conn.execute(
                "SELECT status, config_json FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise self._unknown_run(run_id)
            if row[0] == "pruning":
                raise StoreError(
                    f"run {run_id} is being deleted by `moat prune` (or a prune of it "
                    "stopped halfway), so some of its requests are gone; it cannot be "
                    "resumed: start a new run, and run `moat prune` again to finish it"
                )
            if being_written(row[0], row[1]):
                owner = _config(row[1]).get("owner") or {}
                raise StoreError(
                    f"run {run_id} is still running (process {owner.get('pid')} on "
                    f"{owner.get('host')}); wait for it to end, or stop it and resume then"
                )
            owner = _owner(time.time())
            conn.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL, config_json = "
                "json_set(COALESCE(config_json, '{}'), '$.owner', json(?), '$.heartbeat_at', ?) "
                "WHERE id = ?",
                (_dumps(owner["owner"], "the run's owner"), owner["heartbeat_at"], run_id),
            )

    def finish_run(self, run_id: str, status: str, at: float | None = None) -> None:
        """Mark the run finished (`finished`, `interrupted`, `failed`, ...).

        `requests_done` becomes the number of stored requests of the run.

        Args:
            run_id: the run.
            status: its final status.
            at: when it finished (default: now).

        Raises:
            StoreError: no such run.
        """
        with self._tx() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, requests_done = "
                "(SELECT COUNT(*) FROM requests WHERE run_id = ?) WHERE id = ?",
                (status, at if at is not None else time.time(), run_id, run_id),
            )
            if cursor.rowcount == 0:
                raise self._unknown_run(run_id)

    def get_run(self, run_id: str) -> Row | None:
        """The run's row (`config_json` decoded as `config`), or None.

        A `running` run whose process died shows as `died` (see `run_state`); the stored
        value is then under `stored_status`. The same holds for every run read below.
        """
        rows = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _with_state(rows[0]) if rows else None

    def require_run(self, run_id: str) -> Row:
        """The run's row.

        Raises:
            StoreError: no such run; the message lists the latest runs.
        """
        row = self.get_run(run_id)
        if row is None:
            raise self._unknown_run(run_id)
        return row

    def latest_run(self) -> Row | None:
        """The most recently started run, or None if the store has none."""
        rows = self._rows("SELECT * FROM runs ORDER BY started_at DESC, id DESC LIMIT 1")
        return _with_state(rows[0]) if rows else None

    def list_runs(self, limit: int | None = None) -> list[Row]:
        """Runs, newest first; `requests_done` counts every request stored so far (the
        run's heartbeat writes it every few seconds, and a run whose process died keeps
        the last it wrote; the tallies have each committed request)."""
        sql = (
            "SELECT r.id, r.graph_name, r.graph_hash, r.started_at, r.finished_at, r.status, "
            "r.requests_total, MAX(r.requests_done, COALESCE(t.requests, 0)) AS requests_done, "
            "r.config_json FROM runs r LEFT JOIN run_tallies t ON t.run_id = r.id "
            "ORDER BY r.started_at DESC, r.id DESC"
        )
        if limit is not None:
            return [_with_state(r) for r in self._rows(sql + " LIMIT ?", (limit,))]
        return [_with_state(r) for r in self._rows(sql)]

    def finished_request_seqs(self, run_id: str) -> set[int]:
        """The `seq` of every request of the run that has a stored result (for `--resume`)."""
        with self._lock:
            rows = self._conn.execute("SELECT seq FROM requests WHERE run_id = ?", (run_id,))
            return {int(seq) for (seq,) in rows}

    def status_counts(self, run_id: str) -> dict[str, int]:
        """How many stored requests of the run have each status."""
        rows = self._rows(
            "SELECT status, COUNT(*) AS n FROM requests WHERE run_id = ? GROUP BY status",
            (run_id,),
        )
        return {str(row["status"]): int(row["n"]) for row in rows}

    def delete_orphans(self, run_id: str) -> int:
        """Delete rows of the run's requests that never got a `requests` row; return how many.

        A request belongs to the run through its orchestration events (`run_id`). Rows of a
        request id that has neither a `requests` row nor any event at all are unattributable
        leftovers of a crash and are deleted too. Run-level events (empty `request_id`) stay.
        Call it before `--resume`, with no writer of that run still running.
        """
        deleted = 0
        with self._tx() as conn:
            ids = sorted(
                {str(row[1]) for row in conn.execute(RUN_KEYS, {"run": run_id}) if row[1] != ""}
                - {str(row[0]) for row in conn.execute(_STORED_OF_RUN, {"run": run_id})}
            )
            keys = keys_of(conn, ids)
            # Unattributable: keys made by rows that name no run, of an id with no
            # `requests` row and no event.
            keys += [int(row[0]) for row in conn.execute(_UNATTRIBUTED)]
            deleted += delete_keys(conn, sorted(set(keys)))
        return deleted

    def _unknown_run(self, run_id: str) -> StoreError:
        recent = [row["id"] for row in self.list_runs(limit=5)]
        hint = f" Latest runs: {', '.join(recent)}." if recent else " The store has no runs."
        return StoreError(f"{self.path}: no run '{run_id}'.{hint} List them with `moat runs`")

    # -- requests ---------------------------------------------------------------------

    def get_request(self, request_id: str) -> Row | None:
        """The request's row (`output_json` decoded as `output`), or None if unfinished."""
        rows = self._rows("SELECT * FROM requests WHERE id = ?", (request_id,))
        return rows[0] if rows else None

    def request_output(self, request_id: str) -> Row | None:
        """The request's `--out` line (`request_id`, `status`, `output`, `latency_ms`,
        `cost_usd`, `policy_version`, `error`), or None if it has no stored result."""
        row = self.get_request(request_id)
        return None if row is None else row_result_line(row)

    def list_requests(
        self, run_id: str, *, status: str | None = None, limit: int | None = None
    ) -> list[Row]:
        """The run's stored requests in `seq` order, optionally of one status."""
        sql = "SELECT * FROM requests WHERE run_id = ?"
        params: tuple[Any, ...] = (run_id,)
        if status is not None:
            sql += " AND status = ?"
            params += (status,)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return self._rows(sql, params)

    def request_rows(self, request_id: str) -> dict[str, list[Row]]:
        """Everything stored about one request, read in one consistent snapshot.

        Returns:
            `{"requests": [...0 or 1 row], "orchestration_events": [...], "node_runs":
            [...], "llm_calls": [...], "decision_traces": [...]}`, each in recording order.
        """
        queries = {
            "requests": "SELECT * FROM requests WHERE id = ?",
            "orchestration_events": (
                "SELECT * FROM orchestration_events WHERE request_id = ? ORDER BY sequence, id"
            ),
            "node_runs": "SELECT * FROM node_runs WHERE request_id = ? ORDER BY started_at, id",
            "llm_calls": "SELECT * FROM llm_calls WHERE request_id = ? ORDER BY started_at, id",
            "decision_traces": "SELECT * FROM decision_traces WHERE request_id = ? ORDER BY id",
        }
        with self._tx("DEFERRED") as conn:
            return {
                table: codec.decode_rows(conn.execute(sql, (request_id,)), self.damaged)
                for table, sql in queries.items()
            }

    def events(self, request_id: str) -> list[Row]:
        """The request's orchestration events in `sequence` order."""
        return self.request_rows(request_id)["orchestration_events"]

    def node_runs(self, request_id: str) -> list[Row]:
        """The request's node runs in start order."""
        return self.request_rows(request_id)["node_runs"]

    def llm_calls(self, request_id: str) -> list[Row]:
        """The request's LLM call rows in start order."""
        return self.request_rows(request_id)["llm_calls"]

    def decision_traces(self, request_id: str) -> list[Row]:
        """The request's decision traces in recording order."""
        return self.request_rows(request_id)["decision_traces"]

    def recent_request_ids(self, limit: int = 5) -> list[str]:
        """Ids of the most recently finished requests, newest first (for hints)."""
        rows = self._rows("SELECT id FROM requests ORDER BY finished_at DESC LIMIT ?", (limit,))
        return [row["id"] for row in rows]

    # -- policies ---------------------------------------------------------------------

    def insert_policy_snapshot(
        self,
        name: str,
        version: int,
        content_hash: str,
        body: Mapping[str, Any],
        parent_version: int | None,
        status: str = "inactive",
    ) -> None:
        """Store an immutable policy snapshot.

        Args:
            name: the policy's name.
            version: its version number (1, 2, ...).
            content_hash: a hash of the canonical body, to spot re-applied files.
            body: the snapshot's settings.
            parent_version: the version it was derived from, if any.
            status: `candidate`, `inactive`, `active`, `bad`, ... (free text).

        Raises:
            StoreError: that version already exists.
        """
        with self._tx() as conn:
            _policy.insert_snapshot(conn, name, version, content_hash, body, parent_version, status)

    def activate_policy(self, name: str, version: int, reason: str | None = None) -> int:
        """Make a stored version the active one, in one transaction; return the activation id.

        Raises:
            StoreError: no such version; the message lists the stored ones.
        """
        with self._tx() as conn:
            return _policy.activate(conn, name, version, reason)

    def set_policy_status(self, name: str, version: int, status: str) -> None:
        """Change a snapshot's status, e.g. to `bad` when its guard trips.

        Raises:
            StoreError: no such version.
        """
        with self._tx() as conn:
            _policy.set_status(conn, name, version, status)

    def get_policy(self, name: str, version: int) -> Row | None:
        """One snapshot (`body_json` decoded as `body`), or None."""
        rows = self._rows(
            "SELECT * FROM policy_snapshots WHERE name = ? AND version = ?", (name, version)
        )
        return rows[0] if rows else None

    def active_policy(self, name: str) -> Row | None:
        """The snapshot of the policy's latest activation, or None if never activated."""
        rows = self._rows(
            "SELECT s.* FROM policy_activations a JOIN policy_snapshots s "
            "ON s.name = a.name AND s.version = a.version "
            "WHERE a.name = ? ORDER BY a.id DESC LIMIT 1",
            (name,),
        )
        return rows[0] if rows else None

    def policy_versions(self, name: str) -> list[Row]:
        """Every snapshot of a policy, oldest first, bodies decoded."""
        return self._rows("SELECT * FROM policy_snapshots WHERE name = ? ORDER BY version", (name,))

    def policy_history(
        self, name: str, *, version: int | None = None, limit: int | None = None
    ) -> list[Row]:
        """The policy's activations (of `version` only, if given), oldest first; with
        `limit`, the newest `limit` of them.

        Each row: `id`, `name`, `version`, `activated_at`, `reason`, and the snapshot's
        current `status`, `content_hash` and `parent_version`.
        """
        rows = self._rows(
            "SELECT a.id, a.name, a.version, a.activated_at, a.reason, s.status, "
            "s.content_hash, s.parent_version FROM policy_activations a "
            "LEFT JOIN policy_snapshots s ON s.name = a.name AND s.version = a.version "
            "WHERE a.name = ? AND (? IS NULL OR a.version = ?) ORDER BY a.id DESC LIMIT ?",
            (name, version, version, -1 if limit is None else limit),
        )
        return rows[::-1]

    def policy_activation_counts(self, name: str) -> dict[int, int]:
        """How many times each version of the policy was activated (counted in SQL)."""
        rows = self._rows(
            "SELECT version, COUNT(*) AS n FROM policy_activations WHERE name = ? GROUP BY version",
            (name,),
        )
        return {int(row["version"]): int(row["n"]) for row in rows}

    def list_policies(self) -> list[Row]:
        """One row per policy: `name`, `versions` (count), `latest` and `active` version."""
        return self._rows(
            "SELECT s.name, COUNT(*) AS versions, MAX(s.version) AS latest, "
            "(SELECT a.version FROM policy_activations a WHERE a.name = s.name "
            "ORDER BY a.id DESC LIMIT 1) AS active "
            "FROM policy_snapshots s GROUP BY s.name ORDER BY s.name"
        )
