"""Properties: random graphs give what a plain recursive evaluator gives, and run cleanly.

Random DAGs of `work` nodes with random guards, conditional reads, speculative flags,
latencies and failures (optional or not) run on trio with a mock clock, so each example
costs no wall time. The reference evaluator is the simplest thing that could be right:
a memoised recursive evaluation through the same compiled expressions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import MemorySink, RequestRecord
from engine.graph.compiled import Graph
from engine.scheduler.runner import RequestResult, Runner
from tests.support.sched_nodes import Work, graph


@dataclass
class NodeSpec:
    value: str
    when: str | None
    speculative: bool
    ms: int
    fail: bool
    optional: bool


def read(j: int) -> str:
    return f"(n{j}.value if n{j} else 0)"


@st.composite
def expressions(draw: st.DrawFn, upto: int) -> str:
    """An integer expression over nodes n0..n{upto-1} (none-safe)."""
    k = draw(st.integers(0, 9))
    if upto == 0:
        return str(k)
    shape = draw(st.sampled_from(["const", "sum", "cond", "cond"]))
    pick = st.integers(0, upto - 1)
    if shape == "const":
        return str(k)
    if shape == "sum":
        reads = draw(st.lists(pick, min_size=1, max_size=3))
        return " + ".join([*(read(j) for j in reads), str(k)])
    cond, then, other = draw(pick), draw(pick), draw(pick)
    return f"({read(then)} if {read(cond)} % 2 == {k % 2} else {read(other)} + {k})"


@st.composite
def graphs(draw: st.DrawFn) -> tuple[str, list[NodeSpec]]:
    n = draw(st.integers(2, 7))
    specs = []
    for i in range(n):
        guard = None
        if i and draw(st.booleans()):
            guard = f"{read(draw(st.integers(0, i - 1)))} % 3 != {draw(st.integers(0, 2))}"
        specs.append(
            NodeSpec(
                value=draw(expressions(i)),
                when=guard,
                speculative=draw(st.booleans()),
                ms=draw(st.sampled_from([0, 10, 20, 50, 100])),
                fail=draw(st.integers(0, 5)) == 0,
                optional=draw(st.booleans()),
            )
        )
    outputs = draw(st.lists(expressions(n), min_size=1, max_size=3))
    return _yaml(specs, outputs), specs


def _yaml(specs: list[NodeSpec], outputs: list[str]) -> str:
    lines = ["moat: 1", "name: random", "nodes:"]
    for i, spec in enumerate(specs):
        lines += [f"  n{i}:", "    type: work"]
        if spec.when:
            lines.append(f'    when: "{spec.when}"')
        if spec.speculative:
            lines.append("    speculative: true")
        if spec.optional:
            lines.append("    optional: true")
        fail = ", fail: error" if spec.fail else ""
        lines.append(f'    with: {{ms: {spec.ms}, value: "{{{{ {spec.value} }}}}"{fail}}}')
    lines.append("output:")
    lines += [f'  o{i}: "{expr}"' for i, expr in enumerate(outputs)]
    return "\n".join(lines) + "\n"


class _Failed(Exception):
    """A node failed in the reference evaluation (not an error the evaluator wraps)."""


class Reference(Mapping[str, Any]):
    """The plain evaluator: a node's value is computed, once, when an expression reads it."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.memo: dict[str, Any] = {}
        self.reached: list[str] = []
        self.certain: set[str] = set()
        """Names the expressions it evaluated read on every path: the scheduler demands them
        together, so when one of them fails the others may have run too."""

    def __getitem__(self, name: str) -> Any:
        if name == "input":
            return {}
        if name not in self.memo:
            self.reached.append(name)
            try:
                self.memo[name] = self._node(name)
            except _Failed as exc:
                self.memo[name] = exc
        value = self.memo[name]
        if isinstance(value, _Failed):
            raise value
        return value

    def _node(self, name: str) -> Any:
        node = self.g.nodes[name]
        try:
            if node.when is not None:
                self.certain |= node.when.certain
                if not node.when.evaluate(self):
                    return None
            self.certain |= node.config.certain
            config = node.config.evaluate(self)
            if config.get("fail"):
                raise _Failed(name)
        except _Failed:
            if node.optional:
                return None
            raise
        return Work.Output(value=config["value"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.g.nodes)

    def __len__(self) -> int:
        return len(self.g.nodes)

    def failed(self) -> bool:
        """Whether a node it reached failed (its failure absorbed by an optional node)."""
        return any(isinstance(value, _Failed) for value in self.memo.values())

    def may_run(self) -> set[str]:
        """Every node the scheduler may run on demand: what this evaluator reached or read
        for sure, and what those nodes read in turn."""
        found: set[str] = set()
        todo = [*self.reached, *self.certain]
        while todo:
            name = todo.pop()
            if name in found or name not in self.g.nodes:
                continue
            found.add(name)
            node = self.g.nodes[name]
            todo += [*node.config.names, *(node.when.names if node.when is not None else ())]
        return found

    def outputs(self) -> dict[str, Any] | None:
        for expr in self.g.output.values():
            self.certain |= expr.certain
        try:
            return {name: expr.evaluate(self) for name, expr in self.g.output.items()}
        except _Failed:
            return None


async def _run(g: Graph) -> tuple[RequestResult, MemorySink, dict[str, int]]:
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        result = await runner.run({}, request_id="r")
        running_at_return = {
            node_id: node.impl.started - node.impl.finished - node.impl.cancelled - node.impl.failed
            for node_id, node in g.nodes.items()
        }
    return result, sink, running_at_return


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(graphs())
def test_random_graphs_match_the_reference_evaluator(case: tuple[str, list[NodeSpec]]) -> None:
    text, _ = case
    g = graph(text)
    reference = Reference(g)
    expected = reference.outputs()
    result, sink, running_at_return = trio.run(
        _run, g, clock=trio.testing.MockClock(autojump_threshold=0)
    )

    # same answer as the plain evaluator
    if expected is None:
        assert result.status.value == "failed", text
    else:
        assert (result.status.value, result.output) == ("ok", expected), text

    node_runs = sink.node_runs()
    by_node: dict[str, list[Any]] = {}
    for run in node_runs:
        by_node.setdefault(run.node, []).append(run)
    # every node ran at most once, and nothing started twice
    assert all(len(runs) == 1 for runs in by_node.values()), text
    for node_id, node in g.nodes.items():
        assert node.impl.started <= 1, (node_id, text)  # type: ignore[union-attr]

    # every started speculative node ends used, discarded or cancelled, or `none` when it
    # was demanded but had no result to use; `used` only for a result that succeeded
    started = {e.stage for e in sink.events() if e.event_type == "SPECULATIVE_STARTED"}
    used = {e.stage for e in sink.events() if e.event_type == "SPECULATIVE_RESULT_USED"}
    for node_id in started:
        assert node_id in by_node, (node_id, text)
        (run,) = by_node[node_id]
        assert run.speculative
        outcome, status = run.outcome.value, run.status.value
        assert outcome in ("used", "discarded", "cancelled", "none"), (node_id, text)
        assert (outcome == "used") == (status == "succeeded" and node_id in used), (run, text)
        if outcome == "none":
            assert status in ("failed", "timed_out", "skipped"), (run, text)

    # only speculative work may still be running when the response returns
    for node_id, count in running_at_return.items():
        if count:
            (run,) = by_node[node_id]
            assert run.speculative and run.outcome.value != "used", (node_id, text)

    # on success, what ran on demand is exactly what the reference reached (or less,
    # where speculation got there first); nothing the reference reached was left out
    if expected is not None:
        on_demand = {r.node for r in node_runs if not r.speculative}
        assert on_demand <= reference.may_run(), text
        if not reference.failed():
            assert on_demand <= set(reference.reached), text
            assert set(reference.reached) <= set(by_node), text
        # else which of the inputs demanded together with a failing one ran (or were even
        # started before the failure was known) depends on the schedule

    # the request record is last, and nothing runs after the runner exits
    assert isinstance(sink.items[-1], RequestRecord)
    for node in g.nodes.values():
        work = node.impl
        assert work.started == work.finished + work.cancelled + work.failed, text  # type: ignore[union-attr]
