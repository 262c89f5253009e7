"""A graph's folder is its home: plugin modules and relative `with:` paths resolve from it,
whatever the working directory; `moat nodes` knows `loop` and a graph's plugin types."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog

from engine import Pipeline, load_graph
from engine.cli import main

PLUGIN = '''
from pydantic import BaseModel
from engine import Node, NodeContext


class Stamp(Node):
    """Returns a fixed mark: {mark!r}."""

    type_name = "stamp"

    class Config(BaseModel):
        suffix: str = ""

    class Output(BaseModel):
        text: str

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        return self.Output(text={mark!r} + config.suffix)
'''

GRAPH = """\
moat: 1
name: {name}
plugins: [localnodes]
nodes:
  s: {{type: stamp, with: {{suffix: "!"}}}}
output:
  text: s.text
"""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def folder(root: Path, name: str, mark: str) -> Path:
    """A folder holding a graph and, next to it, the plugin module it lists."""
    home = root / name
    home.mkdir()
    (home / "localnodes.py").write_text(PLUGIN.format(mark=mark))
    (home / "graph.yaml").write_text(GRAPH.format(name=name))
    return home / "graph.yaml"


def answer(path: Path) -> object:
    async def go() -> object:
        async with Pipeline(path) as pipe:
            return (await pipe.run({})).output

    return anyio.run(go)


def test_a_plugin_next_to_the_graph_loads_without_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = folder(tmp_path, "one", "A")
    b = folder(tmp_path, "two", "B")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path_before = list(sys.path)
    assert main(["check", str(a), str(b)]) == 0, capsys.readouterr().err
    # Two graphs with same-named plugin modules each get their own.
    assert answer(a) == {"text": "A!"}
    assert answer(b) == {"text": "B!"}
    assert sys.path == path_before
    assert "localnodes" not in sys.modules


def test_moat_nodes_lists_a_graphs_plugin_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = folder(tmp_path, "one", "A")
    assert main(["nodes", "stamp", "--graph", str(graph)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stamp: Returns a fixed mark: 'A'.")
    assert "suffix: string = ''" in out
    assert main(["nodes", "--graph", str(graph)]) == 0
    assert any(line.startswith("stamp ") for line in capsys.readouterr().out.splitlines())
    assert main(["nodes", "stamp"]) == 2
    assert "unknown node type 'stamp'" in capsys.readouterr().err


def test_moat_nodes_describes_the_built_in_loop(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nodes", "loop"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("loop: A bounded loop")
    for key in ("max_cycles", "until", "nodes", "output"):
        assert f"\n  {key}: " in out
    assert "max_cycles: whole number (required)" in out
    assert "until: string | true/false | none = none" in out
    assert main(["nodes", "loop", "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "max_cycles" in schema["config"]["properties"]


CORPUS_GRAPH = """\
moat: 1
name: paths
models:
  small: {provider: sim, profile: small}
nodes:
  docs:
    type: retrieve
    with: {corpus: data/corpus.txt, query: "{{ input.prompt }}", k: 1}
  review:
    type: critic
    with: {model: small, mode: request, request: "{{ input.prompt }}",
           principles: data/principles.yaml}
  cached:
    type: cache
    with: {text: "{{ input.prompt }}", warm_file: data/warm.yaml}
output:
  passage: docs.passages[0].text
  action: review.action
  principles: review.principles
  hit: cached.hit
  value: cached.value
"""


def test_relative_paths_in_with_resolve_from_the_graph_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "project"
    (home / "data").mkdir(parents=True)
    (home / "data" / "corpus.txt").write_text("Roth IRAs grow tax free.\n\nCats purr.\n")
    (home / "data" / "principles.yaml").write_text(
        "- {id: from-the-project-dir, text: Be honest about uncertainty., core: true}\n"
    )
    (home / "data" / "warm.yaml").write_text(
        textwrap.dedent(
            """\
            - {prompt: "What is a Roth IRA?", value: "A retirement account."}
            """
        )
    )
    (home / "graph.yaml").write_text(CORPUS_GRAPH)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    graph = load_graph(Path("..") / "project" / "graph.yaml")

    async def go() -> object:
        async with Pipeline(graph) as pipe:
            result = await pipe.run({"prompt": "What is a Roth IRA?"})
            assert result.error is None, result.error
            return result.output

    output = anyio.run(go)
    assert isinstance(output, dict)
    # The simulated critic's verdict is a draw; which principles it read is not.
    assert output.pop("action") in {"proceed", "revise", "refuse"}
    assert output == {
        "passage": "Roth IRAs grow tax free.",
        "principles": ["from-the-project-dir"],
        "hit": True,
        "value": "A retirement account.",
    }


def test_a_plugin_that_cannot_be_created_is_a_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = folder(tmp_path, "one", "A")
    plugin = graph.parent / "localnodes.py"
    plugin.write_text(
        plugin.read_text()
        + "\n    def __init__(self) -> None:\n        raise RuntimeError('no licence key')\n"
    )
    assert main(["check", str(graph)]) == 2
    err = capsys.readouterr().err
    assert f"{graph}:5:" in err and "node type 'stamp' could not be created: no licence key" in err
    assert "internal error" not in err


def test_a_plugin_next_to_the_graph_that_is_also_importable_is_one_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = folder(tmp_path, "installed", "I")
    monkeypatch.syspath_prepend(str(graph.parent))  # as an installed or editable package
    monkeypatch.delitem(sys.modules, "localnodes", raising=False)
    try:
        assert main(["check", str(graph)]) == 0, capsys.readouterr().err
        assert answer(graph) == {"text": "I!"}
        assert "localnodes" in sys.modules  # imported plainly, not as a private copy
    finally:
        sys.modules.pop("localnodes", None)
