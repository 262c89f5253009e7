"""A finished request's spans written as OTLP protobuf bytes straight from its records.

A flagship request yields about 20 spans and 34 span events. Building them as the SDK's
`ReadableSpan`s (a `SpanContext`, an attribute dict, an `Event` per decision) and then
encoding those cost about 1 ms per request, most of the tracing overhead; this writes the
`Span` messages directly from the `NodeRun`, `LlmCall`, `OrchestrationEvent` and
`RequestRecord` fields, with no object per span. What recurs is encoded once and kept, as
a plan per shape: a node run's name, kind, id, status, outcome and flags, with a `struct`
that writes them around its times in one call (`_node_plan`); an LLM call's name, models,
state and ends (`_call_plan`); each decision event's opening and signature
(`wire_events`); attributes whose value repeats as whole `KeyValue` bytes (`Pairs`), and
those that do not (ids, hashes) from a prefix kept per length (`TextPairs`). The trace id
and trace state are encoded once per request; the span ids of a request come from one
`random.randbytes` call.

What a span holds (the contract the OTLP receiver test checks):

- the request: `request GRAPH`, SERVER for `moat serve` else INTERNAL, `moat.graph`,
  `moat.request.*`, `moat.run.id`, tenant, policy, input hash, the decisions of no node
  as events, ERROR status when the request failed;
- a node run: `NODE_TYPE NODE`, child of the request, `moat.node.id/status/outcome`, and
  `speculative`, `cycle`, `attempts` when not the default; its decisions as events (two
  runs of one node id in one cycle number, such as same-named body nodes of two loops,
  each hold their own decisions and children, told apart by the order the feed got the
  records in: `FinishedRequest.run_marks`);
- an LLM call: `chat MODEL` (CLIENT), child of its node, the GenAI semantic conventions
  (`gen_ai.system`, `gen_ai.request.model`, usage tokens, finish reasons) plus cost,
  call kind and outcome, the prompt hash, and text only when the record carries it (the
  policy's `store_text`);
- a cache lookup: `cache.lookup NODE`, child of its node, with `moat.cache.result`.

Event payloads contribute only their numbers and booleans, never strings (they may hold
request text).

Times are written as `floor(seconds * 1e9)`: the `int` of the same product for the
non-negative times and durations records hold, at a fraction of its cost.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Mapping

from engine.events import LlmCall, NodeRun, OrchestrationEvent, RequestRecord
from engine.stats import FAILED_STATUSES
from engine.telemetry.feed import FinishedRequest
from engine.telemetry.otlp_wire import (
    LENGTHS,
    Kept,
    Pairs,
    TextPairs,
    double_prefix,
    field,
    key_value,
    text,
    varint,
)
from engine.telemetry.wire_events import NOT_DECISIONS, Lookups, lookup_span, write_events

__all__ = ["RequestSpans", "span_ids"]

_SPAN = b"\x12"  # ScopeSpans.spans
_ATTR = b"\x4a"  # Span.attributes
_INTERNAL, _SERVER, _CLIENT = b"\x30\x01", b"\x30\x02", b"\x30\x03"
_TIMES = struct.Struct("<BQBQ").pack
"""`start_time_unix_nano` (field 7) and `end_time_unix_nano` (field 8), fixed64 each."""
_DOUBLE = struct.Struct("<d").pack
_NS = 1e9
_NO_STATUS = b"\x7a\x00"  # the reference encoder always writes a status, UNSET when empty
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)  # HAS_IS_REMOTE, parent local
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)  # HAS_IS_REMOTE | IS_REMOTE
_UNSET_LOCAL = _NO_STATUS + _FLAGS_LOCAL
_AROUND = 8 + 10 + len(_UNSET_LOCAL)
"""What a node span holds besides its head and its plan's bytes: its id, its parent's
(tag, length, id) and an unset status with the flags."""
_ZERO_ID = bytes(8)

_FAILED_NODE = frozenset({"failed", "timed_out"})
_FAILED_CALL = frozenset({"error", "timeout", "refused"})
_FINISH = {"cancelled": "cancelled", "timeout": "timeout", "error": "error"}

_GRAPH = Pairs(_ATTR, "moat.graph")
_REQUEST_ID = TextPairs(_ATTR, "moat.request.id")
_RUN = Pairs(_ATTR, "moat.run.id", limit=64)
_SEQ = Pairs(_ATTR, "moat.request.seq")
_STATUS = Pairs(_ATTR, "moat.request.status")
_REUSED = Pairs(_ATTR, "moat.request.results_reused")
_TENANT = Pairs(_ATTR, "moat.tenant")
_POLICY = Pairs(_ATTR, "moat.policy.name")
_POLICY_VERSION = Pairs(_ATTR, "moat.policy.version")
_INPUT_HASH = TextPairs(_ATTR, "moat.request.input_hash")
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
_PROMPT_HASH = TextPairs(_ATTR, "moat.llm.prompt_hash")
_ERROR_TYPE = Pairs(_ATTR, "error.type")


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


def _end(start: int, duration_ms: float | None) -> int:
    """The end of a span of `duration_ms` from `start` (ns), as `int` truncates it."""
    d = (duration_ms or 0.0) * 1e6
    return start + (math.floor(d) if d >= 0 else int(d))


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
        runs, calls = request.node_runs, request.llm_calls
        keys = [(run.node, run.cycle) for run in runs]
        by_node: dict[tuple[str, int], list[bytes]] = {key: [] for key in keys}
        root_events: list[bytes] = []
        lookups: Lookups = []
        reused = write_events(request.events, by_node, root_events, lookups)
        ids = self.ids(1 + len(runs) + len(lookups) + len(calls))
        root = ids[:8]
        # span ids: the root's, the node runs', the cache lookups', the calls'
        spans = [ids[at : at + 8] for at in range(8, len(ids), 8)]
        nodes = dict(zip(keys, spans, strict=False))  # by node and cycle: the later run's
        # Two runs of one id in one cycle number (same-named body nodes of two loops, a
        # loop nested in another's cycles): each gets its own events and children when
        # the records' order is known, else the later run takes them all.
        split = None if len(nodes) == len(runs) else _Split.of(request, keys, by_node, spans)
        out: list[bytes] = []
        at = len(runs)
        for event, where, result in lookups:
            parent_id = nodes.get(where, root)
            if split is not None:
                parent_id = split.event_parent(event) or parent_id
            out.append(lookup_span(head, spans[at], parent_id, event, result))
            at += 1
        models = self.model_names.get(request.graph, {})
        head_id, under_root = head + b"\x12\x08", b"\x22\x08" + root
        for i, call in enumerate(calls):
            parent_id = nodes.get((call.node, call.cycle), root)
            if split is not None:
                parent_id = split.call_parent(i) or parent_id
            out.append(_call(head_id, spans[at], parent_id, call, models))
            at += 1
        for i, (run, key, span_id) in enumerate(zip(runs, keys, spans, strict=False)):
            if split is not None and key in split.shared:
                events = split.events_of.get(i)
            else:  # a node run twice in a cycle: its children and events go to the later run
                events = by_node[key] if nodes[key] is span_id else None
            out.append(_node(head_id, span_id, under_root, run, events))
        out.append(self._root(head, root, request, parent, reused, root_events))
        return b"".join(out), len(out)

    def _root(
        self,
        head: bytes,
        span_id: bytes,
        request: FinishedRequest,
        parent: tuple[bytes, bool] | None,
        reused: int,
        events: list[bytes],
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
            _REQUEST_ID.of(record.id),
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


class _Split:
    """Which run of a node id and cycle number that several runs share holds each of their
    events, cache lookups and LLM calls, from the order the records came in.

    A run's decisions are recorded while it runs, before the run itself: an event belongs
    to the first of its node's runs recorded after it (of those, one whose time span holds
    the event's time when the runs overlapped), else to the last. A run's LLM calls are
    recorded right after it: a call belongs to the last of its node's runs recorded before
    it.
    """

    __slots__ = ("_call_runs", "_event_runs", "_spans", "events_of", "shared")

    def __init__(self, shared: set[tuple[str, int]], spans: list[bytes]) -> None:
        self.shared = shared
        """The (node, cycle) keys more than one run has."""
        self.events_of: dict[int, list[bytes]] = {}
        """Encoded events by the index of the run they belong to (shared keys only)."""
        self._event_runs: dict[int, int] = {}
        self._call_runs: dict[int, int] = {}
        self._spans = spans

    @classmethod
    def of(
        cls,
        request: FinishedRequest,
        keys: list[tuple[str, int]],
        by_node: Mapping[tuple[str, int], list[bytes]],
        spans: list[bytes],
    ) -> _Split | None:
        """The split of `request`'s shared keys (`spans`: its runs' span ids), or None when
        its records' order is unknown."""
        run_marks, call_marks = request.run_marks, request.call_marks
        runs = request.node_runs
        if (
            run_marks is None
            or call_marks is None
            or len(run_marks) != len(runs)
            or len(call_marks) != len(request.llm_calls)
        ):
            return None
        of_key: dict[tuple[str, int], list[int]] = {}
        for i, key in enumerate(keys):
            of_key.setdefault(key, []).append(i)
        shared = {key for key, found in of_key.items() if len(found) > 1}
        split = cls(shared, spans)
        written = {key: iter(by_node[key]) for key in shared}
        for j, event in enumerate(request.events):
            key = (event.stage, event.cycle)
            if key not in shared or event.event_type in NOT_DECISIONS:
                continue
            i = _event_run(of_key[key], run_marks, runs, j, event.started_at)
            split._event_runs[id(event)] = i
            split.events_of.setdefault(i, []).append(next(written[key]))
        for c, call in enumerate(request.llm_calls):
            key = (call.node, call.cycle)
            if key in shared:
                found = of_key[key]
                before = [i for i in found if i < call_marks[c]]
                split._call_runs[c] = before[-1] if before else found[0]
        return split

    def event_parent(self, event: OrchestrationEvent) -> bytes | None:
        """The span id of the run `event` belongs to (None: not a shared key's)."""
        i = self._event_runs.get(id(event))
        return None if i is None else self._spans[i]

    def call_parent(self, index: int) -> bytes | None:
        """The span id of the run the `index`-th LLM call belongs to (None: not shared)."""
        i = self._call_runs.get(index)
        return None if i is None else self._spans[i]


def _event_run(found: list[int], marks: list[int], runs: list[NodeRun], j: int, t: float) -> int:
    """Of the runs `found` (indices), the one the `j`-th event, at time `t`, belongs to."""
    after = [i for i in found if marks[i] > j]
    if not after:
        return found[-1]
    for i in after:
        run = runs[i]
        if run.started_at - _SLACK_S <= t <= run.started_at + run.duration_ms / 1000 + _SLACK_S:
            return i
    return after[0]


_SLACK_S = 0.001
"""How far outside a run's time span an event of it may be (a speculative start is
recorded just before the run's clock starts)."""


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


NodePlan = tuple[Callable[[bytes, int, int, int, bytes], bytes], bytes, bytes, int, bool]
"""How a node run of one shape is written: `pack(name, start, 0x41, end, state)`, its name,
kind and id (ending with the start time's tag), its status, outcome and flags, the length
of what `pack` writes, and whether the run failed (a status of its own)."""


def _node_plan(key: tuple[str, str, str, str, bool, int, int]) -> NodePlan:
    """A node run's name, kind and `moat.node.id`, its status and outcome, and what is not
    the default of its flag and counts (speculative, cycle, attempts), as attributes."""
    node_type, node, status, outcome, speculative, cycle, attempts = key
    name = text(b"\x2a", f"{node_type} {node}") + _INTERNAL + _NODE[node] + b"\x39"
    state = _NODE_STATUS[status] + _OUTCOME[outcome]
    if speculative:
        state += _SPECULATIVE
    if cycle:
        state += _CYCLE[cycle]
    if attempts > 1:
        state += _ATTEMPTS[attempts]
    size = len(name) + 17 + len(state)
    pack = struct.Struct(f"<{len(name)}sQBQ{len(state)}s").pack
    return pack, name, state, size, status in _FAILED_NODE


_NODE_PLANS: Kept[NodePlan] = Kept(_node_plan)


def _node(
    head_id: bytes, span_id: bytes, under_root: bytes, run: NodeRun, events: list[bytes] | None
) -> bytes:
    """A node run's span: the trace id and span id (`head_id`, `span_id`), its parent
    (`under_root`), the kept name and attributes of its node and state, its events."""
    pack, name, state, size, failed = _NODE_PLANS[
        (run.node_type, run.node, run.status, run.outcome, run.speculative, run.cycle,
         run.attempts)
    ]  # fmt: skip
    start = math.floor(run.started_at * _NS)
    written = pack(name, start, 0x41, _end(start, run.duration_ms), state)
    if failed:
        return _span([head_id, span_id, under_root, written, *(events or ()),
                      _error(run.error or str(run.status)), _FLAGS_LOCAL])  # fmt: skip
    n = len(head_id) + _AROUND + size
    if events:
        n += sum(map(len, events))
        if n < 0x4000:
            return b"".join((_SPAN, LENGTHS[n], head_id, span_id, under_root, written, *events,
                             _UNSET_LOCAL))  # fmt: skip
    elif n < 0x4000:
        return b"".join((_SPAN, LENGTHS[n], head_id, span_id, under_root, written, _UNSET_LOCAL))
    return _span([head_id, span_id, under_root, written, *(events or ()), _UNSET_LOCAL])


CallPlan = tuple[bytes, bytes, bytes, bytes, bytes, bool]
"""How an LLM call of one shape is written: its name and kind; its operation, system and
provider model; its logical model and the prefix of its cost; its status, kind and
outcome; its cache status, cancellation and finish reason; whether it failed."""


def _call_plan(key: tuple[str, str, str, str, str, str, str, str | None]) -> CallPlan:
    provider, logical, model, status, kind, outcome, cache_status, reason = key
    ends = b""
    if cache_status != "none":
        ends += _CACHE_STATUS[cache_status]
    if outcome == "cancelled":
        ends += _CANCELLED
    if reason:
        ends += _FINISH_REASONS[(reason,)]
    return (
        text(b"\x2a", f"chat {model}") + _CLIENT,
        _CHAT + _SYSTEM[provider] + _MODEL[model],
        _LOGICAL_MODEL[logical] + _CALL_COST,
        _CALL_STATUS[status] + _CALL_KIND[kind] + _CALL_OUTCOME[outcome],
        ends,
        status in _FAILED_CALL,
    )


_CALL_PLANS: Kept[CallPlan] = Kept(_call_plan)


def _call(
    head_id: bytes, span_id: bytes, parent: bytes, call: LlmCall, models: Mapping[str, str]
) -> bytes:
    """An LLM call's span, child of its node's (`parent`): what recurs (its model, state,
    finish) is kept, encoded, per shape; tokens, cost, times and the prompt hash are not."""
    logical, status = call.model, call.status
    name, models_, cost, state, ends, failed = _CALL_PLANS[
        (call.provider, logical, models.get(logical, logical), status, call.call_kind,
         call.call_outcome, call.cache_status, call.finish_reason or _FINISH.get(status))
    ]  # fmt: skip
    start = math.floor(call.started_at * _NS)
    parts = [
        head_id,
        span_id,
        b"\x22\x08",
        parent,
        name,
        _TIMES(0x39, start, 0x41, _end(start, call.latency_ms)),
        models_,
        _INPUT_TOKENS[call.input_tokens],
        _OUTPUT_TOKENS[call.output_tokens],
        cost,
        _DOUBLE(call.cost_usd),
        state,
        _PROMPT_HASH.of(call.prompt_hash),
        ends,
    ]  # the node is the parent span's
    if call.prompt_text is not None or call.response_text is not None:
        parts.append(_texts(call))
    if failed:
        parts += (_ERROR_TYPE[status], _error(call.error or status), _FLAGS_LOCAL)
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
        parts.append(_INPUT_HASH.of(input_hash))
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
