"""The helpers of checks 8 and 9 on a node's `with:` value: the keys it may use, the model
names it holds (or that an expression there can give), and the booleans written where its
config takes a number."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, cast

from pydantic import AliasChoices, BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from engine.errors import exception_text
from engine.expr.wording import bools_read_as_numbers, holds_bool

__all__ = [
    "bool_errors",
    "config_keys",
    "field_form",
    "literal_results",
    "model_names",
    "validator_raised",
]


def config_keys(config: type[BaseModel]) -> set[str]:
    """The keys a `with:` may use: each field's name or alias, and the other names a
    field's `validation_alias=AliasChoices(...)` accepts (the cache's `store:`)."""
    keys: set[str] = set()
    for name, field in config.model_fields.items():
        keys.add(field.alias or name)
        if isinstance(field.validation_alias, AliasChoices):
            keys.update(c for c in field.validation_alias.choices if isinstance(c, str))
        elif isinstance(field.validation_alias, str):
            keys.add(field.validation_alias)
    return keys


def model_names(
    value: Any, inner: list[str], where: tuple[str | int, ...]
) -> Iterator[tuple[Any, tuple[str | int, ...]]]:
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
                yield from model_names(item, rest, (*where, key))
    elif isinstance(value, Mapping) and part in value:
        yield from model_names(value[part], rest, (*where, part))


def literal_results(source: str) -> Iterator[tuple[Any, int]]:
    """The literal values expression `source` can give, each with its 0-based column in
    `source`: the branches of `x if c else y`, the operands of `and`/`or` and the items of a
    list or mapping literal indexed by anything (`{'a': 'large'}[router.route]`), followed
    down. Other parts give values known only at run time and yield nothing: nothing is
    evaluated, so `'lrage' if router.x else 'small'` yields `'lrage'` and `'small'`."""
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return  # the expression's own check reports it
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    for node, _ in _results(tree.body):
        value = _literal(node)
        if value is not _UNKNOWN:
            start = line_starts[node.lineno - 1]  # `col_offset` counts UTF-8 bytes
            text = source[start:].encode()[: node.col_offset].decode()
            yield value, start + len(text)


def every_result(source: str) -> list[Any] | None:
    """Every value expression `source` can give that is not falsy (as `literal_results`
    follows it down), when each is a literal; None when one is known only at run time
    (`input.model or 'large'`), or the expression does not parse.

    A part whose value can be the result only when it is falsy (the first operand of
    `and`) gives no name, so `input.fast and 'small' or 'large'` gives `'small'` and
    `'large'`: what it can name is known before the run."""
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return None
    found = []
    for node, falsy in _results(tree.body):
        value = _literal(node)
        if falsy:
            continue  # a falsy value names nothing
        if value is _UNKNOWN:
            return None
        found.append(value)
    return found


_UNKNOWN = object()
"""`_literal`'s answer for a part known only at run time."""


def _literal(node: ast.expr) -> Any:
    """The value of a literal part of an expression (`'large'`, `['a', 'b']`), else
    `_UNKNOWN`."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return _UNKNOWN  # a name, a call, or a list holding one


_ANY, _TRUTHY, _FALSY = 0, 1, 2
"""What a part's value must be for it to be the expression's result."""


def _results(node: ast.expr) -> Iterator[tuple[ast.expr, bool]]:
    """The parts of an expression its value is one of: the branches of `if`/`else`, the
    operands of `and`/`or`, the items of an indexed list or mapping literal, followed
    down, in document order; each with whether it can be the result only when falsy.

    An operand of `or` but the last is the result only when truthy, one of `and` only when
    falsy; a part that would have to be both, or a literal that cannot be what it must,
    is never the result and is left out (`'small'` in `x and 'small' or 'large'` is the
    result only when truthy, which it is)."""
    pending: list[tuple[ast.expr, int]] = [(node, _ANY)]  # a stack: the next part last
    while pending:
        node, must = pending.pop()
        if isinstance(node, ast.IfExp):
            parts = [(node.body, must), (node.orelse, must)]
        elif isinstance(node, ast.BoolOp):
            inner = _TRUTHY if isinstance(node.op, ast.Or) else _FALSY
            parts = [(v, inner) for v in node.values[:-1]] if must in (_ANY, inner) else []
            parts.append((node.values[-1], must))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.List | ast.Tuple):
            parts = [(item, must) for item in node.value.elts]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict):
            parts = [(item, must) for item in node.value.values]
        else:
            value = _literal(node)
            if value is _UNKNOWN or must == _ANY or bool(value) == (must == _TRUTHY):
                yield node, must == _FALSY
            continue
        pending += reversed(parts)


def field_form(info: FieldInfo) -> Any:
    """A model field's type with its constraints (`Field(ge=1)`), for a `TypeAdapter` to
    validate one value as the field would."""
    form: Any = info.annotation
    return cast(Any, Annotated)[(form, *info.metadata)] if info.metadata else form


def bool_errors(config: type[BaseModel], static: Mapping[str, Any]) -> list[Any]:
    """The `with:` values written `true`/`false` where the config takes a number (pydantic
    would read `max_tokens: true` as 1), as pydantic-shaped errors. Each field is judged
    alone, so a key left to run time (`{{ ... }}`) does not hide them."""
    found: list[Any] = []
    for key, value in static.items():
        info = config.model_fields.get(key)
        if info is None or not holds_bool(value):
            continue
        try:
            made = TypeAdapter(field_form(info)).validate_python(value)
        except ValidationError:
            continue  # its own error is reported by the config's validation
        found += [err for _, err in bools_read_as_numbers(value, made, (key,))]
    return found


def validator_raised(type_name: str, config: str, origin: str, exc: BaseException) -> str:
    """The error for a config validator (`config`, of node type `type_name` from `origin`)
    that raised what pydantic does not turn into a validation error: only a `ValueError`
    (or an assertion) says what to fix in the graph."""
    raised = exception_text(exc, with_type=True)
    return (
        f"with: the config of type {type_name!r} raised {raised} while "
        "being validated; a config validator must raise ValueError with a sentence saying "
        f"what to fix (fix the validator of {config} in {origin})"
    )
