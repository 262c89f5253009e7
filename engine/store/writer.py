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

`encode_records` builds the rows in another process (a Ray worker), so the process that
owns the writer only unpickles tuples and inserts them: `record` takes the `EncodedRows`
as it takes a record.
"""

from __future__ import annotations

import atexit
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.events import (
    DecisionTrace,
    LlmCall,
    NodeRun,
    OrchestrationEvent,
    Record,
    RequestRecord,
)
from engine.store.codec import Packer
from engine.store.schema import connect, describe_error, migrate, write_transaction

__all__ = ["EVENT_SQL", "EncodedRows", "StoreWriter", "WriterStats", "encode_records", "event_row"]

EVENT_SQL = (  # also the policy manager's events (policy_ops), in their transactions
    "INSERT INTO orchestration_events (run_id, request_id, cycle, stage, component, "
    "event_type, decision, status, sequence, started_at, duration_ms, reason_codes_json, "
    "inputs_json, outputs_json, payload_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_NODE_RUN_SQL = (
    "INSERT INTO node_runs (request_id, node, node_type, cycle, status, speculative, outcome, "
    "started_at, duration_ms, attempts, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_LLM_CALL_SQL = (
    "INSERT INTO llm_calls (request_id, node, cycle, model, provider, call_kind, call_outcome, "
    "cache_status, related_event_id, prompt_hash, input_tokens, output_tokens, cost_usd, "
    "latency_ms, started_at, status, error, prompt_text, response_text) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_TRACE_SQL = "INSERT INTO decision_traces (request_id, cycle, stage, payload_json) VALUES (?,?,?,?)"
# REPLACE: request ids are stable across `--resume`, and a rerun replaces nothing finished
# (finished requests are not rerun), but a duplicate must never abort a whole batch.
_REQUEST_SQL = (
    "INSERT OR REPLACE INTO requests (id, run_id, seq, conversation_id, turn_index, "
    "parent_request_id, tenant, status, started_at, finished_at, latency_ms, cost_usd, "
    "policy_name, policy_version, input_hash, output_json, error) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)

_EMPTY_LIST = "[]"
# JSON columns are encoded with ONE reusable C encoder (no circular-reference markers):
# `json.dumps` builds a new encoder object per call, which was a third of the writer's
# time. Falls back to the pure-Python encoder where the C speedups are missing.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encoder = (
    _make_c_encoder(
        None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    if _make_c_encoder is not None
    else None
)


def _encode(value: object) -> str:
    if _c_encoder is None:
        return json.dumps(value, separators=(",", ":"), default=str)
    return "".join(_c_encoder(value, 0))


# Reason codes repeat a lot; their encodings are kept (bounded) by value.
_reason_cache: dict[tuple[str, ...], str] = {}


def _json(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return _encode(value)


def _json_list(value: Sequence[str]) -> str:
    if not value:
        return _EMPTY_LIST
    if type(value) is not tuple:
        return _encode(list(value))
    encoded = _reason_cache.get(value)
    if encoded is None:
        encoded = _encode(list(value))
        if len(_reason_cache) < 4096:
            _reason_cache[value] = encoded
    return encoded


# Enum members are converted to exact `str` first: sqlite3 binds exact str and int fast but
# sends subclasses (StrEnum, bool) through its slow adaptation protocol.
_str = str.__str__
_event_plain = attrgetter(
    "run_id",
    "request_id",
    "cycle",
    "stage",
    "component",
)
_llm_call_plain = attrgetter(
    "related_event_id",
    "prompt_hash",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "started_at",
    "status",
    "error",
    "prompt_text",
    "response_text",
)
_request_plain = attrgetter(
    "started_at",
    "finished_at",
    "latency_ms",
    "cost_usd",
    "policy_name",
    "policy_version",
)


def _node_run_row(r: NodeRun) -> tuple[Any, ...]:
    return (
        r.request_id,
        r.node,
        r.node_type,
        r.cycle,
        _str(r.status),
        1 if r.speculative else 0,
        _str(r.outcome),
        r.started_at,
        r.duration_ms,
        r.attempts,
        r.error,
    )


def _llm_call_row(c: LlmCall) -> tuple[Any, ...]:
    head = (
        c.request_id,
        c.node,
        c.cycle,
        c.model,
        c.provider,
        _str(c.call_kind),
        _str(c.call_outcome),
        _str(c.cache_status),
    )
    tail: tuple[Any, ...] = _llm_call_plain(c)
    return head + tail


def event_row(e: OrchestrationEvent) -> tuple[Any, ...]:
    head: tuple[Any, ...] = _event_plain(e)
    status = e.status
    return (
        *head,
        _str(e.event_type),
        e.decision,
        None if status is None else _str(status),
        e.sequence,
        e.started_at,
        e.duration_ms,
        _json_list(e.reason_codes),
        _json(e.inputs),
        _json(e.outputs),
        _json(e.payload),
    )


def _trace_row(t: DecisionTrace) -> tuple[Any, ...]:
    return (t.request_id, t.cycle, t.stage, _json(t.payload) or "{}")


def _request_row(r: RequestRecord) -> tuple[Any, ...]:
    middle: tuple[Any, ...] = _request_plain(r)
    head = (
        r.id,
        r.run_id,
        r.seq,
        r.conversation_id,
        r.turn_index,
        r.parent_request_id,
        r.tenant,
        _str(r.status),
    )
    return (*head, *middle, r.stored_input_hash(), _json(r.output), r.error)


# Order matters: `requests` rows are inserted last within each transaction.
_TABLES: tuple[tuple[type[Any], str, Callable[[Any], tuple[Any, ...]]], ...] = (
    (OrchestrationEvent, EVENT_SQL, event_row),
    (NodeRun, _NODE_RUN_SQL, _node_run_row),
    (LlmCall, _LLM_CALL_SQL, _llm_call_row),
    (DecisionTrace, _TRACE_SQL, _trace_row),
    (RequestRecord, _REQUEST_SQL, _request_row),
)
_SLOT = {kind: index for index, (kind, _, _) in enumerate(_TABLES)}
# Per table (in `_TABLES` order), the positions of the JSON columns large enough to be
# worth compressing (`engine.store.codec`): payloads, inputs/outputs and the output.
_PACKED: tuple[tuple[int, ...], ...] = ((12, 13, 14), (), (), (3,), (15,))


# Per table (in `_TABLES` order), the column holding the request id (`requests.id`).
_REQUEST_COLUMN = (1, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """Records already encoded as the store's rows (by `encode_records`), one list per
    table in `_TABLES` order; JSON columns are text (compression is the writer's)."""

    tables: tuple[list[tuple[Any, ...]], ...]

    @property
    def count(self) -> int:
        return sum(len(rows) for rows in self.tables)

    def without(self, request_ids: set[str]) -> EncodedRows:
        """These rows but those of `request_ids` (requests stored already)."""
        return EncodedRows(
            tuple(
                [row for row in rows if row[column] not in request_ids]
                for rows, column in zip(self.tables, _REQUEST_COLUMN, strict=True)
            )
        )


def encode_records(
    records: Sequence[Record], pack: Callable[[str | None], str | bytes | None] | None = None
) -> EncodedRows:
    """The rows `StoreWriter` would write for `records` (same order rules: `requests`
    rows are written last in the transaction that takes them), their large JSON values
    compressed with `pack` (`codec.frame_packer`) when given, else by the writer.

    Raises:
        TypeError: a record is not of a stored kind.
    """
    tables: list[list[tuple[Any, ...]]] = [[] for _ in _TABLES]
    for item in records:
        slot = _SLOT.get(type(item))
        if slot is None:
            raise TypeError(f"not a store record: {type(item).__name__}")
        tables[slot].append(_TABLES[slot][2](item))
    if pack is not None:
        for index, columns in enumerate(_PACKED):
            if columns:
                tables[index] = [_packed_row(row, columns, pack) for row in tables[index]]
    return EncodedRows(tuple(tables))


def _packed_row(
    row: tuple[Any, ...], columns: tuple[int, ...], pack: Callable[[str | None], Any]
) -> tuple[Any, ...]:
    if not any(type(row[i]) is str and len(row[i]) >= 64 for i in columns):
        return row
    values = list(row)
    for i in columns:
        if type(values[i]) is str:
            values[i] = pack(values[i])
    return tuple(values)


class _FlushMarker:
    """Queued by `flush`; set once everything queued before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


@dataclass(slots=True)
class WriterStats:
    """Counters of one writer, for benchmarks and diagnostics."""

    records: int = 0
    """Records committed."""
    transactions: int = 0
    """Transactions committed."""
    dropped: int = 0
    """Records lost to a write error (see `StoreWriter.flush`)."""
    cpu_s: float = 0.0
    """CPU seconds the writer thread spent writing: a load-independent cost measure."""


class StoreWriter:
    """A `Sink` that writes records to the store in batches from a background thread.

    Args:
        path: the store file (created and migrated if needed).
        batch_size: wake the writer as soon as this many records wait.
        interval_s: otherwise write whatever waits at this interval.
        max_batch: most records written in one transaction.

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
        max_batch: int = 50_000,
    ) -> None:
        self.path = Path(path)
        self.stats = WriterStats()
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._max_batch = max_batch
        self._queue: deque[Record | EncodedRows | _FlushMarker] = deque()
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
        except StoreError:
            conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="moat-store-writer", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    def record(self, item: Record | EncodedRows) -> None:
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
        self._queue.append(marker)
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not marker.done.wait(0.1):
            if not self._thread.is_alive():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise StoreError(f"{self.path}: flushing the store took longer than {timeout}s")
        self._raise_if_failed()

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
        error, self._error = self._error, None
        if error is not None:
            raise StoreError(
                f"{self.path}: writing to the store failed "
                f"({describe_error(error, self.path)}); {self.stats.dropped} records dropped "
                "so far"
            ) from error

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

    def _drain(self) -> tuple[list[list[Any]], list[_FlushMarker]]:
        """The queued records by table, then (in the same lists after `len(_TABLES)`) the
        pre-encoded rows by table; and the flush markers reached."""
        groups: list[list[Any]] = [[] for _ in range(2 * len(_TABLES))]
        markers: list[_FlushMarker] = []
        queue = self._queue
        taken = 0
        while queue and taken < self._max_batch:
            item = queue.popleft()
            taken += 1
            slot = _SLOT.get(type(item))
            if slot is not None:
                groups[slot].append(item)
            elif type(item) is EncodedRows:
                for index, rows in enumerate(item.tables):
                    groups[len(_TABLES) + index] += rows
                taken += item.count
            elif isinstance(item, _FlushMarker):
                markers.append(item)
            else:
                self.stats.dropped += 1
                self._error = TypeError(f"not a store record: {type(item).__name__}")
        return groups, markers

    def _write_batch(self, conn: sqlite3.Connection) -> None:
        started = time.thread_time()
        groups, markers = self._drain()
        count = sum(len(group) for group in groups)
        if count:
            try:
                self.stats.records += self._commit(conn, groups)
                self.stats.transactions += 1
            except Exception as exc:  # the thread must survive anything a batch does
                self.stats.dropped += count
                self._error = exc
        self.stats.cpu_s += time.thread_time() - started
        for marker in markers:
            marker.done.set()

    def _rows(self, groups: list[list[Any]]) -> list[list[tuple[Any, ...]]]:
        rows: list[list[tuple[Any, ...]]] = []
        plain, encoded = groups[: len(_TABLES)], groups[len(_TABLES) :]
        for group, ready, (_, _, build), packed in zip(
            plain, encoded, _TABLES, _PACKED, strict=True
        ):
            try:
                built = [build(item) for item in group]
            except Exception:
                built = self._rows_one_by_one(group, build)
            built += ready
            rows.append(self._pack(built, packed) if packed else built)
        return rows

    def _pack(self, rows: list[tuple[Any, ...]], columns: tuple[int, ...]) -> list[tuple[Any, ...]]:
        """Compress the large JSON values of `rows` (see `engine.store.codec`)."""
        pack = self._packer.pack
        return [_packed_row(row, columns, pack) for row in rows]

    def _rows_one_by_one(
        self, group: list[Any], build: Callable[[Any], tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """Keep every record that encodes; count (and report) the ones that do not."""
        rows = []
        for item in group:
            try:
                rows.append(build(item))
            except Exception as exc:  # e.g. a payload JSON cannot encode (circular)
                self.stats.dropped += 1
                self._error = exc
        return rows

    def _commit(self, conn: sqlite3.Connection, groups: list[list[Any]]) -> int:
        """Write the groups in one transaction (waiting out other processes' write locks,
        see `write_transaction`); return the rows written."""
        rows = self._rows(groups)
        with write_transaction(conn, self.path):
            for batch, (_, sql, _) in zip(rows, _TABLES, strict=True):
                if batch:
                    conn.executemany(sql, batch)
            self._packer.maybe_train(conn)
        self._packer.committed()
        return sum(len(batch) for batch in rows)
