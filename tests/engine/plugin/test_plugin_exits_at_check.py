"""A plugin's code that calls `exit()` while moat checks or describes its node type (a
config validator, a model's JSON Schema hook) is a located error or a warning naming the
type, never the end of `moat check`, `moat nodes` or `moat schema` with the plugin's exit
code and no word."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Node, NodeContext
from engine.cli import main
from engine.plugin import registry as registry_module
from engine.plugin.registry import Registry

EXITS_IN_VALIDATOR = """
import sys
from pydantic import BaseModel, field_validator
from engine import Node


class Out(BaseModel):
    value: int = 0


class Exits(Node):
    type_name = "exits"

    class Config(BaseModel):
        x: int = 0

        @field_validator("x")
        @classmethod
        def _checked(cls, value):
            sys.exit(3)

    Output = Out

    async def run(self, config, ctx):
        return Out()
"""


def test_a_config_validator_that_exits_is_a_located_error_of_moat_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "exits_nodes.py").write_text(EXITS_IN_VALIDATOR)
    graph = tmp_path / "g.yaml"
    graph.write_text(
        "moat: 1\nname: g\nplugins: [exits_nodes]\nnodes:\n  a: {type: exits, with: {x: 1}}\n"
        "output:\n  v: a.value\n"
    )
    assert main(["check", str(graph)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {graph}:5:26: node 'a': with: the config of type 'exits' raised SystemExit: 3 "
        "while being validated; a config validator must raise ValueError with a sentence "
        "saying what to fix (fix the validator of Exits.Config in exits_nodes "
        f"({tmp_path / 'exits_nodes.py'}))"
    ]


class ExitingConfig(BaseModel):
    x: int = 0

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        sys.exit(4)


class ExitsWhenDrawn(Node):
    """Its config's schema hook exits."""

    type_name = "exits_drawn"
    Config = ExitingConfig

    class Output(BaseModel):
        value: int = 0

    async def run(self, config: Any, ctx: NodeContext) -> Any:
        return self.Output()


def test_a_schema_hook_that_exits_is_a_warning_of_moat_schema_and_moat_nodes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry([ExitsWhenDrawn]))
    said = (
        f"moat: warning: node type 'exits_drawn' (from {__name__}): its models have no JSON "
        "Schema (4)"
    )
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["$defs"]["Node_exits_drawn"]["properties"]["with"]["type"] == "object"
    assert said in err
    assert main(["nodes", "exits_drawn", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["config"] == {"type": "object"} and said in err
