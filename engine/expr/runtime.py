"""The run-time helpers compiled expressions call: bounded operators, safe access, functions.

Everything here is called from code objects built by `engine.expr.compile`; none of it
reads the scope. Helpers raise `Fail` with a plain message; `Expr.evaluate` turns it into
an `EvaluationError` that names the expression.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel

from engine.expr.wording import describe as _describe
from engine.expr.wording import kind, literal
from engine.frozen import FrozenDict, FrozenList

MAX_INT_BITS = 10_000
"""Widest integer (in bits) an expression may write or produce."""

MAX_ITEMS = 1_000_000
"""Largest string (chars) or container (items, counted deeply) an operator may produce."""

MAX_ROUND_DIGITS = 100
"""Largest `ndigits` (either sign) accepted by `round`."""

_SIZED = (str, list, tuple)
_CONTAINERS = (list, tuple, dict, FrozenList, FrozenDict)


class Fail(Exception):
    """A run-time failure with a user-facing message (internal; becomes EvaluationError)."""


def describe(value: Any) -> str:
    """Names a value's kind for messages: `none`, `true`, `a string ('abc')`, `a number (3)`."""
    return _describe(value)


def _fields_of(obj: Any) -> list[str] | None:
    """The readable attribute names of a namespace-like object, or None if it is not one."""
    if isinstance(obj, SimpleNamespace):
        return sorted(k for k in vars(obj) if not k.startswith("_"))
    fields = getattr(type(obj), "__moat_fields__", None)
    if fields is None:
        return None
    return sorted(str(f) for f in fields)


_MODEL_FIELDS: dict[type[BaseModel], frozenset[str]] = {}
"""Field names per model class (`model_fields` itself is slow to read)."""

FIELD_CLASSES: dict[str, set[type]] = {}
"""Per attribute name that compiled expressions read, the model classes having that field.

Compiled code reads `obj.name` directly when `type(obj)` is in `FIELD_CLASSES[name]` (and
calls `attr` otherwise): `attr` gives a field's value by `getattr` all the same, so only
the Python call is saved. The compiler creates the entry of each name it compiles; `attr`
adds a model class the first time it reads one of its fields."""

_MAX_FIELD_CLASSES = 256
"""Classes kept per name: models created at run time (`create_model`) stay on `attr`."""


def attr(obj: Any, name: str) -> Any:
    """`obj.name`: a mapping key, a pydantic field, a namespace attribute; none stays none."""
    cls = type(obj)
    if cls is dict or cls is FrozenDict:  # (a pinned policy's mappings are frozen)
        return obj.get(name)
    fields = _MODEL_FIELDS.get(cls)  # a model class seen before: no isinstance check
    if fields is not None and name in fields:
        _fast_from_now_on(cls, name)
        return getattr(obj, name)
    if obj is None:
        return None
    if isinstance(obj, BaseModel):
        if fields is None:
            fields = _MODEL_FIELDS[cls] = frozenset(cls.model_fields)
        if name in fields:
            _fast_from_now_on(cls, name)
            return getattr(obj, name)
        extra = obj.__pydantic_extra__
        if extra is not None and name in extra:
            return extra[name]
        known = ", ".join(sorted([*fields, *(extra or ())]))
        raise Fail(f"{cls.__name__} has no field '{name}'. Fields: {known or '(none)'}.")
    if isinstance(obj, Mapping):
        return obj.get(name)
    readable = _fields_of(obj)
    if readable is None:
        raise Fail(f"cannot read '.{name}' of {describe(obj)}")
    if name not in readable:
        known = ", ".join(readable)
        raise Fail(f"{describe(obj)} has no attribute '{name}'. Attributes: {known}.")
    return getattr(obj, name)


def _fast_from_now_on(cls: type, name: str) -> None:
    classes = FIELD_CLASSES.get(name)
    if classes is not None and len(classes) < _MAX_FIELD_CLASSES:
        classes.add(cls)


def item(obj: Any, key: Any) -> Any:
    """`obj[key]`: mapping get (missing -> none), sequence index, none stays none."""
    kind = type(obj)
    if kind is dict or kind is FrozenDict:
        return obj.get(key)
    if kind is list or kind is tuple or kind is str or kind is FrozenList:
        return _index(obj, key)
    if obj is None:
        return None
    if isinstance(obj, BaseModel) and isinstance(key, str):
        return attr(obj, key)
    if isinstance(obj, Mapping):
        return obj.get(key)
    if isinstance(obj, Sequence):
        return _index(obj, key)
    raise Fail(f"cannot index {describe(obj)} with [{literal(key)}]")


def _index(seq: Sequence[Any], key: Any) -> Any:
    if isinstance(key, int | slice):
        try:
            return seq[key]
        except IndexError:
            raise Fail(
                f"index {literal(key)} is out of range for a {kind(seq)} of length {len(seq)}"
            ) from None
    raise Fail(f"{kind(seq)} indices must be whole numbers, not {describe(key)}")


def deep_size(value: Any, limit: int = MAX_ITEMS) -> int:
    """Counts chars and items in `value` (containers deeply), stopping once past `limit`."""
    total = 0
    stack = [value]
    while stack:
        top = stack.pop()
        if isinstance(top, str):
            total += len(top)
        elif isinstance(top, list | tuple):
            total += 1 + len(top)
            stack.extend(top)
        elif isinstance(top, dict):
            total += 1 + 2 * len(top)
            stack.extend(top.values())
        else:
            total += 1
        if total > limit:
            return total
    return total


def _too_big(what: str) -> Fail:
    return Fail(f"{what} would exceed {MAX_ITEMS:,} items; refusing to build it")


def _too_wide(what: str) -> Fail:
    return Fail(f"{what} would produce an integer wider than {MAX_INT_BITS:,} bits")


def add(a: Any, b: Any) -> Any:
    """`a + b`, refusing strings longer than MAX_ITEMS, lists past it counted deeply and
    integers wider than MAX_INT_BITS."""
    if isinstance(a, str):
        large = isinstance(b, str) and len(a) + len(b) > MAX_ITEMS
    else:  # lists counted deeply: `x + x` holds what x holds twice
        lists = isinstance(a, list | tuple) and isinstance(b, list | tuple)
        large = lists and deep_size(a) + deep_size(b) > MAX_ITEMS
    if large:
        raise _too_big(f"'+' of a {kind(a)} and a {kind(b)}")
    result = a + b
    if type(result) is int and result.bit_length() > MAX_INT_BITS:
        raise _too_wide("'+'")
    return result


def sub(a: Any, b: Any) -> Any:
    """`a - b`, refusing integers wider than MAX_INT_BITS (repeated, a wider one could not
    even be printed)."""
    result = a - b
    if type(result) is int and result.bit_length() > MAX_INT_BITS:
        raise _too_wide("'-'")
    return result


def gathered(value: Any, dynamic: tuple[Any, ...] | None = None) -> Any:
    """A list, tuple or mapping literal as built, refused when two or more containers it
    read at run time (at the keys or indices `dynamic`, else anywhere in it) make it more
    than MAX_ITEMS counted deeply. A literal holding one node's list twice doubles it, and
    a graph repeating that would build a value no walk or JSON text of it could finish."""
    containers = 0
    if dynamic is None:
        for part in value.values() if type(value) is dict else value:
            if type(part) in _CONTAINERS:
                containers += 1
    else:
        for key in dynamic:
            if type(value[key]) in _CONTAINERS:
                containers += 1
    if containers > 1 and deep_size(value) > MAX_ITEMS:
        raise _too_big("a list or mapping of values read at run time")
    return value


def concat(parts: tuple[str, ...]) -> str:
    """A template's text and the text of its expressions, joined; refused past MAX_ITEMS
    characters (a template quoting a node's text twice doubles it)."""
    if sum(map(len, parts)) > MAX_ITEMS:
        raise _too_big("the text of a template")
    return "".join(parts)


def mul(a: Any, b: Any) -> Any:
    """`a * b`, refusing huge repetitions and integers wider than MAX_INT_BITS."""
    if isinstance(b, int) and isinstance(a, _SIZED):
        a, b = b, a
    if isinstance(a, int) and isinstance(b, _SIZED):
        if a > 0 and deep_size(b) * a > MAX_ITEMS:
            raise _too_big(f"repeating a {kind(b)} {a:,} times")
    elif type(a) is int is type(b) and a.bit_length() + b.bit_length() > MAX_INT_BITS:
        raise _too_wide("'*'")
    return a * b


def power(base: Any, exp: Any) -> Any:
    """`base ** exp`, estimating the result's size first; complex results are refused."""
    integers = isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1
    if integers and exp * math.log2(abs(base)) > MAX_INT_BITS:
        raise _too_wide("'**'")
    result = base**exp
    if isinstance(result, complex):
        raise Fail(f"{literal(base)} ** {literal(exp)} has no real value")
    return result


def mod(a: Any, b: Any) -> Any:
    """`a % b` on numbers; `%`-formatting of strings is refused (unbounded output)."""
    if isinstance(a, str | bytes):
        raise Fail("'%' formatting of strings is not supported; use a {{ }} template or join()")
    return a % b


def to_text(value: Any) -> str:
    """How a value reads inside text: none -> '', bools -> true/false, containers -> JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list | tuple | BaseModel):
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif deep_size(value) > MAX_ITEMS:
            raise _too_big("converting a container to text")
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, SimpleNamespace):
        return vars(value)
    return str(value)


def _str(value: Any = "") -> str:
    if isinstance(value, list | tuple | dict) and deep_size(value) > MAX_ITEMS:
        raise _too_big("str() of a container")
    return str(value)


def _case(convert: Callable[[str], str], name: str) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise Fail(f"{name}() needs a string, got {describe(value)}")
        return convert(value)

    apply.__name__ = name
    return apply


def _join(items: Iterable[Any], sep: Any = ", ") -> str:
    if items is None:
        return ""
    if not isinstance(sep, str):
        raise Fail(f"join() needs a string separator, got {describe(sep)}")
    parts: list[str] = []
    size = 0
    for part in items:
        text = to_text(part)
        size += len(text) + len(sep)
        if size > MAX_ITEMS:
            raise _too_big("join()")
        parts.append(text)
    return sep.join(parts)


def _int(value: Any = 0) -> int:
    result = int(value)
    if result.bit_length() > MAX_INT_BITS:  # from text of up to 4,300 digits
        raise _too_wide("int()")
    return result


def _round(value: Any, ndigits: Any = None) -> Any:
    if ndigits is None:
        return round(value)
    if isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise Fail(f"round() accepts at most {MAX_ROUND_DIGITS} digits")
    return round(value, ndigits)


def _len(value: Any) -> int:
    if value is None:
        raise Fail("len() of none (a skipped node or a missing key?)")
    return len(value)


FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "abs": (abs, 1, 1),
    "all": (all, 1, 1),
    "any": (any, 1, 1),
    "bool": (bool, 0, 1),
    "float": (float, 0, 1),
    "int": (_int, 0, 1),
    "join": (_join, 1, 2),
    "len": (_len, 1, 1),
    "lower": (_case(str.lower, "lower"), 1, 1),
    "max": (max, 1, 1_000),
    "min": (min, 1, 1_000),
    "round": (_round, 1, 2),
    "sorted": (sorted, 1, 1),
    "str": (_str, 0, 1),
    "upper": (_case(str.upper, "upper"), 1, 1),
}
"""The whitelisted functions: name -> (implementation, fewest args, most args)."""


HELPERS: dict[str, Any] = {
    "__builtins__": {},
    "_attr": attr,
    "_type": type,
    "_dict": dict,
    "_frozen_dict": FrozenDict,
    "_fields": FIELD_CLASSES,
    "_item": item,
    "_add": add,
    "_sub": sub,
    "_mul": mul,
    "_pow": power,
    "_mod": mod,
    "_slice": slice,
    "_text": to_text,
    "_concat": concat,
    "_gathered": gathered,
    **{f"_f_{name}": impl for name, (impl, _, _) in FUNCTIONS.items()},
}
"""The globals every compiled expression runs with; no builtins are reachable."""
