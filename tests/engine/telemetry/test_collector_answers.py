"""A collector's answer to an accepted POST is read: a redirect or a web page exported
nothing and is said as a failure with the fix; spans an OTLP partial success rejected
are said once, then counted at close. None of it reaches a request."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)
from structlog.testing import capture_logs

from engine.events import RequestRecord, RequestStatus
from engine.telemetry import FinishedRequest
from engine.telemetry.export_health import ExportHealth
from engine.telemetry.traces import SpanBuilder, otlp_exporter
from tests.support.otlp_receiver import answering_collector, otlp_receiver

PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture(autouse=True)
def _quick_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")  # a batch per request
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "3000")


def _finished(request_id: str) -> FinishedRequest:
    record = RequestRecord(request_id, "r", 0, RequestStatus.OK, 1.0, 1.2, 200.0, 0.0, None)
    return FinishedRequest("g", record)


def _export(url: str, requests: int) -> list[dict[str, Any]]:
    """What moat's log says while `requests` requests' spans go to `url` and tracing stops."""
    builder = SpanBuilder(otlp_exporter(url))
    with capture_logs() as logs:
        for n in range(requests):
            builder.consume(_finished(f"q{n}"))
            builder.batches.flush(3)
        builder.close()
    return logs


def _partial(rejected: int, message: str) -> bytes:
    partial = ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
    return ExportTraceServiceResponse(partial_success=partial).SerializeToString()


def test_a_redirect_is_not_taken_for_an_export_and_says_where_it_points() -> None:
    moved = {"location": "https://login.example/sso"}
    with answering_collector(302, b"", moved) as url:
        logs = _export(url, 1)
    [said] = logs  # the one batch, said once
    assert (said["event"], said["spans_lost"]) == ("telemetry.export_failed", 1)
    assert said["reason"] == "HTTP 302 Found, redirected to 'https://login.example/sso'"
    assert "follows no redirect" in said["fix"] and "OTEL_EXPORTER_OTLP_ENDPOINT" in said["fix"]


def test_a_web_page_answered_200_is_not_taken_for_an_export() -> None:
    page = {"content-type": "text/html; charset=utf-8"}
    with answering_collector(200, b"<html>Grafana</html>", page) as url:
        logs = _export(url, 2)
    said = logs[0]
    assert said["event"] == "telemetry.export_failed"
    assert said["reason"] == "HTTP 200 with a web page, not an OTLP answer"
    assert "nothing takes OTLP at this URL" in said["fix"]
    assert logs[-1]["event"] == "telemetry.spans_not_exported" and logs[-1]["spans"] == 2


def test_rejected_spans_are_said_once_with_the_collectors_message_then_counted() -> None:
    body = _partial(1, "span too old\n")
    with answering_collector(200, body, PROTOBUF) as url:
        logs = _export(url, 3)
    assert [e["event"] for e in logs] == [
        "telemetry.spans_rejected",  # once, not per batch
        "telemetry.spans_not_exported",
    ]
    assert (logs[0]["spans"], logs[0]["of"]) == (1, 1)
    assert logs[0]["reason"] == "the collector rejected spans: span too old"
    assert (logs[1]["spans"], logs[1]["of"]) == (3, 3)


def test_a_collectors_warning_without_rejections_is_said_once_and_nothing_is_lost() -> None:
    with answering_collector(200, _partial(0, "slow down"), PROTOBUF) as url:
        logs = _export(url, 2)
    assert [(e["event"], e["message"]) for e in logs] == [
        ("telemetry.collector_warning", "slow down")
    ]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"", {}),  # an empty 200: a collector that took it all
        (b"\xff\xfe not protobuf", PROTOBUF),  # garbage: still the 200 it is
        (b'{"partialSuccess": {}}', {"content-type": "application/json"}),
    ],
)
def test_an_answer_that_says_nothing_more_is_an_export(
    body: bytes, headers: dict[str, str]
) -> None:
    with answering_collector(200, body, headers) as url:
        assert _export(url, 2) == []


def test_a_real_collector_gets_every_span_and_nothing_is_said() -> None:
    with otlp_receiver() as receiver:
        logs = _export(receiver.endpoint, 3)
        assert len(receiver.wait_for(lambda spans: len(spans) == 3)) == 3
    assert logs == []


def test_rejections_after_an_outage_count_as_a_recovery() -> None:
    health = ExportHealth()
    with capture_logs() as logs:
        health.failed(4, {"reason": "connection refused", "fix": "check it"})
        health.partial(10, 2, "too big")
        health.closed(14, 0, timed_out_s=None)
    assert [e["event"] for e in logs] == [
        "telemetry.export_failed",
        "telemetry.export_recovered",
        "telemetry.spans_rejected",
    ]
    assert health.exported == 8
