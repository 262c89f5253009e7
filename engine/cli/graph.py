"""The graph commands: `moat check`, `moat show`, `moat schema` and `moat nodes`."""

from __future__ import annotations

import argparse
import enum
import inspect
import json
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from engine.cli import graph_file
from engine.errors import SpecError, exception_text, printable
from engine.expr.wording import literal
from engine.graph.compiled import Graph, Scope
from engine.graph.loader import check_file, graph_registry, load_graph
from engine.graph.schema import config_json_schema, graph_json_schema, no_json_schema
from engine.graph.spec import LoopSpec
from engine.plugin.registry import Registry

__all__ = ["add_commands", "render_dot", "render_mermaid", "render_text", "type_words"]

_LOOP = "A bounded loop over a body of nodes (built into moat)."
_LOOP_KEYS = {
    "max_cycles": "Required: the most cycles the body runs (no loop is unbounded).",
    "until": "Expression evaluated after each cycle; true stops the loop.",
    "nodes": "The body; each cycle is a fresh scope that can read `cycle` and `prev.NODE`.",
    "output": "The loop's outputs (NAME: expression), evaluated in the last cycle's scope.",
    "when": "Guard: the loop runs only when this expression is true.",
    "speculative": "Start before it is known to be needed (true, or an expression).",
    "timeout_ms": "Time limit for the whole loop, in milliseconds.",
    "optional": "When true, a failure of the loop does not fail the request.",
    "description": "Free text.",
}


def add_commands(sub: Any) -> None:
    """Register the graph commands on the `moat` subparsers."""
    p = sub.add_parser("check", help="validate graphs; exit 0 valid, 2 invalid")
    p.add_argument("graphs", type=graph_file, nargs="+", metavar="GRAPH")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("show", help="draw a graph as text, mermaid or dot")
    p.add_argument("graph", type=graph_file, metavar="GRAPH")
    p.add_argument("--format", choices=("text", "mermaid", "dot"), default="text")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("schema", help="JSON Schema of the graph format, node types included")
    p.set_defaults(handler=cmd_schema)

    p = sub.add_parser("nodes", help="installed node types; one type's config and output")
    p.add_argument("type", nargs="?", metavar="TYPE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--graph",
        type=graph_file,
        metavar="GRAPH",
        help="also the node types of this graph's `plugins:`",
    )
    p.set_defaults(handler=cmd_nodes)


def cmd_check(args: argparse.Namespace) -> int:
    """Check every graph; print located errors and warnings."""
    bad = 0
    for path in args.graphs:
        report = check_file(path)
        for warning in report.warnings:
            if not args.quiet:
                print(f"warning: {warning}", file=sys.stderr)
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        if report.errors:
            bad += 1
        elif not args.quiet and report.graph is not None:
            g = report.graph
            name = printable(g.name)
            print(f"{path}: ok ({name}: {_count(g.scope)} nodes, {len(g.output)} outputs)")
    return 2 if bad else 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print a graph in the chosen format."""
    graph = load_graph(args.graph)
    render = {"text": render_text, "mermaid": render_mermaid, "dot": render_dot}[args.format]
    print(render(graph))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the graph format's JSON Schema (a node type without one is warned about)."""
    schema = graph_json_schema(Registry.default(), warn=_warn)
    print(json.dumps(schema, indent=2, sort_keys=True))
    return 0


def _warn(message: str) -> None:
    print(f"moat: warning: {printable(message)}", file=sys.stderr)


def cmd_nodes(args: argparse.Namespace) -> int:
    """List node types, or describe one (`--graph` adds that graph's plugin types)."""
    registry = graph_registry(args.graph) if args.graph else Registry.default()
    if args.type is None:
        return _list_nodes(registry, args.json)
    if args.type == "loop":
        return _describe_loop(args.json)
    cls = registry.get(args.type)
    if cls is None and (broken := registry.problem(args.type)) is not None:
        raise SpecError(broken)
    if cls is None:
        close = registry.closest(args.type)
        hint = f" (did you mean {close!r}?)" if close else ""
        where = "" if args.graph else "; types from a graph's `plugins:` need --graph GRAPH"
        raise SpecError(
            f"unknown node type {args.type[:80]!r}{hint}. Installed: "
            f"{', '.join([*registry.names(), 'loop'])}{where}"
        )
    if args.json:
        origin = registry.origin(args.type)
        print(
            json.dumps(
                {
                    "type": args.type,
                    "description": cls.__doc__,
                    "config": _model_schema(cls.Config, args.type, origin),
                    "output": _model_schema(cls.Output, args.type, origin),
                    "events": list(cls.event_types),
                },
                indent=2,
            )
        )
        return 0
    print(f"{args.type}: {_doc(cls.__doc__)}\n")
    print(f"origin: {printable(registry.origin(args.type))}")
    print("\nconfig (with:):")
    print(_fields(cls.Config))
    print("\noutput (readable as NODE.FIELD):")
    print(_fields(cls.Output))
    if cls.event_types:
        print("\nevents it records: " + ", ".join(cls.event_types))
    return 0


def _model_schema(model: type[BaseModel], type_name: str, origin: str) -> dict[str, Any]:
    """The JSON Schema of a node type's `Config` or `Output`; any mapping, with a warning,
    when pydantic cannot draw one of its fields."""
    try:
        return config_json_schema(model)
    except (Exception, SystemExit) as exc:  # (a plugin's model)
        _warn(no_json_schema(type_name, origin, exc))
        return {"type": "object"}


def _doc(text: str | None) -> str:
    """A docstring for the terminal: dedented, control characters escaped."""
    return printable(inspect.cleandoc(text or ""))


def _list_nodes(registry: Registry, as_json: bool) -> int:
    rows = [(n, registry.get(n)) for n in registry.names()]
    if as_json:
        listed = {n: c.describe() for n, c in rows if c}
        print(json.dumps({**listed, "loop": _LOOP}, indent=2))
        return 0
    width = max([len(n) for n, _ in rows] + [4])
    for name, cls in rows:
        assert cls is not None
        print(f"{name:<{width}}  {_line(cls.describe())}  [{_line(registry.origin(name))}]")
    print(f"{'loop':<{width}}  {_LOOP}")
    for problem in registry.broken.values():
        _warn(problem)
    return 0


def _describe_loop(as_json: bool) -> int:
    """`loop` is a construct of the graph format, not a plugin: its keys come from `LoopSpec`."""
    if as_json:
        schema = LoopSpec.model_json_schema()
        if "$ref" in schema:  # LoopSpec is recursive (a body holds loops): inline the top
            schema = {**schema["$defs"]["LoopSpec"], "$defs": schema["$defs"]}
        print(json.dumps({"type": "loop", "description": _LOOP, "config": schema}, indent=2))
        return 0
    print(f"loop: {_LOOP}\n")
    print("origin: moat (the graph format)")
    print("\nkeys (beside `type: loop`):")
    print(_fields(LoopSpec, skip={"type"}, notes=_LOOP_KEYS))
    print("\noutput (readable as NODE.FIELD): the names under its `output:`")
    return 0


def _fields(
    model: type[BaseModel],
    skip: frozenset[str] | set[str] = frozenset(),
    notes: dict[str, str] | None = None,
) -> str:
    lines = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        ann = type_words(field.annotation)
        default = "" if field.is_required() else f" = {_default(field)}"
        required = " (required)" if field.is_required() else ""
        lines.append(f"  {_line(field.alias or name)}: {_line(ann)}{default}{required}")
        text = field.description or (notes or {}).get(name)
        if text:
            lines += [f"      {printable(part)}" for part in inspect.cleandoc(text).split("\n")]
    return "\n".join(lines) or "  (none)"


def _default(field: FieldInfo) -> str:
    """A field's default as the graph language writes it. A default factory is called to
    show what it makes, unless it needs the other fields; one that fails is said so (a
    plugin's factory is its author's code)."""
    if field.default_factory is None:
        value = field.default
    elif field.default_factory_takes_validated_data:
        return "(made from the other fields by its default_factory)"
    else:
        try:
            value = field.get_default(call_default_factory=True)
        except (Exception, SystemExit) as exc:
            return f"(its default_factory raised {exception_text(exc, with_type=True)})"
    if isinstance(value, enum.Enum):
        value = value.value
    return _line(literal(value))


_WORDS: dict[Any, str] = {
    None: "none",
    type(None): "none",
    str: "string",
    int: "whole number",
    float: "number",
    bool: "true/false",
    Any: "any",
}


def type_words(annotation: Any) -> str:
    """A config or output field's type in the graph language: `string | none`,
    `'request' | 'draft'`, `list of string`, `mapping`."""
    if annotation in _WORDS:
        return _WORDS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_words(args[0])
    if origin is typing.Literal:
        return " | ".join(literal(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(literal(member.value) for member in annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(dict.fromkeys(type_words(a) for a in args))
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        inner = " | ".join(sorted({type_words(a) for a in args if a is not Ellipsis}))
        if not inner or inner == "any":
            return "list"
        return f"list of ({inner})" if " | " in inner else f"list of {inner}"
    if origin is dict or annotation is dict or _is_model(annotation):
        return "mapping"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _count(scope: Scope) -> int:
    return sum(1 + (_count(n.loop.body) if n.loop else 0) for n in scope.nodes.values())


def render_text(graph: Graph) -> str:
    """An indented listing of nodes in run order with their reads and flags."""
    lines = [f"{_line(graph.name)}  ({_line(graph.path)})"]
    if graph.spec.description:
        lines += [f"  {_line(part)}" for part in graph.spec.description.strip().split("\n")]
    lines += _text_scope(graph.scope, "  ")
    lines.append("  output:")
    lines += [f"    {_line(name)} = {_line(expr.source)}" for name, expr in graph.output.items()]
    return "\n".join(lines)


def _line(text: str) -> str:
    """`text` on one line, control characters escaped: a name, a description or an
    expression may hold any text, and a listing must neither break nor move the cursor."""
    return printable(text).replace("\n", "\\n")


def _text_scope(scope: Scope, indent: str) -> list[str]:
    lines = []
    for nid in scope.order:
        node = scope.nodes[nid]
        flags = []
        if node.speculative is True:
            flags.append("speculative")
        elif node.speculative is not False:
            flags.append(f"speculative if {_line(getattr(node.speculative, 'source', ''))}")
        if node.when is not None:
            flags.append(f"when {_line(node.when.source)}")
        if node.optional:
            flags.append("optional")
        reads = sorted(d for d in node.deps if d in scope.nodes)
        extra = f"  <- {', '.join(reads)}" if reads else ""
        tail = f"  [{'; '.join(flags)}]" if flags else ""
        if node.loop is not None:
            until = f" until {_line(node.loop.until.source)}" if node.loop.until else ""
            lines.append(f"{indent}{nid}: loop (max {node.loop.max_cycles}{until}){extra}{tail}")
            lines += _text_scope(node.loop.body, indent + "    ")
        else:
            lines.append(f"{indent}{nid}: {node.type_name}{extra}{tail}")
    return lines


_MERMAID_WORDS = frozenset(
    {
        "call",
        "class",
        "classdef",
        "click",
        "default",
        "direction",
        "end",
        "flowchart",
        "graph",
        "href",
        "interpolate",
        "linkstyle",
        "style",
        "subgraph",
        "v",
    }
)
"""Words of mermaid's flowchart syntax: a node id spelt so would end a subgraph or start a
statement, so it is drawn under another id (its label still says it)."""


def render_mermaid(graph: Graph) -> str:
    """A mermaid flowchart: solid edges for reads, dashed borders for speculative nodes.

    A node of a loop body is drawn as `LOOP.NODE` (body ids are unique only in their body),
    and a node whose id is a word of mermaid's syntax, or could be an output's box
    (`out_...`), as `N.ID`; each label says the node's own id."""
    lines = ["flowchart TD"]
    lines += _mermaid_scope(graph.scope, (), "    ")
    for i, (name, expr) in enumerate(graph.output.items()):
        # an output's name is any text; a box id is `out_` and a word (no node's: see above)
        box = f"out_{name}" if name.isascii() and name.isidentifier() else f"out_{i}"
        lines.append(f'    {box}[/"output: {_mermaid_text(name)}"/]')
        lines += [
            f"    {_mermaid_id((n,))} --> {box}" for n in sorted(expr.names) if n in graph.nodes
        ]
    return "\n".join(lines)


def _mermaid_id(path: tuple[str, ...]) -> str:
    drawn = ".".join(path)
    return f"N.{drawn}" if path[0] in _MERMAID_WORDS or path[0].startswith("out_") else drawn


def _mermaid_text(text: str) -> str:
    """`text` inside a quoted mermaid label: on one line, its quotes and `#` as entities."""
    return _line(text).replace("#", "#35;").replace('"', "#quot;")


def _mermaid_scope(scope: Scope, prefix: tuple[str, ...], indent: str) -> list[str]:
    lines = []
    for nid in scope.order:
        node = scope.nodes[nid]
        me = _mermaid_id((*prefix, nid))
        if node.loop is not None:
            lines.append(f'{indent}subgraph {me}["{nid}: loop x{node.loop.max_cycles}"]')
            lines += _mermaid_scope(node.loop.body, (*prefix, nid), indent + "    ")
            lines.append(f"{indent}end")
        else:
            lines.append(f'{indent}{me}["{nid}: {node.type_name}"]')
            if node.speculative is not False:
                lines.append(f"{indent}style {me} stroke-dasharray: 5 5")
        for dep in sorted(node.deps):
            if dep in scope.nodes:
                arrow = "-.->" if node.when is not None and dep in node.when.names else "-->"
                lines.append(f"{indent}{_mermaid_id((*prefix, dep))} {arrow} {me}")
    return lines


def render_dot(graph: Graph) -> str:
    """A Graphviz digraph: dashed nodes are speculative, dotted edges feed guards. A node of
    a loop body is `LOOP/NODE` (body ids are unique only in their body; an output's box is
    `output.NAME`)."""
    lines = [f"digraph {_dot(graph.name)} {{", "  rankdir=TB;", "  node [shape=box];"]
    lines += _dot_scope(graph.scope, (), "  ")
    for name, expr in graph.output.items():
        box = _dot(f"output.{name}")
        lines.append(f"  {box} [shape=note];")
        lines += [f'  "{n}" -> {box};' for n in sorted(expr.names) if n in graph.nodes]
    lines.append("}")
    return "\n".join(lines)


def _dot(text: str) -> str:
    """`text` as a quoted Graphviz id: a graph's or an output's name may hold any text."""
    escaped = printable(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n") + '"'


def _dot_scope(scope: Scope, prefix: tuple[str, ...], indent: str) -> list[str]:
    lines = []
    for nid in scope.order:
        node = scope.nodes[nid]
        me = "/".join((*prefix, nid))
        if node.loop is not None:
            lines.append(f'{indent}subgraph "cluster_{me}" {{')
            lines.append(f'{indent}  label="{nid}: loop x{node.loop.max_cycles}";')
            lines += _dot_scope(node.loop.body, (*prefix, nid), indent + "  ")
            lines.append(f"{indent}}}")
            lines.append(f'{indent}"{me}" [label="{nid}", shape=doubleoctagon];')
        else:
            style = ", style=dashed" if node.speculative is not False else ""
            lines.append(f'{indent}"{me}" [label="{nid}\\n{node.type_name}"{style}];')
        for dep in sorted(node.deps):
            if dep in scope.nodes:
                guard = node.when is not None and dep in node.when.names
                dep_id = "/".join((*prefix, dep))
                lines.append(f'{indent}"{dep_id}" -> "{me}"{" [style=dotted]" if guard else ""};')
    return lines
