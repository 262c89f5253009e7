"""How records become the store's rows: the contract's rows and the compact rows written.

A record is first a row of the contract's tables (`event_row`, `encode_records`: what the
policy manager's own events and a Ray worker's pre-encoded batches use), and the writer
turns records, or such rows, into rows of the compact tables (`engine.store.compact`)
inside its write transaction, where new string codes and request keys are inserted as
they are met. A Ray worker told the store's codes encodes whole requests as compact rows
itself (`CompactRows`): the writer then only gives each request its key.
`TABLES` lists, per kind of record, its compact table's INSERT and builder, in the order a
transaction writes them (`requests` rows last).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from engine.events import (
    DecisionTrace,
    LlmCall,
    NodeRun,
    OrchestrationEvent,
    Record,
    RequestRecord,
)
from engine.store._mend import mended
from engine.store.compact import (
    _INTERN_AT,
    _INTERN_MAX_CHARS,
    _LABELS_MAX,
    _SEEN_MAX,
    Compactor,
    _round,
    offset_us,
)

__all__ = [
    "EMIT_JSON_LIMIT",
    "EVENT_SQL",
    "FROM_ROW",
    "INTERN_AT",
    "INTERN_MAX_CHARS",
    "OFTEN_NULL",
    "SEEN_MAX",
    "SLOT",
    "TABLES",
    "Build",
    "CompactRows",
    "EncodedRows",
    "Pack",
    "codes_since",
    "encode_records",
    "event_row",
    "json_column",
    "llm_row",
    "node_row",
    "reasons_column",
]

EVENT_SQL = (  # also the policy manager's events (policy_ops), in their transactions
    "INSERT INTO orchestration_events (run_id, request_id, cycle, stage, component, "
    "event_type, decision, status, sequence, started_at, duration_ms, reason_codes_json, "
    "inputs_json, outputs_json, payload_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
# The batching writer writes the compact tables directly (`engine.store.compact`).
_EVENT_ROWS_SQL = (
    "INSERT INTO event_rows (rk, run, cycle, stage, component, type, decision, status, "
    "sequence, at, duration_ms, reasons, inputs, outputs, payload) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_NODE_ROWS_SQL = (
    "INSERT INTO node_rows (rk, node, node_type, cycle, status, speculative, outcome, at, "
    "duration_us, attempts, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_LLM_ROWS_SQL = (
    "INSERT INTO llm_rows (rk, node, cycle, model, provider, call_kind, call_outcome, "
    "cache_status, related_event_id, prompt_hash, input_tokens, output_tokens, cost_usd, "
    "latency_ms, at, status, error, prompt_text, response_text) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_TRACE_ROWS_SQL = "INSERT INTO trace_rows (rk, cycle, stage, payload) VALUES (?,?,?,?)"
# IGNORE: a request id stored already keeps its record (nothing recorded is ever lost or
# overwritten), and a duplicate must never abort a whole batch. `Pipeline` refuses a seq a
# run answered already before it runs; the writer counts any that still get here.
_REQUEST_SQL = (
    "INSERT OR IGNORE INTO requests (id, run_id, seq, conversation_id, turn_index, "
    "parent_request_id, tenant, status, started_at, finished_at, latency_ms, cost_usd, "
    "policy_name, policy_version, input_hash, output_json, error) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)

_EMPTY_LIST = "[]"
# JSON columns are encoded with ONE reusable C encoder (no circular-reference markers):
# `json.dumps` builds a new encoder object per call, which was a third of the writer's
# time. Falls back to the pure-Python encoder where the C speedups are missing.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encoder = (  # allow_nan=False: strict JSON; a record with NaN is stored `mended`
    _make_c_encoder(
        None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    if _make_c_encoder is not None
    else None
)


def _encode(value: object) -> str:
    if _c_encoder is None:
        return json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
    return "".join(_c_encoder(value, 0))


# Reason codes repeat a lot; their encodings are kept (bounded) by value.
_reason_cache: dict[tuple[str, ...], str] = {}


def _json(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return _encode(value)


EMIT_JSON_LIMIT = 64 * 1024
"""The most bytes of JSON an event's `inputs`, `outputs` or `payload` (or a trace's
payload) is stored with. A record explains a decision; a bigger value is data (a document,
a corpus), so what is stored instead says so: its size, the limit, its SHA-256 and its
first characters. Applied here, where the writer encodes it anyway, so `ctx.emit` pays
nothing for it on the request path."""
_HEAD_CHARS = 200


def _record_json(value: Mapping[str, Any] | None) -> str | None:
    """`_json` of an event's or trace's free-form value, held to `EMIT_JSON_LIMIT`."""
    if value is None:
        return None
    return _held(_encode(value))


def _held(text: str) -> str:
    if len(text) <= EMIT_JSON_LIMIT:  # (ASCII: as many bytes as characters)
        return text
    return _encode(
        {
            "oversized": {
                "bytes": len(text),
                "limit": EMIT_JSON_LIMIT,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "head": text[:_HEAD_CHARS],
            }
        }
    )


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
_request_plain = attrgetter(
    "started_at",
    "finished_at",
    "latency_ms",
    "cost_usd",
    "policy_name",
    "policy_version",
)
Pack = Callable[[str | None], str | bytes | None]


def _value(cx: Compactor, pack: Pack, text: str | None) -> str | bytes | int | None:
    """A JSON column's stored value: a `strings` code if it repeats, else (compressed
    when large) the text."""
    value = cx.maybe(text)
    if type(value) is str and len(value) >= 64:
        return pack(value)
    return value


def _shared(cx: Compactor, pack: Pack, value: Mapping[str, Any]) -> str | bytes | int | None:
    """`_value` of a JSON column's mapping, found by identity when the same object was
    stored before (`Compactor.payloads`)."""
    kept = cx.payloads.get(id(value))
    if kept is not None and kept[0] is value:
        return kept[1]
    text = _held(_encode(value))
    stored = _value(cx, pack, text)
    cx.keep(value, text, stored)
    return stored


def event_row(e: OrchestrationEvent) -> tuple[Any, ...]:
    """The contract's `orchestration_events` columns of `e` (without `id`), for writes
    through the view (`EVENT_SQL`)."""
    status = e.status
    return (
        e.run_id,
        e.request_id,
        e.cycle,
        e.stage,
        e.component,
        _str(e.event_type),
        e.decision,
        None if status is None else _str(status),
        e.sequence,
        e.started_at,
        e.duration_ms,
        _json_list(e.reason_codes),
        _record_json(e.inputs),
        _record_json(e.outputs),
        _record_json(e.payload),
    )


def _event_rows(cx: Compactor, pack: Pack, e: OrchestrationEvent) -> tuple[Any, ...]:
    reasons = e.reason_codes
    labels = (e.run_id, e.stage, e.component, e.event_type, e.status, tuple(reasons))
    codes = cx.labels.get(labels) or _event_labels(cx, labels)
    run = codes[0]
    key, t0 = cx.event_key(e.request_id, run, e.started_at)
    decision = e.decision
    inputs, outputs, payload = e.inputs, e.outputs, e.payload
    return (
        key,
        run,
        e.cycle,
        codes[1],
        codes[2],
        codes[3],
        # TEXT, as the contract's column stored it (a number became its text)
        None
        if decision is None
        else cx.maybe(decision if type(decision) is str else str(decision)),
        codes[4],
        e.sequence,
        _round((e.started_at - t0) * 1e6),  # (`offset_us`, without its call)
        e.duration_ms,
        codes[5],
        None if inputs is None else _shared(cx, pack, inputs),
        None if outputs is None else _shared(cx, pack, outputs),
        None if payload is None else _shared(cx, pack, payload),
    )


# Label tuples (`Compactor.labels`): an event's starts with its run id (a text), a node
# run's with `_NODE`.
_NODE = 1


def _event_labels(cx: Compactor, labels: tuple[Any, ...]) -> tuple[Any, ...]:
    run_id, stage, component, event_type, status, reasons = labels
    code = cx.code
    found = (
        code(run_id),
        code(stage),
        code(component),
        code(_str(event_type)),
        None if status is None else code(_str(status)),
        code(_json_list(reasons)),
    )
    return _remember(cx, labels, found)


def _remember(cx: Compactor, labels: tuple[Any, ...], codes: tuple[Any, ...]) -> tuple[Any, ...]:
    memo = cx.labels
    if len(memo) >= _LABELS_MAX:
        memo.clear()
    memo[labels] = codes
    return codes


def node_row(code: Callable[[str], int], key: int, t0: float, r: NodeRun) -> tuple[Any, ...]:
    """A `node_rows` row of request `key` (whose times count from `t0`); `code` gives a
    text's `strings` code (the writer's `Compactor.code`, a worker's known codes)."""
    return _node_tuple(key, t0, r, _node_codes(code, r))


def _node_codes(code: Callable[[str], int], r: NodeRun) -> tuple[int, ...]:
    return (code(r.node), code(r.node_type), code(_str(r.status)), code(_str(r.outcome)))


def _node_tuple(key: int, t0: float, r: NodeRun, codes: tuple[Any, ...]) -> tuple[Any, ...]:
    return (
        key,
        codes[0],
        codes[1],
        r.cycle,
        codes[2],
        1 if r.speculative else 0,
        codes[3],
        offset_us(r.started_at, t0),
        round(r.duration_ms * 1000),
        r.attempts,
        r.error,
    )


def llm_row(code: Callable[[str], int], key: int, t0: float, c: LlmCall) -> tuple[Any, ...]:
    """An `llm_rows` row of request `key`, as `node_row` builds a node run's."""
    return (
        key,
        code(c.node),
        c.cycle,
        code(c.model),
        code(c.provider),
        code(_str(c.call_kind)),
        code(_str(c.call_outcome)),
        code(_str(c.cache_status)),
        c.related_event_id,
        c.prompt_hash,
        c.input_tokens,
        c.output_tokens,
        c.cost_usd,
        c.latency_ms,
        offset_us(c.started_at, t0),
        code(c.status),
        c.error,
        c.prompt_text,
        c.response_text,
    )


def _node_rows(cx: Compactor, pack: Pack, r: NodeRun) -> tuple[Any, ...]:
    key, t0 = cx.key(r.request_id, r.started_at)
    labels = (_NODE, r.node, r.node_type, r.status, r.outcome)
    codes = cx.labels.get(labels) or _remember(cx, labels, _node_codes(cx.code, r))
    return _node_tuple(key, t0, r, codes)


def _llm_rows(cx: Compactor, pack: Pack, c: LlmCall) -> tuple[Any, ...]:
    key, t0 = cx.key(c.request_id, c.started_at)
    return llm_row(cx.code, key, t0, c)


def _trace_rows(cx: Compactor, pack: Pack, t: DecisionTrace) -> tuple[Any, ...]:
    key, _ = cx.key(t.request_id, 0.0)
    return (key, t.cycle, cx.code(t.stage), _value(cx, pack, _record_json(t.payload) or "{}"))


def _request_row(cx: Compactor, pack: Pack, r: RequestRecord) -> tuple[Any, ...]:
    return _request_from_row(cx, pack, _request_contract_row(r))


# Pre-encoded rows (`EncodedRows`): a process that is not the writer (a Ray worker) turns
# its records into the contract's columns, tuples of plain values that are cheap to send
# and to unpickle; the writer then only maps names to codes and times to offsets.


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
    return (
        c.request_id,
        c.node,
        c.cycle,
        c.model,
        c.provider,
        _str(c.call_kind),
        _str(c.call_outcome),
        _str(c.cache_status),
        c.related_event_id,
        c.prompt_hash,
        c.input_tokens,
        c.output_tokens,
        c.cost_usd,
        c.latency_ms,
        c.started_at,
        c.status,
        c.error,
        c.prompt_text,
        c.response_text,
    )


def _trace_row(t: DecisionTrace) -> tuple[Any, ...]:
    return (t.request_id, t.cycle, t.stage, _record_json(t.payload) or "{}")


def _request_contract_row(r: RequestRecord) -> tuple[Any, ...]:
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
    middle: tuple[Any, ...] = _request_plain(r)
    return (*head, *middle, r.stored_input_hash(), _json(r.output), r.error)


def _stored(cx: Compactor, pack: Pack, value: str | bytes | None) -> str | bytes | int | None:
    """A JSON column's stored value; one the sender compressed already stays as it is."""
    return value if type(value) is bytes else _value(cx, pack, value)  # type: ignore[arg-type]


def _event_from_row(cx: Compactor, pack: Pack, t: tuple[Any, ...]) -> tuple[Any, ...]:
    code = cx.code
    run = code(t[0])
    key, t0 = cx.event_key(t[1], run, t[9])
    decision, status = t[6], t[7]
    if decision is not None and type(decision) is not str:
        decision = str(decision)  # TEXT, as the contract's column stored it
    return (
        key,
        run,
        t[2],
        code(t[3]),
        code(t[4]),
        code(t[5]),
        None if decision is None else cx.maybe(decision),
        None if status is None else code(status),
        t[8],
        offset_us(t[9], t0),
        t[10],
        code(t[11]),
        _stored(cx, pack, t[12]),
        _stored(cx, pack, t[13]),
        _stored(cx, pack, t[14]),
    )


def _node_from_row(cx: Compactor, pack: Pack, t: tuple[Any, ...]) -> tuple[Any, ...]:
    code = cx.code
    key, t0 = cx.key(t[0], t[7])
    return (
        key,
        code(t[1]),
        code(t[2]),
        t[3],
        code(t[4]),
        t[5],
        code(t[6]),
        offset_us(t[7], t0),
        round(t[8] * 1000),
        t[9],
        t[10],
    )


def _llm_from_row(cx: Compactor, pack: Pack, t: tuple[Any, ...]) -> tuple[Any, ...]:
    code = cx.code
    key, t0 = cx.key(t[0], t[14])
    return (
        key,
        code(t[1]),
        t[2],
        code(t[3]),
        code(t[4]),
        code(t[5]),
        code(t[6]),
        code(t[7]),
        *t[8:14],
        offset_us(t[14], t0),
        code(t[15]),
        *t[16:19],
    )


def _trace_from_row(cx: Compactor, pack: Pack, t: tuple[Any, ...]) -> tuple[Any, ...]:
    key, _ = cx.key(t[0], 0.0)
    return (key, t[1], cx.code(t[2]), _stored(cx, pack, t[3]))


def _request_from_row(cx: Compactor, pack: Pack, t: tuple[Any, ...]) -> tuple[Any, ...]:
    output = t[-2]
    if type(output) is str and len(output) >= 64:
        t = (*t[:-2], pack(output), t[-1])
    cx.finished(t[0], t[1])
    return t


_CONTRACT: tuple[Callable[[Any], tuple[Any, ...]], ...] = (
    event_row,
    _node_run_row,
    _llm_call_row,
    _trace_row,
    _request_contract_row,
)
"""Per table (in `TABLES` order), the contract's row of a record."""
FROM_ROW: tuple[Callable[[Compactor, Pack, tuple[Any, ...]], tuple[Any, ...]], ...] = (
    _event_from_row,
    _node_from_row,
    _llm_from_row,
    _trace_from_row,
    _request_from_row,
)
"""Per table, the compact row of a contract row."""
_PACKED: tuple[tuple[int, ...], ...] = ((12, 13, 14), (), (), (3,), (15,))
"""Per table, the contract row's JSON columns large enough to be worth compressing."""
_REQUEST_COLUMN = (1, 0, 0, 0, 0)
"""Per table, the contract row's column holding the request id."""


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """Records already encoded as the contract's rows (by `encode_records`), one list per
    table in `TABLES` order; large JSON values may be compressed already."""

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


def encode_records(records: Sequence[Record], pack: Pack | None = None) -> EncodedRows:
    """The contract's rows of `records`, by table, their large JSON values compressed with
    `pack` (`codec.frame_packer`, the store's dictionary) when given, else by the writer.

    Raises:
        TypeError: a record is not of a stored kind.
    """
    tables: list[list[tuple[Any, ...]]] = [[] for _ in TABLES]
    for item in records:
        slot = SLOT.get(type(item))
        if slot is None:
            raise TypeError(f"not a store record: {type(item).__name__}")
        try:
            row = _CONTRACT[slot](item)
        except Exception:  # a node's odd payload: as the writer does, mended
            again = mended(item)
            if again is None:
                raise
            row = _CONTRACT[slot](again)
        tables[slot].append(row)
    if pack is not None:
        for index, columns in enumerate(_PACKED):
            if columns:
                tables[index] = [_packed_row(row, columns, pack) for row in tables[index]]
    return EncodedRows(tuple(tables))


def _packed_row(row: tuple[Any, ...], columns: tuple[int, ...], pack: Pack) -> tuple[Any, ...]:
    if not any(type(row[i]) is str and len(row[i]) >= 64 for i in columns):
        return row
    values = list(row)
    for i in columns:
        if type(values[i]) is str and len(values[i]) >= 64:
            values[i] = pack(values[i])
    return tuple(values)


Build = Callable[[Compactor, Pack, Any], tuple[Any, ...]]
# Order matters: `requests` rows are inserted last within each transaction.
TABLES: tuple[tuple[type[Any], str, Build], ...] = (
    (OrchestrationEvent, _EVENT_ROWS_SQL, _event_rows),
    (NodeRun, _NODE_ROWS_SQL, _node_rows),
    (LlmCall, _LLM_ROWS_SQL, _llm_rows),
    (DecisionTrace, _TRACE_ROWS_SQL, _trace_rows),
    (RequestRecord, _REQUEST_SQL, _request_row),
)
SLOT = {kind: index for index, (kind, _, _) in enumerate(TABLES)}
OFTEN_NULL: tuple[tuple[int, ...], ...] = (
    (7, 10, 12, 13),  # an event's status, duration_ms, inputs, outputs
    (10,),  # a node run's error
    (8, 16, 17, 18),  # an LLM call's related_event_id, error, prompt and response texts
    (),
    (3, 4, 5, 13, 16),  # a request's conversation, turn, parent, policy version, error
)
"""Per table, the columns of its compact rows (as built, `rk` first) that are usually
NULL: the writer writes NULL into its INSERT for those that are in all its rows."""


# Compact rows (`CompactRows`): a process that is not the writer, told the `strings` codes
# the store has (they are never deleted, so a code once committed stays valid), encodes
# whole requests as the compact tables' rows (`engine.cluster.encoder.RowEncoder`); the
# writer only gives each request its key.

INTERN_AT, INTERN_MAX_CHARS, SEEN_MAX = _INTERN_AT, _INTERN_MAX_CHARS, _SEEN_MAX
"""`Compactor.maybe`'s rules, for an encoder of compact rows elsewhere."""
json_column = _json
"""A mapping as its JSON column's text (None stays None)."""
reasons_column = _json_list
"""A reason-code list as its column's JSON text."""


def codes_since(conn: sqlite3.Connection, last: int) -> dict[str, int]:
    """The `strings` codes above `last` (text -> code), for an encoder of compact rows."""
    return {
        text: code
        for code, text in conn.execute(
            "SELECT code, text FROM strings WHERE code > ? ORDER BY code", (last,)
        )
    }


_AT_COLUMN = (9, 7, 14, None)
"""Per compact table (events, node runs, LLM calls, traces), the column of `at`."""


@dataclass(frozen=True, slots=True)
class CompactRows:
    """Whole requests encoded as the compact tables' rows (by a Ray worker), plus the rows
    it could not encode so (`rest`, the contract's rows: requests naming a text with no
    code yet, run-level events, and every `requests` row).

    In `tables` (events, node runs, LLM calls, traces) a row's `rk` is the index of its
    request in `requests` (`(request id, run id, t0)`, None once dropped by `without`) and
    its `at` is microseconds after that `t0`; the writer maps the index to the request's
    key. `intern` lists short texts seen often enough to deserve a code (as the writer's
    `Compactor.maybe` would have given them).
    """

    requests: list[tuple[str, str, float] | None]
    tables: tuple[list[tuple[Any, ...]], ...]
    rest: EncodedRows
    intern: list[str]

    @property
    def count(self) -> int:
        return sum(len(rows) for rows in self.tables) + self.rest.count

    def without(self, request_ids: set[str]) -> CompactRows:
        """These rows but those of `request_ids` (requests stored already)."""
        dropped = {
            index
            for index, request in enumerate(self.requests)
            if request is not None and request[0] in request_ids
        }
        return CompactRows(
            [None if index in dropped else request for index, request in enumerate(self.requests)],
            tuple([row for row in rows if row[0] not in dropped] for rows in self.tables),
            self.rest.without(request_ids),
            self.intern,
        )

    def keyed(self, cx: Compactor) -> tuple[list[tuple[Any, ...]], ...]:
        """The rows with each request's key in `rk` (made or found by `cx`, inside the
        writer's transaction), and the requested texts interned."""
        for text in self.intern:
            cx.code(text)
        keys: list[int] = []
        shifts: dict[int, int] = {}
        for index, request in enumerate(self.requests):
            if request is None:
                keys.append(0)
                continue
            request_id, run_id, t0 = request
            key, found_t0 = cx.event_key(request_id, cx.code(run_id), t0)
            keys.append(key)
            if found_t0 != t0:  # a key made before (by another path): times move to it
                shifts[index] = offset_us(t0, found_t0)
        tables = self.tables
        if shifts:
            tables = tuple(
                rows if at is None else [_shifted(row, at, shifts.get(row[0], 0)) for row in rows]
                for rows, at in zip(tables, _AT_COLUMN, strict=True)
            )
        return tuple([(keys[row[0]], *row[1:]) for row in rows] for rows in tables)


def _shifted(row: tuple[Any, ...], at: int, shift: int) -> tuple[Any, ...]:
    """`row` with its `at` moved by `shift` microseconds (to its key's t0)."""
    if not shift:
        return row
    values = list(row)
    values[at] += shift
    return tuple(values)
