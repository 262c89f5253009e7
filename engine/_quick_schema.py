"""A plain-Python check of the input schemas requests usually have (`surely_valid`).

jsonschema descends a schema through several calls per keyword, which costs more than
moat's own work on a small request; `InputValidator` (`engine.requests`) asks this check
first and jsonschema only when it cannot say yes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["surely_valid"]

_Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset({"default", "description", "title", "examples", "$comment", "$schema"})
_KEYWORDS = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "enum",
}
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),  # 1.0 is an integer too: jsonschema decides those
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}
"""The Python types (exactly: `type(v) in ...`, so True is no integer) of each JSON type."""


def surely_valid(schema: Any) -> _Check | None:
    """A plain-Python check of the schemas requests usually have, or None for others.

    jsonschema descends a schema through several calls per keyword, which costs more than
    moat's own work on a small request. For a schema made only of `type`, `properties`,
    `required`, `additionalProperties: false`, `items`, string lengths, number bounds and
    `enum` (annotations aside), the check returned says True only when jsonschema would
    accept the value too; False means "ask jsonschema" (which words the error), never that
    the value is invalid.
    """
    if schema is True or schema == {}:
        return lambda value: True
    if not isinstance(schema, dict) or not set(schema) <= _KEYWORDS:
        return None
    if schema.get("type") == "object" and "items" not in schema and _value_checks(schema) == []:
        return _object_check(schema)
    checks: list[_Check] = []
    kinds = schema.get("type")
    if kinds is not None:
        types = _types_of(kinds)
        if types is None:
            return None
        checks.append(lambda v: type(v) in types)
    for built in (_object_checks(schema), _value_checks(schema)):
        if built is None:
            return None
        checks.extend(built)
    if len(checks) == 1:
        return checks[0]
    return _all_of(checks)


def _all_of(checks: list[_Check]) -> _Check:
    # loops rather than `all()` over a generator: these run for every request
    def check_all(value: Any) -> bool:
        for check in checks:  # noqa: SIM110 - all() over a generator costs more
            if not check(value):
                return False
        return True

    return check_all


def _object_check(schema: dict[str, Any]) -> _Check | None:
    """The check of the usual input schema, an object with `properties`, `required` and
    perhaps `additionalProperties: false`, in one call: a request's input is checked once
    per request, and a call per keyword and per property cost more than the checks."""
    props = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list):
        return None
    if extra is not True and extra is not False:
        return None
    typed: list[tuple[str, tuple[type, ...]]] = []
    other: list[tuple[str, _Check]] = []
    for key, sub in props.items():
        types = _plain_types(sub)
        if types is not None:
            typed.append((key, types))
            continue
        check = surely_valid(sub)
        if check is None:
            return None
        other.append((key, check))
    closed = None if extra else frozenset(props)
    return _object_checker(tuple(required), tuple(typed), tuple(other), closed)


def _object_checker(
    needed: tuple[Any, ...],
    simple: tuple[tuple[str, tuple[type, ...]], ...],
    rest: tuple[tuple[str, _Check], ...],
    closed: frozenset[str] | None,
) -> _Check:
    def check_object(v: Any) -> bool:
        if type(v) is not dict:
            return False
        for key in needed:
            if key not in v:
                return False
        for key, types in simple:
            if key in v and type(v[key]) not in types:
                return False
        for key, check in rest:
            if key in v and not check(v[key]):
                return False
        return closed is None or all(k in closed for k in v)

    return check_object


def _plain_types(schema: Any) -> tuple[type, ...] | None:
    """The Python types a schema of a `type` alone (annotations aside) accepts, or None."""
    if not isinstance(schema, dict) or "type" not in schema:
        return None
    if not set(schema) <= _ANNOTATIONS | {"type"}:
        return None
    return _types_of(schema["type"])


def _types_of(kinds: Any) -> tuple[type, ...] | None:
    """The Python types of a `type` keyword (a name or a list of names), or None."""
    names = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(names, list) or not names:
        return None
    if not all(isinstance(n, str) and n in _PY_TYPES for n in names):
        return None
    return tuple(t for n in names for t in _PY_TYPES[n])


def _object_checks(schema: dict[str, Any]) -> list[_Check] | None:
    checks: list[_Check] = []
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        return None
    subs: dict[str, _Check] = {}
    for key, sub in props.items():
        check = surely_valid(sub)
        if check is None:
            return None
        subs[key] = check
    if subs:
        checks.append(_properties_check(tuple(subs.items())))
    required = schema.get("required", [])
    if not isinstance(required, list):
        return None
    if required:
        checks.append(_required_check(tuple(required)))
    extra = schema.get("additionalProperties", True)
    if extra is False:
        checks.append(lambda v: type(v) is not dict or all(k in subs for k in v))
    elif extra is not True:
        return None
    items = schema.get("items")
    if items is not None:
        each = surely_valid(items)
        if each is None:
            return None
        checks.append(lambda v: type(v) is not list or all(each(x) for x in v))
    return checks


def _properties_check(subs: tuple[tuple[str, _Check], ...]) -> _Check:
    def check_properties(v: Any) -> bool:
        if type(v) is not dict:
            return True
        for key, check in subs:  # noqa: SIM110 - all() over a generator costs more
            if key in v and not check(v[key]):
                return False
        return True

    return check_properties


def _required_check(required: tuple[Any, ...]) -> _Check:
    def check_required(v: Any) -> bool:
        if type(v) is not dict:
            return True
        for key in required:  # noqa: SIM110 - all() over a generator costs more
            if key not in v:
                return False
        return True

    return check_required


def _value_checks(schema: dict[str, Any]) -> list[_Check] | None:
    checks: list[_Check] = []
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None or high is not None:
        lo = low if type(low) is int else 0
        hi = high if type(high) is int else None
        if (low is not None and lo is not low) or (high is not None and hi is not high):
            return None
        checks.append(
            lambda v: type(v) is not str or (len(v) >= lo and (hi is None or len(v) <= hi))
        )
    for key, ok in (("minimum", lambda x, b: x >= b), ("maximum", lambda x, b: x <= b)):
        bound = schema.get(key)
        if bound is None:
            continue
        if type(bound) not in (int, float):
            return None
        checks.append(
            lambda v, b=bound, ok=ok: type(v) not in (int, float) or ok(v, b)  # type: ignore[misc]
        )
    if "enum" in schema:
        choices = schema["enum"]
        if not isinstance(choices, list):
            return None
        scalars = [c for c in choices if c is None or type(c) in (str, int, float, bool)]
        checks.append(lambda v: any(type(c) is type(v) and c == v for c in scalars))
    return checks
