"""OpenTelemetry traces built from finished requests, after the fact, off the request path.

Each request becomes one trace: a root span for the request, a child span per node run,
under it a span per LLM call (GenAI semantic conventions) and per cache lookup, and the
node's orchestration decisions as span events with their reason codes. Spans are created
with the start and end times the records hold, in the feed's thread, and exported by a
`BatchSpanProcessor` over OTLP/HTTP, so the request path never waits on the exporter.

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

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.events import LlmCall, NodeRun, OrchestrationEvent
from engine.stats import FAILED_STATUSES
from engine.telemetry.feed import FinishedRequest
from engine.telemetry.hub import trace_id_of

__all__ = ["SpanBuilder", "otlp_exporter"]

_NS = 1_000_000_000
_CACHE_LOOKUPS = {"CACHE_HIT": "hit", "CACHE_MISS": "miss", "CACHE_NEGATIVE_HIT": "negative"}
_FAILED_NODE = frozenset({"failed", "timed_out"})
_FAILED_CALL = frozenset({"error", "timeout", "refused"})
_NOT_DECISIONS = frozenset({"RESULT_REUSED", "PRINCIPLES_REUSED"})
"""Memo hits, a dozen per request: counted on the request's span, not one event each."""


class _RequestIds(IdGenerator):
    """Random span ids; the trace id of the request being built (see `trace_id_of`)."""

    def __init__(self) -> None:
        self.random = RandomIdGenerator()
        self.next_trace_id: int | None = None

    def generate_span_id(self) -> int:
        return self.random.generate_span_id()

    def generate_trace_id(self) -> int:
        return self.next_trace_id or self.random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return True  # a SHA-256 prefix is as uniform as the samplers need


def otlp_exporter(endpoint: str | None = None) -> SpanExporter:
    """The OTLP/HTTP span exporter: `endpoint` is a collector's base URL (`/v1/traces` is
    appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`); None leaves it, the headers, timeout,
    compression and certificates to the standard `OTEL_EXPORTER_OTLP_*` variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint:
        base = endpoint.rstrip("/")
        endpoint = base if base.endswith("/v1/traces") else f"{base}/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint or None)


def _resource() -> Resource:
    """`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, with `service.name` moat unless set."""
    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "moat"}))
    return resource


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
        self.ids = _RequestIds()
        # sampler from OTEL_TRACES_SAMPLER; no atexit hook: `close` flushes
        self.provider = TracerProvider(
            resource=_resource(), id_generator=self.ids, shutdown_on_exit=False
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter or otlp_exporter()))
        self.tracer = self.provider.get_tracer("moat")
        self.model_names: dict[str, Mapping[str, str]] = dict(model_names or {})
        self.kind = SpanKind.SERVER if server else SpanKind.INTERNAL
        self.propagator = TraceContextTextMapPropagator()

    def consume(self, request: FinishedRequest) -> None:
        root = self._root(request)
        if not root.is_recording():  # sampled out (OTEL_TRACES_SAMPLER): nothing to build
            return
        context = trace.set_span_in_context(root)
        nodes: dict[tuple[str, int], Span] = {}
        node_contexts: dict[tuple[str, int], Context] = {}
        for run in request.node_runs:
            span = self._node(run, context)
            nodes[(run.node, run.cycle)] = span
            node_contexts[(run.node, run.cycle)] = trace.set_span_in_context(span)
        models = self.model_names.get(request.graph, {})
        for call in request.llm_calls:
            parent = node_contexts.get((call.node, call.cycle), context)
            self._call(call, parent, models)
        reused = 0
        for event in request.events:
            if event.event_type in _NOT_DECISIONS:
                reused += 1
                continue
            key = (event.stage, event.cycle)
            self._event(event, nodes.get(key, root), node_contexts.get(key, context))
        root.set_attribute("moat.request.results_reused", reused)
        if any(call.provider == "sim" for call in request.llm_calls):
            root.set_attribute("moat.simulated", True)  # figures of simulated models
        for run in request.node_runs:
            nodes[(run.node, run.cycle)].end(_ns(run.started_at + run.duration_ms / 1000))
        root.end(_ns(request.record.finished_at))

    def _root(self, request: FinishedRequest) -> Span:
        record = request.record
        parent: Context | None = None
        if request.parent is not None:
            parent = self.propagator.extract(dict(request.parent))
            if not trace.get_current_span(parent).get_span_context().is_valid:
                parent = None
        self.ids.next_trace_id = None if parent is not None else trace_id_of(record.id)
        attributes: dict[str, Any] = {
            "moat.graph": request.graph,
            "moat.request.id": record.id,
            "moat.run.id": record.run_id,
            "moat.request.seq": record.seq,
            "moat.request.status": str(record.status),
            "moat.request.latency_ms": record.latency_ms,
            "moat.request.cost_usd": record.cost_usd,
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
        try:
            span = self.tracer.start_span(
                f"request {request.graph}",
                context=parent,
                kind=self.kind,
                attributes=attributes,
                start_time=_ns(record.started_at),
            )
        finally:
            self.ids.next_trace_id = None
        if record.status in FAILED_STATUSES:
            span.set_status(Status(StatusCode.ERROR, record.error or str(record.status)))
        return span

    def _node(self, run: NodeRun, parent: Context) -> Span:
        attributes: dict[str, Any] = {
            "moat.node.id": run.node,
            "moat.node.type": run.node_type,
            "moat.node.status": str(run.status),
            "moat.node.outcome": str(run.outcome),
            "moat.node.speculative": run.speculative,
            "moat.node.cycle": run.cycle,
            "moat.node.attempts": run.attempts,
        }
        span = self.tracer.start_span(
            f"{run.node_type} {run.node}",
            context=parent,
            attributes=attributes,
            start_time=_ns(run.started_at),
        )
        if run.status in _FAILED_NODE:
            span.set_status(Status(StatusCode.ERROR, run.error or str(run.status)))
        return span

    def _call(self, call: LlmCall, parent: Context, models: Mapping[str, str]) -> None:
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
            "moat.llm.cache_status": str(call.cache_status),
            "moat.llm.cancelled": call.call_outcome == "cancelled",
            "moat.llm.prompt_hash": call.prompt_hash,
            "moat.node.id": call.node,
        }
        reason = _finish_reason(call)
        if reason is not None:
            attributes["gen_ai.response.finish_reasons"] = (reason,)
        if call.prompt_text is not None:  # the policy's store_text allows it
            attributes["gen_ai.prompt"] = call.prompt_text
        if call.response_text is not None:
            attributes["gen_ai.completion"] = call.response_text
        span = self.tracer.start_span(
            f"chat {model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=_ns(call.started_at),
        )
        if call.status in _FAILED_CALL:
            span.set_attribute("error.type", call.status)
            span.set_status(Status(StatusCode.ERROR, call.error or call.status))
        span.end(_ns(call.started_at + call.latency_ms / 1000))

    def _event(self, event: OrchestrationEvent, span: Span, context: Context) -> None:
        attributes: dict[str, Any] = {}
        if event.reason_codes:
            attributes["moat.event.reason_codes"] = [str(code) for code in event.reason_codes]
        if event.decision is not None:
            attributes["moat.event.decision"] = event.decision
        if event.status is not None:
            attributes["moat.event.status"] = event.status
        attributes |= _numbers(event.payload)
        start = _ns(event.started_at)
        span.add_event(event.event_type, attributes, timestamp=start)
        lookup = _CACHE_LOOKUPS.get(event.event_type)
        if lookup is None:
            return
        duration = (event.duration_ms or 0.0) / 1000
        cache = self.tracer.start_span(
            f"cache.lookup {event.stage}",
            context=context,
            attributes={**attributes, "moat.cache.result": lookup},
            start_time=start,
        )
        cache.end(_ns(event.started_at + duration))

    def close(self) -> None:
        """Export what is buffered (a few seconds at most), then shut the exporter down."""
        self.provider.force_flush(timeout_millis=_flush_ms())
        self.provider.shutdown()


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
        if isinstance(value, (int, float, bool)) and not isinstance(key, bool)
    }


def _ns(seconds: float) -> int:
    return int(seconds * _NS)


def _flush_ms() -> int:
    raw = os.environ.get("OTEL_BSP_EXPORT_TIMEOUT", "")
    return int(raw) if raw.isdigit() else 10_000
