"""The batching store writer: a `Sink` whose `record` only appends to a queue.

A dedicated thread with its own SQLite connection drains the queue every `interval_s` (or
as soon as `batch_size` records wait) and writes everything drained in ONE transaction with
`executemany`, `requests` rows last. Because a request's `RequestRecord` is recorded after
all of that request's other records, its `requests` row is committed in the same
transaction as, or a later one than, every other row of the request. A crash (even
`kill -9`) therefore loses only whole transactions: the database stays consistent, and the
rows of a request that never got its `requests` row are orphans that
`Store.delete_orphans` removes before `--resume`.

Nothing here touches the event loop: `record` is a `deque.append` (atomic under the GIL)
plus, at most once per batch, setting a `threading.Event`.
"""

from __future__ import annotations

import atexit
import functools
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from operator import iadd, itemgetter
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.events import Record, RequestRecord
from engine.store import tallies
from engine.store._mend import mended
from engine.store.codec import Packer
from engine.store.compact import Compactor
from engine.store.rows import (
    FROM_ROW,
    OFTEN_NULL,
    SLOT,
    TABLES,
    Build,
    CompactRows,
    EncodedRows,
)
from engine.store.schema import connect, describe_error, migrate, write_transaction

__all__ = ["StoreWriter", "WriterStats"]


_NONE: dict[None, None] = {}


# sqlite3 binds exact int, float and str directly but sends None and bytes through its
# adaptation protocol, which (CPython 3.11) builds and discards an AttributeError message
# for each such value when no adapter is registered: about 300 values per flagship
# request, a sixth of the writer's instructions. Registered identity adapters are found
# in the registry first; what is bound does not change. They are C callables, not a Python
# function: `{}.get(None)` is None and `bytes.__bytes__(b)` is `b` itself, without a
# Python frame per value (60,000 fewer instructions a flagship request, 1.7% of the
# writer's).
sqlite3.register_adapter(type(None), _NONE.get)
sqlite3.register_adapter(bytes, bytes.__bytes__)

_ROWS_PER_INSERT = 32
"""Rows one INSERT statement carries (one multi-row VALUES list)."""


@functools.cache
def _statement(sql: str, nulls: tuple[int, ...], rows: int) -> str:
    """`sql` (an INSERT of one `VALUES (?, ...)` row) for `rows` rows, NULL written in it
    for the columns `nulls` (their parameters left out)."""
    head, _, row = sql.rpartition("VALUES ")
    marks = ["NULL" if i in nulls else "?" for i in range(row.count("?"))]
    return head + "VALUES " + ",".join(["(" + ",".join(marks) + ")"] * rows)


@functools.cache
def _kept(width: int, nulls: tuple[int, ...]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A row's values but those of the columns `nulls` (at least two are left)."""
    return itemgetter(*(i for i in range(width) if i not in nulls))


def _insert(
    conn: sqlite3.Connection,
    sql: str,
    rows: list[tuple[Any, ...]],
    often_null: tuple[int, ...],
) -> None:
    """`conn.executemany(sql, rows)`, `_ROWS_PER_INSERT` rows per statement (stepping a
    statement once per row cost a fifth more CPU per row), rows kept in order.

    A column of `often_null` that is NULL in all of a statement's rows is a NULL in the
    statement, not a parameter: sqlite3 binds None through its adaptation protocol, about
    1,200 instructions a value (a tuple built and looked up in the adapter registry), and
    an event row's status, duration, inputs and outputs are nearly always NULL, so this
    was about 230 values a flagship request. The stored rows are the same.
    """
    step = _ROWS_PER_INSERT
    full = len(rows) - len(rows) % step
    for start in range(0, full, step):
        chunk = rows[start : start + step]
        params: list[Any] = reduce(iadd, chunk, [])
        width = len(chunk[0])  # (a column's values are every `width`th parameter)
        nulls = tuple([c for c in often_null if params[c::width].count(None) == step])
        for column in reversed(nulls):
            del params[column::width]
            width -= 1
        try:
            conn.execute(_statement(sql, nulls, step), params)
        except UnicodeEncodeError:
            conn.execute(_statement(sql, nulls, step), _utf8(params))
    if full < len(rows):
        rest = rows[full:]
        nulls = tuple([c for c in often_null if [row[c] for row in rest].count(None) == len(rest)])
        kept = list(map(_kept(len(rest[0]), nulls), rest)) if nulls else rest
        try:
            conn.executemany(_statement(sql, nulls, 1), kept)
        except UnicodeEncodeError:  # (no row was inserted: binding fails before any step)
            conn.executemany(_statement(sql, nulls, 1), [_utf8(row) for row in kept])


def _utf8(values: Any) -> list[Any]:
    """`values` with each text that holds a lone surrogate (a file name or an argument
    Python read with `surrogateescape`, a plugin's string) escaped as `\\udcff`: SQLite
    stores UTF-8 only, and one such text must not cost the whole batch its rows."""
    return [
        v.encode("utf-8", "backslashreplace").decode("utf-8") if v.__class__ is str else v
        for v in values
    ]


class _FlushMarker:
    """Queued by `flush` or `flush_soon`; set once everything queued before it is
    committed, and then its callback (if any) is called on the writer thread."""

    __slots__ = ("callback", "done")

    def __init__(self, callback: Callable[[StoreError | None], None] | None = None) -> None:
        # what `flush` waits on; a `flush_soon` marker (one a served request) has its
        # callback instead, and no lock and condition to make for nobody
        self.done = threading.Event() if callback is None else None
        self.callback = callback

    def reached(self, error: StoreError | None) -> None:
        """Everything before the marker is committed (or `error` says why not)."""
        if self.done is not None:
            self.done.set()
        if self.callback is not None:
            self.callback(error)


@dataclass(slots=True)
class WriterStats:
    """Counters of one writer, for benchmarks and diagnostics."""

    records: int = 0
    """Records committed."""
    transactions: int = 0
    """Transactions committed."""
    dropped: int = 0
    """Records lost to a write error (see `StoreWriter.flush`)."""
    duplicates: int = 0
    """Request records not stored because their request id was (the first one stays)."""
    cpu_s: float = 0.0
    """CPU seconds the writer thread spent writing: a load-independent cost measure."""
    largest_batch: int = 0
    """Most records written in one transaction."""
    peak_backlog: int = 0
    """Most records found waiting when the writer thread woke (see `StoreWriter.backlog`)."""


class StoreWriter:
    """A `Sink` that writes records to the store in batches from a background thread.

    Args:
        path: the store file (created and migrated if needed).
        batch_size: wake the writer as soon as this many records wait.
        interval_s: otherwise write whatever waits at this interval.
        max_batch: most records written in one transaction. A transaction's fixed cost
            (about 0.4 ms of CPU) is 0.1 us a record at 4,096, against about 13 us a record
            of encoding and inserting, so larger transactions save nothing; they only make
            the rows of a writer that fell behind pile up in memory at once.

    Raises:
        StoreError: the store cannot be opened or is of a newer schema.

    Example:
        >>> with StoreWriter("moat.db") as sink:  # doctest: +SKIP
        ...     sink.record(event)
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 2_000,
        interval_s: float = 0.05,
        max_batch: int = 4_096,
    ) -> None:
        self.path = Path(path)
        self._lock_path = os.path.abspath(path)
        """The file, named once for the lock every transaction takes (`file_lock`)."""
        self.stats = WriterStats()
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._max_batch = max_batch
        self._queue: deque[Record | EncodedRows | CompactRows | _FlushMarker] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._stopping = False
        self._error: BaseException | None = None
        conn = connect(self.path)
        try:
            migrate(conn, self.path)
            # A larger page cache keeps index pages hot across batches.
            conn.execute("PRAGMA cache_size = -32768")
            self._packer = Packer(conn)
            self._compactor = Compactor()
        except StoreError:
            conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="moat-store-writer", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    def record(self, item: Record | EncodedRows | CompactRows) -> None:
        """Queue one record (or pre-encoded rows); never blocks and does no I/O.

        Raises:
            StoreError: the writer is closed.
        """
        if self._closed:
            raise StoreError(f"{self.path}: the store writer is closed; open a new StoreWriter")
        queue = self._queue
        queue.append(item)
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def part_recorder(self) -> Callable[[Record], None]:
        """Where a request's records before its `RequestRecord` go: the queue's `append`
        itself, a C call where `record` is a Python frame (about 70 a flagship request).
        What `record` adds is done by the request's own record, which follows its parts:
        it wakes the thread for a full batch, and refuses a closed writer (parts queued
        after `close` are never written, as the request that has them is refused)."""
        return self._queue.append

    @property
    def backlog(self) -> int:
        """Records queued and not yet taken by the writer thread: a producer that must
        not outrun the writer (`Pipeline.run_batch`) waits while this is high."""
        return len(self._queue)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record queued so far is committed.

        Call it from a worker thread in async code (`anyio.to_thread.run_sync(w.flush)`).

        Args:
            timeout: seconds to wait at most; `None` waits as long as it takes.

        Raises:
            StoreError: a write failed (records were dropped), or the timeout passed.
        """
        if not self._thread.is_alive():
            self._raise_if_failed()
            return
        marker = _FlushMarker()
        assert marker.done is not None
        self._queue.append(marker)
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not marker.done.wait(0.1):
            if not self._thread.is_alive():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise StoreError(f"{self.path}: flushing the store took longer than {timeout}s")
        self._raise_if_failed()

    def flush_soon(self, done: Callable[[StoreError | None], None]) -> None:
        """Call `done` once every record queued so far is committed, without blocking.

        `done` runs on the writer thread (or at once, here, if the writer has stopped),
        with None or the `StoreError` that `flush` would raise; it must be quick and must
        not raise. A server that answers only after its request is committed waits this
        way: one hand-off from the writer to the event loop, where `flush` in a worker
        thread costs the loop two more.
        """
        if not self._thread.is_alive():
            done(self._failure())
            return
        self._queue.append(_FlushMarker(done))
        self._wake.set()

    def close(self) -> None:
        """Write everything queued, stop the writer thread and close its connection.

        Idempotent. Raises `StoreError` if any write failed since the last flush.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<StoreWriter {state} {str(self.path)!r} queued={len(self._queue)}>"

    def _raise_if_failed(self) -> None:
        failure = self._failure()
        if failure is not None:
            raise failure

    def _failure(self) -> StoreError | None:
        """The write error since the last flush, as the `StoreError` a flush reports
        (taken: the next flush reports only what fails after it)."""
        error, self._error = self._error, None
        if error is None:
            return None
        failure = StoreError(
            f"{self.path}: writing to the store failed "
            f"({describe_error(error, self.path)}); {self.stats.dropped} records dropped "
            "so far"
        )
        failure.__cause__ = error
        return failure

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                self._wake.wait(self._interval_s)
                self._wake.clear()
                while self._queue:
                    self._write_batch(conn)
                if self._stopping and not self._queue:
                    return
        finally:
            conn.close()
            self._release_markers()

    def _release_markers(self) -> None:
        """The thread is ending: nobody may wait for a flush that will never come."""
        left = [item for item in self._queue if isinstance(item, _FlushMarker)]
        stopped = StoreError(f"{self.path}: the store writer stopped")
        for marker in left:
            marker.reached((self._failure() or stopped) if marker.callback is not None else None)

    def _drain(self) -> tuple[list[list[Any]], list[_FlushMarker]]:
        """The queued records by table, then (in the same list after `len(TABLES)`) the
        pre-encoded rows by table, then (last) the `CompactRows`; and the flush markers
        reached."""
        groups: list[list[Any]] = [[] for _ in range(2 * len(TABLES) + 1)]
        markers: list[_FlushMarker] = []
        queue = self._queue
        taken = 0
        while queue and taken < self._max_batch:
            item = queue.popleft()
            taken += 1
            slot = SLOT.get(type(item))
            if slot is not None:
                groups[slot].append(item)
            elif type(item) is EncodedRows:
                for index, rows in enumerate(item.tables):
                    groups[len(TABLES) + index] += rows
                taken += item.count
            elif type(item) is CompactRows:
                groups[-1].append(item)
                for index, rows in enumerate(item.rest.tables):
                    groups[len(TABLES) + index] += rows
                taken += item.count
            elif isinstance(item, _FlushMarker):
                markers.append(item)
            else:
                self.stats.dropped += 1
                self._error = TypeError(f"not a store record: {type(item).__name__}")
        return groups, markers

    def _write_batch(self, conn: sqlite3.Connection) -> None:
        started = time.thread_time()
        stats = self.stats
        stats.peak_backlog = max(stats.peak_backlog, len(self._queue))
        groups, markers = self._drain()
        count = sum(len(group) for group in groups[:-1])
        count += sum(sum(len(rows) for rows in item.tables) for item in groups[-1])
        stats.largest_batch = max(stats.largest_batch, count)
        if count:
            try:
                self.stats.records += self._commit(conn, groups)
                self.stats.transactions += 1
            except Exception as exc:  # the thread must survive anything a batch does
                self.stats.dropped += count
                self._error = exc
        self.stats.cpu_s += time.thread_time() - started
        for marker in markers:
            # (a `flush` caller takes the error itself, in its own thread)
            error = self._failure() if marker.callback is not None else None
            try:
                marker.reached(error)
            except Exception as exc:  # the thread must survive a caller's callback
                from engine.logs import get_logger  # (reading commands never get here)

                get_logger("moat.store").error("store.flush_callback_failed", error=repr(exc))

    def _rows(self, groups: list[list[Any]]) -> list[list[tuple[Any, ...]]]:
        """Encode the drained records as compact rows (inside the write transaction:
        new codes and request keys are inserted as they are met)."""
        rows: list[list[tuple[Any, ...]]] = []
        cx, pack = self._compactor, self._packer.pack
        plain, encoded = groups[: len(TABLES)], groups[len(TABLES) : 2 * len(TABLES)]
        keyed = [item.keyed(cx) for item in groups[-1]]  # keys first: `rest` may reuse them
        for group, ready, (_, _, build), convert in zip(
            plain, encoded, TABLES, FROM_ROW, strict=True
        ):
            try:
                built = [build(cx, pack, item) for item in group]
            except Exception:
                built = self._rows_one_by_one(group, build)
            if ready:
                try:
                    built += [convert(cx, pack, row) for row in ready]
                except Exception:
                    built += self._rows_one_by_one(ready, convert)
            for tables in keyed:  # `requests` rows are in `rest`: no compact table of them
                if len(rows) < len(tables):
                    built += tables[len(rows)]
            rows.append(built)
        return rows

    def _count_duplicates(self, count: int) -> None:
        """Note request records the store kept out: their id was taken."""
        if count <= 0:
            return
        self.stats.duplicates += count
        from engine.logs import get_logger  # (reading commands never get here)

        get_logger("moat.store").warning(
            "store.duplicate_requests",
            count=count,
            fix="give each request of a run its own seq; the first record of an id is kept",
        )

    def _rows_one_by_one(self, group: list[Any], build: Build) -> list[tuple[Any, ...]]:
        """Keep every record that encodes, as it is or `mended` (a node's event payload
        holding itself, say); count (and report) the ones that still do not."""
        rows = []
        cx, pack = self._compactor, self._packer.pack
        for item in group:
            try:
                rows.append(build(cx, pack, item))
            except Exception as exc:
                try:
                    again = mended(item)
                    if again is None:
                        raise
                    rows.append(build(cx, pack, again))
                except Exception:
                    self.stats.dropped += 1
                    self._error = exc
        return rows

    def _commit(self, conn: sqlite3.Connection, groups: list[list[Any]]) -> int:
        """Write the groups in one transaction (waiting out other processes' write locks,
        see `write_transaction`); return the rows written."""
        cx = self._compactor
        try:
            with write_transaction(conn, self._lock_path):
                cx.begin(conn)
                rows = self._rows(groups)
                since = tallies.mark(conn) if rows[SLOT[RequestRecord]] else None
                for batch, (kind, sql, _), nullable in zip(rows, TABLES, OFTEN_NULL, strict=True):
                    if batch:
                        before = conn.total_changes
                        _insert(conn, sql, batch, nullable)
                        if kind is RequestRecord:
                            self._count_duplicates(len(batch) - conn.total_changes + before)
                if since is not None:  # (requests last: their other rows are all written)
                    tallies.tally(conn, since)
                self._packer.maybe_train(conn)
        except BaseException:
            cx.rollback()
            raise
        cx.commit()
        self._packer.committed()
        return sum(len(batch) for batch in rows)
