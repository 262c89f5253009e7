"""Loading a graph file: YAML with positions, env expansion, spec validation, policy, checks.

`load_graph` is the one way to turn a file into a runnable `Graph`; `check_file` runs the
same steps but returns every problem instead of raising the first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import PolicyError, SpecError
from engine.expr.wording import (
    bools_read_as_numbers,
    config_problem,
    did_you_mean,
    kind,
    merged_alternatives,
)
from engine.graph.check import Checker
from engine.graph.compiled import Graph
from engine.graph.spec import FaultRates, GraphSpec, ModelSpec, Price
from engine.located_yaml import Located, load_yaml, node_of, read_file
from engine.plugin.registry import Registry
from engine.policy.validate import load_policy_file, validate_policy

__all__ = [
    "CheckReport",
    "GraphErrors",
    "check_file",
    "graph_registry",
    "load_graph",
    "load_graph_text",
]

_TYPED_KEYS = frozenset(
    name
    for model in (ModelSpec, Price, FaultRates)
    for name, field in model.model_fields.items()
    if "str" not in str(field.annotation) and "Literal" not in str(field.annotation)
)
"""The `models:` keys that take a number or true/false, which `${VAR}` fills typed."""
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class GraphErrors(SpecError):
    """Several located errors in one graph; `errors` holds each, the message lists them all."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(
            first.reason,
            path=first.path,
            line=first.line,
            column=first.column,
            node_id=first.node_id,
        )
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


@dataclass(slots=True)
class CheckReport:
    """What `moat check` found in one file."""

    path: str
    errors: list[SpecError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    graph: Graph | None = None

    @property
    def ok(self) -> bool:
        """True when the graph has no errors (warnings allowed)."""
        return not self.errors


def load_graph(path: str | os.PathLike[str], *, registry: Registry | None = None) -> Graph:
    """Load, check and compile the graph at `path`.

    Raises:
        SpecError: the first problem, located (`GraphErrors` when there are several).
    """
    report = check_file(path, registry=registry)
    if report.errors:
        raise report.errors[0] if len(report.errors) == 1 else GraphErrors(report.errors)
    assert report.graph is not None
    return report.graph


def load_graph_text(
    text: str,
    path: str = "<string>",
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Graph:
    """Load a graph from YAML text (tests, embedding); relative paths resolve from `base_dir`."""
    report = check_text(text, path, registry=registry, base_dir=base_dir)
    if report.errors:
        raise report.errors[0] if len(report.errors) == 1 else GraphErrors(report.errors)
    assert report.graph is not None
    return report.graph


def check_file(path: str | os.PathLike[str], *, registry: Registry | None = None) -> CheckReport:
    """Run every check on the graph at `path`; never raises for problems in the file."""
    shown = os.fspath(path)
    try:
        data = read_file(shown)
    except SpecError as exc:
        return CheckReport(shown, [exc])
    return check_text(data, shown, registry=registry, base_dir=Path(shown).parent)


def graph_registry(path: str | os.PathLike[str]) -> Registry:
    """The installed node types plus those of the graph's `plugins:` (`moat nodes --graph`).

    Only the `plugins:` list is read, so this works while the rest of the graph is broken.

    Raises:
        SpecError: the file is unreadable, not YAML, or a plugin fails to load (located).
    """
    shown = os.fspath(path)
    located = load_yaml(read_file(shown), shown)
    plugins = located.data.get("plugins", []) if isinstance(located.data, dict) else []
    if not isinstance(plugins, list):
        raise located.error("`plugins:` must be a list of module names", ("plugins",))
    registry = Registry.default()
    for i, module in enumerate(plugins):
        try:
            registry.load_module(str(module), Path(shown).parent)
        except SpecError as exc:
            raise located.error(exc.reason, ("plugins", i)) from None
    return registry


def check_text(
    text: str | bytes,
    path: str = "<string>",
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> CheckReport:
    """Like `check_file`, for text already in memory."""
    report = CheckReport(path)
    try:
        located = load_yaml(text, path)
        spec = _validate_spec(located)
        reg = registry.copy() if registry is not None else Registry.default()
        policy_name, policy, policy_path, policy_doc = _load_policy(located, spec, base_dir)
    except GraphErrors as exc:
        report.errors.extend(exc.errors)
        return report
    except SpecError as exc:
        report.errors.append(exc)
        return report
    home = os.path.abspath(base_dir) if base_dir is not None else None
    checker = Checker(located, spec, reg, policy, home)
    scope, output = checker.run()
    report.errors.extend(checker.errors)
    report.warnings.extend(checker.warnings)
    if report.errors or scope is None:
        return report
    raw = text.encode() if isinstance(text, str) else text
    report.graph = Graph(
        name=spec.name,
        path=path,
        hash=hashlib.sha256(raw).hexdigest()[:16],
        spec=spec,
        scope=scope,
        output=output,
        models=spec.models,
        budget=spec.budget,
        input_schema=spec.input,
        policy=policy,
        policy_name=policy_name,
        policy_path=policy_path,
        warnings=tuple(checker.warnings),
        base_dir=home,
    )
    if policy_doc is not None:
        policy_error = _check_policy(report.graph, policy_doc)
        if policy_error is not None:
            report.errors.append(policy_error)
            report.graph = None
    return report


def _check_policy(graph: Graph, doc: Located) -> SpecError | None:
    """The graph's own policy, judged as `moat policy apply` judges it (same function), so a
    graph whose policy would fail every request is refused before anything runs."""
    try:
        validate_policy(doc.data, doc, previous=None, graphs=(graph,))
    except PolicyError as exc:
        return _spec_error(exc)
    return None


def _spec_error(exc: PolicyError) -> SpecError:
    return SpecError(exc.reason, path=exc.path, line=exc.line, column=exc.column)


def _validate_spec(located: Located) -> GraphSpec:
    data = located.data
    if not isinstance(data, dict):
        kind = "empty" if data is None else _describe_kind(data)
        raise located.error(
            f"a graph file must be a mapping with `moat: 1`, `name:`, `nodes:` and `output:`; "
            f"this one is {kind}",
            (),
        )
    if "moat" not in data:
        raise located.error("missing `moat: 1` (the format version) at the top of the file", ())
    _expand_models_env(located)
    if isinstance(data["moat"], bool):  # (a literal 1 takes true, as 1 == True, even strict)
        err = {
            "type": "int_type",
            "loc": ("moat",),
            "msg": "Input should be a valid integer",
            "input": data["moat"],
        }
        raise _translate(located, err)
    try:
        spec = GraphSpec.model_validate(data)
    except ValidationError as exc:
        found = exc.errors()
        paths = [_data_path(data, err.get("loc", ()))[0] for err in found]
        errors = [_translate(located, err) for err in merged_alternatives(found, paths)]
        raise errors[0] if len(errors) == 1 else GraphErrors(errors) from exc
    errors = [_translate(located, err) for _, err in bools_read_as_numbers(data, spec)]
    if errors:  # `max_cycles: true` is no loop bound, though pydantic reads it as 1
        raise errors[0] if len(errors) == 1 else GraphErrors(errors)
    return spec


def _expand_models_env(located: Located) -> None:
    models = located.data.get("models")
    if not isinstance(models, dict):
        return

    def expand(value: Any, at: tuple[str | int, ...]) -> Any:
        if isinstance(value, str):
            text = _ENV.sub(lambda m: _env_value(m, located, at), value)
            if text is not value and at[-1] in _TYPED_KEYS and _ENV.fullmatch(value):
                # `max_concurrency: ${N}` is the number the variable holds, as if written
                # there (`4` a number, `true` true); text that is none stays text
                with contextlib.suppress(yaml.YAMLError):
                    typed = yaml.safe_load(text)
                    if isinstance(typed, int | float):
                        return typed
            return text
        if isinstance(value, dict):
            return {k: expand(v, (*at, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v, (*at, i)) for i, v in enumerate(value)]
        return value

    located.data["models"] = expand(models, ("models",))


def _env_value(match: re.Match[str], located: Located, at: tuple[str | int, ...]) -> str:
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value is not None:
        return value
    if default is not None:
        return default
    raise located.error(
        f"environment variable {name} is not set; set it or write ${{{name}:-default}}",
        at,
        offset=match.start(),
    )


def _translate(located: Located, err: Mapping[str, Any]) -> SpecError:
    at, model = _data_path(located.data, err.get("loc", ()))
    node_id = node_of(at)
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        key = at[-1]
        allowed = sorted(_field_names(model)) if model else []
        hint = did_you_mean(str(key), allowed)
        where = f"at {_dotted(at[:-1])}" if at[:-1] else "at the top level"
        message = f"unknown key {key!r} {where}{hint}"
        if allowed:
            message += f". Allowed: {', '.join(allowed)}"
        return located.error(message, at, key=True, node_id=node_id)
    if kind == "missing":
        return located.error(
            f"missing required key {at[-1]!r} in {_dotted(at[:-1]) or 'the graph'}",
            at[:-1],
            key=bool(at[:-1]),
            node_id=node_id,
        )
    if kind == "value_error" and model is not None:  # a rule across a section's keys
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        return located.error(f"{_dotted(at)}: {message}", at, node_id=node_id)
    message = f"{_dotted(at)}: {config_problem(err)}"
    if len(at) >= 2 and at[-2] == "output" and isinstance(err.get("input"), dict | list):
        message += (
            "; an output is an expression (such as `a.text`) or a constant: write a mapping "
            "or a list as one expression, in quotes (\"{'x': a.text}\")"
        )
    return located.error(message, at, node_id=node_id)


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a name the file system refuses (too long, a NUL)
        return False


def _describe_kind(value: Any) -> str:
    """`a list`, `true/false`, ... for the top of a file that is not a mapping."""
    name = kind(value)
    return name if isinstance(value, bool) else f"a {name}"


def _data_path(
    data: Any, loc: tuple[Any, ...]
) -> tuple[tuple[str | int, ...], type[BaseModel] | None]:
    """Map a pydantic `loc` onto the data (dropping union tags), and the model at its end."""
    from engine.graph.spec import GraphSpec, LoopSpec, NodeSpec

    at: list[str | int] = []
    cur: Any = data
    shape: Any = GraphSpec  # what the value at `at` is declared as (a model, `X | None`, ...)
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            at.append(part)
            cur = cur[part]
            if isinstance(cur, dict) and "type" in cur and len(at) >= 2 and at[-2] == "nodes":
                shape = LoopSpec if cur.get("type") == "loop" else NodeSpec
            else:  # (a key the shape does not declare, as an unknown one: the shape stays)
                shape = _inner(shape, part) or shape
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            at.append(part)
            cur = cur[part]
            shape = _inner(shape, part) or shape
        elif part in ("node", "loop") or part in _member_tags(shape):
            continue  # (a union's member: pydantic names the one it tried)
        else:
            at.append(part)
            break
    return tuple(at), _model_of(shape)


def _inner(shape: Any, part: str | int) -> Any:
    """What the value at `part` of a value declared as `shape` is declared as (None when
    unknown): a model's field, a mapping's value, a list's item, through `| None`."""
    shape = _model_of(shape) or shape
    if isinstance(shape, type) and issubclass(shape, BaseModel):
        for name, f in shape.model_fields.items():
            if part in (name, f.alias):
                return f.annotation
        return None
    origin, args = typing.get_origin(shape), typing.get_args(shape)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (list, tuple) and args:
        return args[0]
    return None


def _member_tags(shape: Any) -> tuple[str, ...]:
    """How pydantic names the members of `shape` in an error's `loc`, if it is a union."""
    if typing.get_origin(shape) not in (typing.Union, types.UnionType):
        return ()
    return tuple(getattr(a, "__name__", str(a)) for a in typing.get_args(shape))


def _model_of(shape: Any) -> type[BaseModel] | None:
    """The model a value declared as `shape` is (`X` of `X | None`), else None."""
    if typing.get_origin(shape) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(shape) if _model_of(a) is not None]
        return models[0] if len(models) == 1 else None
    return shape if isinstance(shape, type) and issubclass(shape, BaseModel) else None


def _field_names(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def _dotted(at: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in at)


def _load_policy(
    located: Located, spec: GraphSpec, base_dir: str | os.PathLike[str] | None
) -> tuple[str | None, dict[str, Any], str | None, Located | None]:
    if spec.policy is None:
        return None, {}, None, None
    policy_path = Path(base_dir or ".") / spec.policy
    shown = os.path.normpath(os.fspath(policy_path))
    if not _is_file(shown):
        if os.path.isdir(shown):
            what = "is a folder, not a file"
        elif os.path.exists(shown):  # a named pipe or a device: nothing to read a policy from
            what = "is not a regular file"
        else:
            what = "not found"
        raise located.error(
            f"policy file {spec.policy!r} {what} (looked for {shown}); the path is "
            "relative to the graph file",
            ("policy",),
        )
    try:
        name, body, doc = load_policy_file(shown)
    except PolicyError as exc:
        raise _spec_error(exc) from None
    return name, body, shown, doc
