"""The graph checker: numbered checks that find every mistake before anything runs.

Each check is a small method of `Checker` named `cNN_...` and documented with the mistake
it finds. The checker also compiles what it checks, so a graph that passes is ready to run.

 1. node ids match `[a-z][a-z0-9_]*` and are neither names in scope, `true/false/none`
    nor Python keywords
 2. every `type:` is a registered node type (with the closest name)
 3. every expression parses and uses only allowed syntax
 4. every name an expression reads is a node, `input`, `policy`, `request` (`cycle`, `prev`
    in loop bodies)
 5. every `node.field` read is an output of that node (lists the outputs)
 6. every `policy.key` read exists in the graph's default policy snapshot
 7. every `request.x` read is one of `id tenant degraded remaining_ms remaining_usd
    policy_version`
 8. `with:` passes the node type's `Config` (unknown keys, types, required keys)
 9. models named in `with:` exist in `models:`
10. no cycles between nodes (a node guarding on itself included)
11. `prev.x` names a body node of the same loop
12. nodes nothing can demand are reported as warnings
13. `input:` is a valid JSON Schema
14. `serve.input` maps input properties to expressions over the chat request only
15. every model's `fallback:` names another model and fallbacks never loop (`_fallbacks.py`)
16. no chain of nodes waiting one for another is longer than `MAX_CHAIN`
17. every `input.x` read is a property `input:` lists (a warning where others may come)
18. every regex of `input:` and of a node's schemas compiles and runs in linear time
    (`patterns.py`)
"""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, cast
from urllib.parse import unquote

from pydantic import BaseModel, TypeAdapter, ValidationError

from engine.errors import EvaluationError, ExpressionError, SpecError, exception_text
from engine.expr.compile import CONSTANT_NAMES
from engine.expr.expression import Expr, Ref, Template, compile_expr, compile_template
from engine.expr.wording import bools_read_as_numbers, config_problem, quoted
from engine.graph._chain import MAX_CHAIN, longest_chain
from engine.graph._fallbacks import fallback_problems
from engine.graph.compiled import LOOP_SCOPE_NAMES, SCOPE_NAMES, CompiledLoop, CompiledNode, Scope
from engine.graph.patterns import schema_problems
from engine.graph.spec import SERVE_NAMES, GraphSpec, LoopSpec, NodeSpec
from engine.located_yaml import Located, node_of
from engine.plugin.files import CHECK_CONTEXT
from engine.plugin.node import Node
from engine.plugin.registry import Registry

__all__ = ["Checker"]

_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_REQUEST_FIELDS = ("degraded", "id", "policy_version", "remaining_ms", "remaining_usd", "tenant")
_FUNCTIONS = frozenset(
    "len min max abs round any all sorted str int float bool lower upper join".split()  # noqa: SIM905
)
_CHAT_INPUT = ("history", "prompt")
"""Input properties `moat serve` sets from a chat request, listed in the schema or not."""
_MORE_PROPERTIES = (
    "patternProperties",
    "unevaluatedProperties",
    "$ref",
    "allOf",
    "anyOf",
    "oneOf",
    "if",
    "dependentSchemas",
)
"""Keywords by which an `input:` schema may admit properties its `properties` do not list."""
Path = tuple[str | int, ...]


def _model_names(value: Any, inner: list[str], where: Path) -> Iterator[tuple[Any, Path]]:
    """The model names at `inner` (keys, `*` for every item) inside a `with:` value, each
    with its place; a list at the end holds several."""
    if not inner:
        if isinstance(value, list):
            for i, model in enumerate(value):
                yield model, (*where, i)
        else:
            yield value, where
        return
    part, *rest = inner
    if part == "*":
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        if isinstance(value, Mapping | list):
            for key, item in items:
                yield from _model_names(item, rest, (*where, key))
    elif isinstance(value, Mapping) and part in value:
        yield from _model_names(value[part], rest, (*where, part))


class _ScopeInfo:
    """What names a scope (top level or loop body) defines, while checking."""

    def __init__(
        self, specs: Mapping[str, NodeSpec | LoopSpec], at: Path, parent: _ScopeInfo | None
    ) -> None:
        self.specs = specs
        self.at = at
        self.parent = parent
        self.in_loop = parent is not None

    def find(self, name: str) -> tuple[_ScopeInfo, NodeSpec | LoopSpec] | None:
        scope: _ScopeInfo | None = self
        while scope is not None:
            if name in scope.specs:
                return scope, scope.specs[name]
            scope = scope.parent
        return None

    def visible(self) -> list[str]:
        names: list[str] = []
        scope: _ScopeInfo | None = self
        while scope is not None:
            names.extend(scope.specs)
            scope = scope.parent
        return names


class Checker:
    """Checks and compiles one graph; collects located errors and warnings.

    Args:
        located: the parsed YAML with positions.
        spec: the validated spec.
        registry: the node types available (plugins of the graph are added to it).
        policy: the default policy snapshot's body.
        base_dir: the graph file's folder: `plugins:` modules there are found first.
    """

    def __init__(
        self,
        located: Located,
        spec: GraphSpec,
        registry: Registry,
        policy: Mapping[str, Any],
        base_dir: str | None = None,
    ) -> None:
        self.located = located
        self.base_dir = base_dir
        self.spec = spec
        self.registry = registry
        self.policy = policy
        self.errors: list[SpecError] = []
        self.warnings: list[str] = []
        self._impls: dict[Path, Node] = {}

    def run(self) -> tuple[Scope | None, dict[str, Expr]]:
        """Run every check; returns the compiled top scope and outputs (None on errors)."""
        self.c00_plugins()
        self.c13_input_schema()
        top = _ScopeInfo(self.spec.nodes, ("nodes",), None)
        scope = self._compile_scope(top)
        output = self._compile_outputs(self.spec.output, ("output",), top)
        self.c14_serve_mapping()
        self.c15_fallbacks()
        if scope is not None and not self.errors:
            self.c16_chain(scope)
            self.c12_undemanded(scope, output)
        return (scope if not self.errors else None), output

    # -- checks -------------------------------------------------------------------------

    def c00_plugins(self) -> None:
        """Import every `plugins:` module and register its node types."""
        for i, module in enumerate(self.spec.plugins):
            try:
                self.registry.load_module(module, self.base_dir)
            except SpecError as exc:
                self._error(exc.reason, ("plugins", i))

    def c01_node_id(self, node_id: str, at: Path, in_loop: bool) -> bool:
        """Node ids match `[a-z][a-z0-9_]*` and are names expressions can read as nodes."""
        if not _ID.match(node_id):
            fixed = re.sub(r"[^a-z0-9_]", "_", node_id.lower()).lstrip("_0123456789") or "node"
            self._error(
                f"invalid node id {node_id!r}: ids are lowercase letters, digits and _ and "
                f"start with a letter (e.g. {fixed!r})",
                at,
                key=True,
            )
            return False
        reserved = SCOPE_NAMES | _FUNCTIONS | (LOOP_SCOPE_NAMES if in_loop else frozenset())
        if node_id in reserved or node_id in LOOP_SCOPE_NAMES or node_id in CONSTANT_NAMES:
            self._error(
                f"node id {node_id!r} is a reserved name in expressions; rename the node",
                at,
                key=True,
            )
            return False
        if keyword.iskeyword(node_id):  # `class.label` does not parse
            self._error(
                f"node id {node_id!r} is a Python keyword, which expressions cannot read; "
                f"rename the node (e.g. {node_id + '_'!r})",
                at,
                key=True,
            )
            return False
        return True

    def c02_node_type(self, node_id: str, spec: NodeSpec, at: Path) -> type[Node] | None:
        """Every `type:` is a registered node type."""
        cls = self.registry.get(spec.type)
        if cls is None:
            close = self.registry.closest(spec.type)
            hint = f" (did you mean {close!r}?)" if close else ""
            known = ", ".join(sorted([*self.registry.names(), "loop"]))
            self._error(
                f"unknown node type {spec.type!r}{hint}. Registered types: {known}",
                (*at, "type"),
                node_id=node_id,
            )
        return cls

    def c03_expression(self, source: Any, at: Path, node_id: str | None) -> Expr | None:
        """Every expression parses and uses only allowed syntax."""
        try:
            return compile_expr(source)
        except ExpressionError as exc:
            self._error(
                f"in expression {quoted(source)}: {exc.reason}",
                at,
                node_id=node_id,
                offset=(exc.column or 1) - 1,
            )
            return None

    def c03_template(self, value: Any, at: Path, node_id: str) -> Template | None:
        """`with:` values: `{{ EXPR }}` templates parse and use only allowed syntax."""
        try:
            return compile_template(value)
        except ExpressionError:
            pass
        self._locate_template_error(value, at, node_id)
        return None

    def c04_refs(
        self, expr: Expr | Template, at: Path, scope: _ScopeInfo, node_id: str | None
    ) -> None:
        """Every name is a node or a scope name; fields, policy keys and prev are checked."""
        for ref in expr.refs:
            self._check_ref(ref, at, scope, node_id)

    def c05_output_field(
        self, ref: Ref, target: str, spec: NodeSpec | LoopSpec, at: Path, node_id: str | None
    ) -> None:
        """Every `node.field` read is an output of that node."""
        if not ref.path or not isinstance(ref.path[0], str):
            return
        field = ref.path[0]
        if isinstance(spec, LoopSpec):
            outputs = sorted(spec.output)
            kind = "loop"
        else:
            cls = self.registry.get(spec.type)
            if cls is None:
                return
            outputs = sorted(cls.Output.model_fields)
            kind = spec.type
        if field not in outputs:
            hint = _did_you_mean(field, outputs)
            self._error(
                f"'{target}.{field}' is not an output of node '{target}' ({kind}){hint}. "
                f"Outputs: {', '.join(outputs) or '(none)'}",
                at,
                node_id=node_id,
                offset=ref.column - 1,
            )

    def c06_policy_key(self, ref: Ref, at: Path, node_id: str | None) -> None:
        """Every `policy.key` read exists in the default policy snapshot."""
        if not self.spec.policy:
            self._error(
                "reads `policy` but the graph has no `policy:` file; add "
                "`policy: path/to/policy.yaml`",
                at,
                node_id=node_id,
                offset=ref.column - 1,
            )
            return
        cur: Any = self.policy
        walked = ["policy"]
        for part in ref.path:
            if not isinstance(cur, Mapping):
                return
            if part not in cur:
                keys = sorted(str(k) for k in cur)
                hint = _did_you_mean(str(part), keys)
                self._error(
                    f"'{'.'.join([*walked, str(part)])}' is not in the policy "
                    f"{self.spec.policy}{hint}. Keys at {'.'.join(walked)}: "
                    f"{', '.join(keys)}",
                    at,
                    node_id=node_id,
                    offset=ref.column - 1,
                )
                return
            cur = cur[part]
            walked.append(str(part))

    def c07_request_field(self, ref: Ref, at: Path, node_id: str | None) -> None:
        """Every `request.x` read is a request field."""
        if ref.path and ref.path[0] not in _REQUEST_FIELDS:
            hint = _did_you_mean(str(ref.path[0]), list(_REQUEST_FIELDS))
            self._error(
                f"'request.{ref.path[0]}' is not a request field{hint}. Fields: "
                f"{', '.join(_REQUEST_FIELDS)}",
                at,
                node_id=node_id,
                offset=ref.column - 1,
            )

    def c08_config(
        self, node_id: str, cls: type[Node], spec: NodeSpec, at: Path, template: Template
    ) -> None:
        """`with:` passes the node type's `Config`: unknown keys, types, required keys."""
        config_cls = cls.Config
        fields = {f.alias or name for name, f in config_cls.model_fields.items()}
        allow_extra = config_cls.model_config.get("extra") == "allow"
        static: dict[str, Any] = {}
        dynamic: set[str] = set()
        for key, value in spec.with_.items():
            if not allow_extra and key not in fields:
                self._error(
                    f"unknown config key {key!r} for type {spec.type!r}"
                    f"{_did_you_mean(key, sorted(fields))}. Config keys: "
                    f"{', '.join(sorted(fields)) or '(none)'}",
                    (*at, "with", key),
                    key=True,
                    node_id=node_id,
                )
                continue
            part = compile_template(value)
            if not part.constant:
                dynamic.add(key)
                continue
            try:
                static[key] = part.evaluate({})
            except EvaluationError as exc:  # `{{ 1/0 }}`: the same failure on every run
                self._error(
                    f"with.{key}: {exc}; it reads nothing, so every run of the node would fail",
                    (*at, "with", key),
                    node_id=node_id,
                )
                dynamic.add(key)  # not judged against the config either
        errors: list[Any] = _bools_read_as_numbers(config_cls, static)
        try:  # the context lets a config validator read the files it names (`graph_file`)
            config_cls.model_validate(static, context={CHECK_CONTEXT: self.base_dir})
        except ValidationError as exc:
            errors += exc.errors()
        for err in errors:
            loc = err.get("loc", ())
            if loc and (loc[0] in dynamic or (loc[0] not in fields and not allow_extra)):
                continue
            if not loc and dynamic:
                continue  # a whole-config rule cannot be decided before run time
            where = ".".join(["with", *(str(p) for p in loc)])
            self._error(
                f"{where}: {config_problem(err)} (type {spec.type!r}; see "
                f"`moat nodes {spec.type}`)",
                (*at, "with", *loc),
                node_id=node_id,
            )
        self.c09_models(node_id, cls, spec, at, static, dynamic)
        for key in cls.schema_keys:
            if isinstance(static.get(key), Mapping):
                self.c13_schema(static[key], (*at, "with", key), ("with", key), node_id)

    def c09_models(
        self,
        node_id: str,
        cls: type[Node],
        spec: NodeSpec,
        at: Path,
        static: Mapping[str, Any],
        dynamic: set[str],
    ) -> None:
        """Logical models named in `with:` (or by default) exist in `models:`."""
        defined = sorted(self.spec.models)
        for key in cls.model_keys:
            name, *inner = key.split(".")  # `routes.*.model`: a model inside each route
            if name in dynamic:
                continue
            if name in static:
                value = static[name]
                where: Path = (*at, "with", name)
            else:
                field = cls.Config.model_fields.get(name)
                value = field.default if field is not None else None
                where = at
            for model, place in _model_names(value, inner, where):
                if isinstance(model, str) and model not in self.spec.models:
                    hint = _did_you_mean(model, defined)
                    how = "" if name in static else f" (the default of `{name}`)"
                    self._error(
                        f"model {model!r}{how} is not defined under `models:`{hint}. "
                        f"Defined: {', '.join(defined) or '(none)'}",
                        place,
                        node_id=node_id,
                    )

    def c10_cycles(
        self, scope: _ScopeInfo, deps: Mapping[str, frozenset[str]]
    ) -> tuple[str, ...] | None:
        """No cycles between nodes; returns a deterministic topological order (None: a cycle)."""
        import networkx as nx  # imported here: it costs a fifth of a second at startup

        dag = nx.DiGraph()
        dag.add_nodes_from(deps)
        for node, needs in deps.items():
            for dep in needs:
                if dep in deps:
                    dag.add_edge(dep, node)
        try:
            return tuple(nx.lexicographical_topological_sort(dag))
        except nx.NetworkXUnfeasible:
            cycle = [edge[0] for edge in nx.find_cycle(dag)]
            first = min(cycle)
            path = " -> ".join([*cycle, cycle[0]]) if len(cycle) > 1 else f"{first} -> {first}"
            self._error(
                f"dependency cycle: {path}; a node cannot (even through a guard) read "
                "its own result; break the cycle or use a loop with `prev`",
                (*scope.at, first),
                key=True,
                node_id=first,
            )
            return None

    def c11_prev(self, ref: Ref, scope: _ScopeInfo, at: Path, node_id: str | None) -> None:
        """`prev.x` names a body node of the same loop."""
        if not scope.in_loop:
            self._error(
                "`prev` is only defined inside a loop body",
                at,
                node_id=node_id,
                offset=ref.column - 1,
            )
            return
        if not ref.path or not isinstance(ref.path[0], str):
            return
        target = ref.path[0]
        if target not in scope.specs:
            self._error(
                f"'prev.{target}': {target!r} is not a node of this loop body"
                f"{_did_you_mean(target, list(scope.specs))}. Body nodes: "
                f"{', '.join(sorted(scope.specs))}",
                at,
                node_id=node_id,
                offset=ref.column - 1,
            )
            return
        inner = Ref(name=target, path=ref.path[1:], column=ref.column)
        self.c05_output_field(inner, target, scope.specs[target], at, node_id)

    def c12_undemanded(self, scope: Scope, output: Mapping[str, Expr]) -> None:
        """Nodes nothing can demand are reported as warnings (they never run)."""
        wanted: set[str] = set().union(*(e.names for e in output.values())) if output else set()
        self._warn_undemanded(scope, wanted, ("nodes",))

    def c13_input_schema(self) -> None:
        """`input:` is a valid JSON Schema (else every request would fail to validate)."""
        self.c13_schema(self.spec.input, ("input",), ("input",), None)

    def c13_schema(
        self, schema: Mapping[str, Any], at: Path, shown: Path, node_id: str | None
    ) -> None:
        """A schema moat applies (`input:`, a `validate` node's `schema:`) is a valid JSON
        Schema whose local `$ref`s resolve, and its patterns are safe (`c18_patterns`)."""
        import jsonschema  # imported here: only graphs being checked need it

        what = "`input:`" if shown == ("input",) else f"`{'.'.join(map(str, shown))}`"
        try:
            jsonschema.validators.validator_for(schema).check_schema(dict(schema))
        except jsonschema.SchemaError as exc:
            if exc.validator == "format" and exc.validator_value == "regex":
                self.c18_patterns(schema, at, shown, node_id)  # says why, and where
                return
            inner = tuple(exc.absolute_path)
            where = ".".join(str(p) for p in (*shown, *inner))
            self._error(
                f"{where}: {exc.message}; {what} is a JSON Schema "
                "(https://json-schema.org/understanding-json-schema)",
                (*at, *inner),
                node_id=node_id,
            )
            return
        for path, ref in _keyed(schema, "$ref", shown):
            name = ".".join(map(str, shown))
            problem = _unresolved(schema, ref, name) if isinstance(ref, str) else None
            if problem is not None:
                where = ".".join(str(p) for p in path)
                self._error(
                    f"{where}: $ref {ref!r} {problem}", (*at, *path[len(shown) :]), node_id=node_id
                )
        self.c18_patterns(schema, at, shown, node_id)

    def c18_patterns(
        self, schema: Mapping[str, Any], at: Path, shown: Path, node_id: str | None
    ) -> None:
        """Every `pattern` and `patternProperties` key of a schema applied to request or model
        text compiles and cannot backtrack in time growing faster than the text (one such
        pattern would stall every request of the process). `at` is where the schema stands
        in the file, `shown` how messages name it (`input`, `with.schema`)."""
        for where, key, message in schema_problems(schema, shown):
            self._error(message, (*at, *where[len(shown) :]), key=key, node_id=node_id)

    def c15_fallbacks(self) -> None:
        """Every model's `fallback:` names another model; fallback chains end."""
        for is_error, message, at in fallback_problems(self.spec.models):
            if is_error:
                self._error(message, at)
            else:
                pos = self.located.where(at)
                self.warnings.append(f"{self.located.path}:{pos.line}:{pos.column}: {message}")

    def c14_serve_mapping(self) -> None:
        """`serve.input` sets input properties from expressions that read only the chat
        request's names (`SERVE_NAMES`)."""
        if self.spec.serve is None:
            return
        properties = self.spec.input.get("properties")
        names = sorted(properties) if isinstance(properties, Mapping) else None
        for field, source in self.spec.serve.input.items():
            at: Path = ("serve", "input", field)
            if names is not None and field not in names:
                self._error(
                    f"serve.input.{field}: the graph's `input` has no property {field!r}"
                    f"{_did_you_mean(field, names)}. Properties: {', '.join(names)}",
                    at,
                    key=True,
                )
            expr = self.c03_expression(source, at, None)
            for ref in expr.refs if expr is not None else ():
                if ref.name not in SERVE_NAMES:
                    self._error(
                        f"serve.input.{field}: {ref.name!r} is not a name of the chat request"
                        f"{_did_you_mean(ref.name, list(SERVE_NAMES))}. Names: "
                        f"{', '.join(SERVE_NAMES)}",
                        at,
                        offset=ref.column - 1,
                    )

    def c16_chain(self, scope: Scope) -> None:
        """No chain of nodes waiting one for another is longer than `MAX_CHAIN`."""
        length, chain = longest_chain(scope)
        if length <= MAX_CHAIN:
            return
        shown = " -> ".join(chain if len(chain) <= 5 else [*chain[:3], "...", chain[-1]])
        self._error(
            f"a chain of {length} nodes each waiting for the one before ({shown}) is longer "
            f"than the {MAX_CHAIN} moat runs; merge steps, or repeat one step with a loop",
            ("nodes", chain[-1]),
            key=True,
        )

    def c17_input_field(self, ref: Ref, at: Path, node_id: str | None) -> None:
        """Every `input.x` read is a property the `input:` schema lists, when it lists them
        all (an error where no other can come, a warning otherwise): a typo there reads
        none on every request."""
        schema = self.spec.input
        listed = schema.get("properties")
        field = ref.path[0] if ref.path else None
        if not isinstance(field, str) or not isinstance(listed, Mapping) or field in listed:
            return
        if any(key in schema for key in _MORE_PROPERTIES):
            return  # the schema may admit properties it does not list
        names = sorted(str(name) for name in listed)
        message = (
            f"'input.{field}' is not a property of `input:`{_did_you_mean(field, names)}. "
            f"Properties: {', '.join(names) or '(none)'}"
        )
        extra = schema.get("additionalProperties", True)
        if extra is False:
            self._error(f"{message}; no request can have it", at, offset=ref.column - 1)
            return
        if extra is not True or field in _CHAT_INPUT:
            return  # a schema for the others, or a property `moat serve` sets
        warning = self.located.error(
            f"{message}; a request without it reads none",
            at,
            node_id=node_id or node_of(at),
            offset=ref.column - 1,
        )
        self.warnings.append(str(warning))

    # -- compiling ----------------------------------------------------------------------

    def _compile_scope(self, info: _ScopeInfo) -> Scope | None:
        compiled: dict[str, CompiledNode] = {}
        for node_id, spec in info.specs.items():
            at = (*info.at, node_id)
            if not self.c01_node_id(node_id, at, info.in_loop):
                continue
            node = self._compile_node(node_id, spec, at, info)
            if node is not None:
                compiled[node_id] = node
        deps = {nid: n.deps & set(info.specs) for nid, n in compiled.items()}
        if len(compiled) != len(info.specs):
            return None
        order = self.c10_cycles(info, deps)
        if order is None:
            return None
        spec_ids = tuple(n for n in order if compiled[n].speculative is not False)
        return Scope(nodes=compiled, order=order, speculative=spec_ids)

    def _compile_node(
        self, node_id: str, spec: NodeSpec | LoopSpec, at: Path, scope: _ScopeInfo
    ) -> CompiledNode | None:
        when = self._expr(spec.when, (*at, "when"), scope, node_id)
        speculative: bool | Expr = spec.speculative if isinstance(spec.speculative, bool) else False
        if isinstance(spec.speculative, str):
            speculative = (
                self._expr(spec.speculative, (*at, "speculative"), scope, node_id) or False
            )
        names: set[str] = set()
        for part in (when, speculative):
            if isinstance(part, Expr):
                names |= part.names
        if isinstance(spec, LoopSpec):
            return self._compile_loop(node_id, spec, at, scope, when, speculative, names)
        cls = self.c02_node_type(node_id, spec, at)
        template = self.c03_template(spec.with_, (*at, "with"), node_id)
        if template is None or cls is None:
            return None
        self._template_refs(spec.with_, (*at, "with"), scope, node_id)
        self.c08_config(node_id, cls, spec, at, template)
        names |= template.names
        impl = self._instance(cls, at)
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
        self,
        node_id: str,
        spec: LoopSpec,
        at: Path,
        scope: _ScopeInfo,
        when: Expr | None,
        speculative: bool | Expr,
        names: set[str],
    ) -> CompiledNode | None:
        body_info = _ScopeInfo(spec.nodes, (*at, "nodes"), scope)
        body = self._compile_scope(body_info)
        until = self._expr(spec.until, (*at, "until"), body_info, node_id)
        output = self._compile_outputs(spec.output, (*at, "output"), body_info)
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

    def _compile_outputs(
        self, outputs: Mapping[str, Any], at: Path, scope: _ScopeInfo
    ) -> dict[str, Expr]:
        compiled: dict[str, Expr] = {}
        for name, source in outputs.items():
            if source is None:  # `answer:` with nothing after it: forgotten, not `none`
                self._error(
                    f"output {name!r} has no expression; write one such as 'node.text', or "
                    "'none' for an output that is always none",
                    (*at, name),
                    key=True,
                )
                continue
            expr = self._expr(source, (*at, name), scope, None)
            if expr is not None:
                compiled[name] = expr
        return compiled

    def _expr(self, source: Any, at: Path, scope: _ScopeInfo, node_id: str | None) -> Expr | None:
        if source is None:
            return None
        expr = self.c03_expression(source, at, node_id)
        if expr is not None:
            self.c04_refs(expr, at, scope, node_id)
        return expr

    def _instance(self, cls: type[Node], at: Path) -> Node | None:
        try:
            return cls()
        except (Exception, SystemExit, GeneratorExit) as exc:  # third-party code
            reason = exception_text(exc, with_type=not isinstance(exc, Exception))
            self._error(
                f"node type {cls.type_name!r} could not be created: {reason}; "
                f"`{cls.__name__}()` must build an instance without arguments",
                at,
            )
            return None

    def _check_ref(self, ref: Ref, at: Path, scope: _ScopeInfo, node_id: str | None) -> None:
        name = ref.name
        found = scope.find(name)
        if found is not None:
            self.c05_output_field(ref, name, found[1], at, node_id)
        elif name == "policy":
            self.c06_policy_key(ref, at, node_id)
        elif name == "request":
            self.c07_request_field(ref, at, node_id)
        elif name == "prev":
            self.c11_prev(ref, scope, at, node_id)
        elif name == "input":
            self.c17_input_field(ref, at, node_id)
        elif name == "cycle" and scope.in_loop:
            return
        else:
            known = sorted(
                {*scope.visible(), *SCOPE_NAMES, *(LOOP_SCOPE_NAMES if scope.in_loop else ())}
            )
            hint = _did_you_mean(name, known)
            self._error(
                f"unknown name {name!r}{hint}; expressions can read node ids and "
                f"{', '.join(sorted(SCOPE_NAMES))}"
                f"{', cycle, prev' if scope.in_loop else ''}",
                at,
                node_id=node_id,
                offset=ref.column - 1,
            )

    def _template_refs(self, value: Any, at: Path, scope: _ScopeInfo, node_id: str) -> None:
        """`c04_refs` on each string of a `with:` value, located at that string (a template's
        own columns count from the start of the string holding each expression)."""
        if isinstance(value, dict):
            for key, item in value.items():
                self._template_refs(item, (*at, key), scope, node_id)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._template_refs(item, (*at, i), scope, node_id)
        elif isinstance(value, str) and "{{" in value:
            self.c04_refs(compile_template(value), at, scope, node_id)

    def _locate_template_error(self, value: Any, at: Path, node_id: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                self._locate_template_error(item, (*at, key), node_id)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._locate_template_error(item, (*at, i), node_id)
        else:
            try:
                compile_template(value)
            except ExpressionError as exc:
                self._error(
                    f"in {quoted(value)}: {exc.reason}",
                    at,
                    node_id=node_id,
                    offset=(exc.column or 1) - 1,
                )

    def _warn_undemanded(self, scope: Scope, wanted: set[str], at: Path) -> None:
        demanded: set[str] = set()
        stack = [n for n in wanted if n in scope.nodes]
        stack += [n for n in scope.speculative]
        while stack:
            nid = stack.pop()
            if nid in demanded:
                continue
            demanded.add(nid)
            stack.extend(d for d in scope.nodes[nid].deps if d in scope.nodes)
        for nid in scope.order:
            node = scope.nodes[nid]
            if nid not in demanded:
                pos = self.located.where((*at, nid), key=True)
                self.warnings.append(
                    f"{self.located.path}:{pos.line}:{pos.column}: node '{nid}': nothing "
                    "demands this node and it is not speculative, so it never runs; read it "
                    "from `output:` or another node, or remove it"
                )
            if node.loop is not None:
                loop = node.loop
                inner = {
                    *(loop.until.names if loop.until else ()),
                    *(n for e in loop.output.values() for n in e.names),
                }
                self._warn_undemanded(loop.body, inner, (*at, nid, "nodes"))

    def _error(
        self,
        message: str,
        at: Path,
        *,
        key: bool = False,
        node_id: str | None = None,
        offset: int = 0,
    ) -> None:
        node_id = node_id or node_of(at)
        self.errors.append(self.located.error(message, at, key=key, node_id=node_id, offset=offset))


def _bools_read_as_numbers(config: type[BaseModel], static: Mapping[str, Any]) -> list[Any]:
    """The `with:` values written `true`/`false` where the config takes a number (pydantic
    would read `max_tokens: true` as 1), as pydantic-shaped errors. Each field is judged
    alone, so a key left to run time (`{{ ... }}`) does not hide them."""
    found: list[Any] = []
    for key, value in static.items():
        info = config.model_fields.get(key)
        if info is None or not _holds_bool(value):
            continue
        form: Any = info.annotation
        if info.metadata:
            form = cast(Any, Annotated)[(form, *info.metadata)]
        try:
            made = TypeAdapter(form).validate_python(value)
        except ValidationError:
            continue  # its own error is reported by the config's validation
        found += [err for _, err in bools_read_as_numbers(value, made, (key,))]
    return found


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, Mapping):
        return any(_holds_bool(v) for v in value.values())
    return isinstance(value, list) and any(_holds_bool(v) for v in value)


def _did_you_mean(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _keyed(
    value: Any, name: str, at: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every value under the key `name` in a JSON document, with where it stands."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            if key == name:
                yield (*at, key), child
            yield from _keyed(child, name, (*at, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _keyed(child, name, (*at, index))


def _unresolved(schema: Mapping[str, Any], ref: str, name: str = "input") -> str | None:
    """Why `ref` names nothing in `schema` (None: it resolves). Only references inside
    the schema itself can: moat fetches no schema from elsewhere. `name` is how messages
    call the schema (`input`, `with.schema`)."""
    if not ref.startswith("#"):
        return (
            "points outside the graph, and moat fetches no schemas; copy the definition "
            f"under `{name}.$defs` and refer to it as '#/$defs/NAME'"
        )
    pointer = ref[1:]
    if pointer and not pointer.startswith("/"):  # `#name`: a `$anchor`
        if any(anchor == pointer for _, anchor in _keyed(schema, "$anchor", ())):
            return None
        return f"names no `$anchor: {pointer}` in `{name}`"
    node: Any = schema
    for part in pointer.split("/")[1:]:
        key = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return f"names nothing in `{name}` (no {key!r}); define it under `{name}.$defs`"
    return None
