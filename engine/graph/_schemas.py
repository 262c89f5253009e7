"""The JSON-Schema helpers of checks 13 and 17: the `$ref`s of a schema that resolve to
nothing, and the keywords by which a schema admits properties it does not list.

A graph's `input:` and a node's `with.schema` are applied by moat itself, which fetches no
schema from elsewhere: a reference must name something inside the same schema.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

__all__ = ["MORE_PROPERTIES", "ref_problems"]

MORE_PROPERTIES = (
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


def ref_problems(
    schema: Mapping[str, Any], shown: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every `$ref` of `schema` that names nothing in it: where it stands (from `shown`, how
    messages name the schema: `input`, `with.schema`) and the message saying why."""
    for path, ref in _keyed(schema, "$ref", shown):
        name = ".".join(map(str, shown))
        problem = _unresolved(schema, ref, name) if isinstance(ref, str) else None
        if problem is not None:
            where = ".".join(str(p) for p in path)
            yield path, f"{where}: $ref {ref!r} {problem}"


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
