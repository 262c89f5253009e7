"""Properties of loops: random loop graphs give what a plain evaluator gives, and run cleanly.

Random graphs of `work` nodes around a loop (sometimes speculative, guarded or nested),
whose body nodes read earlier body nodes, outer nodes, `cycle` and `prev`, with guards and
speculative strategies that resolve early or late, latencies, and failures (optional or
not, in one cycle or every one), run on trio with a mock clock: hypothesis varies the
timings, each example costs no wall time. The reference is a memoised recursive evaluation
through the same compiled expressions, cycle by cycle, with `prev` as documented: the
previous cycle's value of each node read as `prev.X`, none for the rest.

Whatever the timings: the answer is the reference's; a request the reference answers is
never failed (a cancelled speculative node in any position cannot fail it); a node runs
at most once per cycle; every speculative start ends used, discarded or cancelled; and
nothing runs once the runner has closed.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import MemorySink, RequestRecord
from engine.graph.compiled import Graph
from engine.scheduler.runner import RequestResult, Runner
from tests.support.loop_reference import (
    NodeSpec,
    expressions,
    graph_yaml,
    read,
    read_prev,
    reference,
    work_nodes,
)
from tests.support.sched_nodes import graph

MS = st.sampled_from([0, 0, 3, 10, 20, 50])


@st.composite
def nodes(
    draw: st.DrawFn, prefix: str, outer: list[str], depth: int, in_loop: bool
) -> list[NodeSpec]:
    """The nodes of one scope; a loop among them while `depth` allows."""
    count = draw(st.integers(1, 4))
    ids = [f"{prefix}{i}" for i in range(count)]
    loop_at = draw(st.integers(0, count - 1)) if depth and draw(st.booleans()) else None
    specs: list[NodeSpec] = []
    for i, node_id in enumerate(ids):
        earlier = outer + ids[:i]
        prevs = ids if in_loop else []
        spec = NodeSpec(node_id, ms=draw(MS), optional=draw(st.booleans()))
        spec.value = draw(expressions(earlier, prevs))
        guard = draw(st.sampled_from(["none", "none", "node", "prev", "cycle"]))
        if guard == "node" and earlier:
            spec.when = f"{read(draw(st.sampled_from(earlier)))} % 3 != {draw(st.integers(0, 2))}"
        elif guard == "prev" and in_loop:
            spec.when = f"{read_prev(draw(st.sampled_from(ids)))} % 2 == {draw(st.integers(0, 1))}"
        elif guard == "cycle" and in_loop:
            spec.when = f"cycle % 2 == {draw(st.integers(0, 1))}"
        strategy = draw(st.sampled_from(["no", "no", "yes", "yes", "late", "cycle"]))
        if strategy == "yes":
            spec.speculative = "true"
        elif strategy == "late" and earlier:  # decided only once an earlier node resolves
            spec.speculative = f"{read(draw(st.sampled_from(earlier)))} % 2 == 0"
        elif strategy == "cycle" and in_loop:
            spec.speculative = "cycle % 2 == 1"
        failure = draw(st.integers(0, 7))
        if failure == 0:
            spec.fail = "error"
        elif failure == 1 and in_loop:
            spec.fail = f"{{{{ 'error' if cycle == {draw(st.integers(1, 3))} else none }}}}"
        if i == loop_at:
            spec.body = draw(nodes(f"{node_id}_", earlier, depth - 1, True))
            body_ids = [b.id for b in spec.body]
            spec.max_cycles = draw(st.integers(1, 4))
            if draw(st.booleans()):
                spec.until = f"{draw(expressions(body_ids, body_ids))} % 3 == 0"
            spec.output = draw(expressions(body_ids, body_ids))
        specs.append(spec)
    return specs


@st.composite
def graphs(draw: st.DrawFn) -> str:
    top = draw(nodes("n", [], 2, False))
    if not any(s.body for s in top):  # always at least one loop
        body = draw(nodes("n9_", [s.id for s in top], 1, True))
        ids = [b.id for b in body]
        top.append(
            NodeSpec(
                "n9",
                ms=0,
                speculative=draw(st.sampled_from([None, "true"])),
                body=body,
                max_cycles=draw(st.integers(1, 4)),
                until=draw(st.sampled_from([None, f"{draw(expressions(ids, ids))} % 3 == 0"])),
                output=draw(expressions(ids, ids)),
            )
        )
    outputs = draw(st.lists(expressions([s.id for s in top], []), min_size=1, max_size=3))
    return graph_yaml("random-loops", top, outputs)


# -- the property --------------------------------------------------------------------------


async def _run(g: Graph) -> tuple[RequestResult, MemorySink]:
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        result = await runner.run({}, request_id="r")
    return result, sink


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(graphs())
def test_random_loop_graphs_match_the_reference_and_never_fail_on_a_cancellation(
    text: str,
) -> None:
    g = graph(text)
    expected = reference(g)
    result, sink = trio.run(_run, g, clock=trio.testing.MockClock(autojump_threshold=0))

    # the reference's answer; a cancelled node never turns it into a failure
    if expected is None:
        assert result.status.value == "failed", text
    else:
        assert (result.status.value, result.output) == ("ok", expected), (result.error, text)
    assert "cancelled before it finished" not in (result.error or ""), text

    runs: dict[tuple[str, int], list[Any]] = {}
    for run in sink.node_runs():
        runs.setdefault((run.node, run.cycle), []).append(run)
    _assert_once_per_cycle(g, sink, runs, text)
    _assert_fates(sink, runs, text)
    _assert_one_summary_per_cycle(sink, text)
    assert isinstance(sink.items[-1], RequestRecord)


def _assert_once_per_cycle(
    g: Graph, sink: MemorySink, runs: dict[tuple[str, int], list[Any]], text: str
) -> None:
    """At most one run per node per cycle (per frame of its loop: `LOOP_CYCLE_STARTED`)."""
    frames: dict[tuple[str, int], int] = {}
    for event in sink.events():
        if event.event_type == "LOOP_CYCLE_STARTED":
            key = (event.stage, event.cycle)
            frames[key] = frames.get(key, 0) + 1
    for node_id, loop, impl in work_nodes(g.scope):
        node_runs = [r for (n, _), rs in runs.items() if n == node_id for r in rs]
        for (n, cycle), rs in runs.items():
            if n == node_id:
                allowed = 1 if loop is None else frames.get((loop, cycle), 0)
                assert len(rs) <= allowed, (node_id, cycle, text)
        assert impl.started <= sum(r.attempts for r in node_runs), (node_id, text)
        # nothing runs once the runner has closed
        assert impl.started == impl.finished + impl.cancelled + impl.failed, (node_id, text)


def _assert_one_summary_per_cycle(sink: MemorySink, text: str) -> None:
    """Every cycle started writes one `CYCLE_SUMMARY`, finished or cut short (a failure,
    a cancellation); one that stops the loop, or is cut short, says `stop` and why."""
    started = sorted(
        (e.stage, e.cycle) for e in sink.events() if e.event_type == "LOOP_CYCLE_STARTED"
    )
    summaries = [t.payload for t in sink.traces() if t.stage == "CYCLE_SUMMARY"]
    assert sorted((s["loop"], s["cycle"]) for s in summaries) == started, text
    for summary in summaries:
        stops = summary["next_action"] == "stop"
        assert stops == (summary["stop_reason"] is not None), (summary, text)


def _assert_fates(sink: MemorySink, runs: dict[tuple[str, int], list[Any]], text: str) -> None:
    """Every start is recorded; a cancelled run is cancelled or discarded, never used; a
    run recorded used succeeded."""
    for event in sink.events():
        if event.event_type == "SPECULATIVE_STARTED":
            assert (event.stage, event.cycle) in runs, (event, text)
    for run in sink.node_runs():
        if run.status.value == "cancelled":
            assert run.outcome.value in ("cancelled", "discarded"), (run, text)
        if run.speculative:
            assert run.outcome.value in ("used", "discarded", "cancelled", "none"), (run, text)
        if run.outcome.value == "used":  # a result was used: there was one
            assert run.status.value == "succeeded", (run, text)
