"""Encoded spans leave in batches as the `OTEL_BSP_*` variables say, whole requests at a time."""

from __future__ import annotations

import threading
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from structlog.testing import capture_logs

from engine.events import NodeOutcome, NodeRun, NodeStatus, RequestRecord, RequestStatus
from engine.telemetry import FinishedRequest
from engine.telemetry.span_batches import SpanBatches
from engine.telemetry.wire_spans import RequestSpans

RESOURCE = Resource({"service.name": "moat"})
SCOPE = InstrumentationScope("moat")


class Collect:
    """A sink keeping what it is sent, optionally held back or failing once."""

    def __init__(self, *, hold: threading.Event | None = None, fail_first: bool = False) -> None:
        self.posts: list[ExportTraceServiceRequest] = []
        self.hold = hold
        self.fail_first = fail_first
        self.closed = False

    def export_encoded(self, data: bytes) -> bool:
        if self.hold is not None:
            self.hold.wait(10)
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("collector exploded")
        self.posts.append(ExportTraceServiceRequest.FromString(data))
        return True

    def shutdown(self) -> None:
        self.closed = True

    def requests(self, post: int) -> list[str]:
        """The request ids of the root spans of post number `post`."""
        [resource] = self.posts[post].resource_spans
        [scope] = resource.scope_spans
        assert scope.scope.name == "moat"
        assert resource.resource.attributes[0].value.string_value == "moat"
        return [
            kv.value.string_value
            for span in scope.spans
            for kv in span.attributes
            if kv.key == "moat.request.id"
        ]

    def spans(self, post: int) -> int:
        return len(self.posts[post].resource_spans[0].scope_spans[0].spans)


def request(request_id: str, nodes: int = 0) -> tuple[bytes, int]:
    """The encoded spans of a request with `nodes` node runs (so `nodes + 1` spans)."""
    record = RequestRecord(request_id, "r", 0, RequestStatus.OK, 1.0, 1.5, 500.0, 0.0, None)
    done, used = NodeStatus.SUCCEEDED, NodeOutcome.USED
    runs = [NodeRun(request_id, f"n{i}", "t", 0, done, False, used, 1, 1, 1) for i in range(nodes)]
    return RequestSpans({}).encode(FinishedRequest("g", record, node_runs=runs), 7)


def batches(sink: Collect, **settings: int) -> SpanBatches:
    environ = {f"OTEL_BSP_{name.upper()}": str(value) for name, value in settings.items()}
    return SpanBatches(sink, RESOURCE, SCOPE, environ)


def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


def test_a_batch_leaves_once_max_export_batch_size_spans_wait() -> None:
    sink = Collect()
    queue = batches(sink, max_export_batch_size=4, schedule_delay=60_000)
    for i in range(6):
        queue.add(*request(f"q{i}"))
    wait_for(lambda: len(sink.posts) == 1)
    assert sink.requests(0) == ["q0", "q1", "q2", "q3"]
    assert queue.flush(5)
    assert sink.requests(1) == ["q4", "q5"]
    queue.shutdown()


def test_spans_wait_no_longer_than_the_schedule_delay() -> None:
    sink = Collect()
    queue = batches(sink, schedule_delay=50)
    queue.add(*request("q0"))
    wait_for(lambda: len(sink.posts) == 1, timeout_s=2)
    queue.shutdown()


def test_a_request_is_never_split_across_batches() -> None:
    sink = Collect()
    queue = batches(sink, max_export_batch_size=4, schedule_delay=60_000)
    queue.add(*request("big", nodes=5))
    queue.add(*request("small", nodes=1))
    assert queue.flush(5)
    assert [sink.spans(0), sink.spans(1)] == [6, 2]
    queue.shutdown()


def test_a_full_queue_drops_whole_requests_and_counts_their_spans() -> None:
    sink = Collect()
    queue = batches(sink, max_queue_size=5, schedule_delay=60_000)
    with capture_logs() as logs:
        for i in range(4):
            queue.add(*request(f"q{i}", nodes=1))  # 2 spans each: the third and fourth do not fit
    assert queue.dropped == 4
    [said] = logs  # once, in moat's log
    assert (said["event"], said["variable"]) == (
        "telemetry.spans_dropped",
        "OTEL_BSP_MAX_QUEUE_SIZE",
    )
    assert queue.flush(5)
    assert sink.requests(0) == ["q0", "q1"]
    queue.shutdown()


def test_flush_gives_up_on_a_stuck_exporter_after_its_timeout() -> None:
    hold = threading.Event()
    sink = Collect(hold=hold)
    queue = batches(sink)
    queue.add(*request("q0"))
    started = time.monotonic()
    assert not queue.flush(0.2)
    assert time.monotonic() - started < 2
    hold.set()
    queue.shutdown()
    assert sink.requests(0) == ["q0"]


def test_an_exporter_that_raises_loses_its_batch_only() -> None:
    sink = Collect(fail_first=True)
    queue = batches(sink, max_export_batch_size=1)
    with capture_logs() as logs:
        queue.add(*request("lost"))
        wait_for(lambda: queue.failed == 1 and logs)
    [said] = logs  # one line, no traceback
    assert said["event"] == "telemetry.export_failed" and "exc_info" not in said
    assert said["reason"] == "the exporter raised RuntimeError('collector exploded')"
    queue.add(*request("kept"))
    assert queue.flush(5)
    assert [sink.requests(0), queue.failed] == [["kept"], 1]
    queue.shutdown()


def test_batches_default_to_2048_spans_and_the_standard_variables_override() -> None:
    """Four times the SDK's sizes unless set: a POST costs the same CPU whatever its size."""
    sink = Collect()
    default = SpanBatches(sink, RESOURCE, SCOPE, {})
    assert (default.max_batch, default.max_queue) == (2_048, 8_192)
    default.shutdown()
    chosen = batches(sink, max_export_batch_size=512, max_queue_size=2_048)
    assert (chosen.max_batch, chosen.max_queue) == (512, 2_048)
    chosen.shutdown()
