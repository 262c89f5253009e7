"""Semantic-cache entries in the store's `cache_entries` table, written off the event loop.

`StoreCachePersistence` implements the `CachePersistence` protocol of `nodes._support.semcache`
structurally (the engine never imports `nodes`): `load(namespace)`, `save(namespace,
tenant, record)` and `delete(namespace, tenant, key)`. `Store.cache_persistence()` hands
out one per store and closes it with the store.

Rows: one per (namespace, tenant, key). `value_json` holds the cache's whole JSON record
(key, scope, template, slots, value, TTL, ...), so a reload needs nothing else;
`created_at`, `expires_at`, `hits` and `negative` repeat fields of the record as columns
for readers. `embedding` stays NULL: the cache recomputes vectors from the template when
it loads, which is cheap and never mixes vectors of different embedder versions.

Writes: `save` and `delete` only note the key's latest state in a pending map (a later
write to the same key replaces an earlier one) and wake a daemon thread that commits all
pending rows in one transaction on a connection of its own. Nothing on the event loop
waits for SQLite, not even while the batching `StoreWriter` holds the write lock (the two
take turns through `write_transaction`, so they never lock each other out). A write that
fails (another process holding the lock for minutes, a full disk) is logged as a warning
and its entries stay pending, to be retried: the cache keeps working, and the failure never
fails a run. `load`
reads the committed rows and overlays the pending ones, so it sees every earlier write of
this process (other processes' later writes are seen at their next load). Expired rows are
returned too: the cache deletes the ones it finds expired.

Bound: `limit_bytes(n)` caps the table's bytes (each row's JSON, key columns and
`ROW_OVERHEAD`), so a box given a cache budget keeps it in the store file too, whatever
namespaces, expired rows or other processes left there. Each commit that would take the
table past the cap also deletes rows, fairly: from the (namespace, tenant) holding the most
bytes, its oldest-written row first (the in-memory cache's rule, `nodes/_support/
cachebudget.py`), in the same transaction, logged as `cache.store_evicted`. SQLite reuses
the freed pages, so the file stops growing at about the cap.
"""

from __future__ import annotations

import atexit
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.store.codec import strict_json
from engine.store.schema import connect, describe_error, write_transaction

__all__ = ["StoreCachePersistence"]


@functools.cache
def _log() -> Any:
    """The store's logger, made on first use: reading commands (`moat runs`, `moat stats`)
    open the store without loading the logging stack."""
    from engine.logs import get_logger

    return get_logger("moat.store")


_UPSERT = (
    "INSERT OR REPLACE INTO cache_entries (namespace, tenant, key, embedding, value_json, "
    "created_at, expires_at, hits, negative) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM cache_entries WHERE namespace = ? AND tenant = ? AND key = ?"
_LOAD = "SELECT tenant, key, value_json FROM cache_entries WHERE namespace = ? ORDER BY rowid"
_NAMESPACES = "SELECT DISTINCT namespace FROM cache_entries ORDER BY namespace"

_RETRY_S = 1.0
"""Pause before retrying a failed write."""
ROW_OVERHEAD = 48
"""Bytes a row costs beyond its values (record header, rowid, index entries), rounded up."""
_SIZES = (
    "SELECT namespace, tenant, key, length(value_json) + length(namespace) + length(tenant) "
    "+ length(key) FROM cache_entries ORDER BY created_at, rowid"
)

_Key = tuple[str, str, str]
"""(namespace, tenant, key)"""


class StoreCachePersistence:
    """Cache records of a store file, loaded at once and written through in the background.

    Args:
        path: the store file (already created and migrated by `Store.open`).
        interval_s: how long the writer thread lets writes gather before committing them.
    """

    def __init__(self, path: str | Path, *, interval_s: float = 0.05) -> None:
        self.path = Path(path)
        self._interval_s = interval_s
        self._reader = connect(self.path)
        self._read_lock = threading.Lock()
        self._pending: dict[_Key, Mapping[str, Any] | None] = {}
        """Latest state per key not yet committed: the record, or None for a delete."""
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._limit: int | None = None
        self._sizes: dict[tuple[str, str], dict[str, int]] = {}
        """Per (namespace, tenant), row key -> bytes in write order (only with a limit)."""
        self._part_bytes: dict[tuple[str, str], int] = {}
        self._total = 0
        self.store_evictions = 0
        """Rows deleted to keep the table under `limit_bytes`."""
        try:
            writer = connect(self.path)
        except StoreError:
            self._reader.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(writer,), name="moat-cache-writer", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    # -- the CachePersistence protocol --------------------------------------------------

    def load(self, namespace: str) -> list[tuple[str, dict[str, Any]]]:
        """Every `(tenant, record)` of the namespace, pending writes included."""
        with self._changed:
            pending = {k: v for k, v in self._pending.items() if k[0] == namespace}
        try:
            with self._read_lock:
                rows = self._reader.execute(_LOAD, (namespace,)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: reading cache entries failed: {exc}") from exc
        found: dict[tuple[str, str], dict[str, Any]] = {
            (tenant, key): json.loads(value) for tenant, key, value in rows
        }
        for (_, tenant, key), record in pending.items():
            if record is None:
                found.pop((tenant, key), None)
            else:
                found[tenant, key] = dict(record)
        return [(tenant, record) for (tenant, _), record in found.items()]

    def namespaces(self) -> list[str]:
        """The namespaces that have entries, pending writes included (a cluster's workers
        start warm from all of them)."""
        with self._changed:
            pending = {k[0] for k, v in self._pending.items() if v is not None}
        try:
            with self._read_lock:
                rows = self._reader.execute(_NAMESPACES).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: reading cache entries failed: {exc}") from exc
        return sorted(pending | {row[0] for row in rows})

    def save(self, namespace: str, tenant: str, record: Mapping[str, Any]) -> None:
        """Insert or replace one record (keyed by `record["key"]`); never blocks or raises."""
        self._put((namespace, tenant, str(record["key"])), dict(record))

    def delete(self, namespace: str, tenant: str, key: str) -> None:
        """Forget one record; never blocks or raises."""
        self._put((namespace, tenant, key), None)

    def limit_bytes(self, limit: int) -> None:
        """Cap the table's bytes (a lower cap replaces a higher one; see the module doc)."""
        with self._changed:
            first = self._limit is None
            self._limit = limit if self._limit is None else min(self._limit, limit)
        if first:
            with self._read_lock:
                rows = self._reader.execute(_SIZES).fetchall()
            with self._changed:
                for namespace, tenant, key, size in rows:
                    self._account((namespace, tenant, key), int(size) + ROW_OVERHEAD)
        self._wake.set()

    def stored_bytes(self) -> int:
        """The table's bytes as `limit_bytes` counts them (0 before a limit is set)."""
        return self._total

    # -- lifecycle ----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Block until every write so far is committed (call it from a worker thread).

        Raises:
            StoreError: a write failed (its entries stay pending and are retried), or
                `timeout` seconds passed first.
        """
        self._error = None
        self._wake.set()
        with self._changed:
            done = self._changed.wait_for(
                lambda: not self._pending or not self._thread.is_alive() or self._error is not None,
                timeout,
            )
        self._raise_if_failed()
        if not done:
            raise StoreError(f"{self.path}: writing cache entries took longer than {timeout}s")

    def close(self) -> None:
        """Commit what is pending, stop the writer thread and close its connection.

        Idempotent. Never raises: entries that could not be written are reported as a
        warning (`cache.entries_lost`); they only cost a later cache miss.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._wake.set()
        self._thread.join()
        self._reader.close()
        if self._pending:
            _log().warning(
                "cache.entries_lost",
                path=str(self.path),
                entries=len(self._pending),
                error=describe_error(self._error, self.path) if self._error else None,
            )

    def __repr__(self) -> str:
        return f"<StoreCachePersistence {str(self.path)!r} pending={len(self._pending)}>"

    # -- the writer thread --------------------------------------------------------------

    def _put(self, key: _Key, record: Mapping[str, Any] | None) -> None:
        if self._closed:  # a cache outliving its store keeps working, in memory only
            _log().warning("cache.write_after_close", path=str(self.path), namespace=key[0])
            return
        with self._changed:
            self._pending[key] = record
        self._wake.set()

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            retry: float | None = None
            while not self._closed:
                self._wake.wait(retry)
                time.sleep(self._interval_s)  # let writes of the same moment share a commit
                self._wake.clear()
                retry = None if self._write_pending(conn) else _RETRY_S
            self._write_pending(conn)
        finally:
            conn.close()

    def _write_pending(self, conn: sqlite3.Connection) -> bool:
        """Commit what is pending; False (entries kept pending) if the write failed."""
        with self._changed:
            batch = dict(self._pending)
        if not batch:
            return True
        try:
            victims = self._commit(conn, batch)
        except Exception as exc:  # the thread must survive anything; flush/close report it
            _log().warning(
                "cache.write_failed",
                path=str(self.path),
                entries=len(batch),
                error=describe_error(exc, self.path),
            )
            with self._changed:
                self._error = exc
                self._changed.notify_all()
            return False
        with self._changed:
            for key, record in batch.items():
                if self._pending.get(key, self) is record:  # unless written again meanwhile
                    del self._pending[key]
            self._changed.notify_all()
        if victims:
            self.store_evictions += len(victims)
            _log().info("cache.store_evicted", path=str(self.path), rows=len(victims))
        return True

    def _commit(
        self, conn: sqlite3.Connection, batch: Mapping[_Key, Mapping[str, Any] | None]
    ) -> list[_Key]:
        """Write one batch in one transaction, with the deletes that keep the table under
        its limit; returns those extra deletes."""
        rows: dict[_Key, tuple[Any, ...]] = {}
        deletes: list[_Key] = []
        for key, record in batch.items():
            try:
                if record is not None:
                    rows[key] = _row(key, record)
                    continue
            except StoreError as exc:  # NaN in a value: kept in memory only, said once
                _log().warning("cache.entry_not_stored", namespace=key[0], error=str(exc))
            deletes.append(key)  # (nor is an older row for the key left to be read back)
        victims: list[_Key] = []
        with self._changed:
            if self._limit is not None:
                for key in deletes:
                    self._account(key, None)
                for key, row in rows.items():
                    self._account(key, len(row[3]) + sum(map(len, key)) + ROW_OVERHEAD)
                victims = self._over_limit()
        for key in victims:
            rows.pop(key, None)
        with write_transaction(conn, self.path):
            conn.executemany(_DELETE, [*deletes, *victims])
            conn.executemany(_UPSERT, list(rows.values()))
        return victims

    def _account(self, key: _Key, size: int | None) -> None:
        """Note a row's new size (None: deleted); call with `_changed` held."""
        where = (key[0], key[1])
        part = self._sizes.setdefault(where, {})
        old = part.pop(key[2], 0)
        delta = (size or 0) - old
        if size is not None:
            part[key[2]] = size
        self._total += delta
        self._part_bytes[where] = self._part_bytes.get(where, 0) + delta
        if not part:
            del self._sizes[where]
            del self._part_bytes[where]

    def _over_limit(self) -> list[_Key]:
        """Rows to delete, fairly, until the table fits its limit; call with `_changed` held."""
        victims: list[_Key] = []
        assert self._limit is not None
        while self._total > self._limit and self._sizes:
            namespace, tenant = max(self._part_bytes, key=self._part_bytes.__getitem__)
            oldest = next(iter(self._sizes[namespace, tenant]))
            victims.append((namespace, tenant, oldest))
            self._account((namespace, tenant, oldest), None)
        return victims

    def _raise_if_failed(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise StoreError(
                f"{self.path}: writing cache entries failed "
                f"({describe_error(error, self.path)}); the cache keeps working in memory "
                "and retries the write"
            ) from error


def _row(key: _Key, record: Mapping[str, Any]) -> tuple[Any, ...]:
    namespace, tenant, entry_key = key
    return (
        namespace,
        tenant,
        entry_key,
        strict_json(record, f"cache entry {entry_key!r} of {namespace!r}"),
        float(record.get("stored_at") or time.time()),
        record.get("expires_at"),
        int(record.get("hits", 0)),
        int(bool(record.get("negative", False))),
    )
