"""The graph checker: numbered checks that find every mistake before anything runs.

Each check is a small method of `Checker` named `cNN_...` and documented with the mistake
it finds; the longer ones keep their helpers in the private module named after them. The
checker also compiles what it checks (`_compile.py`), so a graph that passes is ready to run.

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
 8. `with:` passes the node type's `Config` (unknown keys, types, required keys;
    `_config.py`)
 9. models named in `with:` exist in `models:`, and so do the literals an expression there
    can give (`'large' if x else 'small'`; `_config.py`)
10. no cycles between nodes (a node guarding on itself included)
11. `prev.x` names a body node of the same loop
12. nodes nothing can demand are reported as warnings (`_demand.py`)
13. `input:` is a valid JSON Schema whose `$ref`s resolve (`_schemas.py`)
14. `serve.input` maps input properties to expressions over the chat request only
15. every model's `fallback:` names another model and fallbacks never loop (`_fallbacks.py`)
16. no chain of nodes waiting one for another is longer than `MAX_CHAIN` (`_chain.py`)
17. every `input.x` read is a property `input:` lists (a warning where others may come)
18. every regex of `input:` and of a node's schemas compiles and runs in linear time
    (`patterns.py`)
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from engine.errors import EvaluationError, ExpressionError, SpecError
from engine.expr.compile import CONSTANT_NAMES
from engine.expr.expression import Expr, Ref, Template, compile_expr, compile_template
from engine.expr.wording import config_problem, did_you_mean, quoted
from engine.graph._chain import MAX_CHAIN, longest_chain
from engine.graph._compile import (
    Path,
    ScopeInfo,
    compile_outputs,
    compile_scope,
    template_errors,
)
from engine.graph._config import (
    bool_errors,
    config_keys,
    literal_results,
    model_names,
    validator_raised,
)
from engine.graph._demand import undemanded
from engine.graph._fallbacks import fallback_problems
from engine.graph._schemas import MORE_PROPERTIES, ref_problems
from engine.graph.compiled import LOOP_SCOPE_NAMES, SCOPE_NAMES, Scope
from engine.graph.patterns import schema_problems
from engine.graph.spec import SERVE_NAMES, GraphSpec, LoopSpec, NodeSpec
from engine.located_yaml import Located, node_of
from engine.plugin.files import CHECK_CONTEXT, LATER_CONTEXT
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
        self._unimported: list[str] = []
        """The `plugins:` modules that could not be imported (their types are missing)."""

    def run(self) -> tuple[Scope | None, dict[str, Expr]]:
        """Run every check; returns the compiled top scope and outputs (None on errors)."""
        self.c00_plugins()
        self.c13_input_schema()
        top = ScopeInfo(self.spec.nodes, ("nodes",), None)
        scope = compile_scope(self, top)
        output = compile_outputs(self, self.spec.output, ("output",), top)
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
                added = self.registry.load_module(module, self.base_dir)
            except SpecError as exc:
                self._error(exc.reason, ("plugins", i))
                self._unimported.append(module)
                continue
            if not added:  # (a typo'd name that is some other module imports fine)
                pos = self.located.where(("plugins", i))
                self.warnings.append(
                    f"{self.located.path}:{pos.line}:{pos.column}: plugin module {module!r} "
                    "defines no node type (no `Node` subclass with a `type_name`), so it "
                    "adds nothing; check the module's name, or remove it from `plugins:`"
                )

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
        if cls is None and (broken := self.registry.problem(spec.type)) is not None:
            self._error(broken, (*at, "type"), node_id=node_id)
        elif cls is None:
            close = self.registry.closest(spec.type)
            hint = f" (did you mean {close!r}?)" if close else ""
            known = ", ".join(sorted([*self.registry.names(), "loop"]))
            failed = ", ".join(repr(m) for m in self._unimported)
            if failed:  # (then the type is most likely one of theirs: fix that first)
                which = "it" if len(self._unimported) == 1 else "them"
                hint += f" (plugin module {failed} could not be imported; fix {which} first)"
            self._error(
                f"unknown node type {spec.type!r}{hint}. Registered types: {known}",
                (*at, "type"),
                node_id=node_id,
            )
        return cls

    def c03_expression(self, source: Any, at: Path, node_id: str | None) -> Expr | None:
        """Every expression parses and uses only allowed syntax; one that reads nothing
        evaluates (`'a' + 1`, `min([])` would fail every request the same way)."""
        try:
            expr = compile_expr(source)
        except ExpressionError as exc:
            self._error(
                f"in expression {quoted(source)}: {exc.problem}",
                at,
                node_id=node_id,
                offset=(exc.column or 1) - 1,
            )
            return None
        if expr.constant:
            try:
                expr.evaluate({})
            except EvaluationError as exc:
                self._error(
                    f"{exc}; it reads nothing, so it fails the same way on every request; "
                    "fix the expression",
                    at,
                    node_id=node_id,
                )
        return expr

    def c03_template(self, value: Any, at: Path, node_id: str) -> Template | None:
        """`with:` values: `{{ EXPR }}` templates parse and use only allowed syntax."""
        try:
            return compile_template(value)
        except ExpressionError:
            pass
        for where, part, exc in template_errors(value, at):
            self._error(
                f"in {quoted(part)}: {exc.problem}",
                where,
                node_id=node_id,
                offset=(exc.column or 1) - 1,
            )
        return None

    def c04_refs(
        self, expr: Expr | Template, at: Path, scope: ScopeInfo, node_id: str | None
    ) -> None:
        """Every name is a node or a scope name; fields, policy keys and prev are checked."""
        for ref in expr.refs:
            self._check_ref(ref, at, scope, node_id)

    def c05_output_field(
        self,
        ref: Ref,
        target: str,
        spec: NodeSpec | LoopSpec,
        at: Path,
        node_id: str | None,
        read_as: str = "",
    ) -> None:
        """Every `node.field` read is an output of that node (`read_as`: how the expression
        reaches the node, `prev.` for the last cycle's)."""
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
            hint = did_you_mean(field, outputs)
            self._error(
                f"'{read_as}{target}.{field}' is not an output of node '{target}' ({kind}){hint}. "
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
                hint = did_you_mean(str(part), keys)
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
            hint = did_you_mean(str(ref.path[0]), list(_REQUEST_FIELDS))
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
        fields = config_keys(config_cls)
        allow_extra = config_cls.model_config.get("extra") == "allow"
        static: dict[str, Any] = {}
        dynamic: set[str] = set()
        for key, value in spec.with_.items():
            if not allow_extra and key not in fields:
                self._error(
                    f"unknown config key {key!r} for type {spec.type!r}"
                    f"{did_you_mean(key, sorted(fields))}. Config keys: "
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
        errors: list[Any] = bool_errors(config_cls, static)
        try:  # the context lets a config validator read the files it names (`graph_file`)
            context = {CHECK_CONTEXT: self.base_dir, LATER_CONTEXT: frozenset(dynamic)}
            config_cls.model_validate(static, context=context)
        except ValidationError as exc:
            errors += exc.errors()
        except (Exception, SystemExit) as exc:  # a plugin's validator: not a ValueError
            origin = self.registry.origin(spec.type) or cls.__module__
            message = validator_raised(spec.type, f"{cls.__qualname__}.Config", origin, exc)
            self._error(message, (*at, "with") if spec.with_ else at, node_id=node_id)
            return
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
        """Logical models named in `with:` (or by default) exist in `models:`; so do those
        an expression there can give (`"{{ 'large' if router.hard else 'small' }}"`: each
        literal it can yield, as far as that is known without evaluating it)."""
        for key in cls.model_keys:
            name, *inner = key.split(".")  # `routes.*.model`: a model inside each route
            if name in dynamic:  # written with expressions: their literals, and the rest
                value = spec.with_[name]
                for model, place in model_names(value, inner, (*at, "with", name)):
                    self._expression_models(node_id, model, place)
                continue
            if name in static:
                value = static[name]
                where: Path = (*at, "with", name)
            else:
                field = cls.Config.model_fields.get(name)
                value = field.default if field is not None else None
                where = at
            how = "" if name in static else f" (the default of `{name}`)"
            for model, place in model_names(value, inner, where):
                self._model_defined(node_id, model, place, how)

    def _expression_models(self, node_id: str, written: Any, place: Path) -> None:
        """`_model_defined` on a model name written in a `with:` value that holds
        expressions: as it is when literal, else each literal a `{{ EXPR }}` can give."""
        if not isinstance(written, str) or "{{" not in written:
            self._model_defined(node_id, written, place)
            return
        try:
            template = compile_template(written)
        except ExpressionError:
            return  # check 3 reports it
        if template.open_keys is not None:
            return  # text around the expression: a name put together at run time
        (expr,) = template.expressions
        start = written.find(expr.source)
        for result, column in literal_results(expr.source):
            for model in result if isinstance(result, list | tuple) else (result,):
                how = " (a value the expression can give)"
                self._model_defined(node_id, model, place, how, offset=start + column)

    def _model_defined(
        self, node_id: str, model: Any, place: Path, how: str = "", offset: int = 0
    ) -> None:
        """Check 9 on one name: a string not under `models:` is an error (with the closest
        name and the defined ones)."""
        if isinstance(model, str) and model not in self.spec.models:
            defined = sorted(self.spec.models)
            hint = did_you_mean(model, defined)
            self._error(
                f"model {model!r}{how} is not defined under `models:`{hint}. "
                f"Defined: {', '.join(defined) or '(none)'}",
                place,
                node_id=node_id,
                offset=offset,
            )

    def c10_cycles(
        self, scope: ScopeInfo, deps: Mapping[str, frozenset[str]]
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

    def c11_prev(self, ref: Ref, scope: ScopeInfo, at: Path, node_id: str | None) -> None:
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
                f"{did_you_mean(target, list(scope.specs))}. Body nodes: "
                f"{', '.join(sorted(scope.specs))}",
                at,
                node_id=node_id,
                offset=ref.column - 1,
            )
            return
        inner = Ref(name=target, path=ref.path[1:], column=ref.column)
        self.c05_output_field(inner, target, scope.specs[target], at, node_id, "prev.")

    def c12_undemanded(self, scope: Scope, output: Mapping[str, Expr]) -> None:
        """Nodes nothing can demand are reported as warnings (they never run)."""
        wanted: set[str] = set().union(*(e.names for e in output.values())) if output else set()
        for at, nid in undemanded(scope, wanted, ("nodes",)):
            pos = self.located.where(at, key=True)
            self.warnings.append(
                f"{self.located.path}:{pos.line}:{pos.column}: node '{nid}': nothing "
                "demands this node and it is not speculative, so it never runs; read it "
                "from `output:` or another node, or remove it"
            )

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
        for path, message in ref_problems(schema, shown):
            self._error(message, (*at, *path[len(shown) :]), node_id=node_id)
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
                    f"{did_you_mean(field, names)}. Properties: {', '.join(names)}",
                    at,
                    key=True,
                )
            expr = self.c03_expression(source, at, None)
            for ref in expr.refs if expr is not None else ():
                if ref.name not in SERVE_NAMES:
                    self._error(
                        f"serve.input.{field}: {ref.name!r} is not a name of the chat request"
                        f"{did_you_mean(ref.name, list(SERVE_NAMES))}. Names: "
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
        if any(key in schema for key in MORE_PROPERTIES):
            return  # the schema may admit properties it does not list
        names = sorted(str(name) for name in listed)
        message = (
            f"'input.{field}' is not a property of `input:`{did_you_mean(field, names)}. "
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

    # -- helpers of the checks ----------------------------------------------------------

    def _check_ref(self, ref: Ref, at: Path, scope: ScopeInfo, node_id: str | None) -> None:
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
            hint = did_you_mean(name, known)
            self._error(
                f"unknown name {name!r}{hint}; expressions can read node ids and "
                f"{', '.join(sorted(SCOPE_NAMES))}"
                f"{', cycle, prev' if scope.in_loop else ''}",
                at,
                node_id=node_id,
                offset=ref.column - 1,
            )

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
