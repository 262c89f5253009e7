"""The SQL of deferred sync: reading what an edge store has not had acknowledged, and merging
uploaded records into a central store idempotently and without id clashes.

Edge side. Each store gets a random origin id on its first sync (`meta` key `sync.origin`).
Append-only tables (requests, node runs, LLM calls, events, decision traces, policy
activations) are read in rowid order after a per-target watermark; rows are only ever
appended there (SQLite numbers a new row one past the largest rowid, and a committed row
never moves), so everything past the watermark is new. Except after a prune that deleted
the newest rows (`moat prune --keep-runs 0` once all is synced): SQLite then numbers new
rows one past the largest rowid *left*, below the watermark. So the watermark keeps a
digest of the row it stands on (its anchor); when that row holds something else, or is
gone with nothing left as far, the table is read again from the start (the central merge
skips what it has). Tables whose rows change in place (`runs`:
status, counters, heartbeat; `policy_snapshots`: status) are compared by a digest per row
instead; the digests last acknowledged are kept beside the watermarks. Both live in `meta`,
so the edge's schema is untouched and a rerun resumes where the last acknowledged batch
ended. Columns are read generically (`SELECT *`), so a column another migration adds is
carried without a change here.

Central side. Each batch is merged in one transaction, keyed by (origin, table, source key)
in `sync_keys`, a table only a central store has (created here, `IF NOT EXISTS`, so it needs
no migration of the contract tables and does not depend on their order):

- integer ids (node runs, LLM calls, events, traces, activations) get fresh central ids; the
  mapping makes a second upload of the same row a no-op, and the row's references (its
  request or run) tell it from a new row an edge numbered the same after a prune;
- text ids (runs, requests) and policy names keep their value unless another origin (or a
  local run) already holds it; then they become `VALUE@ORIGIN` (`VALUE@ORIGIN.2`, ... should
  another origin have sent that very value), and every reference to them from that origin
  (`run_id`, `request_id`, `parent_request_id`, `policy_name`) is rewritten the same way,
  whichever of the referring or referred rows arrives first. So one origin's rows can
  neither overwrite nor be joined to another's: a key must be a non-empty string (an integer
  or empty key would not be qualified, and would name the same row for every origin), and a
  reference a string or null;
- text-keyed rows are upserted, so a run uploaded while running and again when finished ends
  in its final state, stored once.

Columns the central store does not have are dropped and named in the result, never an error:
an edge on a newer schema can still upload.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.store.compact import COMPACT_TABLES
from engine.store.schema import describe_error, write_transaction
from engine.store.store import being_written

__all__ = [
    "SYNC_TABLES",
    "Batch",
    "MergeResult",
    "SyncTable",
    "ack",
    "acked_digests",
    "ensure_central",
    "merge_batch",
    "origin_id",
    "read_appended",
    "read_changed",
    "watermark",
]

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class SyncTable:
    """How one table travels.

    Attributes:
        name: the table.
        key: `int` (an INTEGER PRIMARY KEY `id`, renumbered centrally), `text` (a TEXT
            primary key `id`, kept unless it clashes) or `policy` (`(name, version)`).
        mutable: rows change in place (compared by digest, upserted centrally).
        refs: column -> the kind of key it names (`run`, `request`, `policy`).
    """

    name: str
    key: str
    mutable: bool = False
    refs: Mapping[str, str] = field(default_factory=dict)

    @property
    def per_request(self) -> bool:
        """Whether the table holds a request's rows (node runs, calls, events, traces),
        which go only once their request is stored whole (`read_appended`)."""
        return self.refs.get("request_id") == "request"


SYNC_TABLES: tuple[SyncTable, ...] = (
    SyncTable("policy_snapshots", "policy", mutable=True, refs={"name": "policy"}),
    SyncTable("policy_activations", "int", refs={"name": "policy"}),
    SyncTable("runs", "text", mutable=True, refs={"id": "run"}),
    SyncTable(
        "requests",
        "text",
        refs={
            "id": "request",
            "run_id": "run",
            "parent_request_id": "request",
            "policy_name": "policy",
        },
    ),
    SyncTable("node_runs", "int", refs={"request_id": "request"}),
    SyncTable("llm_calls", "int", refs={"request_id": "request"}),
    SyncTable("orchestration_events", "int", refs={"run_id": "run", "request_id": "request"}),
    SyncTable("decision_traces", "int", refs={"request_id": "request"}),
)
"""What `moat sync` uploads, parents first. `cache_entries` stays on the edge: it holds
cached answers, which the policy's `store_text` does not govern."""

_BY_NAME = {t.name: t for t in SYNC_TABLES}
_KEY_TABLES = {"run": ("runs", "id"), "request": ("requests", "id")}


@dataclass(slots=True)
class Batch:
    """Rows of one table read for upload.

    Attributes:
        table: the table.
        columns: the edge's column names, in row order.
        rows: the rows.
        last: the watermark after this batch (rowid) for append-only tables, else 0.
        anchor: for append-only tables, the digest of the row at `last`.
        digests: for mutable tables, row key -> digest of the rows in this batch.
        skipped: rows passed over (never sent) because their request was cut short: it has
            no `requests` row and no process writes its run any more.
        held: the batch stops before a row of a request still being answered (or stored
            after the `requests` batches of this sync): it waits for a later sync.
    """

    table: str
    columns: list[str]
    rows: list[list[Any]]
    last: int = 0
    anchor: str = ""
    digests: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    held: bool = False

    @property
    def acks_anything(self) -> bool:
        """Whether acknowledging the batch moves its table on: it has rows to send, or it
        only passes over rows of requests cut short (`skipped`)."""
        return bool(self.rows) or self.skipped > 0


@dataclass(slots=True)
class MergeResult:
    """What a central merge did with one batch."""

    stored: int = 0
    """Rows inserted."""
    updated: int = 0
    """Text-keyed rows that existed and were brought up to date."""
    duplicates: int = 0
    """Append-only rows already merged from the same origin (skipped)."""
    dropped_columns: list[str] = field(default_factory=list)
    """Edge columns this central store does not have."""


# -- edge side ---------------------------------------------------------------------------


def _meta_get(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _meta_put(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def origin_id(conn: sqlite3.Connection, path: str | Path) -> str:
    """This store's origin id, made (16 hex digits) and kept on first use.

    Raises:
        StoreError: it had none, and the store could not be written.
    """
    found = _meta_get(conn, "sync.origin")
    if found is not None:
        return found
    try:
        with write_transaction(conn, path):
            found = _meta_get(conn, "sync.origin")
            if found is None:
                found = secrets.token_hex(8)
                _meta_put(conn, "sync.origin", found)
    except sqlite3.Error as exc:
        problem = describe_error(exc, path)
        raise StoreError(f"{path}: cannot give the store its origin id: {problem}") from exc
    return found


def _mark_key(target: str, table: str, what: str) -> str:
    return f"sync.{what}.{table}.{target}"


def watermark(conn: sqlite3.Connection, target: str, table: str) -> int:
    """The last rowid of `table` that `target` acknowledged (0: nothing yet, or the rowids
    were handed out again since: see the module docstring)."""
    raw = _meta_get(conn, _mark_key(target, table, "watermark"))
    if raw is None:
        return 0
    anchor = _meta_get(conn, _mark_key(target, table, "anchor"))
    return 0 if anchor is not None and _renumbered(conn, table, int(raw), anchor) else int(raw)


def _order(spec: SyncTable) -> str:
    # An `int` table's `id` is its rowid (for the per-request views, their compact
    # table's, which views do not expose as `rowid`).
    return "id" if spec.key == "int" else "rowid"


def _renumbered(conn: sqlite3.Connection, table: str, last: int, anchor: str) -> bool:
    """Whether rowid `last` no longer holds the row acknowledged as `anchor`, and no row is
    left that far: new rows were (or will be) numbered below the watermark."""
    order = _order(_BY_NAME[table])
    row = conn.execute(f"SELECT * FROM {table} WHERE {order} = ?", (last,)).fetchone()
    if row is not None:
        return _digest(row) != anchor
    top = conn.execute(f"SELECT MAX({order}) FROM {table}").fetchone()[0]
    return top is None or int(top) < last


def acked_digests(conn: sqlite3.Connection, target: str, table: str) -> dict[str, str]:
    """Row key -> digest of the rows of a mutable table that `target` acknowledged."""
    raw = _meta_get(conn, _mark_key(target, table, "digests"))
    return dict(json.loads(raw)) if raw else {}


def ack(conn: sqlite3.Connection, path: str | Path, target: str, batch: Batch) -> None:
    """Record that `target` stored `batch`: the watermark or the rows' digests advance.

    Raises:
        StoreError: the edge store could not be written (another process held its write
            lock past the write's patience, say); the batch is sent again next time.
    """
    try:
        with write_transaction(conn, path):
            if _BY_NAME[batch.table].mutable:
                digests = acked_digests(conn, target, batch.table)
                digests.update(batch.digests)
                _meta_put(conn, _mark_key(target, batch.table, "digests"), json.dumps(digests))
            else:
                _meta_put(conn, _mark_key(target, batch.table, "watermark"), str(batch.last))
                _meta_put(conn, _mark_key(target, batch.table, "anchor"), batch.anchor)
    except sqlite3.Error as exc:
        raise StoreError(
            f"{path}: the central side stored a batch of `{batch.table}`, but this store "
            f"could not record it: {describe_error(exc, path)}; rerun `moat sync` (the "
            "batch is sent again and stored once)"
        ) from exc


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")]


def read_appended(
    conn: sqlite3.Connection,
    table: str,
    after: int,
    limit: int,
    requests_upto: int | None = None,
) -> Batch:
    """Up to `limit` rows of an append-only `table` past rowid `after`, in rowid order.

    Args:
        requests_upto: for the tables of a request's rows, the `requests` rowid the target
            has acknowledged: only rows of requests up to it go (never half a request),
            rows of requests cut short are passed over (see `_whole`), and the batch stops
            at the first row of a request not yet stored whole. None: every row goes.
    """
    spec = _BY_NAME[table]
    order = _order(spec)
    cursor = conn.execute(
        f"SELECT {order} AS _sync_rowid, * FROM {spec.name} "
        f"WHERE {order} > ? ORDER BY {order} LIMIT ?",
        (after, limit),
    )
    columns = [d[0] for d in cursor.description][1:]
    found = [list(r) for r in cursor]
    batch = Batch(table, columns, [], after)
    at = columns.index("request_id") if "request_id" in columns else -1
    states: dict[str, str] = {}
    for raw in found:
        row = raw[1:]
        if requests_upto is not None and at >= 0:
            state = _whole(conn, row[at], requests_upto, states)
            if state == "wait":
                batch.held = True
                break
            if state == "cut":
                batch.skipped += 1
                batch.last, batch.anchor = int(raw[0]), _digest(row)
                continue
        batch.rows.append(row)
        batch.last, batch.anchor = int(raw[0]), _digest(row)
    return batch


def _whole(conn: sqlite3.Connection, request_id: Any, upto: int, states: dict[str, str]) -> str:
    """Whether a row of request `request_id` may go: `send` (its request is stored and
    acknowledged up to `requests` rowid `upto`, or the row is a run's own), `wait` (the
    request is still being answered, or was stored after the `requests` batches of this
    sync) or `cut` (it never got its `requests` row and no process writes its run any more:
    an interrupted or crashed run, whose `--resume` deletes these rows and answers the
    request again; sent, the central store would keep half a request, twice after that)."""
    if not isinstance(request_id, str) or request_id == "":
        return "send"
    state = states.get(request_id)
    if state is None:
        row = conn.execute("SELECT rowid FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is not None:
            state = "send" if int(row[0]) <= upto else "wait"
        else:
            state = "wait" if _run_written(conn, request_id) else "cut"
        states[request_id] = state
    return state


def _run_written(conn: sqlite3.Connection, request_id: str) -> bool:
    """Whether a live process may still store request `request_id`: its run (named by its
    events) is being written, or, with no event naming one, any run is."""
    sql = (
        "SELECT status, config_json FROM runs WHERE id = (SELECT run_id FROM "
        "orchestration_events WHERE request_id = ? AND run_id != '' LIMIT 1)"
    )
    runs = conn.execute(sql, (request_id,)).fetchall()
    if not runs:
        runs = conn.execute(
            "SELECT status, config_json FROM runs WHERE status = 'running'"
        ).fetchall()
    return any(being_written(str(status), config) for status, config in runs)


def _digest(row: Sequence[Any]) -> str:
    text = json.dumps([v.hex() if isinstance(v, bytes) else v for v in row], default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def read_changed(
    conn: sqlite3.Connection, table: str, acked: Mapping[str, str], limit: int
) -> Batch:
    """Up to `limit` rows of a mutable `table` that differ from what was acknowledged."""
    spec = _BY_NAME[table]
    keys = "name, version" if spec.key == "policy" else "id"
    cursor = conn.execute(f"SELECT * FROM {spec.name} ORDER BY {keys}")
    columns = [d[0] for d in cursor.description]
    key_at = [columns.index(k.strip()) for k in keys.split(",")]
    batch = Batch(table, columns, [])
    for row in cursor:
        key = json.dumps([row[i] for i in key_at])
        digest = _digest(row)
        if acked.get(key) != digest:
            batch.rows.append(list(row))
            batch.digests[key] = digest
            if len(batch.rows) >= limit:
                break
    return batch


# -- central side ------------------------------------------------------------------------

_CENTRAL_DDL = (
    """CREATE TABLE IF NOT EXISTS sync_keys (
        kind TEXT NOT NULL,
        origin TEXT NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        PRIMARY KEY (kind, origin, src)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS sync_keys_dst ON sync_keys (kind, dst)",
    """CREATE TABLE IF NOT EXISTS sync_origins (
        origin TEXT PRIMARY KEY,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        batches INTEGER NOT NULL DEFAULT 0,
        stored INTEGER NOT NULL DEFAULT 0
    )""",
)


def central_id_of(conn: sqlite3.Connection) -> str | None:
    """The store's central id if a `moat sync-server` ever served it (see `ensure_central`)."""
    return _meta_get(conn, "sync.central")


def ensure_central(conn: sqlite3.Connection, path: str | Path) -> str:
    """Create the tables a central store keeps beside the contract ones (idempotent) and
    return the store's central id (`meta` key `sync.central`), which edges key their
    watermarks by: the same store reached by another URL resumes, a new store gets all."""
    with write_transaction(conn, path):
        for statement in _CENTRAL_DDL:
            conn.execute(statement)
        found = _meta_get(conn, "sync.central")
        if found is None:
            found = secrets.token_hex(8)
            _meta_put(conn, "sync.central", found)
    return found


def _taken_locally(conn: sqlite3.Connection, kind: str, value: str) -> bool:
    if kind == "policy":
        sql = "SELECT 1 FROM policy_snapshots WHERE name = ? LIMIT 1"
    else:
        table, column = _KEY_TABLES[kind]
        sql = f"SELECT 1 FROM {table} WHERE {column} = ? LIMIT 1"
    return conn.execute(sql, (value,)).fetchone() is not None


def _held(conn: sqlite3.Connection, kind: str, dst: str) -> bool:
    """Whether `dst` already names a row of another origin, or of the central store's own."""
    sql = "SELECT 1 FROM sync_keys WHERE kind = ? AND dst = ?"
    return conn.execute(sql, (kind, dst)).fetchone() is not None or _taken_locally(conn, kind, dst)


def _claim(conn: sqlite3.Connection, kind: str, origin: str, src: str) -> str:
    """The central value of `src` (a run id, request id or policy name) from `origin`."""
    row = conn.execute(
        "SELECT dst FROM sync_keys WHERE kind = ? AND origin = ? AND src = ?", (kind, origin, src)
    ).fetchone()
    if row is not None:
        return str(row[0])
    dst, n = src, 0
    while _held(conn, kind, dst):
        n += 1
        dst = f"{src}@{origin}" if n == 1 else f"{src}@{origin}.{n}"
    conn.execute(
        "INSERT INTO sync_keys (kind, origin, src, dst) VALUES (?, ?, ?, ?)",
        (kind, origin, src, dst),
    )
    return dst


def _keys(spec: SyncTable) -> tuple[str, ...]:
    return ("name", "version") if spec.key == "policy" else ("id",)


def _check_columns(spec: SyncTable, cols: Sequence[str]) -> None:
    """Refuse rows without their key (or, in an `int` table, with nothing but it)."""
    missing = [k for k in _keys(spec) if k not in cols]
    if missing:
        raise StoreError(
            f"table {spec.name!r}: the rows lack {', '.join(missing)}, the key they are "
            "merged by; send each row whole"
        )
    if spec.key == "int" and len(cols) < 2:
        raise StoreError(
            f"table {spec.name!r}: the rows carry no column of this store's but `id`; "
            "send each row whole"
        )


def _check_row(spec: SyncTable, cols: Sequence[str], row: Sequence[Any], at: int) -> None:
    """Refuse a row whose key or references could name another origin's rows."""
    keys = _keys(spec)
    for column, value in zip(cols, row, strict=True):
        if column == "id" and spec.key == "int":
            ok, want = type(value) is int, "an integer"
        elif column in spec.refs and column in keys:
            ok, want = isinstance(value, str) and value != "", "a non-empty string"
        elif column in spec.refs:
            ok, want = value is None or isinstance(value, str), "a string or null"
        else:
            continue
        if not ok:
            raise StoreError(
                f"table {spec.name!r}, rows[{at}]: `{column}` is {value!r:.80}; it must be {want}"
            )


def _remap(
    conn: sqlite3.Connection, spec: SyncTable, origin: str, columns: Sequence[str], row: list[Any]
) -> list[Any]:
    out = list(row)
    for column, kind in spec.refs.items():
        if column in columns:
            i = columns.index(column)
            value = out[i]
            if isinstance(value, str) and value:
                out[i] = _claim(conn, kind, origin, value)
    return out


def _insert_int(
    conn: sqlite3.Connection, spec: SyncTable, origin: str, cols: Sequence[str], row: list[Any]
) -> bool:
    """Insert a row with a fresh central id; False when this origin's row is already in."""
    src = str(row[cols.index("id")])
    seen = conn.execute(
        "SELECT dst FROM sync_keys WHERE kind = ? AND origin = ? AND src = ?",
        (spec.name, origin, src),
    ).fetchone()
    if seen is not None and _same_owner(conn, spec, cols, row, int(seen[0])):
        return False
    names = [c for c in cols if c != "id"]
    values = [v for c, v in zip(cols, row, strict=True) if c != "id"]
    cursor = conn.execute(
        f"INSERT INTO {spec.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        values,
    )
    base = COMPACT_TABLES.get(spec.name)
    # An insert into a view runs its trigger, after which `lastrowid` is not the new row's.
    new_id = (
        cursor.lastrowid
        if base is None
        else conn.execute(f"SELECT MAX(id) FROM {base}").fetchone()[0]
    )
    conn.execute(  # REPLACE: an id the edge gave to a new row now names that one
        "INSERT OR REPLACE INTO sync_keys (kind, origin, src, dst) VALUES (?, ?, ?, ?)",
        (spec.name, origin, src, str(new_id)),
    )
    return True


def _same_owner(
    conn: sqlite3.Connection, spec: SyncTable, cols: Sequence[str], row: list[Any], dst: int
) -> bool:
    """Whether central row `dst`, merged from this origin's id, belongs to the same request
    or run as `row` (remapped): a resent row, rather than a new one the edge numbered the
    same after a prune (then `dst` belongs to a pruned run, or is gone)."""
    owners = [c for c in spec.refs if c in cols]
    if not owners:
        return True
    found = conn.execute(
        f"SELECT {', '.join(owners)} FROM {spec.name} WHERE id = ?", (dst,)
    ).fetchone()
    return found is not None and list(found) == [row[cols.index(c)] for c in owners]


def _upsert(conn: sqlite3.Connection, spec: SyncTable, cols: Sequence[str], row: list[Any]) -> bool:
    """Insert or update a text- or policy-keyed row; True when it was new."""
    keys = _keys(spec)
    where = " AND ".join(f"{k} = ?" for k in keys)
    key_values = [row[cols.index(k)] for k in keys]
    exists = conn.execute(f"SELECT 1 FROM {spec.name} WHERE {where}", key_values).fetchone()
    if exists is None:
        conn.execute(
            f"INSERT INTO {spec.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            row,
        )
        return True
    rest = [c for c in cols if c not in keys]
    if rest:
        conn.execute(
            f"UPDATE {spec.name} SET {', '.join(f'{c} = ?' for c in rest)} WHERE {where}",
            [row[cols.index(c)] for c in rest] + key_values,
        )
    return False


def merge_batch(
    conn: sqlite3.Connection,
    path: str | Path,
    origin: str,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    at: float,
) -> MergeResult:
    """Merge one uploaded batch into a central store, in one transaction.

    Raises:
        StoreError: the table is not one that syncs, a column name is not an identifier, the
            rows lack their key, or a key or reference is not of its kind (nothing is merged).
    """
    spec = _BY_NAME.get(table)
    if spec is None:
        known = ", ".join(t.name for t in SYNC_TABLES)
        raise StoreError(f"table {table!r} does not sync; these do: {known}")
    bad = [c for c in columns if not _IDENT.match(c)]
    if bad:
        raise StoreError(f"table {table!r}: column names {bad} are not identifiers")
    present = set(_columns(conn, spec.name))
    keep = [i for i, c in enumerate(columns) if c in present]
    cols = [columns[i] for i in keep]
    _check_columns(spec, cols)
    result = MergeResult(dropped_columns=sorted(set(columns) - present))
    with write_transaction(conn, path):
        for n, raw in enumerate(rows):  # (not `at`: that is when the batch came)
            kept = [raw[i] for i in keep]
            _check_row(spec, cols, kept, n)
            row = _remap(conn, spec, origin, cols, kept)
            if spec.key == "int":
                if _insert_int(conn, spec, origin, cols, row):
                    result.stored += 1
                else:
                    result.duplicates += 1
            elif _upsert(conn, spec, cols, row):
                result.stored += 1
            else:
                result.updated += 1
        conn.execute(
            "INSERT INTO sync_origins (origin, first_seen, last_seen, batches, stored) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT (origin) DO UPDATE SET last_seen = excluded."
            "last_seen, batches = batches + 1, stored = stored + excluded.stored",
            (origin, at, at, result.stored),
        )
    return result
