"""The hand-written OTLP encoder: its bytes decode to the message the SDK's encoder builds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from engine.telemetry.otlp_wire import encode_spans
from tests.support.otlp_receiver import otlp_receiver

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = st.one_of(
    st.text(max_size=40),  # unicode, empty included
    INT64,
    st.floats(allow_nan=False),  # NaN != NaN: the decoded messages could not be compared
    st.booleans(),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(st.text(max_size=10), max_size=4).map(tuple),
    st.lists(INT64, max_size=4),
    st.lists(st.booleans(), max_size=3).map(tuple),
    st.lists(st.floats(allow_nan=False), max_size=3).map(tuple),
)
KEYS = st.one_of(st.sampled_from(["moat.node.id", "gen_ai.system", "moat.tenant"]), st.text())
ATTRIBUTES = st.dictionaries(KEYS, VALUES, max_size=6)
TIMES = st.integers(min_value=0, max_value=2**63)
IDS = st.integers(min_value=1, max_value=2**64 - 1)
RESOURCES = [
    Resource({"service.name": "moat"}),
    Resource({"service.name": "moat", "deployment.environment": "prod"}, "https://schema/1"),
]
SCOPES = [InstrumentationScope("moat"), InstrumentationScope("other", "1.2", "https://s", {"a": 1})]


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    trace_id = draw(st.integers(min_value=1, max_value=2**128 - 1))
    state = draw(st.sampled_from([None, TraceState([("vendor", "x1")])]))
    context = SpanContext(trace_id, draw(IDS), False, TraceFlags(1), state)
    parent = draw(
        st.one_of(
            st.none(), st.builds(lambda s, r: SpanContext(trace_id, s, r), IDS, st.booleans())
        )
    )
    events = draw(st.lists(st.builds(Event, st.text(max_size=20), ATTRIBUTES, TIMES), max_size=4))
    status = draw(
        st.sampled_from(
            [Status(StatusCode.UNSET), Status(StatusCode.OK), Status(StatusCode.ERROR, "boom")]
        )
    )
    return ReadableSpan(
        draw(st.text(max_size=30)),
        context,
        parent,
        draw(st.sampled_from(RESOURCES)),
        draw(ATTRIBUTES),
        events,
        kind=draw(st.sampled_from(list(SpanKind))),
        status=status,
        start_time=draw(TIMES),
        end_time=draw(TIMES),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(spans(), max_size=4))
def test_the_bytes_decode_to_the_sdk_encoders_message(batch: list[ReadableSpan]) -> None:
    decoded = ExportTraceServiceRequest.FromString(encode_spans(batch))
    assert decoded == reference(batch)


def test_equal_resources_held_by_distinct_objects_are_one_group() -> None:
    context = SpanContext(1, 2, False)
    batch = [
        ReadableSpan("a", context, resource=Resource({"service.name": "moat"})),
        ReadableSpan("b", context, resource=Resource({"service.name": "moat"})),
    ]
    decoded = ExportTraceServiceRequest.FromString(encode_spans(batch))
    assert decoded == reference(batch)
    assert len(decoded.resource_spans) == 1


def test_a_value_protobuf_cannot_hold_drops_its_attribute_only() -> None:
    attributes: dict[str, Any] = {"big": 2**64, "odd": object(), "kept": "yes"}
    span = ReadableSpan("s", SpanContext(1, 2, False), attributes=attributes)
    decoded = ExportTraceServiceRequest.FromString(encode_spans([span]))
    [kept] = decoded.resource_spans[0].scope_spans[0].spans[0].attributes
    assert (kept.key, kept.value.string_value) == ("kept", "yes")


def test_the_exporter_posts_gzipped_bytes_when_the_environment_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.telemetry.traces import otlp_exporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    span = ReadableSpan(
        "chat sim-small", SpanContext(7, 8, False), attributes={"gen_ai.system": "sim"}
    )
    with otlp_receiver() as receiver:
        exporter = otlp_exporter(receiver.endpoint)
        assert exporter.export([span]).name == "SUCCESS"
        [got] = receiver.wait_for(lambda s: len(s) > 0)
        exporter.shutdown()
    assert (got.name, got.attributes) == ("chat sim-small", {"gen_ai.system": "sim"})
    assert receiver.gzipped >= 1


@settings(max_examples=40, deadline=None)
@given(st.lists(spans(), min_size=1, max_size=4))
def test_decoding_gives_back_the_spans_that_were_encoded(batch: list[ReadableSpan]) -> None:
    from engine.telemetry.otlp_decode import readable_spans

    # what a span exporter other than OTLP gets: the spans a collector would decode
    assert reference(readable_spans(encode_spans(batch))) == reference(batch)
