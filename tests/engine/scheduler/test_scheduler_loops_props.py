"""Properties of graphs with several loops: in sequence, side by side, nested, and whose
body nodes share ids with each other's and with the top level's.

Random graphs (`tests.support.loop_graphs`) run on trio with a mock clock, so hypothesis
varies latencies, guards, speculation, failures and loop timeouts at no wall time. The
store records a body node by its bare id and its cycle, so the invariants are stated per
loop through what each loop records of itself (`LOOP_CYCLE_STARTED`, its stop event, its
`CYCLE_SUMMARY` traces, which name it):

- the answer is the reference's (`tests.support.loop_reference`: names resolve innermost
  scope first, `prev` is the previous cycle's body), unless a loop timed out;
- each loop's `LOOP_CYCLE_STARTED` events run 1..n for every time the loop runs, and
  each run stops once at most (`LOOP_UNTIL_MET`, `LOOP_MAX_CYCLES`) at its last cycle;
- one `CYCLE_SUMMARY` per cycle of each loop, naming the loop, in the order its cycles ran,
  `stop` on the last of each run only;
- every node runs at most once per cycle of each loop whose body holds its id (exactly
  once: no body node of one loop is run, or counted, for another's cycle);
- every node instance's starts are all recorded and ended once the runner closed.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings

from engine.events import MemorySink, RequestRecord
from engine.graph.compiled import Graph
from engine.scheduler.runner import RequestResult, Runner
from tests.support.loop_graphs import graphs
from tests.support.loop_reference import loop_ids, reference, work_nodes
from tests.support.sched_nodes import graph

STOPS = ("LOOP_UNTIL_MET", "LOOP_MAX_CYCLES", "LOOP_STOPPED_SOFT_DEADLINE")


async def _run(g: Graph) -> tuple[RequestResult, MemorySink]:
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        result = await runner.run({}, request_id="r")
    return result, sink


def _blocks(cycles: list[int]) -> list[list[int]]:
    """`cycles` cut where one run of a loop ends and the next begins (at each 1)."""
    blocks: list[list[int]] = []
    for cycle in cycles:
        if cycle == 1 or not blocks:
            blocks.append([])
        blocks[-1].append(cycle)
    return blocks


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(graphs())
def test_several_loops_keep_apart_and_match_the_reference(text: str) -> None:
    g = graph(text)
    expected = reference(g)
    result, sink = trio.run(_run, g, clock=trio.testing.MockClock(autojump_threshold=0))
    timed_out = any(r.status.value == "timed_out" for r in sink.node_runs())

    if not timed_out:
        if expected is None:
            assert result.status.value == "failed", text
        else:
            assert (result.status.value, result.output) == ("ok", expected), (result.error, text)
    assert result.status.value in ("ok", "failed"), text
    assert "cancelled before it finished" not in (result.error or ""), text
    assert isinstance(sink.items[-1], RequestRecord)

    frames = _assert_cycles_per_loop(g, sink, text)
    _assert_once_per_cycle_per_loop(g, sink, frames, text)


def _assert_cycles_per_loop(g: Graph, sink: MemorySink, text: str) -> dict[tuple[str, int], int]:
    """Each loop's cycles, stops and summaries; returns how many frames each (loop, cycle)
    had."""
    events = sorted(sink.events(), key=lambda e: e.sequence)
    summaries = [t.payload for t in sink.traces() if t.stage == "CYCLE_SUMMARY"]
    frames: dict[tuple[str, int], int] = {}
    for loop in loop_ids(g.scope):
        started = [
            e.cycle for e in events if e.event_type == "LOOP_CYCLE_STARTED" and e.stage == loop
        ]
        blocks = _blocks(started)
        for block in blocks:
            assert block == list(range(1, len(block) + 1)), (loop, started, text)
        for cycle in started:
            frames[(loop, cycle)] = frames.get((loop, cycle), 0) + 1
        stops = [e for e in events if e.event_type in STOPS and e.stage == loop]
        assert len(stops) <= len(blocks), (loop, text)
        runs = [r for r in sink.node_runs() if r.node == loop and r.node_type == "loop"]
        assert len(blocks) <= len(runs), (loop, text)  # a loop that started ran once
        succeeded = sum(r.status.value == "succeeded" for r in runs)
        assert succeeded <= len(stops), (loop, text)
        ends = {block[-1] for block in blocks}
        assert all(stop.cycle in ends for stop in stops), (loop, text)
        mine = [s for s in summaries if s["loop"] == loop]
        assert [s["cycle"] for s in mine] == started, (loop, text)
        for summary, after in zip(mine, [*started[1:], 1][: len(started)], strict=True):
            # `continue` exactly when the loop's next cycle follows
            assert (summary["next_action"] == "continue") == (after != 1), (summary, text)
            assert (summary["next_action"] == "stop") == (summary["stop_reason"] is not None)
    assert len(summaries) == sum(frames.values()), text
    return frames


def _assert_once_per_cycle_per_loop(
    g: Graph, sink: MemorySink, frames: dict[tuple[str, int], int], text: str
) -> None:
    where: dict[str, list[str | None]] = {}  # node id -> the loops holding one (None: top)
    instances: dict[str, list[Any]] = {}
    for node_id, loop, impl in work_nodes(g.scope):
        where.setdefault(node_id, []).append(loop)
        instances.setdefault(node_id, []).append(impl)
    counts: dict[tuple[str, int], int] = {}
    attempts: dict[str, int] = {}
    for run in sink.node_runs():
        if run.node_type == "work":
            counts[(run.node, run.cycle)] = counts.get((run.node, run.cycle), 0) + 1
            attempts[run.node] = attempts.get(run.node, 0) + run.attempts
    for (node_id, cycle), n in counts.items():
        allowed = sum(
            (1 if cycle == 0 else 0) if loop is None else frames.get((loop, cycle), 0)
            for loop in where[node_id]
        )
        assert n <= allowed, (node_id, cycle, n, allowed, text)
    for node_id, impls in instances.items():
        started = sum(impl.started for impl in impls)
        assert started <= attempts.get(node_id, 0), (node_id, text)
        for impl in impls:  # nothing runs once the runner has closed
            assert impl.started == impl.finished + impl.cancelled + impl.failed, (node_id, text)
