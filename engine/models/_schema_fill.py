"""Builds a value that conforms to a JSON Schema, preferring hinted values where they fit.

The `sim` provider uses it to answer any schema it is asked for: a node's output schema,
a user's extraction schema, a pydantic `model_json_schema()` with `$defs` and `anyOf`.
Hints are the values the simulated model "means" (a risk score, an extracted field); they
are used where the schema allows them and replaced by generated values where it does not.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable, Mapping
from re import _parser  # type: ignore[attr-defined]
from typing import Any

__all__ = ["fill_schema", "fits_schema"]

_MAX_DEPTH = 8
_MAX_VALUES = 2000
"""Values one fill builds at most: a schema whose every property refers back to itself
would otherwise ask for its width to the power of `_MAX_DEPTH`. Past it, objects keep only
their required properties and arrays their fewest items."""
_MAX_ITEMS = 64
"""Most items an array is given, whatever its `minItems` asks (a huge one is refused by a
real model too); `_MAX_LENGTH` is the same for a string's `minLength`."""
_MAX_LENGTH = 4096
_MAX_PATTERN = 512
"""A longer `pattern` is not followed (a generated string is used instead)."""
_NUMBER = (int, float)
_SCALAR = (str, int, float)
_NEVER_MAPPING = (str, int, float, list)
"""Hint types that are never a mapping of property hints: told apart without the slower
`isinstance(hint, Mapping)` check of an abstract class."""
_WORDS = (
    "alpha", "beta", "delta", "sample", "value", "item", "north", "river",
    "green", "summary", "result", "record", "orange", "signal", "harbor", "nova",
)  # fmt: skip


def fill_schema(schema: Mapping[str, Any], rng: random.Random, hints: Any = None) -> Any:
    """A value conforming to `schema`.

    Never raises and stays small, whatever the schema: a keyword of the wrong type (an
    `enum` that is no list, bounds that are no numbers) is ignored, an unsatisfiable one
    (an empty `enum` or `anyOf`) gives a value that does not conform, as a model's would.

    Args:
        schema: a JSON Schema (objects, arrays, scalars, enums, `$ref` into `$defs`,
            `anyOf`/`oneOf`/`allOf`, string formats and simple patterns, numeric bounds
            and `multipleOf`).
        rng: the call's random generator (the only source of randomness).
        hints: a value to use where it fits; for objects a mapping of property hints.
    """
    return _Filler(schema, rng).value(schema, hints, 0)


def fits_schema(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None
) -> bool:
    """Whether `value` fits `schema` as far as this module understands schemas."""
    return _fits(value, schema, root if root is not None else schema, 0)


def _sub(schema: Any) -> Mapping[str, Any]:
    """`schema` as a mapping: `true` and anything that is no schema allow anything (`{}`),
    `false` allows nothing (a `not` of everything, which nothing fits)."""
    if isinstance(schema, Mapping):
        return schema
    return _NOTHING if schema is False else _ANYTHING


_ANYTHING: Mapping[str, Any] = {}
_NOTHING: Mapping[str, Any] = {"not": {}}


def _size(schema: Mapping[str, Any], key: str, default: int) -> int:
    """A count keyword (`minItems`, `maxLength`, ...) as an int; `default` when it is none."""
    value = schema.get(key, default)
    if type(value) is int:
        return value
    x = _finite(value)
    return int(x) if x is not None else default


def _options(schema: Mapping[str, Any], key: str) -> list[Mapping[str, Any]] | None:
    """The subschemas of `anyOf`/`oneOf`/`allOf`; None when the keyword is absent or no
    list of schemas (ignored, as its absence)."""
    found = schema.get(key)
    if not isinstance(found, list) or not found:
        return None
    return [_sub(o) for o in found]


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    if "$ref" not in schema and "allOf" not in schema:
        return schema
    seen = 0
    while "$ref" in schema and seen < _MAX_DEPTH:
        ref = str(schema["$ref"])
        node: Any = root
        if ref.startswith("#"):
            for part in ref.lstrip("#").strip("/").split("/"):
                if part:
                    node = node.get(part, {}) if isinstance(node, Mapping) else {}
        else:
            node = {}
        schema = {**_sub(node), **{k: v for k, v in schema.items() if k != "$ref"}}
        seen += 1
    if "allOf" in schema:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for piece in _options(schema, "allOf") or []:
            sub = _resolve(piece, root)
            props = {**_properties(merged), **_properties(sub)}
            req = [*_required(merged), *_required(sub)]
            merged = {**sub, **merged, "properties": props, "required": req}
        schema = merged
    return schema


def _properties(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    found = schema.get("properties", _ANYTHING)
    return found if isinstance(found, Mapping) else _ANYTHING


def _required(schema: Mapping[str, Any]) -> list[Any]:
    found = schema.get("required", ())
    return list(found) if isinstance(found, list) else []


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [str(k) for k in kind]
    if "properties" in schema:
        return ["object"]
    if "items" in schema:
        return ["array"]
    return []


def _fits(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> bool:
    if depth > _MAX_DEPTH:
        return True
    schema = _sub(schema)
    if "$ref" in schema or "allOf" in schema:  # (`_resolve` returns any other schema as is)
        schema = _resolve(schema, root)
    return _fits_resolved(value, schema, root, depth)


def _fits_resolved(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], depth: int
) -> bool:
    """`_fits` of a schema `_resolve` has already resolved."""
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema and isinstance(schema["enum"], list):
        return value in schema["enum"]
    if "not" in schema and schema["not"] == {}:  # `false`: nothing fits
        return False
    for key in ("anyOf", "oneOf"):
        if key in schema and (options := _options(schema, key)) is not None:
            return any(_fits(value, s, root, depth + 1) for s in options)
    kind = schema.get("type")
    if isinstance(kind, str):  # the usual case: one type, named (what `_types` returns)
        return _fits_type(value, kind, schema, root, depth)
    kinds = _types(schema)
    if len(kinds) == 1:  # no generator to set up
        return _fits_type(value, kinds[0], schema, root, depth)
    return not kinds or any(_fits_type(value, k, schema, root, depth) for k in kinds)


def _fits_type(
    value: Any, kind: str, schema: Mapping[str, Any], root: Mapping[str, Any], depth: int
) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("integer", "number"):
        x = None if isinstance(value, bool) else _finite(value)
        if x is None or (kind == "integer" and not x.is_integer()):
            return False
        return _in_bounds(x, schema)
    if kind == "string":
        # a string is never matched against a `pattern` (a hostile one could backtrack for
        # ever): none counts as fitting one, and a string under a pattern is built from it
        return (
            isinstance(value, str)
            and _sized(len(value), schema, "minLength", "maxLength")
            and "pattern" not in schema
        )
    if kind == "array":
        return _fits_array(value, schema, root, depth)
    if kind == "object":
        return _fits_object(value, schema, root, depth)
    return True


def _sized(n: int, schema: Mapping[str, Any], least: str, most: str) -> bool:
    return _size(schema, least, 0) <= n <= _size(schema, most, 1 << 30)


def _fits_array(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> bool:
    if not isinstance(value, list) or not _sized(len(value), schema, "minItems", "maxItems"):
        return False
    items = schema.get("items")
    return not isinstance(items, Mapping) or all(_fits(v, items, root, depth + 1) for v in value)


def _fits_object(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], depth: int
) -> bool:
    if not isinstance(value, Mapping):
        return False
    props = _properties(schema)
    if any(name not in value for name in _required(schema)):
        return False
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            if not _fits(item, props[key], root, depth + 1):
                return False
        elif extra is False or (
            isinstance(extra, Mapping) and not _fits(item, extra, root, depth + 1)
        ):
            return False
    return True


def _finite(value: Any) -> float | None:
    """`value` as a finite float; None for anything else (NaN, an infinity, an int too
    large for a float, a bool, text)."""
    if not isinstance(value, _NUMBER) or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _in_bounds(x: float, schema: Mapping[str, Any]) -> bool:
    """Whether `x` is within the numeric bounds of `schema` (a bound that is no finite
    number is ignored), and a multiple of its `multipleOf`."""
    if "minimum" in schema:
        bound = _finite(schema["minimum"])
        if bound is not None and x < bound:
            return False
    if "maximum" in schema:
        bound = _finite(schema["maximum"])
        if bound is not None and x > bound:
            return False
    if "exclusiveMinimum" in schema:
        bound = _finite(schema["exclusiveMinimum"])
        if bound is not None and x <= bound:
            return False
    if "exclusiveMaximum" in schema:
        bound = _finite(schema["exclusiveMaximum"])
        if bound is not None and x >= bound:
            return False
    if "multipleOf" in schema:
        step = _finite(schema["multipleOf"])
        if step is not None and step > 0:
            ratio = x / step
            return abs(ratio - round(ratio)) <= 1e-9 * max(1.0, abs(ratio))
    return True


class _Filler:
    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self.root = _sub(root)
        self.rng = rng
        self.left = _MAX_VALUES

    def value(self, schema: Mapping[str, Any], hint: Any, depth: int) -> Any:
        if type(schema) is not dict:
            schema = _sub(schema)
        self.left -= 1
        if "$ref" in schema or "allOf" in schema:  # (`_resolve` returns any other as is)
            schema = _resolve(schema, self.root)
        plain = isinstance(hint, _NEVER_MAPPING) or (
            hint is not None and not isinstance(hint, Mapping)
        )
        if plain and self._fits(hint, schema, depth):
            return hint
        if "const" in schema:
            return schema["const"]
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema and (options := _options(schema, key)) is not None:
                return self._alternative(options, hint, depth)
        kinds = _types(schema)
        kind = next((k for k in kinds if k != "null"), kinds[0] if kinds else "string")
        if (depth >= _MAX_DEPTH or self.left <= 0) and kind in ("object", "array"):
            return {} if kind == "object" else []
        return self._typed(kind, schema, hint, depth)

    def _fits(self, hint: Any, schema: Mapping[str, Any], depth: int) -> bool:
        """`_fits(hint, schema)` of a resolved schema, resolved again only where a chain of
        references longer than `_MAX_DEPTH` left one to follow."""
        if depth > _MAX_DEPTH or "$ref" in schema:
            return _fits(hint, schema, self.root, depth)
        return _fits_resolved(hint, schema, self.root, depth)

    def _alternative(self, options: list[Mapping[str, Any]], hint: Any, depth: int) -> Any:
        resolved = [_resolve(o, self.root) for o in options]
        for option in resolved:
            if hint is not None and _fits(hint, option, self.root, depth):
                return hint
        non_null = [o for o in resolved if _types(o) != ["null"]] or resolved
        return self.value(non_null[0], hint, depth + 1)

    def _typed(self, kind: str, schema: Mapping[str, Any], hint: Any, depth: int) -> Any:
        if kind == "object":
            return self._object(schema, hint if isinstance(hint, Mapping) else {}, depth)
        if kind == "array":
            return self._array(schema, hint, depth)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind in ("integer", "number"):
            return self._number(kind, schema, hint)
        if kind == "null":
            return None
        return self._string(schema, hint)

    def _object(self, schema: Mapping[str, Any], hints: Mapping[str, Any], depth: int) -> Any:
        props = _properties(schema)
        out: dict[str, Any] = {}
        if self.left <= 0:  # out of values: what the schema requires, and no more
            required = set(_required(schema))
            props = {k: v for k, v in props.items() if k in required}
        for name, sub in props.items():
            out[name] = self.value(sub, hints.get(name), depth + 1)
        if not props and schema.get("additionalProperties", True) is not False:
            out.update({k: v for k, v in hints.items() if isinstance(k, str)})
        return out

    def _array(self, schema: Mapping[str, Any], hint: Any, depth: int) -> list[Any]:
        items: Mapping[str, Any] = (
            schema.get("items", {}) if isinstance(schema.get("items"), Mapping) else {}
        )
        lo = min(max(0, _size(schema, "minItems", 0)), _MAX_ITEMS)
        hi = max(lo, min(_size(schema, "maxItems", max(lo, 3)), _MAX_ITEMS))
        if isinstance(hint, list):
            kept = [v for v in hint if _fits(v, items, self.root, depth + 1)][:hi]
            while len(kept) < lo:
                kept.append(self.value(items, None, depth + 1))
            return kept
        most = lo if self.left <= 0 else max(lo, min(hi, lo + 2))
        count = self.rng.randint(lo, most)
        return [self.value(items, None, depth + 1) for _ in range(count)]

    def _number(self, kind: str, schema: Mapping[str, Any], hint: Any) -> float | int:
        lo = _finite(schema.get("minimum", schema.get("exclusiveMinimum"))) or 0.0
        hi = _finite(schema.get("maximum", schema.get("exclusiveMaximum")))
        hi = lo + 100 if hi is None else hi
        given = _finite(hint) if not isinstance(hint, bool) else None
        # (NaN, an infinity or an int too large for a float is no hint: from a model's
        # text as much as a valid one)
        x = min(max(given, lo), hi) if given is not None else self.rng.uniform(lo, hi)
        step = _finite(schema.get("multipleOf"))
        if step is not None and step > 0:
            x = self._multiple(x, step, lo, hi, schema)
        if kind == "integer":
            n = round(x)
            for candidate in (n, n + 1, n - 1, int(lo) + 1, int(hi) - 1):
                if _in_bounds(candidate, schema):
                    return candidate
            return n
        x = round(x, 3) if step is None else x
        if not _in_bounds(x, schema):
            x = lo / 2 + hi / 2  # (halved first: `lo + hi` overflows near the float limit)
        return x

    @staticmethod
    def _multiple(x: float, step: float, lo: float, hi: float, schema: Mapping[str, Any]) -> float:
        """The multiple of `step` nearest `x` that is within the bounds, else nearest `x`."""
        k = round(x / step)
        for candidate in (k, k + 1, k - 1, math.ceil(lo / step), math.floor(hi / step)):
            value = candidate * step
            if _in_bounds(value, schema):
                return int(value) if float(value).is_integer() else value
        return k * step

    def _string(self, schema: Mapping[str, Any], hint: Any) -> str:
        fmt = schema.get("format")
        rng = self.rng
        pattern = schema.get("pattern")
        patterned = _from_pattern(pattern, rng) if isinstance(pattern, str) else None
        if patterned is not None:
            text = patterned
        elif fmt == "date-time":
            text = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
        elif fmt == "date":
            text = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "email":
            text = f"{rng.choice(_WORDS)}@example.com"
        elif fmt in ("uri", "url"):
            text = f"https://example.com/{rng.choice(_WORDS)}"
        elif fmt == "uuid":
            text = "-".join(
                "".join(rng.choice("0123456789abcdef") for _ in range(n)) for n in (8, 4, 4, 4, 12)
            )
        elif isinstance(hint, _SCALAR) and not isinstance(hint, bool):
            text = str(hint)
        else:
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        lo = min(max(0, _size(schema, "minLength", 0)), _MAX_LENGTH)
        hi = max(0, _size(schema, "maxLength", max(lo, len(text))))
        text = text[:hi]
        if len(text) < lo:
            text += "".join(rng.choice(string.ascii_lowercase) for _ in range(lo - len(text)))
        return text


_CATEGORIES: Mapping[Any, str] = {
    _parser.CATEGORY_DIGIT: "0123456789",
    _parser.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    _parser.CATEGORY_SPACE: " ",
    _parser.CATEGORY_NOT_DIGIT: string.ascii_letters,
    _parser.CATEGORY_NOT_WORD: " -.",
    _parser.CATEGORY_NOT_SPACE: string.ascii_letters + string.digits,
}
_PRINTABLE = string.ascii_letters + string.digits + " -_.@"


def _from_pattern(pattern: str, rng: random.Random) -> str | None:
    """A string that `pattern` (a JSON Schema regular expression) matches, built from the
    pattern's structure (never by matching, which a hostile pattern could make endless);
    None for a pattern too long, invalid or using what is not followed (back-references,
    lookarounds)."""
    if len(pattern) > _MAX_PATTERN:
        return None
    try:
        parsed = _parser.parse(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None
    out: list[str] = []
    try:
        _emit(list(parsed), rng, out, 0)
    except _Unfollowed:
        return None
    text = "".join(out)
    return text if len(text) <= _MAX_LENGTH else None


class _Unfollowed(Exception):
    """A part of a pattern `_from_pattern` does not follow."""


def _emit(items: list[tuple[Any, Any]], rng: random.Random, out: list[str], depth: int) -> None:
    if depth > 40 or len(out) > _MAX_LENGTH:
        raise _Unfollowed
    for op, arg in items:
        if op is _parser.LITERAL:
            out.append(chr(arg))
        elif op is _parser.NOT_LITERAL:
            out.append(next(c for c in "ax" if ord(c) != arg))
        elif op is _parser.ANY:
            out.append("x")
        elif op is _parser.IN:
            out.append(_one_of(arg, rng))
        elif op is _parser.BRANCH:
            _emit(list(rng.choice(arg[1])), rng, out, depth + 1)
        elif op is _parser.SUBPATTERN:
            _emit(list(arg[-1]), rng, out, depth + 1)
        elif op in (_parser.MAX_REPEAT, _parser.MIN_REPEAT, _parser.POSSESSIVE_REPEAT):
            _repeat(arg, rng, out, depth)
        elif op is _parser.AT:
            continue  # anchors: the string is built whole
        else:  # back-references, lookarounds, conditionals
            raise _Unfollowed


def _repeat(arg: tuple[int, Any, Any], rng: random.Random, out: list[str], depth: int) -> None:
    """`{least,most}` of a part: its least count and up to two more."""
    least, most, body = arg
    most = least + 2 if most is _parser.MAXREPEAT else most
    if least > _MAX_LENGTH:
        raise _Unfollowed
    for _ in range(rng.randint(least, max(least, min(most, least + 2)))):
        _emit(list(body), rng, out, depth + 1)


def _one_of(items: list[tuple[Any, Any]], rng: random.Random) -> str:
    """One character of a class `[...]`: one of its members, or, negated, a printable
    character none of its members is."""
    negate = bool(items) and items[0][0] is _parser.NEGATE
    members = items[1:] if negate else items
    if negate:
        allowed = [c for c in _PRINTABLE if not any(_member(c, op, a) for op, a in members)]
        if not allowed:
            raise _Unfollowed
        return rng.choice(allowed)
    if not members:
        raise _Unfollowed
    op, arg = rng.choice(members)
    if op is _parser.LITERAL:
        return chr(arg)
    if op is _parser.RANGE:
        lo, hi = arg
        return chr(rng.randint(lo, min(hi, lo + 25)))
    if op is _parser.CATEGORY and arg in _CATEGORIES:
        return rng.choice(_CATEGORIES[arg])
    raise _Unfollowed


_IN_CATEGORY: Mapping[Any, Callable[[str], bool]] = {
    _parser.CATEGORY_DIGIT: str.isdigit,
    _parser.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    _parser.CATEGORY_SPACE: str.isspace,
    _parser.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
    _parser.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
    _parser.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
}


def _member(char: str, op: Any, arg: Any) -> bool:
    """Whether `char` is in one member of a class (an unknown member: taken as in it)."""
    if op is _parser.LITERAL:
        return bool(ord(char) == arg)
    if op is _parser.RANGE:
        return bool(arg[0] <= ord(char) <= arg[1])
    if op is _parser.CATEGORY and arg in _IN_CATEGORY:
        return _IN_CATEGORY[arg](char)
    return True
