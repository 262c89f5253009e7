"""Random loop graphs for the scheduler's property tests, written out and judged plainly.

A drawn node is a `NodeSpec` of a `work` node (`tests.support.sched_nodes.Work`) or a
loop around more of them; `graph_yaml` writes a graph of them. `Reference` evaluates the
compiled graph without the scheduler: a node's value is computed once, when read; a name
resolves in the innermost scope holding it; a loop runs cycle by cycle with `prev` as
DESIGN says (the previous cycle's value of each body node it demanded, none in cycle 1).
What the schedule decides, such as which loops ran out of their `timeout_ms`, the caller
passes in, as it passes the rule for whether a node's run succeeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from engine.graph.compiled import CompiledLoop, CompiledNode, Graph, Scope
from tests.support.sched_nodes import Work

__all__ = [
    "Failed",
    "NodeSpec",
    "Reference",
    "expressions",
    "graph_yaml",
    "loop_ids",
    "read",
    "read_prev",
    "reference",
    "reference_outputs",
    "succeeds_unless_told_to_fail",
    "work_nodes",
]


@dataclass
class NodeSpec:
    """One node of a drawn graph: a `work` node, or a loop when `body` is set."""

    id: str
    value: str = "0"
    """A work node's value, an expression (written as `{{ value }}`)."""
    when: str | None = None
    speculative: str | None = None
    """`true`, an expression deciding it, or None for never."""
    ms: int = 0
    fail: str | None = None
    """Work's `fail`: `error`, `transient`, or a template deciding it per cycle."""
    fail_times: int | None = None
    """Work's `fail_times`, written along with `fail` (None: Work's default, every attempt)."""
    retries: int = 0
    timeout_ms: int | None = None
    optional: bool = False
    body: list[NodeSpec] = field(default_factory=list)
    max_cycles: int = 1
    until: str | None = None
    output: str = "0"
    """A loop's `value` output, an expression over its body."""


def read(name: str) -> str:
    """An expression for `name`'s value, 0 when it has none."""
    return f"({name}.value if {name} else 0)"


def read_prev(name: str) -> str:
    """An expression for `name`'s value in the previous cycle, 0 when there is none."""
    return f"(prev.{name}.value if prev and prev.{name} else 0)"


@st.composite
def expressions(
    draw: st.DrawFn,
    names: list[str],
    prevs: list[str],
    *,
    shapes: tuple[str, ...] = ("const", "sum", "cond", "cond"),
    cycle: bool = True,
) -> str:
    """An integer expression over `names` (and `prev.X` for X in `prevs`, and `cycle` when
    there are some and `cycle` is set), none-safe; `shapes` weighs constants, sums and
    conditionals (each test draws its own mix)."""
    k = draw(st.integers(0, 9))
    terms = [read(n) for n in names] + [read_prev(n) for n in prevs]
    if prevs and cycle:
        terms.append("cycle")
    if not terms:
        return str(k)
    shape = draw(st.sampled_from(shapes))
    pick = st.sampled_from(terms)
    if shape == "const":
        return str(k)
    if shape == "sum":
        return " + ".join([*draw(st.lists(pick, min_size=1, max_size=3)), str(k)])
    cond, then, other = draw(pick), draw(pick), draw(pick)
    return f"({then} if {cond} % 2 == {k % 2} else {other} + {k})"


def graph_yaml(
    name: str, nodes: list[NodeSpec], outputs: list[str], budget: str | None = None
) -> str:
    """A graph's YAML: `nodes` at the top level, one output `o<i>` per expression."""
    lines = ["moat: 1", f"name: {name}"]
    if budget is not None:
        lines.append(f"budget: {budget}")
    lines.append("nodes:")
    _yaml(nodes, 1, lines)
    lines.append("output:")
    lines += [f'  o{i}: "{expr}"' for i, expr in enumerate(outputs)]
    return "\n".join(lines) + "\n"


def _yaml(specs: list[NodeSpec], level: int, lines: list[str]) -> None:
    pad = "  " * level
    for spec in specs:
        inner = pad + "  "
        lines += [f"{pad}{spec.id}:", f"{inner}type: {'loop' if spec.body else 'work'}"]
        if spec.when:
            lines.append(f'{inner}when: "{spec.when}"')
        if spec.speculative == "true":
            lines.append(f"{inner}speculative: true")
        elif spec.speculative:
            lines.append(f'{inner}speculative: "{spec.speculative}"')
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
        fail = f', fail: "{spec.fail}"' if spec.fail else ""
        if spec.fail and spec.fail_times is not None:
            fail += f", fail_times: {spec.fail_times}"
        lines.append(f'{inner}with: {{ms: {spec.ms}, value: "{{{{ {spec.value} }}}}"{fail}}}')


# -- the reference -------------------------------------------------------------------------


class Failed(Exception):
    """A node failed in the reference evaluation."""


Succeeds = Callable[[CompiledNode, Mapping[str, Any]], bool]
"""Whether a `work` node's run, given its evaluated config, succeeds."""


def succeeds_unless_told_to_fail(node: CompiledNode, config: Mapping[str, Any]) -> bool:
    """The rule of a run made once: it fails exactly when its config sets `fail`."""
    return not config.get("fail")


class Reference(Mapping[str, Any]):
    """One scope instance (the graph's, or one cycle of a loop body), evaluated plainly.

    Args:
        scope: The scope's compiled nodes.
        parent: The enclosing instance, where names this scope lacks are looked up.
        fixed: Names bound outright (`input`; `cycle` and `prev` in a body).
        cycle: The cycle of the enclosing loop this instance is (0 at the top level).
        timed_out: The loops (id, cycle of the instance holding them) that ran out of their
            `timeout_ms`: they fail there.
        succeeds: Whether a work node's run succeeds.
    """

    def __init__(
        self,
        scope: Scope,
        parent: Reference | None,
        fixed: dict[str, Any],
        *,
        cycle: int = 0,
        timed_out: frozenset[tuple[str, int]] = frozenset(),
        succeeds: Succeeds = succeeds_unless_told_to_fail,
    ) -> None:
        self.scope = scope
        self.parent = parent
        self.fixed = fixed
        self.cycle = cycle
        self.timed_out = timed_out
        self.succeeds = succeeds
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
            except Failed as exc:
                self.memo[name] = exc
        value = self.memo[name]
        if isinstance(value, Failed):
            raise value
        return value

    def _node(self, node: CompiledNode) -> Any:
        try:
            if node.when is not None and not node.when.evaluate(self):
                return None
            if node.loop is not None:
                if (node.id, self.cycle) in self.timed_out:
                    raise Failed(node.id)
                return self._loop(node.loop)
            config = node.config.evaluate(self)
            if not self.succeeds(node, config):
                raise Failed(node.id)
        except Failed:
            if node.optional:
                return None
            raise
        return Work.Output(value=config["value"])

    def _loop(self, loop: CompiledLoop) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        cycle = 0
        while True:
            cycle += 1
            body = Reference(
                loop.body,
                self,
                {**self.fixed, "cycle": cycle, "prev": prev},
                cycle=cycle,
                timed_out=self.timed_out,
                succeeds=self.succeeds,
            )
            if (loop.until is not None and loop.until.evaluate(body)) or cycle >= loop.max_cycles:
                return {name: expr.evaluate(body) for name, expr in loop.output.items()}
            for node_id in sorted(loop.prev_reads):
                body[node_id]
            prev = {node_id: body.value_or_none(node_id) for node_id in loop.body.order}

    def value_or_none(self, node_id: str) -> Any:
        """What `prev` shows of `node_id`: its value if it was evaluated and did not fail."""
        value = self.memo.get(node_id)
        return None if isinstance(value, Failed) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self.scope.nodes)

    def __len__(self) -> int:
        return len(self.scope.nodes)


def reference_outputs(
    g: Graph,
    *,
    timed_out: frozenset[tuple[str, int]] = frozenset(),
    succeeds: Succeeds = succeeds_unless_told_to_fail,
) -> dict[str, Any]:
    """Each output's value for an empty input, or a `Failed` for one that fails (the
    arguments are `Reference`'s)."""
    ref = Reference(g.scope, None, {"input": {}}, timed_out=timed_out, succeeds=succeeds)
    values: dict[str, Any] = {}
    for name, expr in g.output.items():
        try:
            values[name] = expr.evaluate(ref)
        except Failed as exc:
            values[name] = exc
    return values


def reference(g: Graph) -> dict[str, Any] | None:
    """The graph's output for an empty input, or None when a node it needs fails."""
    values = reference_outputs(g)
    return None if any(isinstance(v, Failed) for v in values.values()) else values


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
