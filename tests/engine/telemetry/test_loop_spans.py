"""Spans of graphs whose loops share body node ids: each run's span gets its own children.

A body node is recorded by its bare id and its cycle number, so the `step` of two loops
(or of a loop nested in another's cycles) gives two runs with one (node, cycle) key. The
feed keeps the order the records came in (`FinishedRequest.run_marks`, `call_marks`), from
which each LLM call, cache lookup and decision goes under the run that made it, not all
under one of them.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

from engine.events import MemorySink
from engine.scheduler.runner import Runner
from engine.telemetry import FinishedRequest
from engine.telemetry.feed import RecordFeed
from engine.telemetry.wire_spans import RequestSpans
from tests.support.sched_nodes import graph, mock_trio

TWO_LOOPS = """
moat: 1
name: g
models:
  small: {provider: sim, profile: small, time_scale: 0.02}
nodes:
  la:
    type: loop
    max_cycles: 2
    until: "step.text == '' or look.value == ''"
    nodes:
      step: {type: ask, with: {prompt: "first {{ cycle }}"}}
      look: {type: emit, with: {key: "a{{ cycle }}"}}
    output: {text: step.text, look: look.value}
  lb:
    type: loop
    max_cycles: 1
    until: "step.text == '' or look.value == ''"
    nodes:
      step: {type: ask, with: {prompt: "second {{ la.text }}"}}
      look: {type: emit, with: {key: b}}
    output: {text: step.text, look: look.value}
output:
  a: la.text
  b: lb.text
  looks: "[la.look, lb.look]"
"""


class _Keep:
    def __init__(self) -> None:
        self.requests: list[FinishedRequest] = []

    def consume(self, request: FinishedRequest) -> None:
        self.requests.append(request)

    def close(self) -> None:
        pass


async def _finished(text: str) -> FinishedRequest:
    sink = MemorySink()
    async with Runner(graph(text), sink=sink) as runner:
        result = await runner.run({}, request_id="r1")
    assert result.status.value == "ok", result.error
    keep = _Keep()
    feed = RecordFeed([keep])
    watch = feed.watcher("g")
    for item in sink.items:
        watch(item)
    feed.drain()
    [request] = keep.requests
    return request


def _spans(request: FinishedRequest) -> list[Any]:
    data, _ = RequestSpans({"g": {"small": "sim-small"}}).encode(request, 7)
    return list(ScopeSpans.FromString(data).spans)


def _cycle(span: Any) -> int:
    for kv in span.attributes:
        if kv.key == "moat.node.cycle":
            return int(kv.value.int_value)
    return 0


SIDE_BY_SIDE = TWO_LOOPS.replace("second {{ la.text }}", "second {{ cycle }}")
"""The loops demanded together: their runs overlap."""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio(), "asyncio"])
@pytest.mark.parametrize("text", [TWO_LOOPS, SIDE_BY_SIDE], ids=["sequence", "side-by-side"])
async def test_same_named_body_nodes_of_two_loops_each_parent_their_own_calls_and_events(
    anyio_backend: Any, text: str
) -> None:
    request = await _finished(text)
    assert request.run_marks is not None and len(request.run_marks) == len(request.node_runs)
    spans = _spans(request)
    steps = [s for s in spans if s.name == "ask step"]
    looks = [s for s in spans if s.name == "emit look"]
    assert sorted(_cycle(s) for s in steps) == sorted(_cycle(s) for s in looks) == [1, 1, 2]
    # every run of `step` has its one call under it, every run of `look` its lookup
    calls = [s for s in spans if s.name.startswith("chat ")]
    assert sorted(c.parent_span_id for c in calls) == sorted(s.span_id for s in steps)
    lookups = [s for s in spans if s.name == "cache.lookup look"]
    assert sorted(x.parent_span_id for x in lookups) == sorted(s.span_id for s in looks)
    # and its decision as an event of its own span, not of the other loop's
    assert [[e.name for e in s.events] for s in looks] == [["CACHE_MISS"]] * 3
    # the run of `la`'s cycle 1 (recorded first) has `la`'s call: the prompt's hash
    by_id = {s.span_id: s for s in steps}
    hashes = {
        kv.value.string_value
        for c in calls
        for kv in c.attributes
        if kv.key == "moat.llm.prompt_hash"
    }
    assert len(hashes) == 3
    recorded = [r for r in request.node_runs if r.node == "step"]
    for call, record in zip(request.llm_calls, recorded, strict=True):
        span = next(c for c in calls if _hash(c) == call.prompt_hash)
        parent = by_id[span.parent_span_id]
        assert _cycle(parent) == record.cycle == call.cycle
        assert parent.start_time_unix_nano == int(record.started_at * 1e9)


def _hash(span: Any) -> str:
    return next(kv.value.string_value for kv in span.attributes if kv.key == "moat.llm.prompt_hash")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
async def test_without_the_records_order_the_later_run_keeps_them_as_before(
    anyio_backend: Any,
) -> None:
    request = await _finished(TWO_LOOPS)
    request.run_marks = request.call_marks = None
    spans = _spans(request)
    looks = [s for s in spans if s.name == "emit look" and _cycle(s) == 1]
    assert sorted(len(s.events) for s in looks) == [0, 2]
