"""The store's SQLite schema: migrations, connection settings and the schema-version check.

The schema version is SQLite's `PRAGMA user_version`: migration N (1-based) brings a
database from version N-1 to N in one transaction, so a crash mid-migration leaves the
previous version intact. Append new migrations to `MIGRATIONS`; never edit a shipped one.

Tables and columns follow architecture: The store exactly. There are no foreign keys (they
would slow the batching writer down). Since migration 3 the per-request tables are views
over a compact layout (`engine.store.compact`) keyed by an integer request key; `runs`,
`requests` and the policy tables are tables. JSON columns hold JSON text (or a zstd frame
of it, `engine.store.codec`); times are REAL seconds since the epoch.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: SQLite's lock alone serialises processes
    fcntl = None  # type: ignore[assignment]

from engine.errors import StoreError
from engine.store.compact import FACT_EVENT_TYPES, FAILED_IN, MIGRATION_3
from engine.store.tallies import MIGRATION_4

__all__ = [
    "FACTS_IN",
    "FACT_EVENT_TYPES",
    "FAILED_IN",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STORE_COMPANIONS",
    "WriterTurn",
    "check_version",
    "connect",
    "describe_error",
    "empty_store",
    "file_lock",
    "is_busy",
    "migrate",
    "user_version",
    "write_transaction",
]

_MIGRATION_1 = (
    """CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        graph_name TEXT NOT NULL,
        graph_hash TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL,
        requests_total INTEGER,
        requests_done INTEGER NOT NULL DEFAULT 0,
        config_json TEXT
    )""",
    """CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        conversation_id TEXT,
        turn_index INTEGER,
        parent_request_id TEXT,
        tenant TEXT,
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        latency_ms REAL NOT NULL,
        cost_usd REAL NOT NULL,
        policy_name TEXT,
        policy_version INTEGER,
        input_hash TEXT,
        output_json TEXT,
        error TEXT
    )""",
    "CREATE INDEX requests_run_id ON requests (run_id, seq)",
    "CREATE INDEX requests_conversation_id ON requests (conversation_id)",
    """CREATE TABLE node_runs (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        node TEXT NOT NULL,
        node_type TEXT NOT NULL,
        cycle INTEGER NOT NULL,
        status TEXT NOT NULL,
        speculative INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        started_at REAL NOT NULL,
        duration_ms REAL NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT
    )""",
    "CREATE INDEX node_runs_request_id ON node_runs (request_id)",
    """CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        node TEXT NOT NULL,
        cycle INTEGER NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        call_kind TEXT NOT NULL,
        call_outcome TEXT NOT NULL,
        cache_status TEXT NOT NULL,
        related_event_id INTEGER,
        prompt_hash TEXT,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        latency_ms REAL NOT NULL,
        started_at REAL NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        prompt_text TEXT,
        response_text TEXT
    )""",
    "CREATE INDEX llm_calls_request_id ON llm_calls (request_id)",
    """CREATE TABLE orchestration_events (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        cycle INTEGER NOT NULL,
        stage TEXT NOT NULL,
        component TEXT NOT NULL,
        event_type TEXT NOT NULL,
        decision TEXT,
        status TEXT,
        sequence INTEGER NOT NULL,
        started_at REAL NOT NULL,
        duration_ms REAL,
        reason_codes_json TEXT,
        inputs_json TEXT,
        outputs_json TEXT,
        payload_json TEXT
    )""",
    "CREATE INDEX orchestration_events_request_id ON orchestration_events (request_id)",
    "CREATE INDEX orchestration_events_run_id ON orchestration_events (run_id)",
    """CREATE TABLE decision_traces (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        cycle INTEGER NOT NULL,
        stage TEXT NOT NULL,
        payload_json TEXT NOT NULL
    )""",
    "CREATE INDEX decision_traces_request_id ON decision_traces (request_id)",
    """CREATE TABLE policy_snapshots (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        body_json TEXT NOT NULL,
        created_at REAL NOT NULL,
        parent_version INTEGER,
        status TEXT NOT NULL,
        PRIMARY KEY (name, version)
    )""",
    """CREATE TABLE policy_activations (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        activated_at REAL NOT NULL,
        reason TEXT
    )""",
    "CREATE INDEX policy_activations_name ON policy_activations (name, id)",
    """CREATE TABLE cache_entries (
        namespace TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        embedding BLOB,
        value_json TEXT,
        created_at REAL NOT NULL,
        expires_at REAL,
        hits INTEGER NOT NULL DEFAULT 0,
        negative INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (namespace, tenant, key)
    )""",
    "CREATE INDEX cache_entries_expires_at ON cache_entries (namespace, tenant, expires_at)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
)

FACTS_IN = f"event_type IN ({', '.join(repr(t) for t in FACT_EVENT_TYPES)})"
"""The condition of `orchestration_events_facts`, the index of the event types run figures
count (`compact.FACT_EVENT_TYPES`): queries repeat it verbatim, or SQLite will not use it."""

# Compact records and reads at scale. Self-contained (IF [NOT] EXISTS throughout), so it
# applies in either order with any other migration appended beside it.
_MIGRATION_2 = (
    # Events are found by request (`orchestration_events_request_id`). By run, only two
    # kinds are looked up: run-level events (empty `request_id`: policy events) and each
    # request's first event (`sequence` starts at 1; the writer commits events in order,
    # so a request with any stored event has its first), which names the run's requests,
    # crashed ones included. Indexing just those is a run_id entry per request, not per event.
    "DROP INDEX IF EXISTS orchestration_events_run_id",
    "CREATE INDEX IF NOT EXISTS orchestration_events_run_level ON orchestration_events "
    "(run_id) WHERE request_id = ''",
    "CREATE INDEX IF NOT EXISTS orchestration_events_run_first ON orchestration_events "
    "(run_id) WHERE sequence <= 1",
    # Reads at scale (`engine.store.reads`): a run's figures, percentiles, slowest and failed
    # requests, and the event facts it counts, each from an index instead of whole tables.
    "CREATE INDEX IF NOT EXISTS requests_run_latency ON requests (run_id, latency_ms, cost_usd)",
    "CREATE INDEX IF NOT EXISTS requests_latency ON requests (latency_ms)",
    "CREATE INDEX IF NOT EXISTS requests_cost ON requests (cost_usd)",
    f"CREATE INDEX IF NOT EXISTS requests_failed ON requests (run_id, seq) WHERE {FAILED_IN}",
    "CREATE INDEX IF NOT EXISTS orchestration_events_facts ON orchestration_events "
    f"(run_id, event_type) WHERE {FACTS_IN}",
    "CREATE INDEX IF NOT EXISTS node_runs_speculative ON node_runs "
    "(request_id, status, outcome) WHERE speculative = 1",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_MIGRATION_1, _MIGRATION_2, MIGRATION_3, MIGRATION_4)
"""Migration N (index N-1) brings the schema from version N-1 to N."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this moat writes and reads."""

_BUSY_TIMEOUT_MS = 10_000
WRITE_PATIENCE_S = 120.0
"""How long a write waits for another process's write lock before it fails."""
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

# One lock per store file for every writing connection of this process (the batching
# writer, the cache writer, `Store`): SQLite's busy handler polls and is not fair, so a
# connection that commits back to back could starve another of the same process for longer
# than any busy timeout. Taken in-process first, the write lock is only ever contended by
# other processes. Between moat's processes (`moat serve --workers N`, a `moat run` beside
# a server) the turn is an OS lock on a file beside the store, `WriterTurn`.
_file_locks: dict[str, WriterTurn] = {}
_file_locks_guard = threading.Lock()
_locks_by_name: dict[str | Path, WriterTurn] = {}
"""The same locks by the absolute path as the callers name it: resolving a path is a system
call per directory of it, and a writer asks for its lock on every transaction. (A relative
path is resolved every time: it names another file once the working directory changes.)"""

_TURN_SUFFIX = "-writer"

STORE_COMPANIONS = ("-wal", "-shm", "-journal", _TURN_SUFFIX)
"""The files beside a store (`moat.db-wal`, ...): SQLite's journals and the writers' lock."""
_TURN_POLL_S = (0.0002, 0.002)
"""First and longest pause between tries of another process's turn."""


class WriterTurn:
    """This process's turn to write one store file: re-entrant within the process, and
    shared with moat's other processes through an OS lock (`flock`) on `<store>-writer`.

    SQLite's own busy handler waits for a write lock in sleeps of 1, 2, 5, 10, 15, 20 ms
    and more, so a writer that finds another process's transaction in progress waited on
    for up to twice its length: with two `moat serve` workers, 18-40 ms at the p99 of a
    commit an answer waits for. Here a writer tries the other processes' turn every 0.2 to
    2 ms instead. Processes that do not take it (an older moat, the sqlite3 shell) still
    meet SQLite's lock and its busy handler; where the file cannot be made (a read-only
    folder) or there is no `flock`, only SQLite's lock serialises processes. A turn is
    waited for at most `WRITE_PATIENCE_S`; SQLite's lock then decides.
    """

    def __init__(self, key: str) -> None:
        self._key = key
        self._lock = threading.RLock()
        self._depth = 0
        self._fd = _turn_file(key)

    def reopen(self) -> None:
        """In a forked child: a lock of its own (a `flock` belongs to the open file, which
        the child shares with its parent), and no turn held."""
        if self._fd is not None:
            os.close(self._fd)  # the child's copy: the parent's lock stays the parent's
        self._lock = threading.RLock()
        self._depth = 0
        self._fd = _turn_file(self._key)

    def __enter__(self) -> None:
        self._lock.acquire()
        if self._depth == 0 and self._fd is not None:
            try:
                self._fd_lock(self._fd)
            except BaseException:
                self._lock.release()
                raise
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()

    @staticmethod
    def _fd_lock(fd: int) -> None:
        deadline = time.monotonic() + WRITE_PATIENCE_S
        pause, longest = _TURN_POLL_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError("database is locked") from None
            time.sleep(pause)
            pause = min(pause * 2, longest)


def _turn_file(key: str) -> int | None:
    """The open `<store>-writer` file (kept open for the process's life: closing it would
    end the turn), or None where there is none to be had."""
    if fcntl is None:
        return None
    try:
        return os.open(key + _TURN_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None


def _reopen_turns() -> None:
    for turn in _file_locks.values():
        turn.reopen()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reopen_turns)


def file_lock(path: str | Path) -> WriterTurn:
    """This process's turn to write the store file at `path` (see above)."""
    lock = _locks_by_name.get(path)
    if lock is not None:
        return lock
    key = os.path.realpath(path)
    with _file_locks_guard:
        lock = _file_locks.get(key)
        if lock is None:
            lock = _file_locks[key] = WriterTurn(key)
        if os.path.isabs(path):
            if len(_locks_by_name) >= 1024:  # a process opens a handful of stores
                _locks_by_name.clear()
            _locks_by_name[path] = lock
        return lock


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether `exc` says another connection holds the lock (worth waiting for)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(exc) or "busy" in str(exc)


@contextmanager
def write_transaction(conn: sqlite3.Connection, path: str | Path) -> Iterator[None]:
    """One write transaction on `conn`, serialised with this process's other writers of
    the file and waiting up to `WRITE_PATIENCE_S` for other processes' write locks.

    Raises:
        sqlite3.Error: the transaction failed (rolled back); `describe_error` words it.
    """
    with file_lock(path):
        _begin_immediate(conn)
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _begin_immediate(conn: sqlite3.Connection) -> None:
    deadline = time.monotonic() + WRITE_PATIENCE_S
    pause = 0.01
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def describe_error(exc: BaseException, path: str | Path) -> str:
    """What a failed store read or write means for the operator, and what to do about it."""
    text = str(exc)
    if isinstance(exc, sqlite3.Error) and is_busy(exc):
        return (
            f"{text}: another process held the write lock of {path} for over "
            f"{WRITE_PATIENCE_S:.0f}s (another moat run on the same store, or a program "
            "keeping a write transaction open); use a separate --db per run or stop that "
            "program"
        )
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_CORRUPT or "malformed" in text:
        return (
            f"{text}: the store file is damaged; `sqlite3 {path} 'PRAGMA integrity_check'` "
            "says where, and a copy made before the damage restores it"
        )
    if "full" in text or "disk I/O" in text:
        return f"{text}: check the free disk space where {path} lives"
    if "readonly" in text or "permission" in text.lower():
        return f"{text}: moat cannot write {path}; check the file's and folder's permissions"
    return text


def _unopenable(target: Path, exc: sqlite3.Error) -> StoreError:
    """The error for a file SQLite cannot read as a database, with what to do about it."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_CORRUPT:
        return StoreError(f"{target}: the store cannot be read: {describe_error(exc, target)}")
    return StoreError(
        f"{target}: not a moat store (SQLite said: {exc}); give moat the file a run wrote "
        "with --db PATH (or $MOAT_DB), or a new path for a new store"
    )


def connect(
    path: str | Path, *, readonly: bool = False, existing: bool = False
) -> sqlite3.Connection:
    """Open one connection with moat's settings (WAL, `synchronous=NORMAL`, autocommit).

    The connection is in autocommit mode (`isolation_level=None`); callers open explicit
    transactions with `BEGIN` so every multi-row write is atomic.

    Args:
        path: the database file (created unless `readonly` or `existing`).
        readonly: open read-only; the file must exist.
        existing: the file must already be a moat store (of any schema version this moat
            reads), checked before anything is written to it: commands that change a
            store (`moat prune`, `moat sync`) never turn another file into one.

    Raises:
        StoreError: the file cannot be opened or is not a SQLite database (with
            `existing`: or not a moat store).
    """
    target = Path(path)
    if (readonly or existing) and not target.exists():
        raise StoreError(f"{target}: no such store; run `moat run GRAPH --db {target}` first")
    if target.is_dir():
        raise StoreError(
            f"{target}: is a folder, not a store; give the store file with --db PATH "
            f"(such as {target / 'moat.db'})"
        )
    if target.exists() and not target.is_file():
        # Opening a named pipe blocks until something writes to it: a command would hang.
        raise StoreError(
            f"{target}: is not a regular file (a named pipe, device or socket), so it "
            "cannot be a store; give the store file with --db PATH"
        )
    uri = _uri(target, "mode=ro") if readonly else str(target)
    fresh = not readonly and (not target.exists() or target.stat().st_size == 0)
    try:
        conn = sqlite3.connect(
            uri,
            uri=readonly,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
    except sqlite3.Error as exc:
        raise StoreError(f"{target}: cannot open the store: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if existing and check_version(conn, target) == 0:
            raise empty_store(target)
        if fresh:
            # Before WAL and the first table, or it does not take: a new store can then hand
            # pruned pages back in short steps (`moat prune`). An older store gets it with
            # its next full VACUUM (`moat prune --vacuum`).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
    except StoreError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        wal = target.with_name(target.name + "-wal")
        if (
            readonly
            and code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY)
            and (not wal.exists() or wal.stat().st_size == 0)
        ):
            # a read-only folder (a mounted backup, say) has no room for the -shm file a
            # WAL store is read through; with nothing in a WAL, the file alone is the store
            return _immutable(target)
        if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
            # A WAL store needs its -shm and -wal files beside it, even to be read: a
            # read-only folder or file system refuses them.
            raise StoreError(
                f"{target}: cannot open the store (SQLite said: {exc}): moat reads it and "
                f"creates {target.name}-shm and {target.name}-wal beside it, even to read; "
                "check the permissions of the file and its folder, or copy the store to a "
                "writable folder"
            ) from exc
        raise _unopenable(target, exc) from exc
    return conn


def _uri(target: Path, query: str) -> str:
    """The SQLite URI of `target` with `query`: the path percent-encoded, so a `?`, `#` or
    `%` in a file name stays part of it (unescaped, `a#b.db` opened `a`, read-write)."""
    return f"file:{urllib.parse.quote(os.fsencode(target.resolve()))}?{query}"


def _immutable(target: Path) -> sqlite3.Connection:
    """A read-only connection to `target` as it is on disk: no -shm, no -wal, no locks."""
    try:
        conn = sqlite3.connect(
            _uri(target, "mode=ro&immutable=1"),
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA temp_store = MEMORY")
    except sqlite3.DatabaseError as exc:
        raise _unopenable(target, exc) from exc
    return conn


def empty_store(path: str | Path) -> StoreError:
    """The error for a file that holds no moat schema and no table (an empty file)."""
    return StoreError(
        f"{path}: not a moat store yet: it is empty; give the store a run wrote with "
        "--db PATH (or $MOAT_DB), or start one with `moat run GRAPH`"
    )


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database header."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(
    conn: sqlite3.Connection, path: str | Path, supported: int = SCHEMA_VERSION
) -> int:
    """Refuse a database written by a newer moat, or another program's; return its
    schema version.

    Raises:
        StoreError: the schema is newer than `supported`, or the file holds tables but
            no moat schema.
    """
    version = user_version(conn)
    if version < 0:  # no moat writes one: migrating would run the wrong steps on it
        raise StoreError(
            f"{path}: not a moat store: its schema version is {version}, which no moat "
            "writes (another program's file, or its header was changed); give moat a "
            "file of its own with --db PATH (or $MOAT_DB)"
        )
    if version == 0:
        foreign = [
            str(row[0])
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 5"
            )
        ]
        if foreign:  # never add moat's tables to another program's database
            raise StoreError(
                f"{path}: not a moat store: it holds another program's tables "
                f"({', '.join(foreign)}) and no moat schema; give moat a file of its own "
                "with --db PATH (or $MOAT_DB)"
            )
    if version > supported:
        raise StoreError(
            f"{path}: store schema version {version} is newer than this moat supports "
            f"({supported}); upgrade moat (`pip install -U moat`) to open it"
        )
    return version


def migrate(
    conn: sqlite3.Connection,
    path: str | Path,
    migrations: Sequence[Sequence[str]] = MIGRATIONS,
) -> int:
    """Apply every pending migration in one transaction; return the final version.

    Readers see the store before or after, never between two migrations (a store being
    created is never "version 1"), and a failure leaves the store as it was. Safe against
    another process migrating the same file at the same time: it takes the write lock
    first (`BEGIN IMMEDIATE`) and re-reads the version under it.

    Args:
        conn: an autocommit connection from `connect`.
        path: the file, for messages.
        migrations: the migrations to apply (tests pass extra ones).

    Raises:
        StoreError: the schema is newer than this moat, or a migration failed.
    """
    target = len(migrations)
    while check_version(conn, path, target) < target:
        try:
            with write_transaction(conn, path):
                current = user_version(conn)
                if 0 < current < target:  # converting a store with data: may take minutes
                    from engine.logs import get_logger  # (read-only commands never get here)

                    get_logger("moat.store").warning(
                        "store.migrating",
                        path=str(path),
                        from_version=current,
                        to_version=target,
                        notice=f"{path}: converting the store from schema version {current} "
                        f"to {target} in place, once (about 20 minutes per million requests; "
                        "other commands on it wait until it is done)",
                    )
                if current < target:  # (another process may have migrated meanwhile)
                    for migration in migrations[current:]:
                        for statement in migration:
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {target}")
        except sqlite3.Error as exc:
            raise StoreError(
                f"{path}: migrating the store schema failed: {describe_error(exc, path)}"
            ) from exc
    return target
