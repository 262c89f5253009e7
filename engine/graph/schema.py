"""The JSON Schema of the graph format, with each registered node type's config.

Editors using yaml-language-server autocomplete and flag mistakes with it when a graph
starts with `# yaml-language-server: $schema=moat.schema.json` (from `moat schema`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from engine.errors import exception_text
from engine.graph.spec import GraphSpec, LoopSpec, NodeSpec
from engine.plugin.registry import Registry

__all__ = ["TEMPLATE_PATTERN", "config_json_schema", "graph_json_schema", "no_json_schema"]

TEMPLATE_PATTERN = r"\{\{.*\}\}"
"""A `with:` string holding `{{ EXPR }}`, accepted wherever a config value is."""


def graph_json_schema(
    registry: Registry, warn: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """A draft 2020-12 JSON Schema of a whole graph file, node types included.

    Each node type's models are kept under names of their own (`Node_TYPE.NAME`), so two
    types with a model of the same name, or a model named like one of the graph format's,
    each keep theirs. A node type whose `Config` has no JSON Schema (a field of a type
    JSON cannot hold) takes any `with:` mapping, and `warn` is told why.
    """
    schema = GraphSpec.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    variants: list[dict[str, Any]] = []
    for name in registry.names():
        cls = registry.get(name)
        assert cls is not None
        variants.append({"$ref": f"#/$defs/{_def_name(name)}"})
        try:
            config = config_json_schema(cls.Config, _def_name(name))
        except (Exception, SystemExit) as exc:  # (a plugin's model: its code, or a type
            # pydantic cannot draw)
            config = {"type": "object"}
            if warn is not None:
                warn(no_json_schema(name, registry.origin(name), exc))
        config["description"] = config.get("description") or (
            f"Config of `{cls.Config.__qualname__}`."
        )
        defs[_def_name(name)] = _typed_node(name, config, cls.describe(), defs)
    loop = copy.deepcopy(defs.get("LoopSpec") or LoopSpec.model_json_schema(by_alias=True))
    loop.pop("$defs", None)
    defs["LoopSpec"] = loop
    variants.append({"$ref": "#/$defs/LoopSpec"})
    defs["MoatNode"] = {"anyOf": variants, "description": "A node of a registered type, or a loop."}
    node_map = {
        "type": "object",
        "additionalProperties": {"$ref": "#/$defs/MoatNode"},
        "propertyNames": {"pattern": "^[a-z][a-z0-9_]*$"},
    }
    schema["properties"]["nodes"] = {**node_map, "description": "The graph's nodes by id."}
    loop["properties"]["nodes"] = {**node_map, "description": "The loop body's nodes by id."}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "moat graph"
    return schema


def config_json_schema(model: type[BaseModel], prefix: str | None = None) -> dict[str, Any]:
    """`model`'s JSON Schema (a node type's `Config` or `Output`) with the model itself at
    the top (not behind a `$ref`, as pydantic draws a model that refers to itself) and,
    with `prefix`, its `$defs` named `PREFIX.NAME`.

    Raises:
        Exception: pydantic cannot draw one of its fields' types (see `no_json_schema`).
    """
    raw = model.model_json_schema(by_alias=True)
    if prefix is not None:
        names = {name: f"{prefix}.{name}" for name in raw.get("$defs", {})}
        raw = _renamed(raw, names)
        if "$defs" in raw:
            raw["$defs"] = {names[k]: v for k, v in raw["$defs"].items()}
    top = raw.get("$ref")
    if isinstance(top, str) and top.startswith("#/$defs/") and len(raw) <= 2:
        raw = {**raw["$defs"][top.removeprefix("#/$defs/")], "$defs": raw["$defs"]}
    return raw


def no_json_schema(type_name: str, origin: str, exc: BaseException) -> str:
    """Why node type `type_name` has no JSON Schema, and what its author can do."""
    reason = exception_text(exc).partition("\\n")[0]
    return (
        f"node type {type_name!r} (from {origin}): its models have no JSON Schema ({reason}); "
        "graphs may still use it, but editors cannot check its `with:`. Its author can give "
        "such a field a JSON type, or a schema with pydantic's `WithJsonSchema`"
    )


def _renamed(value: Any, names: dict[str, str]) -> Any:
    """`value` with each `$ref` to `#/$defs/OLD` pointing at `#/$defs/NEW` instead."""
    if isinstance(value, dict):
        out = {k: _renamed(v, names) for k, v in value.items()}
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            old = ref.removeprefix("#/$defs/")
            out["$ref"] = f"#/$defs/{names.get(old, old)}"
        return out
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    return value


def _def_name(type_name: str) -> str:
    return f"Node_{type_name}"


def _typed_node(
    type_name: str, config: dict[str, Any], doc: str, defs: dict[str, Any]
) -> dict[str, Any]:
    base = NodeSpec.model_json_schema(by_alias=True)
    base.pop("$defs", None)
    node = copy.deepcopy(base)
    node["title"] = f"{type_name} node"
    node["description"] = doc
    node["properties"]["type"] = {"const": type_name}
    node["properties"]["with"] = _with_schema(config, defs)
    return node


def _with_schema(raw: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    defs.update(raw.pop("$defs", {}))
    props = raw.get("properties", {})
    for name, prop in list(props.items()):
        template = {"type": "string", "pattern": TEMPLATE_PATTERN}
        described = {k: prop[k] for k in ("description", "title", "default") if k in prop}
        props[name] = {**described, "anyOf": [_strip(prop), template]}
    return raw


def _strip(prop: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
