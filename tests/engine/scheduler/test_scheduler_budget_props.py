"""Properties of budgets: random graphs with timeouts, retries, loop timeouts and deadlines.

Random graphs of `work` nodes (some inside a loop, which may have a `timeout_ms` of its
own), with per-node timeouts, retries, transient and permanent failures, guards,
speculative starts and a request deadline with or without `partial`, run on trio with a
mock clock. A node's own fate is deterministic (its run sleeps `ms`, then fails or not on
that attempt), so a plain recursive evaluator says what each node gives. Whether a loop
ran out of its `timeout_ms`, and where the request's deadline struck, depend on the
schedule: the run's own record says which loops timed out, and the reference takes that
as given.

Whatever the schedule: an answer `ok` is the reference's; `partial` outputs are the
reference's values; a request is `deadline_exceeded` or `partial` only with a deadline; a
timed-out loop never fails a node that others read outside it; every node runs at most
once (per cycle), and its recorded attempts are the runs it made, each retry recorded; no
speculative run is said to be both joined and skipped, or both used and discarded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import MemorySink, RequestRecord
from engine.graph.compiled import CompiledNode, Graph
from engine.scheduler.runner import RequestResult, Runner
from tests.support.loop_reference import (
    Failed,
    NodeSpec,
    graph_yaml,
    read,
    reference_outputs,
    work_nodes,
)
from tests.support.loop_reference import (
    expressions as shared_expressions,
)
from tests.support.sched_nodes import graph

MS = st.sampled_from([0, 3, 10, 20, 50])
TIMEOUTS = st.sampled_from([None, None, None, 7, 15, 35])
"""Never equal to a node's `ms`: a run either fits in its timeout or does not."""


def expressions(names: list[str], prevs: list[str]) -> st.SearchStrategy[str]:
    return shared_expressions(names, prevs, cycle=False)


@st.composite
def work(draw: st.DrawFn, node_id: str, earlier: list[str], prevs: list[str]) -> NodeSpec:
    spec = NodeSpec(node_id, ms=draw(MS), optional=draw(st.booleans()))
    spec.value = draw(expressions(earlier, prevs))
    if earlier and draw(st.integers(0, 3)) == 0:
        spec.when = f"{read(draw(st.sampled_from(earlier)))} % 3 != {draw(st.integers(0, 2))}"
    spec.speculative = "true" if draw(st.integers(0, 3)) == 0 else None
    spec.fail = draw(st.sampled_from([None, None, None, "error", "transient"]))
    spec.fail_times = draw(st.integers(0, 2))
    spec.retries = draw(st.sampled_from([0, 0, 1, 2]))
    spec.timeout_ms = draw(TIMEOUTS)
    return spec


@st.composite
def graphs(draw: st.DrawFn) -> str:
    count = draw(st.integers(2, 5))
    loop_at = draw(st.integers(1, count - 1))
    top: list[NodeSpec] = []
    for i in range(count):
        node_id = f"n{i}"
        earlier = [s.id for s in top]
        if i != loop_at:
            top.append(draw(work(node_id, earlier, [])))
            continue
        body: list[NodeSpec] = []
        body_ids = [f"{node_id}_{j}" for j in range(draw(st.integers(1, 3)))]
        for j, body_id in enumerate(body_ids):
            body.append(draw(work(body_id, earlier + body_ids[:j], body_ids)))
        loop = NodeSpec(node_id, body=body, optional=draw(st.booleans()))
        loop.max_cycles = draw(st.integers(1, 3))
        if draw(st.booleans()):
            loop.until = f"{draw(expressions(body_ids, body_ids))} % 3 == 0"
        loop.output = draw(expressions(body_ids, body_ids))
        loop.timeout_ms = draw(st.sampled_from([None, 15, 40, 90]))
        loop.speculative = "true" if draw(st.integers(0, 3)) == 0 else None
        top.append(loop)
    outputs = draw(st.lists(expressions([s.id for s in top], []), min_size=1, max_size=3))
    deadline = draw(st.sampled_from([None, None, 40, 100, 200]))
    budget = None
    if deadline is not None:
        partial = draw(st.booleans())
        budget = f"{{deadline_ms: {deadline}, partial: {str(partial).lower()}}}"
    return graph_yaml("random-budgets", top, outputs, budget)


# -- the reference's rule (the rest is shared) ---------------------------------------------


def _succeeds(node: CompiledNode, config: Mapping[str, Any]) -> bool:
    """Whether some attempt of the node succeeds (it sleeps `ms`, then fails or not)."""
    timeout = node.timeout_ms
    fail, times = config.get("fail"), config.get("fail_times", 0)
    for attempt in range(1, node.retries + 2):
        if timeout is not None and config["ms"] > timeout:
            continue  # timed out: retried
        if fail and (times == 0 or attempt <= times):
            if fail == "transient":
                continue
            return False
        return True
    return False


# -- the property --------------------------------------------------------------------------


async def _run(g: Graph) -> tuple[RequestResult, MemorySink]:
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        result = await runner.run({}, request_id="r")
    return result, sink


def check_budgets(text: str) -> None:
    g = graph(text)
    result, sink = trio.run(_run, g, clock=trio.testing.MockClock(autojump_threshold=0))
    node_runs = sink.node_runs()
    timed_out = frozenset(
        (r.node, r.cycle)
        for r in node_runs
        if r.node_type == "loop" and r.status.value == "timed_out"
    )
    expected = reference_outputs(g, timed_out=timed_out, succeeds=_succeeds)
    failed = any(isinstance(v, Failed) for v in expected.values())
    status = result.status.value
    deadline = g.budget.deadline_ms is not None

    if status == "ok":
        assert not failed, (result.output, text)
        assert result.output == expected, (result.output, expected, text)
    elif status == "failed":
        assert failed, (result.error, text)
        assert "cancelled before it finished" not in (result.error or ""), (result.error, text)
    elif status == "partial":
        assert deadline and g.budget.partial, text
        assert result.output, text
        for name, value in result.output.items():
            assert expected[name] == value, (name, value, expected, text)
    else:
        assert status == "deadline_exceeded" and deadline, (status, result.error, text)

    seen: dict[tuple[str, int], int] = {}
    for run in node_runs:
        key = (run.node, run.cycle)
        seen[key] = seen.get(key, 0) + 1
    assert all(n == 1 for n in seen.values()), (seen, text)

    retries: dict[tuple[str, int], int] = {}
    joins: dict[tuple[str, int], set[str]] = {}
    for event in sink.events():
        key = (event.stage, event.cycle)
        if event.event_type == "NODE_RETRY":
            retries[key] = retries.get(key, 0) + 1
        elif event.event_type.startswith("SPECULATIVE_"):
            joins.setdefault(key, set()).add(event.event_type)
    for key, said in joins.items():  # never both joined and skipped, used and discarded
        assert not {"SPECULATIVE_JOIN_SKIPPED", "SPECULATIVE_JOIN_REQUIRED"} <= said, (key, text)
        assert not {"SPECULATIVE_RESULT_USED", "SPECULATIVE_RESULT_DISCARDED"} <= said, (key, text)
    for node_id, _, impl in work_nodes(g.scope):
        assert impl.started == impl.finished + impl.cancelled + impl.failed, (node_id, text)
        for (_, cycle), attempts in impl.attempts.items():
            (run,) = [r for r in node_runs if r.node == node_id and r.cycle == cycle]
            assert run.attempts == attempts, (node_id, cycle, run, text)
            retried = retries.get((node_id, cycle), 0)
            assert retried in (attempts - 1, attempts), (node_id, cycle, retried, text)
    assert isinstance(sink.items[-1], RequestRecord)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(graphs())
def test_random_graphs_with_budgets_keep_to_the_reference(text: str) -> None:
    check_budgets(text)
