"""`moat nodes TYPE` and `moat schema` describe any node type a plugin can register: a
default its factory cannot make, a model pydantic cannot draw as JSON Schema, models of
the same name in two types, a model that refers to itself. Nothing a plugin's class holds
makes them fail or print what it should not."""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, Field

from engine import Node, NodeContext
from engine.cli import main
from engine.graph.schema import graph_json_schema
from engine.plugin import registry as registry_module
from engine.plugin.registry import Registry

PLUGIN = '''
import enum
from typing import Any, Callable
from pydantic import BaseModel, Field
from engine import Node


def fails():
    raise RuntimeError("no default today")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Config(BaseModel):
    size: int = 1
    sizes: list[int] = Field(default_factory=fails)
    twice: int = Field(default_factory=lambda data: data["size"] * 2)
    color: Color = Color.RED
    note: str = Field("z", description="first line\\n    second line\\x1b[2J")


class Out(BaseModel):
    value: Any = None


class Careless(Node):
    """Says hello\\x1b]0;pwned\\x07 to everyone.

    Then more.
    """

    type_name = "careless"
    Config = Config
    Output = Out

    async def run(self, config, ctx):
        return Out()
'''


def test_a_node_type_with_careless_defaults_and_text_is_described_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "careless_docs.py").write_text(PLUGIN)
    graph = tmp_path / "g.yaml"
    graph.write_text(
        "moat: 1\nname: g\nplugins: [careless_docs]\nnodes:\n  a: {type: careless}\n"
        "output: {v: a.value}\n"
    )
    assert main(["nodes", "--graph", str(graph), "careless"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.splitlines()[:3] == [
        r"careless: Says hello\x1b]0;pwned\x07 to everyone.",
        "",
        "Then more.",
    ]
    assert (
        "  sizes: list of whole number = (its default_factory raised RuntimeError: "
        "no default today)"
    ) in out
    assert "  twice: whole number = (made from the other fields by its default_factory)" in out
    assert "  color: 'red' | 'blue' = 'red'" in out
    assert "      first line\n      second line\\x1b[2J\n" in out
    assert main(["nodes", "--graph", str(graph)]) == 0
    listed = capsys.readouterr().out
    assert r"  Says hello\x1b]0;pwned\x07 to everyone.  [careless_docs (" in listed
    assert "\x1b" not in listed


class Undrawable(Node):
    """Takes a callable."""

    type_name = "undrawable"

    class Config(BaseModel):
        fn: Callable[[int], int] | None = None

    class Output(BaseModel):
        value: Any = None

    async def run(self, config: Any, ctx: NodeContext) -> Any:
        return self.Output()


def test_a_node_type_without_a_json_schema_is_warned_about_not_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry([Undrawable]))
    said = (
        "moat: warning: node type 'undrawable' (from "
        f"{__name__}): its models have no JSON Schema (Cannot generate a JsonSchema for "
        "core_schema.CallableSchema); graphs may still use it, but editors cannot check its "
        "`with:`. Its author can give such a field a JSON type, or a schema with pydantic's "
        "`WithJsonSchema`"
    )
    assert main(["nodes", "undrawable", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["config"] == {"type": "object"}
    assert said in err and "internal error" not in err
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    schema = json.loads(out)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    graph = {"moat": 1, "name": "x", "nodes": {"a": {"type": "undrawable"}}, "output": {}}
    jsonschema.validate(graph, schema)
    assert said in err


def node_type(type_name: str, config: type[BaseModel]) -> type[Node]:
    class Out(BaseModel):
        value: int = 0

    async def run(self: Node, config: Any, ctx: NodeContext) -> Out:
        return Out()

    return type("T", (Node,), {"type_name": type_name, "Config": config, "Output": Out, "run": run})


class Item(BaseModel):
    x: int


class ItemOfB(BaseModel):
    y: str


ItemOfB.__name__ = ItemOfB.__qualname__ = "Item"  # as another package may name its own


class ModelSpec(BaseModel):  # the name of a model of the graph format itself
    flavour: str


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


class ConfigA(BaseModel):
    items: list[Item] = []


class ConfigB(BaseModel):
    items: list[ItemOfB] = []
    spec: ModelSpec | None = None


class Color(enum.Enum):
    RED = "red"


class ConfigC(BaseModel):
    tree: Tree | None = None
    color: Color = Color.RED
    n: int = Field(0, ge=0)


@functools.cache
def three_types_schema() -> jsonschema.Draft202012Validator:
    registry = Registry([node_type("ta", ConfigA), node_type("tb", ConfigB)])
    registry.add(node_type("tc", ConfigC))
    schema = graph_json_schema(registry)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("type_name", "config", "ok", "bad"),
    [
        ("ta", ConfigA, {"items": [{"x": 1}]}, {"items": [{"y": "s"}]}),
        ("tb", ConfigB, {"items": [{"y": "s"}], "spec": {"flavour": "f"}}, {"items": [{"x": 1}]}),
        ("tb", ConfigB, {"spec": {"flavour": "f"}}, {"spec": {"provider": "sim"}}),
        ("tc", ConfigC, {"tree": {"label": "a", "children": [{"label": "b"}]}}, {"n": -1}),
    ],
)
def test_each_node_type_keeps_its_own_models_in_the_graph_schema(
    type_name: str, config: type[BaseModel], ok: dict[str, Any], bad: dict[str, Any]
) -> None:
    validator = three_types_schema()

    def graph(with_: dict[str, Any]) -> dict[str, Any]:
        return {
            "moat": 1,
            "name": "x",
            "nodes": {"a": {"type": type_name, "with": with_}},
            "output": {},
        }

    config.model_validate(ok)  # (what the node type itself takes)
    validator.validate(graph(ok))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(graph(bad))
    models = {"m": {"provider": "sim"}}
    validator.validate({**graph(ok), "models": models})  # moat's own ModelSpec
