"""Random graphs with several loops whose body nodes share names, for the scheduler's tests.

`graphs()` draws graphs of `work` nodes (`tests.support.sched_nodes.Work`) with two or
three loops at the top level, in sequence (a later loop reads an earlier one's output) or
side by side (the request's output demands them together), sometimes a loop nested in a
body, and body nodes whose ids repeat across loops (`step`, `check`, ...) or repeat an
outer node's id (a body node then hides the outer one from the body's expressions, as
the checker resolves names: innermost scope first). Loop ids are unique in the graph, so
a loop's events and `CYCLE_SUMMARY` traces name one loop; body ids are not, as the store
records only the bare id.

`Reference` evaluates a compiled graph plainly, cycle by cycle, with `prev` as DESIGN
says (the previous cycle's value of each body node it demanded, none in cycle 1), so a
run can be judged without trusting the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from engine.graph.compiled import CompiledLoop, CompiledNode, Graph, Scope
from tests.support.sched_nodes import Work

__all__ = ["LoopSpec", "Reference", "graphs", "loop_ids", "reference", "work_nodes"]

MS = st.sampled_from([0, 0, 2, 5, 10, 30])
BODY_NAMES = ("step", "check", "draft", "n0", "n1")
"""Body node ids: the same few in every loop, and two the top level uses too."""


@dataclass
class LoopSpec:
    """One node of a drawn graph (a loop when `body` is set)."""

    id: str
    value: str = "0"
    when: str | None = None
    speculative: str | None = None
    ms: int = 0
    fail: str | None = None
    optional: bool = False
    timeout_ms: int | None = None
    body: list[LoopSpec] = field(default_factory=list)
    max_cycles: int = 1
    until: str | None = None
    output: str = "0"


def _read(name: str) -> str:
    return f"({name}.value if {name} else 0)"


def _read_prev(name: str) -> str:
    return f"(prev.{name}.value if prev and prev.{name} else 0)"


@st.composite
def _expression(draw: st.DrawFn, names: list[str], prevs: list[str]) -> str:
    """An integer expression over `names` (and `prev.X` for X in `prevs`), none-safe."""
    k = draw(st.integers(0, 9))
    terms = [_read(n) for n in names] + [_read_prev(n) for n in prevs]
    if prevs:
        terms.append("cycle")
    if not terms:
        return str(k)
    shape = draw(st.sampled_from(["const", "sum", "sum", "cond"]))
    pick = st.sampled_from(terms)
    if shape == "const":
        return str(k)
    if shape == "sum":
        return " + ".join([*draw(st.lists(pick, min_size=1, max_size=3)), str(k)])
    cond, then, other = draw(pick), draw(pick), draw(pick)
    return f"({then} if {cond} % 2 == {k % 2} else {other} + {k})"


@st.composite
def _work(
    draw: st.DrawFn, node_id: str, earlier: list[str], prevs: list[str], in_loop: bool
) -> LoopSpec:
    spec = LoopSpec(node_id, ms=draw(MS), optional=draw(st.booleans()))
    spec.value = draw(_expression(earlier, prevs))
    guard = draw(st.sampled_from(["none", "none", "none", "node", "prev", "cycle"]))
    if guard == "node" and earlier:
        spec.when = f"{_read(draw(st.sampled_from(earlier)))} % 3 != {draw(st.integers(0, 2))}"
    elif guard == "prev" and prevs:
        spec.when = f"{_read_prev(draw(st.sampled_from(prevs)))} % 2 == {draw(st.integers(0, 1))}"
    elif guard == "cycle" and in_loop:
        spec.when = f"cycle % 2 == {draw(st.integers(0, 1))}"
    strategy = draw(st.sampled_from(["no", "no", "no", "yes", "late", "cycle"]))
    if strategy == "yes":
        spec.speculative = "true"
    elif strategy == "late" and earlier:
        spec.speculative = f"{_read(draw(st.sampled_from(earlier)))} % 2 == 0"
    elif strategy == "cycle" and in_loop:
        spec.speculative = "cycle % 2 == 1"
    failure = draw(st.integers(0, 11))
    if failure == 0:
        spec.fail = "error"
    elif failure == 1 and in_loop:
        spec.fail = f"{{{{ 'error' if cycle == {draw(st.integers(1, 3))} else none }}}}"
    return spec


@st.composite
def _loop(draw: st.DrawFn, loop_id: str, outer: list[str], depth: int) -> LoopSpec:
    """A loop reading `outer` names, its body ids from `BODY_NAMES` (a nested loop while
    `depth` allows)."""
    ids = draw(st.lists(st.sampled_from(BODY_NAMES), min_size=1, max_size=3, unique=True))
    nested = depth > 0 and draw(st.integers(0, 3)) == 0
    if nested:
        ids.append(f"{loop_id}_in")
    body: list[LoopSpec] = []
    for i, node_id in enumerate(ids):
        # what a body node's expressions can read: the outer names its body does not
        # hide, and the body nodes before it
        earlier = [n for n in outer if n not in ids] + ids[:i]
        if node_id.endswith("_in"):
            body.append(draw(_loop(node_id, earlier, depth - 1)))
        else:
            body.append(draw(_work(node_id, earlier, ids, True)))
    spec = LoopSpec(loop_id, body=body, max_cycles=draw(st.integers(1, 4)))
    spec.speculative = draw(st.sampled_from([None, None, "true"]))
    spec.optional = draw(st.integers(0, 3)) == 0
    if draw(st.booleans()):
        spec.until = f"{draw(_expression(ids, ids))} % 3 == 0"
    spec.output = draw(_expression(ids, ids))
    if draw(st.integers(0, 5)) == 0:
        spec.timeout_ms = draw(st.sampled_from([15, 40]))
    return spec


@st.composite
def graphs(draw: st.DrawFn) -> str:
    """A graph's YAML: a few top-level nodes and two or three loops (see module docstring)."""
    top: list[LoopSpec] = []
    names: list[str] = []
    plain = draw(st.lists(st.sampled_from(["n0", "n1", "step"]), max_size=2, unique=True))
    for node_id in plain:
        top.append(draw(_work(node_id, list(names), [], False)))
        names.append(node_id)
    loops = ["la", "lb", "lc"][: draw(st.integers(2, 3))]
    sequence = draw(st.booleans())  # a later loop reads the earlier ones
    for loop_id in loops:
        outer = names if sequence else [n for n in names if n not in loops]
        top.append(draw(_loop(loop_id, outer, 1)))
        names.append(loop_id)
    read = loops[-1:] if sequence and draw(st.booleans()) else loops
    outputs = [draw(_expression(read, [])) for _ in range(draw(st.integers(1, 2)))]
    outputs.append(" + ".join(_read(n) for n in read))  # demanded together
    lines = ["moat: 1", "name: several-loops", "nodes:"]
    _yaml(top, 1, lines)
    lines.append("output:")
    lines += [f'  o{i}: "{expr}"' for i, expr in enumerate(outputs)]
    return "\n".join(lines) + "\n"


def _yaml(specs: list[LoopSpec], level: int, lines: list[str]) -> None:
    pad = "  " * level
    for spec in specs:
        lines.append(f"{pad}{spec.id}:")
        inner = pad + "  "
        lines.append(f"{inner}type: {'loop' if spec.body else 'work'}")
        if spec.when:
            lines.append(f'{inner}when: "{spec.when}"')
        if spec.speculative == "true":
            lines.append(f"{inner}speculative: true")
        elif spec.speculative:
            lines.append(f'{inner}speculative: "{spec.speculative}"')
        if spec.optional:
            lines.append(f"{inner}optional: true")
        if spec.timeout_ms:
            lines.append(f"{inner}timeout_ms: {spec.timeout_ms}")
        if spec.body:
            lines.append(f"{inner}max_cycles: {spec.max_cycles}")
            if spec.until:
                lines.append(f'{inner}until: "{spec.until}"')
            lines.append(f"{inner}nodes:")
            _yaml(spec.body, level + 2, lines)
            lines.append(f'{inner}output: {{value: "{spec.output}"}}')
            continue
        fail = f', fail: "{spec.fail}"' if spec.fail else ""
        lines.append(f'{inner}with: {{ms: {spec.ms}, value: "{{{{ {spec.value} }}}}"{fail}}}')


# -- the reference -------------------------------------------------------------------------


class _Failed(Exception):
    """A node failed in the reference evaluation."""


class Reference(Mapping[str, Any]):
    """One scope instance, evaluated plainly: a node's value is computed once, when read;
    a name is looked up in the innermost scope that has it."""

    def __init__(self, scope: Scope, parent: Reference | None, fixed: dict[str, Any]) -> None:
        self.scope = scope
        self.parent = parent
        self.fixed = fixed
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
                return self._loop(node.loop)
            config = node.config.evaluate(self)
            if config.get("fail"):
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
            body = Reference(loop.body, self, {**self.fixed, "cycle": cycle, "prev": prev})
            if (loop.until is not None and loop.until.evaluate(body)) or cycle >= loop.max_cycles:
                return {name: expr.evaluate(body) for name, expr in loop.output.items()}
            for node_id in sorted(loop.prev_reads):
                body[node_id]
            prev = {node_id: body.value_or_none(node_id) for node_id in loop.body.order}

    def value_or_none(self, node_id: str) -> Any:
        """What `prev` shows of `node_id`: its value if it was evaluated and did not fail."""
        value = self.memo.get(node_id)
        return None if isinstance(value, _Failed) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self.scope.nodes)

    def __len__(self) -> int:
        return len(self.scope.nodes)


def reference(g: Graph) -> dict[str, Any] | None:
    """The graph's output for an empty input, or None when a node it needs fails."""
    ref = Reference(g.scope, None, {"input": {}})
    try:
        return {name: expr.evaluate(ref) for name, expr in g.output.items()}
    except _Failed:
        return None


def work_nodes(scope: Scope, loop: str | None = None) -> Iterator[tuple[str, str | None, Any]]:
    """(node id, enclosing loop id, node instance) of every `work` node, nested included."""
    for node in scope.nodes.values():
        if node.loop is not None:
            yield from work_nodes(node.loop.body, node.id)
        else:
            yield node.id, loop, node.impl


def loop_ids(scope: Scope) -> Iterator[str]:
    """Every loop's id, nested included."""
    for node in scope.nodes.values():
        if node.loop is not None:
            yield node.id
            yield from loop_ids(node.loop.body)
