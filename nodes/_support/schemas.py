"""Compiles the JSON Schemas nodes apply, refusing at run time what `moat check` refuses at load.

A literal `schema:` is checked when the graph loads; one a `{{ }}` expression makes is only
known when the node runs. `validator` gives such a schema the same checks (patterns that can
stall, a `$ref` to anything outside the schema, a schema that is not one) with the same
fixes, as a `NodeError` instead of a jsonschema traceback; `unresolved` words a `$ref` that
names nothing, found only when validation reaches it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import jsonschema
from jsonschema.protocols import Validator
from referencing.exceptions import Unresolvable

from engine import NodeError, schema_problem

__all__ = ["Unresolvable", "unresolved", "validator"]

_KEPT = 64
"""Compiled validators kept (schemas repeat across requests)."""
_validators: OrderedDict[str, Validator] = OrderedDict()
_GUIDE = "(https://json-schema.org/understanding-json-schema)"


def validator(schema: Any) -> Validator:
    """A validator of `schema` (compiled once per distinct schema).

    Raises:
        NodeError: `schema` is no JSON Schema moat can apply; the message says where and
            what would fix it.
    """
    key = json.dumps(schema, sort_keys=True, default=str)
    found = _validators.get(key)
    if found is None:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        problem = _problem(cls, schema)
        if problem is not None:
            raise NodeError(problem)
        found = _validators[key] = cls(schema)
        if len(_validators) > _KEPT:
            _validators.popitem(last=False)
    return found


def unresolved(exc: Unresolvable) -> NodeError:
    """The error for a `$ref` of `with.schema` that names nothing."""
    ref = exc.ref if exc.ref.startswith("#") else "#" + exc.ref  # a JSON pointer lost its `#`
    return NodeError(
        f"with.schema: $ref {ref!r} names nothing in `with.schema`; define it under "
        "`with.schema.$defs` and refer to it as '#/$defs/NAME'"
    )


def _problem(cls: Any, schema: Any) -> str | None:
    if not isinstance(schema, dict):
        return f"with.schema: a JSON Schema is a mapping, got {type(schema).__name__} {_GUIDE}"
    for where, ref in _refs(schema, ("with", "schema")):
        if isinstance(ref, str) and not ref.startswith("#"):
            return (
                f"{'.'.join(map(str, where))}: $ref {ref!r} points outside the schema, and moat "
                "fetches no schemas; copy the definition under `with.schema.$defs` and refer "
                "to it as '#/$defs/NAME'"
            )
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = ".".join(str(p) for p in ("with", "schema", *exc.absolute_path))
        return f"{at}: not a JSON Schema: {exc.message} {_GUIDE}"
    return schema_problem(schema, ("with", "schema"))


def _refs(value: Any, at: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every `$ref` of a JSON document, with where it stands (iteratively: schemas nest)."""
    stack = [(at, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key == "$ref":
                    yield (*where, key), child
                stack.append(((*where, key), child))
        elif isinstance(item, list):
            stack.extend(((*where, i), child) for i, child in enumerate(item))
