"""Plugin classes written carelessly are refused when loaded, with a message that names
the class and says what to write; nothing a plugin's class body or constructor does ends
moat itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Node, NodeContext
from engine.cli import main
from engine.errors import PluginError
from engine.plugin.registry import Registry


class Out(BaseModel):
    value: int = 0


def node_type(**attrs: Any) -> type[Node]:
    class Config(BaseModel):
        model: str = "small"

    async def run(self: Node, config: Any, ctx: NodeContext) -> Out:
        return Out()

    body: dict[str, Any] = {"type_name": "careless", "Config": Config, "Output": Out, "run": run}
    return type("Careless", (Node,), body | attrs)


@pytest.mark.parametrize(
    ("attrs", "said"),
    [
        ({"model_keys": "model"}, r"`model_keys` must be a tuple of `Config` field names"),
        ({"model_keys": ("modle",)}, r"names 'modle', but 'modle' is not a field .* Fields: model"),
        ({"model_keys": ("routes.*.model",)}, r"'routes' is not a field of its Config"),
        ({"event_types": ["SLEPT"]}, r"`event_types` must be a tuple"),
        ({"event_types": ("GATE_DECISION",)}, r"one of the engine's own"),
        (
            {"event_types": ("SLEPT", "A" * 65)},
            r"event name 'A{40}'\.\.\. is 65 characters long; give the event a name of at most 64",
        ),
    ],
)
def test_a_careless_node_class_is_refused_saying_what_to_write(
    attrs: dict[str, Any], said: str
) -> None:
    with pytest.raises(PluginError, match=said):
        Registry([node_type(**attrs)])


def test_model_keys_that_name_config_fields_are_taken() -> None:
    assert "careless" in Registry([node_type(model_keys=("model",))])


def test_an_event_name_of_the_longest_length_ctx_emit_takes_is_declared() -> None:
    assert "careless" in Registry([node_type(event_types=("A" * 64,))])


PLUGIN = """
from pydantic import BaseModel
from engine import Node


class Strange:
    pass


class Out(BaseModel):
    value: int = 0


class Careless(Node):
    type_name = "careless"

    class Config(BaseModel):
        thing: Strange

    Output = Out

    async def run(self, config, ctx):
        return Out()
"""
EXITS = """
from pydantic import BaseModel
from engine import Node


class Out(BaseModel):
    value: int = 0


class Careless(Node):
    type_name = "careless"

    class Config(BaseModel):
        pass

    Output = Out

    def __init__(self):
        raise SystemExit(5)

    async def run(self, config, ctx):
        return Out()
"""
GRAPH = """\
moat: 1
name: careless
plugins: [careless_nodes]
nodes:
  a: {type: careless}
output:
  v: a.value
"""


@pytest.mark.parametrize(
    ("module", "said"),
    [
        (
            PLUGIN,
            "plugin module 'careless_nodes' could not be imported (PydanticSchemaGenerationError: "
            "Unable to generate pydantic-core schema for <class",
        ),
        (EXITS, "node type 'careless' could not be created: SystemExit: 5; `Careless()` must"),
    ],
)
def test_a_plugin_whose_class_or_constructor_breaks_is_one_line_at_its_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], module: str, said: str
) -> None:
    # (a module name of its own per case: the folder package keeps what it imported)
    folder = tmp_path / ("a" if module is PLUGIN else "b")
    folder.mkdir()
    (folder / "careless_nodes.py").write_text(module)
    (folder / "g.yaml").write_text(GRAPH)
    assert main(["check", str(folder / "g.yaml")]) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert said in first, err
    assert "internal error" not in err and "errors.pydantic.dev" not in err


RAISES = """
from pydantic import BaseModel, field_validator
from engine import Node


class Out(BaseModel):
    value: int = 0


class Careless(Node):
    type_name = "careless"

    class Config(BaseModel):
        x: int = 0

        @field_validator("x")
        @classmethod
        def _checked(cls, value):
            return 1 // (value - value)

    Output = Out

    async def run(self, config, ctx):
        return Out()
"""


def test_a_config_validator_raising_no_value_error_is_a_located_error_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "raising_nodes.py").write_text(RAISES)
    graph = GRAPH.replace("careless_nodes", "raising_nodes").replace(
        "{type: careless}", "{type: careless, with: {x: 3}}"
    )
    (tmp_path / "g.yaml").write_text(graph)
    assert main(["check", str(tmp_path / "g.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"error: {tmp_path / 'g.yaml'}:5:29: node 'a': with: the config of type 'careless' "
        "raised ZeroDivisionError: integer division or modulo by zero while being validated; "
        "a config validator must raise ValueError with a sentence saying what to fix (fix the "
        f"validator of Careless.Config in raising_nodes ({tmp_path / 'raising_nodes.py'}))"
    ), err
    assert "internal error" not in err


def test_a_broken_installed_node_type_costs_only_the_graphs_that_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed package whose `moat.nodes` entry point no longer imports: every other
    graph still checks and runs; a graph that uses its type, `moat nodes` and
    `moat nodes TYPE` say which package is broken and what to do."""
    from engine.plugin import registry as registry_module

    dist = tmp_path / "brokenpkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[moat.nodes]\nbroken = brokenpkg.nodes:Gone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_DEFAULT", None)  # read the entry points afresh
    said = (
        "the installed node type 'broken' (brokenpkg.nodes:Gone, of package 'brokenpkg') "
        "could not be loaded: ModuleNotFoundError: No module named 'brokenpkg'; reinstall "
        "or fix package 'brokenpkg'"
    )
    assert Registry.default().problem("broken") == said
    fine = tmp_path / "fine.yaml"
    fine.write_text(
        "moat: 1\nname: fine\nnodes:\n  r: {type: redact, with: {text: hi}}\noutput:\n  t: r.text\n"
    )
    uses = tmp_path / "uses.yaml"
    uses.write_text("moat: 1\nname: uses\nnodes:\n  b: {type: broken}\noutput:\n  v: b.value\n")
    assert main(["check", str(fine)]) == 0
    assert main(["check", str(uses)]) == 2
    assert f"uses.yaml:4:13: node 'b': {said}" in capsys.readouterr().err
    assert main(["nodes"]) == 0
    listed = capsys.readouterr()
    assert "redact" in listed.out and f"moat: warning: {said}" in listed.err
    assert main(["nodes", "broken"]) == 2
    assert f"moat: {said}" in capsys.readouterr().err


def test_a_plugin_module_that_defines_no_node_type_is_a_warning_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a name that is some other importable module (a typo, a package instead of its
    # module) imports fine and registers nothing: the check says so
    (tmp_path / "helpers.py").write_text("def shout(text):\n    return text.upper()\n")
    (tmp_path / "g.yaml").write_text(
        "moat: 1\nname: g\nplugins: [helpers]\nnodes:\n"
        '  r: {type: redact, with: {text: "{{ input.q }}"}}\noutput: {t: r.text}\n'
    )
    assert main(["check", str(tmp_path / "g.yaml")]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: {tmp_path / 'g.yaml'}:3:11: plugin module 'helpers' defines no node type "
        "(no `Node` subclass with a `type_name`), so it adds nothing; check the module's "
        "name, or remove it from `plugins:`"
    ) in err
