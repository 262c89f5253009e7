"""The span writer's kept encodings: what a warm cache writes is what a cold one writes."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Status

from engine.events import (
    CacheStatus,
    CallKind,
    CallOutcome,
    LlmCall,
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    RequestRecord,
    RequestStatus,
)
from engine.telemetry import FinishedRequest, otlp_wire, wire_events, wire_spans
from engine.telemetry.wire_spans import RequestSpans

NODES = ["answer", "review", "cached"]
CYCLES = st.integers(min_value=0, max_value=2)
TIMES = st.floats(min_value=1.7e9, max_value=1.8e9)
TEXT = st.one_of(st.none(), st.text(max_size=12))
SCALAR = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.none(),
    st.lists(st.integers(max_value=3), max_size=2),
)
PAYLOADS = st.one_of(
    st.none(), st.dictionaries(st.sampled_from(["score", "count", "hard", "key", "n"]), SCALAR)
)


def node_runs(request_id: str) -> st.SearchStrategy[NodeRun]:
    return st.builds(
        NodeRun,
        st.just(request_id),
        st.sampled_from(NODES),
        st.sampled_from(["model", "critic"]),
        CYCLES,
        st.sampled_from(list(NodeStatus)),
        st.booleans(),
        st.sampled_from(list(NodeOutcome)),
        TIMES,
        st.floats(min_value=0, max_value=1e4),
        st.integers(min_value=1, max_value=3),
        TEXT,
    )


def llm_calls(request_id: str) -> st.SearchStrategy[LlmCall]:
    return st.builds(
        LlmCall,
        st.just(request_id),
        st.sampled_from(NODES),
        CYCLES,
        st.sampled_from(["small", "medium"]),
        st.sampled_from(["sim", "openai"]),
        st.sampled_from(list(CallKind)),
        st.sampled_from(list(CallOutcome)),
        st.sampled_from(list(CacheStatus)),
        st.text(max_size=16),
        st.integers(min_value=0, max_value=5000),
        st.integers(min_value=0, max_value=5000),
        st.floats(min_value=0, max_value=1),
        st.floats(min_value=0, max_value=1e4),
        TIMES,
        st.sampled_from(["ok", "error", "timeout", "cancelled", "refused"]),
        TEXT,
        st.none(),
        TEXT,
        TEXT,
        st.sampled_from([None, "stop", "length"]),
    )


def events(request_id: str) -> st.SearchStrategy[OrchestrationEvent]:
    return st.builds(
        OrchestrationEvent,
        st.just("r"),
        st.just(request_id),
        CYCLES,
        st.sampled_from([*NODES, "request"]),
        st.just("scheduler"),
        st.sampled_from(
            ["GATE_DECISION", "CACHE_HIT", "CACHE_MISS", "RESULT_REUSED", "CRITIC_DECISION"]
        ),
        st.integers(min_value=0, max_value=99),
        st.sampled_from([None, "run", "skip"]),
        st.sampled_from([None, "ok"]),
        TIMES,
        st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
        st.lists(st.sampled_from(["guard", "NO_CANDIDATE", "MODEL_PROCEED"]), max_size=2),
        st.none(),
        st.none(),
        PAYLOADS,
    )


@st.composite
def requests(draw: st.DrawFn) -> FinishedRequest:
    request_id = draw(st.text(min_size=1, max_size=8))
    record = RequestRecord(
        request_id,
        "run",
        draw(st.integers(min_value=0, max_value=9)),
        draw(st.sampled_from(list(RequestStatus))),
        draw(TIMES),
        draw(TIMES),
        draw(st.floats(min_value=0, max_value=1e5)),
        draw(st.floats(min_value=0, max_value=1)),
        None,
        error=draw(TEXT),
        tenant=draw(st.sampled_from([None, "acme"])),
        input_hash=draw(st.sampled_from([None, "abc123"])),
    )
    return FinishedRequest(
        "g",
        record,
        draw(st.lists(events(request_id), max_size=6)),
        draw(st.lists(node_runs(request_id), max_size=4)),
        draw(st.lists(llm_calls(request_id), max_size=3)),
    )


def forget() -> None:
    """Empty every kept encoding, so the next encoding builds each piece anew."""
    for kept in _kept():
        kept.clear()


def _kept() -> list[dict[Any, Any]]:
    """The writer's caches: its plans, its `Pairs` and `TextPairs` tables and the encoder's
    key tables."""
    kinds = otlp_wire.Kept | otlp_wire.Pairs | otlp_wire.TextPairs
    found: list[dict[Any, Any]] = []
    for module in (wire_spans, wire_events, otlp_wire):
        for value in vars(module).values():
            if isinstance(value, kinds):
                found.append(value)
    found += [otlp_wire._KEYS, otlp_wire._PAIRS, wire_events._DOUBLE_KEYS]
    found += [wire_events._INT_PAIRS, wire_events._TRUE_PAIRS, wire_events._FALSE_PAIRS]
    found += [pairs for group in wire_events._EVENT_PAIRS.values() for pairs in group]
    return found


NS = 1_000_000_000
LOOKUPS = {"CACHE_HIT": "hit", "CACHE_MISS": "miss", "CACHE_NEGATIVE_HIT": "negative"}
MODELS = {"g": {"small": "sim-small"}}
FINISH = {"cancelled": "cancelled", "timeout": "timeout", "error": "error"}


def numbers(payload: dict[str, Any] | None) -> dict[str, Any]:
    return {
        f"moat.event.{key}": value
        for key, value in (payload or {}).items()
        if type(value) in (int, float, bool)
    }


def decision(event: OrchestrationEvent) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if event.reason_codes:
        attributes["moat.event.reason_codes"] = tuple(event.reason_codes)
    if event.decision is not None:
        attributes["moat.event.decision"] = event.decision
    if event.status is not None:
        attributes["moat.event.status"] = event.status
    return attributes | numbers(event.payload)


def failed(message: str | None, status: str) -> tuple[str, str]:
    return ("ERROR", message or status)


def expected(request: FinishedRequest) -> list[str]:
    """The request's spans as the contract of `wire_spans` says, built from the records field
    by field with no encoder: (name, parent's name, times, attributes, events, status)."""
    last = {(run.node, run.cycle): run for run in request.node_runs}
    root = f"request {request.graph}"
    owner = {key: f"{run.node_type} {run.node}" for key, run in last.items()}
    spans, events_of = [], {key: [] for key in last}  # type: ignore[var-annotated]
    root_events, reused = [], 0
    for event in request.events:
        if event.event_type in ("RESULT_REUSED", "PRINCIPLES_REUSED"):
            reused += 1
            continue
        key = (event.stage, event.cycle)
        described = (event.event_type, int(event.started_at * NS), decision(event))
        events_of.get(key, root_events).append(described)
        if event.event_type in LOOKUPS:
            spans.append(lookup(event, owner.get(key, root)))
    for call in request.llm_calls:
        spans.append(call_span(call, owner.get((call.node, call.cycle), root)))
    for run in request.node_runs:
        mine = events_of[(run.node, run.cycle)] if last[(run.node, run.cycle)] is run else []
        spans.append(node_span(run, root, mine))
    spans.append(root_span(request, reused, root_events))
    return sorted(repr(plain(span)) for span in spans)


def lookup(event: OrchestrationEvent, parent: str) -> tuple[Any, ...]:
    start = int(event.started_at * NS)
    end = start + int((event.duration_ms or 0.0) * 1_000_000)
    attributes = decision(event) | {"moat.cache.result": LOOKUPS[event.event_type]}
    return (f"cache.lookup {event.stage}", parent, start, end, attributes, [], None)


def call_span(call: LlmCall, parent: str) -> tuple[Any, ...]:
    model = MODELS["g"].get(call.model, call.model)
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": call.provider,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": call.input_tokens,
        "gen_ai.usage.output_tokens": call.output_tokens,
        "moat.llm.model": call.model,
        "moat.llm.cost_usd": call.cost_usd,
        "moat.llm.status": call.status,
        "moat.llm.call_kind": call.call_kind,
        "moat.llm.call_outcome": call.call_outcome,
        "moat.llm.prompt_hash": call.prompt_hash,
    }
    if call.cache_status != "none":
        attributes["moat.llm.cache_status"] = call.cache_status
    if call.call_outcome == "cancelled":
        attributes["moat.llm.cancelled"] = True
    reason = call.finish_reason or FINISH.get(call.status)
    if reason:
        attributes["gen_ai.response.finish_reasons"] = (reason,)
    if call.prompt_text is not None:
        attributes["gen_ai.prompt"] = call.prompt_text
    if call.response_text is not None:
        attributes["gen_ai.completion"] = call.response_text
    status = None
    if call.status in ("error", "timeout", "refused"):
        attributes["error.type"] = call.status
        status = failed(call.error, call.status)
    start = int(call.started_at * NS)
    end = start + int(call.latency_ms * 1_000_000)
    return (f"chat {model}", parent, start, end, attributes, [], status)


def node_span(run: NodeRun, parent: str, events: list[Any]) -> tuple[Any, ...]:
    attributes: dict[str, Any] = {
        "moat.node.id": run.node,
        "moat.node.status": run.status,
        "moat.node.outcome": run.outcome,
    }
    if run.speculative:
        attributes["moat.node.speculative"] = True
    if run.cycle:
        attributes["moat.node.cycle"] = run.cycle
    if run.attempts > 1:
        attributes["moat.node.attempts"] = run.attempts
    start = int(run.started_at * NS)
    end = start + int(run.duration_ms * 1_000_000)
    status = failed(run.error, run.status) if run.status in ("failed", "timed_out") else None
    return (f"{run.node_type} {run.node}", parent, start, end, attributes, events, status)


def root_span(request: FinishedRequest, reused: int, events: list[Any]) -> tuple[Any, ...]:
    record = request.record
    attributes = {
        "moat.graph": request.graph,
        "moat.request.id": record.id,
        "moat.run.id": record.run_id,
        "moat.request.seq": record.seq,
        "moat.request.status": record.status,
        "moat.request.latency_ms": record.latency_ms,
        "moat.request.cost_usd": record.cost_usd,
        "moat.request.results_reused": reused,
    }
    if record.tenant is not None:
        attributes["moat.tenant"] = record.tenant
    if record.input_hash is not None:
        attributes["moat.request.input_hash"] = record.input_hash
    if any(call.provider == "sim" for call in request.llm_calls):
        attributes["moat.simulated"] = True
    status = None
    if record.status in ("failed", "deadline_exceeded", "invalid_input"):
        status = failed(record.error, record.status)
    start, end = int(record.started_at * NS), int(record.finished_at * NS)
    return (f"request {request.graph}", None, start, end, attributes, events, status)


def plain(value: Any) -> Any:
    """`value` with its enum members as the strings a span carries."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, tuple | list):
        return type(value)(plain(item) for item in value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def written(request: FinishedRequest, writer: RequestSpans) -> list[str]:
    """The request's spans as the writer encodes them, decoded."""
    spans, count = writer.encode(request, 0x1234)
    decoded = ScopeSpans.FromString(spans).spans
    assert len(decoded) == count
    names = {span.span_id: span.name for span in decoded}
    out = []
    for span in decoded:
        events = [
            (event.name, event.time_unix_nano, _attributes(event.attributes))
            for event in span.events
        ]
        status = None
        if span.status.code:
            status = (
                Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                span.status.message,
            )
        parent = names[span.parent_span_id] if span.parent_span_id else None
        out.append(
            (span.name, parent, span.start_time_unix_nano, span.end_time_unix_nano,
             _attributes(span.attributes), events, status)
        )  # fmt: skip
    return sorted(map(repr, out))


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind)


@settings(max_examples=60, deadline=None)
@given(st.lists(requests(), min_size=2, max_size=4))
def test_spans_hold_what_the_records_say_whether_cached_or_fresh(
    batch: list[FinishedRequest],
) -> None:
    """Each request's spans against the contract built from its records with no encoder:
    once with every kept encoding emptied, once after the other requests filled them (a
    kept piece keyed too loosely would carry another request's values)."""
    writer = RequestSpans(MODELS, ids=lambda n: random.Random(n).randbytes(8 * n))
    for request in batch:
        forget()
        assert written(request, writer) == expected(request)
    for request in batch:
        assert written(request, writer) == expected(request)


@settings(max_examples=200, deadline=None)
@given(PAYLOADS.filter(bool))
def test_a_payloads_kept_numbers_are_its_numbers_encoded_one_by_one(
    payload: dict[str, Any],
) -> None:
    """The fast path of an event's payload (kept key prefixes and pairs) against each number
    and boolean encoded as a `KeyValue` of its own; strings, lists and None never."""
    expected = b"".join(
        otlp_wire.key_value(b"\x1a", f"moat.event.{key}", value)
        for key, value in payload.items()
        if type(value) in (int, float, bool)
    )
    assert wire_events.numbers(payload) == expected
    assert wire_events.numbers(payload) == expected  # warm
