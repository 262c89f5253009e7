"""Compiling a checked graph: each scope's nodes, loops and outputs, built as the checker
walks them.

The walk asks a `Checker` (the protocol below; `engine.graph.check` has the checks) for
every numbered check on the way and builds the compiled form (`engine.graph.compiled`) of
what passes, so a graph that passes is ready to run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from engine.errors import ExpressionError, exception_text
from engine.expr.expression import Expr, Template, compile_template
from engine.graph.compiled import LOOP_SCOPE_NAMES, CompiledLoop, CompiledNode, Scope
from engine.graph.spec import LoopSpec, NodeSpec
from engine.plugin.node import Node

__all__ = ["Path", "ScopeInfo", "compile_outputs", "compile_scope", "template_errors"]

Path = tuple[str | int, ...]


class Checker(Protocol):
    """The checks the walk asks for on its way (`engine.graph.check.Checker` has them)."""

    def c01_node_id(self, node_id: str, at: Path, in_loop: bool) -> bool: ...

    def c02_node_type(self, node_id: str, spec: NodeSpec, at: Path) -> type[Node] | None: ...

    def c03_expression(self, source: Any, at: Path, node_id: str | None) -> Expr | None: ...

    def c03_template(self, value: Any, at: Path, node_id: str) -> Template | None: ...

    def c04_refs(
        self, expr: Expr | Template, at: Path, scope: ScopeInfo, node_id: str | None
    ) -> None: ...

    def c08_config(
        self, node_id: str, cls: type[Node], spec: NodeSpec, at: Path, template: Template
    ) -> None: ...

    def c10_cycles(
        self, scope: ScopeInfo, deps: Mapping[str, frozenset[str]]
    ) -> tuple[str, ...] | None: ...

    def _error(
        self,
        message: str,
        at: Path,
        *,
        key: bool = False,
        node_id: str | None = None,
        offset: int = 0,
    ) -> None: ...


class ScopeInfo:
    """What names a scope (top level or loop body) defines, while checking."""

    def __init__(
        self, specs: Mapping[str, NodeSpec | LoopSpec], at: Path, parent: ScopeInfo | None
    ) -> None:
        self.specs = specs
        self.at = at
        self.parent = parent
        self.in_loop = parent is not None

    def find(self, name: str) -> tuple[ScopeInfo, NodeSpec | LoopSpec] | None:
        scope: ScopeInfo | None = self
        while scope is not None:
            if name in scope.specs:
                return scope, scope.specs[name]
            scope = scope.parent
        return None

    def visible(self) -> list[str]:
        names: list[str] = []
        scope: ScopeInfo | None = self
        while scope is not None:
            names.extend(scope.specs)
            scope = scope.parent
        return names


def compile_scope(checker: Checker, info: ScopeInfo) -> Scope | None:
    """The nodes of one scope compiled, in a deterministic order (None: a node, or the
    order, failed its checks)."""
    compiled: dict[str, CompiledNode] = {}
    for node_id, spec in info.specs.items():
        at = (*info.at, node_id)
        if not checker.c01_node_id(node_id, at, info.in_loop):
            continue
        node = _compile_node(checker, node_id, spec, at, info)
        if node is not None:
            compiled[node_id] = node
    deps = {nid: n.deps & set(info.specs) for nid, n in compiled.items()}
    if len(compiled) != len(info.specs):
        return None
    order = checker.c10_cycles(info, deps)
    if order is None:
        return None
    spec_ids = tuple(n for n in order if compiled[n].speculative is not False)
    return Scope(nodes=compiled, order=order, speculative=spec_ids)


def _compile_node(
    checker: Checker, node_id: str, spec: NodeSpec | LoopSpec, at: Path, scope: ScopeInfo
) -> CompiledNode | None:
    when = _expr(checker, spec.when, (*at, "when"), scope, node_id)
    speculative: bool | Expr = spec.speculative if isinstance(spec.speculative, bool) else False
    if isinstance(spec.speculative, str):
        speculative = (
            _expr(checker, spec.speculative, (*at, "speculative"), scope, node_id) or False
        )
    names: set[str] = set()
    for part in (when, speculative):
        if isinstance(part, Expr):
            names |= part.names
    if isinstance(spec, LoopSpec):
        return _compile_loop(checker, node_id, spec, at, scope, when, speculative, names)
    cls = checker.c02_node_type(node_id, spec, at)
    template = checker.c03_template(spec.with_, (*at, "with"), node_id)
    if template is None or cls is None:
        return None
    _template_refs(checker, spec.with_, (*at, "with"), scope, node_id)
    checker.c08_config(node_id, cls, spec, at, template)
    names |= template.names
    impl = _instance(checker, cls, at)
    if impl is None:
        return None
    return CompiledNode(
        id=node_id,
        type_name=spec.type,
        impl=impl,
        config=template,
        when=when,
        speculative=speculative,
        timeout_ms=spec.timeout_ms,
        retries=spec.retries,
        optional=spec.optional,
        deps=frozenset(names),
    )


def _compile_loop(
    checker: Checker,
    node_id: str,
    spec: LoopSpec,
    at: Path,
    scope: ScopeInfo,
    when: Expr | None,
    speculative: bool | Expr,
    names: set[str],
) -> CompiledNode | None:
    body_info = ScopeInfo(spec.nodes, (*at, "nodes"), scope)
    body = compile_scope(checker, body_info)
    until = _expr(checker, spec.until, (*at, "until"), body_info, node_id)
    output = compile_outputs(checker, spec.output, (*at, "output"), body_info)
    if body is None:
        return None
    inner = {*(until.names if until else ()), *(n for e in output.values() for n in e.names)}
    for child in body.nodes.values():
        inner |= child.deps
    outer = {n for n in inner if n not in spec.nodes and n not in LOOP_SCOPE_NAMES}
    loop = CompiledLoop(
        max_cycles=spec.max_cycles,
        until=until,
        body=Scope(body.nodes, body.order, None, body.speculative),
        output=output,
    )
    return CompiledNode(
        id=node_id,
        type_name="loop",
        impl=None,
        config=compile_template({}),
        when=when,
        speculative=speculative,
        timeout_ms=spec.timeout_ms,
        retries=0,
        optional=spec.optional,
        deps=frozenset(names | outer),
        loop=loop,
    )


def compile_outputs(
    checker: Checker, outputs: Mapping[str, Any], at: Path, scope: ScopeInfo
) -> dict[str, Expr]:
    """The `output:` expressions of the graph or of a loop body, checked (those failing left
    out)."""
    compiled: dict[str, Expr] = {}
    for name, source in outputs.items():
        if source is None:  # `answer:` with nothing after it: forgotten, not `none`
            checker._error(
                f"output {name!r} has no expression; write one such as 'node.text', or "
                "'none' for an output that is always none",
                (*at, name),
                key=True,
            )
            continue
        expr = _expr(checker, source, (*at, name), scope, None)
        if expr is not None:
            compiled[name] = expr
    return compiled


def _expr(
    checker: Checker, source: Any, at: Path, scope: ScopeInfo, node_id: str | None
) -> Expr | None:
    if source is None:
        return None
    expr = checker.c03_expression(source, at, node_id)
    if expr is not None:
        checker.c04_refs(expr, at, scope, node_id)
    return expr


def _instance(checker: Checker, cls: type[Node], at: Path) -> Node | None:
    try:
        return cls()
    except (Exception, SystemExit, GeneratorExit) as exc:  # third-party code
        reason = exception_text(exc, with_type=not isinstance(exc, Exception))
        checker._error(
            f"node type {cls.type_name!r} could not be created: {reason}; "
            f"`{cls.__name__}()` must build an instance without arguments",
            at,
        )
        return None


def _template_refs(checker: Checker, value: Any, at: Path, scope: ScopeInfo, node_id: str) -> None:
    """`c04_refs` on each string of a `with:` value, located at that string (a template's
    own columns count from the start of the string holding each expression)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _template_refs(checker, item, (*at, key), scope, node_id)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _template_refs(checker, item, (*at, i), scope, node_id)
    elif isinstance(value, str) and "{{" in value:
        checker.c04_refs(compile_template(value), at, scope, node_id)


def template_errors(value: Any, at: Path) -> Iterator[tuple[Path, Any, ExpressionError]]:
    """The strings of a `with:` value that do not compile as templates, each with where it
    stands and why."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from template_errors(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from template_errors(item, (*at, i))
    else:
        try:
            compile_template(value)
        except ExpressionError as exc:
            yield at, value, exc
