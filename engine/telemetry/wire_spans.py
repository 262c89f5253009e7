"""A finished request's spans written as OTLP protobuf bytes straight from its records.

A flagship request yields about 18 spans and 25 span events. Building them as the SDK's
`ReadableSpan`s (a `SpanContext`, an attribute dict, an `Event` per decision) and then
encoding those cost about 1 ms per request, most of the tracing overhead; this writes the
`Span` messages directly from the `NodeRun`, `LlmCall`, `OrchestrationEvent` and
`RequestRecord` fields, with no object per span. What recurs is encoded once and kept:
each attribute whose value repeats (a status, an outcome, a model, a node's name, a set
of reason codes) as whole `KeyValue` bytes (`Pairs`), the per-key prefix of every double
(costs, latencies), the span name of each node; the trace id and trace state once per
request; the span ids of a request come from one `random.randbytes` call.

What a span holds (the contract the OTLP receiver test checks):

- the request: `request GRAPH`, SERVER for `moat serve` else INTERNAL, `moat.graph`,
  `moat.request.*`, `moat.run.id`, tenant, policy, input hash, the decisions of no node
  as events, ERROR status when the request failed;
- a node run: `NODE_TYPE NODE`, child of the request, `moat.node.id/status/outcome`, and
  `speculative`, `cycle`, `attempts` when not the default; its decisions as events;
- an LLM call: `chat MODEL` (CLIENT), child of its node, the GenAI semantic conventions
  (`gen_ai.system`, `gen_ai.request.model`, usage tokens, finish reasons) plus cost,
  call kind and outcome, the prompt hash, and text only when the record carries it (the
  policy's `store_text`);
- a cache lookup: `cache.lookup NODE`, child of its node, with `moat.cache.result`.

Event payloads contribute only their numbers and booleans, never strings (they may hold
request text).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from engine.events import LlmCall, NodeRun, OrchestrationEvent, RequestRecord
from engine.stats import FAILED_STATUSES
from engine.telemetry.feed import FinishedRequest
from engine.telemetry.otlp_wire import LENGTHS, Pairs, double_prefix, field, key_value, text, varint

__all__ = ["RequestSpans", "span_ids"]

_SPAN = b"\x12"  # ScopeSpans.spans
_ATTR = b"\x4a"  # Span.attributes
_EVENT_ATTR = b"\x1a"  # Span.Event.attributes
_EVENT = b"\x5a"  # Span.events
_INTERNAL, _SERVER, _CLIENT = b"\x30\x01", b"\x30\x02", b"\x30\x03"
_TIMES = struct.Struct("<BQBQ").pack
"""`start_time_unix_nano` (field 7) and `end_time_unix_nano` (field 8), fixed64 each."""
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_NS = 1_000_000_000
_NO_STATUS = b"\x7a\x00"  # the reference encoder always writes a status, UNSET when empty
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)  # HAS_IS_REMOTE, parent local
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)  # HAS_IS_REMOTE | IS_REMOTE
_ZERO_ID = bytes(8)

_CACHE_LOOKUPS = {"CACHE_HIT": "hit", "CACHE_MISS": "miss", "CACHE_NEGATIVE_HIT": "negative"}
_FAILED_NODE = frozenset({"failed", "timed_out"})
_FAILED_CALL = frozenset({"error", "timeout", "refused"})
_NOT_DECISIONS = frozenset({"RESULT_REUSED", "PRINCIPLES_REUSED"})
"""Memo hits, a dozen per request: counted on the request's span, not one event each."""
_FINISH = {"cancelled": "cancelled", "timeout": "timeout", "error": "error"}

_GRAPH = Pairs(_ATTR, "moat.graph")
_RUN = Pairs(_ATTR, "moat.run.id", limit=64)
_SEQ = Pairs(_ATTR, "moat.request.seq")
_STATUS = Pairs(_ATTR, "moat.request.status")
_REUSED = Pairs(_ATTR, "moat.request.results_reused")
_TENANT = Pairs(_ATTR, "moat.tenant")
_POLICY = Pairs(_ATTR, "moat.policy.name")
_POLICY_VERSION = Pairs(_ATTR, "moat.policy.version")
_LATENCY = double_prefix(_ATTR, "moat.request.latency_ms")
_COST = double_prefix(_ATTR, "moat.request.cost_usd")
_SIMULATED = key_value(_ATTR, "moat.simulated", True)

_NODE = Pairs(_ATTR, "moat.node.id")
_NODE_STATUS = Pairs(_ATTR, "moat.node.status")
_OUTCOME = Pairs(_ATTR, "moat.node.outcome")
_SPECULATIVE = key_value(_ATTR, "moat.node.speculative", True)
_CYCLE = Pairs(_ATTR, "moat.node.cycle")
_ATTEMPTS = Pairs(_ATTR, "moat.node.attempts")

_CHAT = key_value(_ATTR, "gen_ai.operation.name", "chat")
_SYSTEM = Pairs(_ATTR, "gen_ai.system")
_MODEL = Pairs(_ATTR, "gen_ai.request.model")
_INPUT_TOKENS = Pairs(_ATTR, "gen_ai.usage.input_tokens")
_OUTPUT_TOKENS = Pairs(_ATTR, "gen_ai.usage.output_tokens")
_FINISH_REASONS = Pairs(_ATTR, "gen_ai.response.finish_reasons")
_LOGICAL_MODEL = Pairs(_ATTR, "moat.llm.model")
_CALL_COST = double_prefix(_ATTR, "moat.llm.cost_usd")
_CALL_STATUS = Pairs(_ATTR, "moat.llm.status")
_CALL_KIND = Pairs(_ATTR, "moat.llm.call_kind")
_CALL_OUTCOME = Pairs(_ATTR, "moat.llm.call_outcome")
_CACHE_STATUS = Pairs(_ATTR, "moat.llm.cache_status")
_CANCELLED = key_value(_ATTR, "moat.llm.cancelled", True)
_ERROR_TYPE = Pairs(_ATTR, "error.type")

_EVENT_PAIRS = {
    tag: (
        Pairs(tag, "moat.event.reason_codes"),
        Pairs(tag, "moat.event.decision"),
        Pairs(tag, "moat.event.status"),
    )
    for tag in (_EVENT_ATTR, _ATTR)  # a cache lookup's span has its event's attributes
}
_LOOKUP = {
    result: key_value(_ATTR, "moat.cache.result", result) for result in _CACHE_LOOKUPS.values()
}
_DOUBLE_KEYS: dict[str, bytes] = {}
_NUMBER_PAIRS: dict[tuple[str, type, int], bytes] = {}
_UNSET_LOCAL = _NO_STATUS + _FLAGS_LOCAL
_T = TypeVar("_T")


class _Kept(dict[Any, _T]):
    """Encodings built once per key by `build` (at most `limit` keys kept)."""

    __slots__ = ("build", "limit")

    def __init__(self, build: Callable[[Any], _T], limit: int = 4096) -> None:
        super().__init__()
        self.build = build
        self.limit = limit

    def __missing__(self, key: Any) -> _T:
        encoded = self.build(key)
        if len(self) < self.limit:
            self[key] = encoded
        return encoded


def _node_name(key: tuple[str, str]) -> bytes:
    """A node's span name, kind and `moat.node.id`: the same for every run of it."""
    node_type, node = key
    return text(b"\x2a", f"{node_type} {node}") + _INTERNAL + _NODE[node]


def _run_state(key: tuple[str, str, bool, int, int]) -> bytes:
    """A node run's status and outcome, and what is not the default of its flag and counts
    (speculative, cycle, attempts), as attributes."""
    status, outcome, speculative, cycle, attempts = key
    encoded = _NODE_STATUS[status] + _OUTCOME[outcome]
    if speculative:
        encoded += _SPECULATIVE
    if cycle:
        encoded += _CYCLE[cycle]
    if attempts > 1:
        encoded += _ATTEMPTS[attempts]
    return encoded


_NAMES = _Kept(_node_name)
_RUN_STATES = _Kept(_run_state)


def span_ids(n: int) -> bytes:
    """`n` random span ids, 8 bytes each, none of them zero (invalid in OTLP)."""
    ids = random.randbytes(8 * n)
    while _ZERO_ID in ids:  # 2^-64 per id: the loop exists for correctness, not for speed
        ids = random.randbytes(8 * n)
    return ids


def _span(parts: list[bytes]) -> bytes:
    """A `ScopeSpans.spans` field of the joined `parts` (a span is under 16 KiB but for
    long texts or many events)."""
    body = b"".join(parts)
    n = len(body)
    return b"".join((_SPAN, LENGTHS[n] if n < 0x4000 else varint(n), body))


def _ns(seconds: float) -> int:
    return int(seconds * _NS)


def _error(message: str) -> bytes:
    """Status ERROR (code 2) with `message`."""
    return field(b"\x7a", text(b"\x12", message) + b"\x18\x02")


class RequestSpans:
    """Writes the spans of finished requests as encoded `Span` fields.

    Args:
        model_names: each logical model's provider model (`gen_ai.request.model`), per
            graph: `{"governed-answer": {"small": "sim-small"}}`.
        server: the requests arrive over HTTP (`moat serve`): root spans are SERVER spans.
        ids: where span ids come from (`span_ids`; deterministic ones in tests).
    """

    def __init__(
        self,
        model_names: Mapping[str, Mapping[str, str]],
        *,
        server: bool = False,
        ids: Callable[[int], bytes] = span_ids,
    ) -> None:
        self.model_names = model_names
        self.root_kind = _SERVER if server else _INTERNAL
        self.ids = ids

    def encode(
        self,
        request: FinishedRequest,
        trace_id: int,
        trace_state: str = "",
        parent: tuple[bytes, bool] | None = None,
    ) -> tuple[bytes, int]:
        """The request's spans (`ScopeSpans.spans` fields) and how many they are.

        Args:
            request: the finished request.
            trace_id: its trace's id.
            trace_state: the W3C `tracestate` its spans carry (`k=v,k2=v2`).
            parent: the caller's span id and whether it is remote, for a continued trace.
        """
        head = b"\x0a\x10" + trace_id.to_bytes(16, "big")
        if trace_state:
            head += text(b"\x1a", trace_state)
        runs, calls, events = request.node_runs, request.llm_calls, request.events
        ids = self.ids(1 + len(runs) + len(calls) + len(events))
        root = ids[:8]
        nodes: dict[tuple[str, int], bytes] = {}  # a node run's span, by node and cycle
        for i, run in enumerate(runs, 1):  # the span ids after the root's: the runs'
            nodes[(run.node, run.cycle)] = ids[8 * i : 8 * i + 8]
        at = 8 * (len(runs) + 1)
        out: list[bytes] = []
        by_node, reused, at = self._events(head, events, nodes, root, ids, at, out)
        models = self.model_names.get(request.graph, {})
        head_id, under_root = head + b"\x12\x08", b"\x22\x08" + root
        for call in calls:
            parent_id = nodes.get((call.node, call.cycle), root)
            out.append(_call(head_id, ids[at : at + 8], parent_id, call, models))
            at += 8
        for i, run in enumerate(runs, 1):
            span_id, key = ids[8 * i : 8 * i + 8], (run.node, run.cycle)
            # a node run twice in a cycle: its children and events go to the later run
            found = by_node.get(key) if nodes[key] == span_id else None
            out.append(_node(head_id, span_id, under_root, run, found))
        out.append(self._root(head, root, request, parent, reused, by_node.get(None)))
        return b"".join(out), len(out)

    def _events(
        self,
        head: bytes,
        events: Sequence[OrchestrationEvent],
        nodes: Mapping[tuple[str, int], bytes],
        root: bytes,
        ids: bytes,
        at: int,
        out: list[bytes],
    ) -> tuple[dict[Any, list[bytes]], int, int]:
        """Each decision as an event of its node's span (else the request's), a cache lookup
        also as a span of its own; returns the events by node, the memo hits and the next
        free span id's offset."""
        by_node: dict[Any, list[bytes]] = {}
        reused = 0
        signatures, stamp, lengths = _SIGNATURES, _FIXED64, LENGTHS
        for event in events:
            kind = event.event_type
            if kind in _NOT_DECISIONS:
                reused += 1
                continue
            codes = event.reason_codes
            opening, tail = signatures[
                (kind, event.decision, event.status, tuple(codes) if codes else ())
            ]
            payload = event.payload
            numbers = _numbers(payload) if payload else b""
            if numbers:
                n = 9 + len(tail) + len(numbers)
                encoded = b"".join(
                    (_EVENT, lengths[n] if n < 0x4000 else varint(n), b"\x09",
                     stamp(int(event.started_at * _NS)), tail, numbers)
                )  # fmt: skip
            else:
                encoded = opening + stamp(int(event.started_at * _NS)) + tail
            key: Any = (event.stage, event.cycle)
            found = by_node.get(key)
            if found is not None:
                found.append(encoded)
            elif key in nodes:
                by_node[key] = [encoded]
            else:
                key = None
                by_node.setdefault(None, []).append(encoded)
            if kind in _CACHE_LOOKUPS:
                parent = root if key is None else nodes[key]
                result = _CACHE_LOOKUPS[kind]
                out.append(_lookup(head, ids[at : at + 8], parent, event, result))
                at += 8
        return by_node, reused, at

    def _root(
        self,
        head: bytes,
        span_id: bytes,
        request: FinishedRequest,
        parent: tuple[bytes, bool] | None,
        reused: int,
        events: list[bytes] | None,
    ) -> bytes:
        record = request.record
        parts = [head, b"\x12\x08", span_id]
        if parent is not None:
            parts += (b"\x22\x08", parent[0])
        parts += (
            text(b"\x2a", f"request {request.graph}"),
            self.root_kind,
            _TIMES(0x39, _ns(record.started_at), 0x41, _ns(record.finished_at)),
            _GRAPH[request.graph],
            key_value(_ATTR, "moat.request.id", record.id),
            _RUN[record.run_id],
            _SEQ[record.seq],
            _STATUS[record.status],
            _LATENCY,
            _DOUBLE(record.latency_ms),
            _COST,
            _DOUBLE(record.cost_usd),
            _REUSED[reused],
            _optional(record),
        )
        if "sim" in {call.provider for call in request.llm_calls}:
            parts.append(_SIMULATED)  # figures of simulated models
        if events:
            parts += events
        if record.status in FAILED_STATUSES:
            parts.append(_error(record.error or str(record.status)))
        else:
            parts.append(_NO_STATUS)
        parts.append(_FLAGS_REMOTE if parent is not None and parent[1] else _FLAGS_LOCAL)
        return _span(parts)


def _call(
    head_id: bytes, span_id: bytes, parent: bytes, call: LlmCall, models: Mapping[str, str]
) -> bytes:
    """An LLM call's span, child of its node's (`parent`): what recurs (its model, state,
    finish) is kept, encoded, per value; tokens, cost, times and the prompt hash are not."""
    model = models.get(call.model, call.model)
    start = int(call.started_at * _NS)
    outcome = call.call_outcome
    parts = [
        head_id,
        span_id,
        b"\x22\x08",
        parent,
        _CHAT_NAMES[model],
        _TIMES(0x39, start, 0x41, start + int(call.latency_ms * 1_000_000)),
        _CALL_MODELS[(call.provider, model)],
        _INPUT_TOKENS[call.input_tokens],
        _OUTPUT_TOKENS[call.output_tokens],
        _COSTS[call.model],
        _DOUBLE(call.cost_usd),
        _CALL_STATES[(call.status, call.call_kind, outcome)],
        key_value(_ATTR, "moat.llm.prompt_hash", call.prompt_hash),
        _CALL_ENDS[(call.cache_status, outcome, call.finish_reason or _FINISH.get(call.status))],
    ]  # the node is the parent span's
    if call.prompt_text is not None or call.response_text is not None:
        parts.append(_texts(call))
    if call.status in _FAILED_CALL:
        parts += (_ERROR_TYPE[call.status], _error(call.error or call.status), _FLAGS_LOCAL)
    else:
        parts.append(_UNSET_LOCAL)
    return _span(parts)


def _call_models(key: tuple[str, str]) -> bytes:
    """A call's operation, system and provider model, as attributes."""
    provider, model = key
    return _CHAT + _SYSTEM[provider] + _MODEL[model]


def _call_ends(key: tuple[str, str, str | None]) -> bytes:
    """A call's cache status (when it used the cache), cancellation and finish reason."""
    cache_status, outcome, reason = key
    encoded = b""
    if cache_status != "none":
        encoded += _CACHE_STATUS[cache_status]
    if outcome == "cancelled":
        encoded += _CANCELLED
    if reason:
        encoded += _FINISH_REASONS[(reason,)]
    return encoded


_CHAT_NAMES = _Kept(lambda model: text(b"\x2a", f"chat {model}") + _CLIENT)
_CALL_MODELS = _Kept(_call_models)
_COSTS = _Kept(lambda model: _LOGICAL_MODEL[model] + _CALL_COST)
"""A call's logical model, then the prefix of its cost (the 8 bytes of the double follow)."""
_CALL_STATES = _Kept(lambda key: _CALL_STATUS[key[0]] + _CALL_KIND[key[1]] + _CALL_OUTCOME[key[2]])
_CALL_ENDS = _Kept(_call_ends)


def _node(
    head_id: bytes, span_id: bytes, under_root: bytes, run: NodeRun, events: list[bytes] | None
) -> bytes:
    """A node run's span: the trace id and span id (`head_id`, `span_id`), its parent
    (`under_root`), the kept name and attributes of its node and state, its events."""
    start = int(run.started_at * _NS)
    parts = [
        head_id,
        span_id,
        under_root,
        _NAMES[(run.node_type, run.node)],
        _TIMES(0x39, start, 0x41, start + int(run.duration_ms * 1_000_000)),
        _RUN_STATES[(run.status, run.outcome, run.speculative, run.cycle, run.attempts)],
    ]  # the type is in the name; defaults are left out (each attribute costs its export)
    if events:
        parts += events
    if run.status in _FAILED_NODE:
        parts += (_error(run.error or str(run.status)), _FLAGS_LOCAL)
    else:
        parts.append(_UNSET_LOCAL)
    return _span(parts)


def _optional(record: RequestRecord) -> bytes:
    """The request's attributes that only some requests have."""
    parts = []
    if record.tenant is not None:
        parts.append(_TENANT[record.tenant])
    if record.policy_name is not None:
        parts.append(_POLICY[record.policy_name])
    if record.policy_version is not None:
        parts.append(_POLICY_VERSION[record.policy_version])
    input_hash = record.stored_input_hash()
    if input_hash is not None:
        parts.append(key_value(_ATTR, "moat.request.input_hash", input_hash))
    if record.conversation_id is not None:
        parts.append(key_value(_ATTR, "moat.conversation.id", record.conversation_id))
    if record.parent_request_id is not None:
        parts.append(key_value(_ATTR, "moat.request.parent_id", record.parent_request_id))
    return b"".join(parts)


def _texts(call: LlmCall) -> bytes:
    """Prompt and answer, only when the record carries them (the policy's `store_text`)."""
    out = b""
    if call.prompt_text is not None:
        out += key_value(_ATTR, "gen_ai.prompt", call.prompt_text)
    if call.response_text is not None:
        out += key_value(_ATTR, "gen_ai.completion", call.response_text)
    return out


def _signature(
    signature: tuple[str, str | None, str | None, tuple[str, ...]],
) -> tuple[bytes, bytes]:
    """The fixed parts of an event: what precedes its time when its payload has no numbers
    (the `Span.events` tag, the length, the time's tag) and what follows it (its name,
    reason codes, decision and status)."""
    kind, decision, status, codes = signature
    reasons, decisions, statuses = _EVENT_PAIRS[_EVENT_ATTR]
    encoded = text(b"\x12", kind)
    if codes:
        encoded += reasons[codes]
    if decision is not None:
        encoded += decisions[decision]
    if status is not None:
        encoded += statuses[status]
    return field(_EVENT, b"\x09" + bytes(8) + encoded)[: -len(encoded) - 8], encoded


_SIGNATURES = _Kept(_signature)
"""An event's name, reason codes, decision and status, encoded (a few dozen recur)."""


def _numbers(payload: Mapping[str, Any]) -> bytes:
    """A payload's numbers and booleans as event attributes (strings may hold request text:
    never): a double is its key's kept prefix and 8 bytes, an int or a boolean a kept
    pair (counts and flags recur)."""
    parts: list[bytes] = []
    for key, value in payload.items():
        kind = type(value)
        if kind is float:
            prefix = _DOUBLE_KEYS.get(key)
            if prefix is None:
                prefix = _double_key(key)
            if prefix:
                parts += (prefix, _DOUBLE(value))
        elif kind is int or kind is bool:
            pair = _NUMBER_PAIRS.get((key, kind, value))
            if pair is None:
                pair = _number_pair(key, kind, value)
            parts.append(pair)
    return b"".join(parts)


def _double_key(key: Any) -> bytes:
    if type(key) is not str:
        return b""
    prefix = double_prefix(_EVENT_ATTR, f"moat.event.{key}")
    if len(_DOUBLE_KEYS) < 4096:
        _DOUBLE_KEYS[key] = prefix
    return prefix


def _number_pair(key: Any, kind: type, value: int) -> bytes:
    if type(key) is not str:
        return b""
    pair = key_value(_EVENT_ATTR, f"moat.event.{key}", value)
    if len(_NUMBER_PAIRS) >= 8192:  # open-ended counts: start again rather than grow
        _NUMBER_PAIRS.clear()
    _NUMBER_PAIRS[(key, kind, value)] = pair
    return pair


def _event_attributes(event: OrchestrationEvent, tag: bytes) -> bytes:
    """An event's attributes under `tag`, one by one (for a cache lookup's span: the fast
    path for span events is `_signature` and `_numbers`)."""
    reasons, decision, status = _EVENT_PAIRS[tag]
    parts = []
    if event.reason_codes:
        parts.append(reasons[tuple(event.reason_codes)])
    if event.decision is not None:
        parts.append(decision[event.decision])
    if event.status is not None:
        parts.append(status[event.status])
    payload = event.payload
    if payload:
        for key, value in payload.items():
            kind = type(value)
            if (kind is float or kind is int or kind is bool) and type(key) is str:
                parts.append(key_value(tag, f"moat.event.{key}", value))
    return b"".join(parts)


def _lookup(
    head: bytes,
    span_id: bytes,
    parent: bytes,
    event: OrchestrationEvent,
    result: str,
) -> bytes:
    """A cache lookup's span: the event's attributes (as span attributes) and its result."""
    start = _ns(event.started_at)
    end = start + int((event.duration_ms or 0.0) * 1_000_000)
    return field(
        _SPAN,
        b"".join(
            [
                head,
                b"\x12\x08",
                span_id,
                b"\x22\x08",
                parent,
                text(b"\x2a", f"cache.lookup {event.stage}"),
                _INTERNAL,
                _TIMES(0x39, start, 0x41, end),
                _event_attributes(event, _ATTR),
                _LOOKUP[result],
                _NO_STATUS,
                _FLAGS_LOCAL,
            ]
        ),
    )
