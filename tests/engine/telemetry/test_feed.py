"""The record feed: finished requests carry exactly their own records, in emission order."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import (
    CacheStatus,
    CallKind,
    CallOutcome,
    LlmCall,
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    Record,
    RequestRecord,
    RequestStatus,
)
from engine.telemetry import FinishedRequest, RecordFeed


class Keep:
    def __init__(self) -> None:
        self.got: list[FinishedRequest] = []
        self.closed = False

    def consume(self, request: FinishedRequest) -> None:
        self.got.append(request)

    def close(self) -> None:
        self.closed = True


def records(request_id: str, count: int) -> list[Record]:
    """`count` records of one request, then its `RequestRecord`."""
    made: list[Record] = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            made.append(OrchestrationEvent("r", request_id, 0, f"n{i}", "scheduler", "X", i))
        elif kind == 1:
            made.append(
                NodeRun(
                    request_id,
                    f"n{i}",
                    "t",
                    0,
                    NodeStatus.SUCCEEDED,
                    False,
                    NodeOutcome.USED,
                    0.0,
                    1.0,
                    1,
                )
            )
        else:
            made.append(
                LlmCall(
                    request_id,
                    f"n{i}",
                    0,
                    "m",
                    "sim",
                    CallKind.NORMAL,
                    CallOutcome.USED,
                    CacheStatus.NONE,
                    "h",
                    1,
                    1,
                    0.0,
                    1.0,
                    0.0,
                    "ok",
                )
            )
    made.append(
        RequestRecord(request_id, "r", 0, RequestStatus.OK, 0.0, 1.0, 1.0, 0.0, output=None)
    )
    return made


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[dict[str, list[Record]], list[Record], list[int]]:
    """Several requests' records interleaved as concurrent requests emit them, and the
    points at which the feed drains."""
    sizes = draw(st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 8), min_size=1))
    originals = {rid: records(rid, n) for rid, n in sizes.items()}
    streams = {rid: list(made) for rid, made in originals.items()}
    merged: list[Record] = []
    while any(streams.values()):
        rid = draw(st.sampled_from(sorted(r for r, s in streams.items() if s)))
        merged.append(streams[rid].pop(0))
    cuts = draw(st.lists(st.integers(0, len(merged)), max_size=4))
    return originals, merged, sorted(cuts)


@given(interleavings())
@settings(max_examples=60, deadline=None)
def test_each_finished_request_holds_exactly_its_records_in_order(
    case: tuple[dict[str, list[Record]], list[Record], list[int]],
) -> None:
    originals, merged, cuts = case
    keep = Keep()
    feed = RecordFeed([keep])
    append = feed.watcher("g")
    done = 0
    for cut in [*cuts, len(merged)]:
        for item in merged[done:cut]:
            append(item)
        done = max(done, cut)
        feed.drain()
    assert sorted(r.record.id for r in keep.got) == sorted(originals)
    for finished in keep.got:
        *expected, last = originals[finished.record.id]
        assert finished.record is last and finished.graph == "g"
        for kind, got in (
            (OrchestrationEvent, finished.events),
            (NodeRun, finished.node_runs),
            (LlmCall, finished.llm_calls),
        ):
            assert [id(r) for r in got] == [id(r) for r in expected if isinstance(r, kind)]
    assert feed._open == {}


def test_the_thread_drains_and_close_flushes_and_closes_consumers() -> None:
    keep = Keep()
    feed = RecordFeed([keep], interval_s=0.01)
    append = feed.watcher("g")
    feed.start()
    for item in records("a", 3):
        append(item)
    deadline = threading.Event()
    for _ in range(200):
        if keep.got:
            break
        deadline.wait(0.01)
    assert [r.record.id for r in keep.got] == ["a"]
    for item in records("b", 2):
        append(item)
    feed.close()
    assert [r.record.id for r in keep.got] == ["a", "b"] and keep.closed


def test_a_caller_trace_context_travels_with_its_request_only() -> None:
    keep = Keep()
    feed = RecordFeed([keep])
    append = feed.watcher("g")
    feed.continue_trace("a", {"traceparent": "00-abc-def-01", "x-other": "no"})
    feed.continue_trace("b", {"tracestate": "only-state"})  # no traceparent: nothing
    for item in [*records("a", 1), *records("b", 1)]:
        append(item)
    feed.drain()
    parents = {r.record.id: r.parent for r in keep.got}
    assert parents == {"a": {"traceparent": "00-abc-def-01"}, "b": None}


def test_a_failing_consumer_is_logged_and_the_others_still_get_every_request() -> None:
    from structlog.testing import capture_logs

    class Broken(Keep):
        def consume(self, request: FinishedRequest) -> None:
            raise RuntimeError("bug")

    keep = Keep()
    feed = RecordFeed([Broken(), keep])
    append = feed.watcher("g")
    for item in [*records("a", 1), *records("b", 2)]:
        append(item)
    with capture_logs() as logs:
        assert feed.drain() == 2
    assert [r.record.id for r in keep.got] == ["a", "b"]
    assert feed.failures == 2
    assert [(e["event"], e["consumer"]) for e in logs] == [
        ("telemetry.consume_failed", "Broken"),
        ("telemetry.consume_failed", "Broken"),
    ]
