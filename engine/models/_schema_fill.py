"""Builds a value that conforms to a JSON Schema, preferring hinted values where they fit.

The `sim` provider uses it to answer any schema it is asked for: a node's output schema,
a user's extraction schema, a pydantic `model_json_schema()` with `$defs` and `anyOf`.
Hints are the values the simulated model "means" (a risk score, an extracted field); they
are used where the schema allows them and replaced by generated values where it does not.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Mapping
from typing import Any

__all__ = ["fill_schema", "fits_schema"]

_MAX_DEPTH = 8
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

    Args:
        schema: a JSON Schema (objects, arrays, scalars, enums, `$ref` into `$defs`,
            `anyOf`/`oneOf`/`allOf`, string formats, numeric bounds).
        rng: the call's random generator (the only source of randomness).
        hints: a value to use where it fits; for objects a mapping of property hints.
    """
    return _Filler(schema, rng).value(schema, hints, 0)


def fits_schema(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None
) -> bool:
    """Whether `value` fits `schema` as far as this module understands schemas."""
    return _fits(value, schema, root if root is not None else schema, 0)


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
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
        seen += 1
    if "allOf" in schema:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            sub = _resolve(part, root)
            props = {**merged.get("properties", {}), **sub.get("properties", {})}
            req = [*merged.get("required", []), *sub.get("required", [])]
            merged = {**sub, **merged, "properties": props, "required": req}
        schema = merged
    return schema


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
    if "$ref" in schema or "allOf" in schema:  # (`_resolve` returns any other schema as is)
        schema = _resolve(schema, root)
    return _fits_resolved(value, schema, root, depth)


def _fits_resolved(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], depth: int
) -> bool:
    """`_fits` of a schema `_resolve` has already resolved."""
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return any(_fits(value, s, root, depth + 1) for s in schema[key])
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
        return isinstance(value, str) and _sized(len(value), schema, "minLength", "maxLength")
    if kind == "array":
        return _fits_array(value, schema, root, depth)
    if kind == "object":
        return _fits_object(value, schema, root, depth)
    return True


def _sized(n: int, schema: Mapping[str, Any], least: str, most: str) -> bool:
    return int(schema.get(least, 0)) <= n <= int(schema.get(most, 1 << 30))


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
    props: Mapping[str, Any] = schema.get("properties", {})
    if any(name not in value for name in schema.get("required", [])):
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
    """`value` as a finite float; None for anything else (NaN, an infinity, text)."""
    if not isinstance(value, _NUMBER):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _in_bounds(x: float, schema: Mapping[str, Any]) -> bool:
    if "minimum" in schema and x < float(schema["minimum"]):
        return False
    if "maximum" in schema and x > float(schema["maximum"]):
        return False
    if "exclusiveMinimum" in schema and x <= float(schema["exclusiveMinimum"]):
        return False
    return not ("exclusiveMaximum" in schema and x >= float(schema["exclusiveMaximum"]))


class _Filler:
    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def value(self, schema: Mapping[str, Any], hint: Any, depth: int) -> Any:
        if "$ref" in schema or "allOf" in schema:  # (`_resolve` returns any other as is)
            schema = _resolve(schema, self.root)
        plain = isinstance(hint, _NEVER_MAPPING) or (
            hint is not None and not isinstance(hint, Mapping)
        )
        if plain and self._fits(hint, schema, depth):
            return hint
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(list(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._alternative(schema[key], hint, depth)
        kinds = _types(schema)
        kind = next((k for k in kinds if k != "null"), kinds[0] if kinds else "string")
        if depth >= _MAX_DEPTH and kind in ("object", "array"):
            return {} if kind == "object" else []
        return self._typed(kind, schema, hint, depth)

    def _fits(self, hint: Any, schema: Mapping[str, Any], depth: int) -> bool:
        """`_fits(hint, schema)` of a resolved schema, resolved again only where a chain of
        references longer than `_MAX_DEPTH` left one to follow."""
        if depth > _MAX_DEPTH or "$ref" in schema:
            return _fits(hint, schema, self.root, depth)
        return _fits_resolved(hint, schema, self.root, depth)

    def _alternative(self, options: list[Any], hint: Any, depth: int) -> Any:
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
        props: Mapping[str, Any] = schema.get("properties", {})
        out: dict[str, Any] = {}
        for name, sub in props.items():
            out[name] = self.value(sub, hints.get(name), depth + 1)
        if not props and schema.get("additionalProperties", True) is not False:
            out.update({k: v for k, v in hints.items() if isinstance(k, str)})
        return out

    def _array(self, schema: Mapping[str, Any], hint: Any, depth: int) -> list[Any]:
        items: Mapping[str, Any] = (
            schema.get("items", {}) if isinstance(schema.get("items"), Mapping) else {}
        )
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 3)))
        if isinstance(hint, list):
            kept = [v for v in hint if _fits(v, items, self.root, depth + 1)][:hi]
            while len(kept) < lo:
                kept.append(self.value(items, None, depth + 1))
            return kept
        count = self.rng.randint(lo, max(lo, min(hi, lo + 2)))
        return [self.value(items, None, depth + 1) for _ in range(count)]

    def _number(self, kind: str, schema: Mapping[str, Any], hint: Any) -> float | int:
        lo = _finite(schema.get("minimum", schema.get("exclusiveMinimum"))) or 0.0
        hi = _finite(schema.get("maximum", schema.get("exclusiveMaximum")))
        hi = lo + 100 if hi is None else hi
        given = _finite(hint) if not isinstance(hint, bool) else None
        # (NaN, an infinity or an int too large for a float is no hint: from a model's
        # text as much as a valid one)
        x = min(max(given, lo), hi) if given is not None else self.rng.uniform(lo, hi)
        if kind == "integer":
            n = round(x)
            for candidate in (n, n + 1, n - 1, int(lo) + 1, int(hi) - 1):
                if _in_bounds(candidate, schema):
                    return candidate
            return n
        x = round(x, 3)
        if not _in_bounds(x, schema):
            x = lo / 2 + hi / 2  # (halved first: `lo + hi` overflows near the float limit)
        return x

    def _string(self, schema: Mapping[str, Any], hint: Any) -> str:
        fmt = schema.get("format")
        rng = self.rng
        if fmt == "date-time":
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
        lo = int(schema.get("minLength", 0))
        hi = int(schema.get("maxLength", max(lo, len(text))))
        text = text[:hi]
        while len(text) < lo:
            text += rng.choice(string.ascii_lowercase)
        return text
