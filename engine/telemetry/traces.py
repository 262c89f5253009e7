"""OpenTelemetry traces built from finished requests, after the fact, off the request path.

Each request becomes one trace: a root span for the request, a child span per node run,
under it a span per LLM call (GenAI semantic conventions) and per cache lookup, and the
node's orchestration decisions as span events with their reason codes. Spans are made
with the start and end times the records hold, in the feed's thread, as finished
`ReadableSpan`s handed straight to a `BatchSpanProcessor` (OTLP/HTTP): the live-span
machinery (locks, attribute validation, context switching) is for spans that are still
running, and skipping it halves what a trace costs. The SDK still decides what matters:
the sampler (`OTEL_TRACES_SAMPLER`), the resource (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`), batching (`OTEL_BSP_*`) and the exporter
(`OTEL_EXPORTER_OTLP_*`); only the request body is written by `otlp_wire` rather than by
the exporter's protobuf messages, which cost five times what building the spans does.

Text: prompts and answers reach a span only when the record carries them, which the
gateway does only when the policy's `store_text` is `redacted` (then redacted) or `full`;
by default a span holds the prompt's hash alone. Event payloads contribute only their
numbers and booleans (a similarity, a score), never strings.

The trace id of a request not continuing a caller's trace is derived from its request id
(`trace_id_of`), so `moat report REQUEST_ID` and the trace viewer name the same request.
A `moat serve` request with a W3C `traceparent` continues the caller's trace instead.

Needs the `telemetry` extra (opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.events import LlmCall, NodeRun, OrchestrationEvent
from engine.stats import FAILED_STATUSES
from engine.telemetry.feed import FinishedRequest
from engine.telemetry.ids import trace_id_of

__all__ = ["SpanBuilder", "otlp_exporter"]

_log = logging.getLogger(__name__)

_NS = 1_000_000_000
_CACHE_LOOKUPS = {"CACHE_HIT": "hit", "CACHE_MISS": "miss", "CACHE_NEGATIVE_HIT": "negative"}
_FAILED_NODE = frozenset({"failed", "timed_out"})
_FAILED_CALL = frozenset({"error", "timeout", "refused"})
_NOT_DECISIONS = frozenset({"RESULT_REUSED", "PRINCIPLES_REUSED"})
"""Memo hits, a dozen per request: counted on the request's span, not one event each."""
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def otlp_exporter(endpoint: str | None = None) -> SpanExporter:
    """The OTLP/HTTP span exporter: `endpoint` is a collector's base URL (`/v1/traces` is
    appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`); None leaves it, the headers, timeout,
    compression and certificates to the standard `OTEL_EXPORTER_OTLP_*` variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from engine.telemetry.otlp_wire import encode_spans

    class WireSpanExporter(OTLPSpanExporter):
        """The SDK's OTLP/HTTP exporter, with the request body written by `otlp_wire`
        (4-5x cheaper than the exporter's protobuf messages, the same bytes to a
        collector). Sending stays the SDK's: endpoint, headers, timeout, gzip,
        certificates, retries with backoff on 429/5xx and connection errors (its
        `_client`, private: an exporter version without it gets its own encoding)."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            client = getattr(self, "_client", None)
            if client is None or not hasattr(client, "export") or self._shutdown:
                return super().export(spans)
            try:
                data = encode_spans(spans)
            except Exception:  # a bug here must not lose the batch: the SDK's encoding
                _log.exception("OTLP encoding failed; the exporter's own encodes the batch")
                return super().export(spans)
            ok = client.export(data).success
            return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    if endpoint:
        base = endpoint.rstrip("/")
        endpoint = base if base.endswith("/v1/traces") else f"{base}/v1/traces"
    return WireSpanExporter(endpoint=endpoint or None)


def _resource() -> Resource:
    """`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, with `service.name` moat unless set."""
    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "moat"}))
    return resource


class _Trace:
    """What the spans of one request share: trace id, state, resource and scope."""

    __slots__ = ("builder", "spans", "state", "trace_id")

    def __init__(self, builder: SpanBuilder, trace_id: int, state: Any) -> None:
        self.builder = builder
        self.trace_id = trace_id
        self.state = state
        self.spans: list[ReadableSpan] = []

    def context(self) -> SpanContext:
        span_id = self.builder.ids.generate_span_id()
        return SpanContext(self.trace_id, span_id, False, _SAMPLED, self.state)

    def add(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start: float,
        end: float,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        status: Status = _UNSET,
        events: Sequence[Event] = (),
    ) -> None:
        b = self.builder
        self.spans.append(
            ReadableSpan(
                name,
                context,
                parent,
                b.resource,
                attributes,
                events,
                kind=kind,
                status=status,
                start_time=_ns(start),
                end_time=_ns(end),
                instrumentation_scope=b.scope,
            )
        )


class SpanBuilder:
    """Turns each finished request into spans; a `Consumer` of the `RecordFeed`.

    Args:
        exporter: where spans go (default: OTLP/HTTP configured by `OTEL_*`).
        model_names: each logical model's provider model (`gen_ai.request.model`), per
            graph: `{"governed-answer": {"small": "sim-small"}}`.
        server: the requests arrive over HTTP (`moat serve`): root spans are SERVER spans.
    """

    def __init__(
        self,
        exporter: SpanExporter | None = None,
        *,
        model_names: Mapping[str, Mapping[str, str]] | None = None,
        server: bool = False,
    ) -> None:
        # the provider reads OTEL_TRACES_SAMPLER and OTEL_SDK_DISABLED; no atexit hook
        provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
        self.sampler = provider.sampler
        self.enabled = not getattr(provider, "_disabled", False)
        self.resource = provider.resource
        self.scope = InstrumentationScope("moat")
        self.ids = RandomIdGenerator()
        self.exporter = exporter or otlp_exporter()
        self.processor = BatchSpanProcessor(self.exporter)
        self.model_names: dict[str, Mapping[str, str]] = dict(model_names or {})
        self.kind = SpanKind.SERVER if server else SpanKind.INTERNAL
        self.propagator = TraceContextTextMapPropagator()

    def consume(self, request: FinishedRequest) -> None:
        started = self._start(request)
        if started is None:  # sampled out: nothing to build
            return
        tr, root, parent = started
        nodes: dict[tuple[str, int], SpanContext] = {}
        events: dict[tuple[str, int], list[Event]] = {}
        for run in request.node_runs:
            nodes[(run.node, run.cycle)] = tr.context()
        models = self.model_names.get(request.graph, {})
        for call in request.llm_calls:
            self._call(tr, call, nodes.get((call.node, call.cycle), root), models)
        reused = 0
        for event in request.events:
            if event.event_type in _NOT_DECISIONS:
                reused += 1
                continue
            key = (event.stage, event.cycle) if (event.stage, event.cycle) in nodes else None
            events.setdefault(key or ("", -1), []).append(self._event(tr, event, nodes, root))
        for run in request.node_runs:
            key = (run.node, run.cycle)
            self._node(tr, run, nodes[key], root, events.get(key, ()))
        self._root(tr, request, root, parent, reused, events.get(("", -1), ()))
        for span in tr.spans:
            self.processor.on_end(span)

    def _start(
        self, request: FinishedRequest
    ) -> tuple[_Trace, SpanContext, SpanContext | None] | None:
        """The request's trace (the caller's, else its own), if the sampler keeps it."""
        if not self.enabled:
            return None
        record = request.record
        parent: SpanContext | None = None
        if request.parent is not None:
            context = self.propagator.extract(dict(request.parent))
            found = trace.get_current_span(context).get_span_context()
            parent = found if found.is_valid else None
        if parent is not None:
            trace_id = parent.trace_id
            parent_context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        else:
            trace_id, parent_context = trace_id_of(record.id), None
        name = f"request {request.graph}"
        verdict = self.sampler.should_sample(parent_context, trace_id, name, self.kind)
        if verdict.decision != Decision.RECORD_AND_SAMPLE:
            return None
        tr = _Trace(self, trace_id, verdict.trace_state)
        return tr, tr.context(), parent

    def _root(
        self,
        tr: _Trace,
        request: FinishedRequest,
        context: SpanContext,
        parent: SpanContext | None,
        reused: int,
        events: Sequence[Event],
    ) -> None:
        record = request.record
        attributes: dict[str, Any] = {
            "moat.graph": request.graph,
            "moat.request.id": record.id,
            "moat.run.id": record.run_id,
            "moat.request.seq": record.seq,
            "moat.request.status": str(record.status),
            "moat.request.latency_ms": record.latency_ms,
            "moat.request.cost_usd": record.cost_usd,
            "moat.request.results_reused": reused,
        }
        optional = {
            "moat.tenant": record.tenant,
            "moat.policy.name": record.policy_name,
            "moat.policy.version": record.policy_version,
            "moat.request.input_hash": record.stored_input_hash(),
            "moat.conversation.id": record.conversation_id,
            "moat.request.parent_id": record.parent_request_id,
        }
        attributes |= {k: v for k, v in optional.items() if v is not None}
        if any(call.provider == "sim" for call in request.llm_calls):
            attributes["moat.simulated"] = True  # figures of simulated models
        status = _UNSET
        if record.status in FAILED_STATUSES:
            status = Status(StatusCode.ERROR, record.error or str(record.status))
        tr.add(
            f"request {request.graph}",
            context,
            parent,
            attributes,
            record.started_at,
            record.finished_at,
            kind=self.kind,
            status=status,
            events=events,
        )

    def _node(
        self,
        tr: _Trace,
        run: NodeRun,
        context: SpanContext,
        parent: SpanContext,
        events: Sequence[Event],
    ) -> None:
        # the type is in the name; defaults are left out (every attribute costs its export)
        attributes: dict[str, Any] = {
            "moat.node.id": run.node,
            "moat.node.status": str(run.status),
            "moat.node.outcome": str(run.outcome),
        }
        if run.speculative:
            attributes["moat.node.speculative"] = True
        if run.cycle:
            attributes["moat.node.cycle"] = run.cycle
        if run.attempts > 1:
            attributes["moat.node.attempts"] = run.attempts
        status = _UNSET
        if run.status in _FAILED_NODE:
            status = Status(StatusCode.ERROR, run.error or str(run.status))
        end = run.started_at + run.duration_ms / 1000
        name = f"{run.node_type} {run.node}"
        tr.add(name, context, parent, attributes, run.started_at, end, status=status, events=events)

    def _call(
        self, tr: _Trace, call: LlmCall, parent: SpanContext, models: Mapping[str, str]
    ) -> None:
        model = models.get(call.model, call.model)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": call.provider,
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": call.input_tokens,
            "gen_ai.usage.output_tokens": call.output_tokens,
            "moat.llm.model": call.model,
            "moat.llm.cost_usd": call.cost_usd,
            "moat.llm.status": call.status,
            "moat.llm.call_kind": str(call.call_kind),
            "moat.llm.call_outcome": str(call.call_outcome),
            "moat.llm.prompt_hash": call.prompt_hash,
        }  # the node is the parent span's
        if call.cache_status != "none":
            attributes["moat.llm.cache_status"] = str(call.cache_status)
        if call.call_outcome == "cancelled":
            attributes["moat.llm.cancelled"] = True
        reason = _finish_reason(call)
        if reason is not None:
            attributes["gen_ai.response.finish_reasons"] = (reason,)
        if call.prompt_text is not None:  # the policy's store_text allows it
            attributes["gen_ai.prompt"] = call.prompt_text
        if call.response_text is not None:
            attributes["gen_ai.completion"] = call.response_text
        status = _UNSET
        if call.status in _FAILED_CALL:
            attributes["error.type"] = call.status
            status = Status(StatusCode.ERROR, call.error or call.status)
        end = call.started_at + call.latency_ms / 1000
        tr.add(
            f"chat {model}",
            tr.context(),
            parent,
            attributes,
            call.started_at,
            end,
            kind=SpanKind.CLIENT,
            status=status,
        )

    def _event(
        self,
        tr: _Trace,
        event: OrchestrationEvent,
        nodes: Mapping[tuple[str, int], SpanContext],
        root: SpanContext,
    ) -> Event:
        """The event as a span event; a cache lookup also gets its own span."""
        attributes: dict[str, Any] = {}
        if event.reason_codes:
            attributes["moat.event.reason_codes"] = tuple(str(c) for c in event.reason_codes)
        if event.decision is not None:
            attributes["moat.event.decision"] = event.decision
        if event.status is not None:
            attributes["moat.event.status"] = event.status
        attributes |= _numbers(event.payload)
        lookup = _CACHE_LOOKUPS.get(event.event_type)
        if lookup is not None:
            parent = nodes.get((event.stage, event.cycle), root)
            end = event.started_at + (event.duration_ms or 0.0) / 1000
            tr.add(
                f"cache.lookup {event.stage}",
                tr.context(),
                parent,
                {**attributes, "moat.cache.result": lookup},
                event.started_at,
                end,
            )
        return Event(event.event_type, attributes, _ns(event.started_at))

    def close(self) -> None:
        """Export what is buffered, waiting `OTEL_BSP_EXPORT_TIMEOUT` ms at most (5 s by
        default: an unreachable collector must not hold a finished run), then shut the
        exporter down, which stops its retries."""
        if not self.processor.force_flush(timeout_millis=_flush_ms()):
            self.exporter.shutdown()  # a collector that does not answer: stop retrying
        self.processor.shutdown()  # type: ignore[no-untyped-call]


def _finish_reason(call: LlmCall) -> str | None:
    """The GenAI finish reason: the provider's when recorded, else what moat knows."""
    if call.finish_reason:
        return call.finish_reason
    return {"cancelled": "cancelled", "timeout": "timeout", "error": "error"}.get(call.status)


def _numbers(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload's numbers and booleans (strings may hold request text: never)."""
    if not payload:
        return {}
    return {
        f"moat.event.{key}": value
        for key, value in payload.items()
        if isinstance(value, (int, float, bool)) and isinstance(key, str)
    }


def _ns(seconds: float) -> int:
    return int(seconds * _NS)


def _flush_ms() -> int:
    raw = os.environ.get("OTEL_BSP_EXPORT_TIMEOUT", "")
    return int(raw) if raw.isdigit() else 5_000
