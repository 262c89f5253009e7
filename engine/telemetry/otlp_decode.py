"""OTLP trace bytes read back into the SDK's `ReadableSpan`s, for exporters other than OTLP.

moat writes spans as OTLP protobuf bytes (`wire_spans`), which its OTLP/HTTP exporter
posts as they are. A user's own `SpanExporter` (console, in-memory, a vendor's) takes
`ReadableSpan`s instead: this decodes a batch with opentelemetry-proto (a dependency of the
OTLP exporter, hence of the `telemetry` extra), so those exporters see the very spans a
collector gets. It is the slow path by design: the default exporter never comes here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

__all__ = ["readable_spans"]

_IS_REMOTE = 0x200


def readable_spans(data: bytes) -> list[ReadableSpan]:
    """The spans of a serialised `ExportTraceServiceRequest`."""
    out: list[ReadableSpan] = []
    for resource_spans in ExportTraceServiceRequest.FromString(data).resource_spans:
        attributes = _attributes(resource_spans.resource.attributes)
        resource = Resource(attributes, resource_spans.schema_url or None)
        for scope_spans in resource_spans.scope_spans:
            scope = InstrumentationScope(
                scope_spans.scope.name,
                scope_spans.scope.version or None,
                scope_spans.schema_url or None,
                _attributes(scope_spans.scope.attributes) or None,
            )
            out += (_span(span, resource, scope) for span in scope_spans.spans)
    return out


def _span(span: Span, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    trace_id = int.from_bytes(span.trace_id, "big")
    state = TraceState.from_header([span.trace_state]) if span.trace_state else None
    context = SpanContext(
        trace_id, int.from_bytes(span.span_id, "big"), False, TraceFlags(1), state
    )
    parent = None
    if span.parent_span_id:
        remote = bool(span.flags & _IS_REMOTE)
        parent = SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"), remote)
    code = StatusCode(span.status.code)
    events = [Event(e.name, _attributes(e.attributes), e.time_unix_nano) for e in span.events]
    return ReadableSpan(
        span.name,
        context,
        parent,
        resource,
        _attributes(span.attributes),
        events,
        kind=SpanKind(max(span.kind - 1, 0)),  # the proto's enum is one higher
        status=Status(code, span.status.message or None),
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
        instrumentation_scope=scope,
    )


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None
