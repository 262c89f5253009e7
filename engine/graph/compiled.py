"""The loaded, checked and compiled form of a graph that the scheduler runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.expr.expression import Expr, Template
    from engine.graph.spec import Budget, GraphSpec, ModelSpec
    from engine.plugin.node import Node

__all__ = ["CompiledLoop", "CompiledNode", "Graph", "Scope"]

SCOPE_NAMES = frozenset({"input", "policy", "request"})
"""Names always in scope, besides node ids."""
LOOP_SCOPE_NAMES = frozenset({"cycle", "prev"})
"""Names in scope inside a loop body."""


@dataclass(frozen=True, slots=True)
class CompiledLoop:
    """The loop part of a `type: loop` node."""

    max_cycles: int
    until: Expr | None
    body: Scope
    """The body nodes, a fresh scope each cycle."""
    output: Mapping[str, Expr]
    """Evaluated in the last cycle's scope."""
    prev_reads: frozenset[str] = field(init=False)
    """The body nodes the loop reads as `prev.X`: what each cycle but the last demands
    for the next one."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prev_reads", _prev_reads(self))


@dataclass(frozen=True, slots=True)
class CompiledNode:
    """One node, ready to run."""

    id: str
    type_name: str
    impl: Node | None
    """The node instance (one per graph node, shared across requests); None for loops."""
    config: Template
    """The compiled `with:` mapping."""
    when: Expr | None
    speculative: bool | Expr
    """`True`/`False`, or an expression decided at run time (`STRATEGY_SELECTED`)."""
    timeout_ms: float | None
    retries: int
    optional: bool
    deps: frozenset[str]
    """Node ids of the enclosing scopes this node's `when`, `speculative` and `with:` read."""
    loop: CompiledLoop | None = None

    def __repr__(self) -> str:
        return f"<CompiledNode {self.id!r} ({self.type_name})>"


@dataclass(frozen=True, slots=True)
class Scope:
    """A set of nodes that can read each other: the graph's top level or one loop body."""

    nodes: Mapping[str, CompiledNode]
    order: tuple[str, ...]
    """Deterministic topological order (lexicographic among equals)."""
    parent: Scope | None = None
    speculative: tuple[str, ...] = ()
    """Ids of nodes that may start speculatively, in `order`."""


def _prev_reads(loop: CompiledLoop) -> frozenset[str]:
    """The body nodes read as `prev.X` or `prev['X']` by the loop's own expressions.

    Those are `until`, `output` and the body nodes' `when`, `speculative` and `with:`; a
    nested loop's `until` and `output` read its own `prev`, not this one. `prev` alone (as
    in `x if prev else y`) or under a computed key names no node.
    """
    body = loop.body
    exprs: list[Expr | Template] = [*loop.output.values()]
    if loop.until is not None:
        exprs.append(loop.until)
    for node in body.nodes.values():
        exprs.append(node.config)
        if node.when is not None:
            exprs.append(node.when)
        if not isinstance(node.speculative, bool):
            exprs.append(node.speculative)
    read: set[str] = set()
    for expr in exprs:
        for ref in expr.refs:
            target = ref.path[0] if ref.name == "prev" and ref.path else None
            if isinstance(target, str) and target in body.nodes:
                read.add(target)
    return frozenset(read)


@dataclass(frozen=True, slots=True)
class Graph:
    """A graph loaded from YAML, checked, compiled, with its node instances.

    Build one with `engine.load_graph(path)`; run requests through it with the scheduler.
    """

    name: str
    path: str
    """The file it came from, as the user named it."""
    hash: str
    """sha256 of the file's bytes (first 16 hex digits), recorded with every run."""
    spec: GraphSpec
    scope: Scope
    output: Mapping[str, Expr]
    models: Mapping[str, ModelSpec]
    budget: Budget
    input_schema: Mapping[str, Any]
    policy: Mapping[str, Any] = field(default_factory=dict)
    """The default policy snapshot's body (empty without one)."""
    policy_name: str | None = None
    """The default policy's name (its `name:` key, or the file stem)."""
    policy_path: str | None = None
    warnings: tuple[str, ...] = ()
    """Located warnings from the checker (e.g. nodes nothing can demand)."""
    base_dir: str | None = None
    """The graph file's folder (absolute): relative paths in `with:` resolve from it."""

    @property
    def nodes(self) -> Mapping[str, CompiledNode]:
        """The top-level nodes."""
        return self.scope.nodes

    def __repr__(self) -> str:
        return f"<Graph {self.name!r} {len(self.scope.nodes)} nodes>"
