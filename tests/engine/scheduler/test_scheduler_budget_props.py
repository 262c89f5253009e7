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

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import MemorySink, RequestRecord
from engine.graph.compiled import CompiledLoop, CompiledNode, Graph, Scope
from engine.scheduler.runner import RequestResult, Runner
from tests.support.sched_nodes import Work, graph

MS = st.sampled_from([0, 3, 10, 20, 50])
TIMEOUTS = st.sampled_from([None, None, None, 7, 15, 35])
"""Never equal to a node's `ms`: a run either fits in its timeout or does not."""


@dataclass
class Spec:
    """One node of a random graph (a loop when `body` is set)."""

    id: str
    value: str = "0"
    when: str | None = None
    speculative: bool = False
    ms: int = 0
    fail: str | None = None
    fail_times: int = 0
    retries: int = 0
    timeout_ms: int | None = None
    optional: bool = False
    body: list[Spec] = field(default_factory=list)
    max_cycles: int = 1
    until: str | None = None
    output: str = "0"


def read(name: str) -> str:
    return f"({name}.value if {name} else 0)"


def read_prev(name: str) -> str:
    return f"(prev.{name}.value if prev and prev.{name} else 0)"


@st.composite
def expressions(draw: st.DrawFn, names: list[str], prevs: list[str]) -> str:
    """An integer expression over `names` (and `prev.X` for X in `prevs`), none-safe."""
    k = draw(st.integers(0, 9))
    terms = [read(n) for n in names] + [read_prev(n) for n in prevs]
    if not terms:
        return str(k)
    shape = draw(st.sampled_from(["const", "sum", "cond", "cond"]))
    pick = st.sampled_from(terms)
    if shape == "const":
        return str(k)
    if shape == "sum":
        return " + ".join([*draw(st.lists(pick, min_size=1, max_size=3)), str(k)])
    cond, then, other = draw(pick), draw(pick), draw(pick)
    return f"({then} if {cond} % 2 == {k % 2} else {other} + {k})"


@st.composite
def work(draw: st.DrawFn, node_id: str, earlier: list[str], prevs: list[str]) -> Spec:
    spec = Spec(node_id, ms=draw(MS), optional=draw(st.booleans()))
    spec.value = draw(expressions(earlier, prevs))
    if earlier and draw(st.integers(0, 3)) == 0:
        spec.when = f"{read(draw(st.sampled_from(earlier)))} % 3 != {draw(st.integers(0, 2))}"
    spec.speculative = draw(st.integers(0, 3)) == 0
    spec.fail = draw(st.sampled_from([None, None, None, "error", "transient"]))
    spec.fail_times = draw(st.integers(0, 2))
    spec.retries = draw(st.sampled_from([0, 0, 1, 2]))
    spec.timeout_ms = draw(TIMEOUTS)
    return spec


@st.composite
def graphs(draw: st.DrawFn) -> str:
    count = draw(st.integers(2, 5))
    loop_at = draw(st.integers(1, count - 1))
    top: list[Spec] = []
    for i in range(count):
        node_id = f"n{i}"
        earlier = [s.id for s in top]
        if i != loop_at:
            top.append(draw(work(node_id, earlier, [])))
            continue
        body: list[Spec] = []
        body_ids = [f"{node_id}_{j}" for j in range(draw(st.integers(1, 3)))]
        for j, body_id in enumerate(body_ids):
            body.append(draw(work(body_id, earlier + body_ids[:j], body_ids)))
        loop = Spec(node_id, body=body, optional=draw(st.booleans()))
        loop.max_cycles = draw(st.integers(1, 3))
        if draw(st.booleans()):
            loop.until = f"{draw(expressions(body_ids, body_ids))} % 3 == 0"
        loop.output = draw(expressions(body_ids, body_ids))
        loop.timeout_ms = draw(st.sampled_from([None, 15, 40, 90]))
        loop.speculative = draw(st.integers(0, 3)) == 0
        top.append(loop)
    outputs = draw(st.lists(expressions([s.id for s in top], []), min_size=1, max_size=3))
    deadline = draw(st.sampled_from([None, None, 40, 100, 200]))
    lines = ["moat: 1", "name: random-budgets"]
    if deadline is not None:
        partial = draw(st.booleans())
        lines.append(f"budget: {{deadline_ms: {deadline}, partial: {str(partial).lower()}}}")
    lines.append("nodes:")
    _yaml(top, 1, lines)
    lines.append("output:")
    lines += [f'  o{i}: "{expr}"' for i, expr in enumerate(outputs)]
    return "\n".join(lines) + "\n"


def _yaml(specs: list[Spec], level: int, lines: list[str]) -> None:
    pad = "  " * level
    for spec in specs:
        inner = pad + "  "
        lines += [f"{pad}{spec.id}:", f"{inner}type: {'loop' if spec.body else 'work'}"]
        if spec.when:
            lines.append(f'{inner}when: "{spec.when}"')
        if spec.speculative:
            lines.append(f"{inner}speculative: true")
        if spec.optional:
            lines.append(f"{inner}optional: true")
        if spec.timeout_ms is not None:
            lines.append(f"{inner}timeout_ms: {spec.timeout_ms}")
        if spec.body:
            lines.append(f"{inner}max_cycles: {spec.max_cycles}")
            if spec.until:
                lines.append(f'{inner}until: "{spec.until}"')
            lines.append(f"{inner}nodes:")
            _yaml(spec.body, level + 2, lines)
            lines.append(f'{inner}output: {{value: "{spec.output}"}}')
            continue
        if spec.retries:
            lines.append(f"{inner}retries: {spec.retries}")
        extra = f", fail: {spec.fail}, fail_times: {spec.fail_times}" if spec.fail else ""
        lines.append(f'{inner}with: {{ms: {spec.ms}, value: "{{{{ {spec.value} }}}}"{extra}}}')


# -- the reference -------------------------------------------------------------------------


class _Failed(Exception):
    """A node failed in the reference evaluation."""


class Reference(Mapping[str, Any]):
    """One scope instance, evaluated plainly; `timed_out` holds the loops (id, cycle of
    their frame) the run recorded as timed out."""

    def __init__(
        self,
        scope: Scope,
        parent: Reference | None,
        fixed: dict[str, Any],
        timed_out: set[tuple[str, int]],
        cycle: int = 0,
    ) -> None:
        self.scope = scope
        self.parent = parent
        self.fixed = fixed
        self.timed_out = timed_out
        self.cycle = cycle
        self.memo: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name in self.fixed:
            return self.fixed[name]
        if name not in self.scope.nodes:
            if self.parent is None:
                raise KeyError(name)
            return self.parent[name]
        if name not in self.memo:
            try:
                self.memo[name] = self._node(self.scope.nodes[name])
            except _Failed as exc:
                self.memo[name] = exc
        value = self.memo[name]
        if isinstance(value, _Failed):
            raise value
        return value

    def _node(self, node: CompiledNode) -> Any:
        try:
            if node.when is not None and not node.when.evaluate(self):
                return None
            if node.loop is not None:
                if (node.id, self.cycle) in self.timed_out:
                    raise _Failed(node.id)
                return self._loop(node.loop)
            config = node.config.evaluate(self)
            if not _succeeds(node, config):
                raise _Failed(node.id)
        except _Failed:
            if node.optional:
                return None
            raise
        return Work.Output(value=config["value"])

    def _loop(self, loop: CompiledLoop) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        cycle = 0
        while True:
            cycle += 1
            fixed = {**self.fixed, "cycle": cycle, "prev": prev}
            body = Reference(loop.body, self, fixed, self.timed_out, cycle)
            if (loop.until is not None and loop.until.evaluate(body)) or cycle >= loop.max_cycles:
                return {name: expr.evaluate(body) for name, expr in loop.output.items()}
            for node_id in sorted(loop.prev_reads):
                body[node_id]
            prev = {node_id: body.value_or_none(node_id) for node_id in loop.body.order}

    def value_or_none(self, node_id: str) -> Any:
        value = self.memo.get(node_id)
        return None if isinstance(value, _Failed) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self.scope.nodes)

    def __len__(self) -> int:
        return len(self.scope.nodes)


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


def reference(g: Graph, timed_out: set[tuple[str, int]]) -> dict[str, Any]:
    """Each output's value, or `_Failed` for one that fails."""
    ref = Reference(g.scope, None, {"input": {}}, timed_out)
    values: dict[str, Any] = {}
    for name, expr in g.output.items():
        try:
            values[name] = expr.evaluate(ref)
        except _Failed as exc:
            values[name] = exc
    return values


# -- the property --------------------------------------------------------------------------


def _work_nodes(scope: Scope) -> Iterator[tuple[CompiledNode, bool]]:
    """Every `work` node, nested included, and whether it is inside a loop."""
    for node in scope.nodes.values():
        if node.loop is not None:
            for inner in node.loop.body.nodes.values():
                yield inner, True
        else:
            yield node, False


async def _run(g: Graph) -> tuple[RequestResult, MemorySink]:
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        result = await runner.run({}, request_id="r")
    return result, sink


def check_budgets(text: str) -> None:
    g = graph(text)
    result, sink = trio.run(_run, g, clock=trio.testing.MockClock(autojump_threshold=0))
    node_runs = sink.node_runs()
    timed_out = {
        (r.node, r.cycle)
        for r in node_runs
        if r.node_type == "loop" and r.status.value == "timed_out"
    }
    expected = reference(g, timed_out)
    failed = any(isinstance(v, _Failed) for v in expected.values())
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
    for node, _ in _work_nodes(g.scope):
        work = node.impl
        assert work.started == work.finished + work.cancelled + work.failed, (node.id, text)  # type: ignore[union-attr]
        for (_, cycle), attempts in work.attempts.items():  # type: ignore[union-attr]
            (run,) = [r for r in node_runs if r.node == node.id and r.cycle == cycle]
            assert run.attempts == attempts, (node.id, cycle, run, text)
            retried = retries.get((node.id, cycle), 0)
            assert retried in (attempts - 1, attempts), (node.id, cycle, retried, text)
    assert isinstance(sink.items[-1], RequestRecord)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(graphs())
def test_random_graphs_with_budgets_keep_to_the_reference(text: str) -> None:
    check_budgets(text)
