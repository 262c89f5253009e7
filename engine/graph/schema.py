"""The JSON Schema of the graph format, with each registered node type's config.

Editors using yaml-language-server autocomplete and flag mistakes with it when a graph
starts with `# yaml-language-server: $schema=moat.schema.json` (from `moat schema`).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from engine.graph.spec import GraphSpec, LoopSpec, NodeSpec
from engine.plugin.registry import Registry

__all__ = ["TEMPLATE_PATTERN", "graph_json_schema"]

TEMPLATE_PATTERN = r"\{\{.*\}\}"
"""A `with:` string holding `{{ EXPR }}`, accepted wherever a config value is."""


def graph_json_schema(registry: Registry) -> dict[str, Any]:
    """A draft 2020-12 JSON Schema of a whole graph file, node types included."""
    schema = GraphSpec.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    variants: list[dict[str, Any]] = []
    for name in registry.names():
        cls = registry.get(name)
        assert cls is not None
        variants.append({"$ref": f"#/$defs/{_def_name(name)}"})
        defs[_def_name(name)] = _typed_node(name, cls.Config, cls.describe(), defs)
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


def _def_name(type_name: str) -> str:
    return f"Node_{type_name}"


def _typed_node(
    type_name: str, config: type[BaseModel], doc: str, defs: dict[str, Any]
) -> dict[str, Any]:
    base = NodeSpec.model_json_schema(by_alias=True)
    base.pop("$defs", None)
    node = copy.deepcopy(base)
    node["title"] = f"{type_name} node"
    node["description"] = doc
    node["properties"]["type"] = {"const": type_name}
    node["properties"]["with"] = _config_schema(config, defs)
    return node


def _config_schema(config: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    raw = config.model_json_schema(by_alias=True)
    for key, value in raw.pop("$defs", {}).items():
        defs.setdefault(key, value)
    props = raw.get("properties", {})
    for name, prop in list(props.items()):
        template = {"type": "string", "pattern": TEMPLATE_PATTERN}
        described = {k: prop[k] for k in ("description", "title", "default") if k in prop}
        props[name] = {**described, "anyOf": [_strip(prop), template]}
    raw["description"] = raw.get("description") or f"Config of `{config.__qualname__}`."
    return raw


def _strip(prop: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
