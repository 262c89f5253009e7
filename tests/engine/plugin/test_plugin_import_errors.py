"""A `plugins:` module that cannot be imported is one error at its line of the graph
that says what was raised, where in the plugin's own files, and the fix that fits: a
misspelt name, a `.py` written after it, a neighbour imported absolutely, a package
that is not installed, a module that raises or exits while imported. The node types it
would have defined are said to be missing because of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main

GRAPH = """\
moat: 1
name: g
plugins: [{module}]
nodes:
  a: {{type: mine}}
output:
  v: a.value
"""
NODE = """
from pydantic import BaseModel
from engine import Node


class Out(BaseModel):
    value: int = 0


class Mine(Node):
    type_name = "mine"

    class Config(BaseModel):
        pass

    Output = Out

    async def run(self, config, ctx):
        return Out()
"""


CASES = [
    (
        "syntax_nodes",
        "x = 1\ndef f(:\n    pass\n",
        "syntax_nodes",
        "(SyntaxError: invalid syntax (syntax_nodes.py, line 2)) at {folder}/syntax_nodes.py"
        ":2:7; fix the module there (it must import without error)",
    ),
    (
        "raising_nodes",
        "import os\n\nraise RuntimeError('no config file')\n",
        "raising_nodes",
        "(RuntimeError: no config file) at {folder}/raising_nodes.py:3; fix the module "
        "there (it must import without error)",
    ),
    (
        "exiting_nodes",
        "import sys\nsys.exit(4)\n",
        "exiting_nodes",
        "(SystemExit: 4) at {folder}/exiting_nodes.py:2; fix the module there",
    ),
    (
        "sibling_nodes",
        "import sibling_helpers\n" + NODE,
        "sibling_nodes",
        "(ModuleNotFoundError: No module named 'sibling_helpers') at "
        "{folder}/sibling_nodes.py:1; 'sibling_helpers' is next to the graph, and a "
        "plugin module there imports its neighbours relatively: write "
        "`from . import sibling_helpers`",
    ),
    (
        "needs_nodes",
        "import not_installed_pkg_xyz.sub\n" + NODE,
        "needs_nodes",
        "(ModuleNotFoundError: No module named 'not_installed_pkg_xyz') at "
        "{folder}/needs_nodes.py:1; install the package that provides "
        "'not_installed_pkg_xyz', or fix the import",
    ),
    (
        "suffix_nodes",
        NODE,
        "suffix_nodes.py",
        "(ModuleNotFoundError: No module named 'suffix_nodes.py'; 'suffix_nodes' is not a "
        "package); write the module's name without `.py`: 'suffix_nodes'",
    ),
    (
        "present_nodes",
        NODE,
        "absent_nodes_xyz",
        "(ModuleNotFoundError: No module named 'absent_nodes_xyz'): no file or package of "
        "that name next to the graph ({folder}) and no installed module; check the name, "
        "or install the package that provides it",
    ),
]


@pytest.mark.parametrize(("name", "module", "plugin", "said"), CASES, ids=[c[0] for c in CASES])
def test_a_plugin_module_that_cannot_be_imported_says_where_and_what_to_fix(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    module: str,
    plugin: str,
    said: str,
) -> None:
    folder = tmp_path / name  # (a folder per case: its package keeps what it imported)
    folder.mkdir()
    (folder / f"{name}.py").write_text(module)
    (folder / "sibling_helpers.py").write_text("X = 1\n")
    graph = folder / "g.yaml"
    graph.write_text(GRAPH.format(module=plugin))
    assert main(["check", str(graph)]) == 2
    err = capsys.readouterr().err.splitlines()
    real = folder.resolve()
    assert err[0].startswith(
        f"error: {graph}:3:11: plugin module {plugin!r} could not be imported "
        + said.format(folder=real)
    ), err[0]
    assert "_moat_graph_" not in "\n".join(err)
    assert err[1] == (
        f"error: {graph}:5:13: node 'a': unknown node type 'mine' (plugin module "
        f"{plugin!r} could not be imported; fix it first). Registered types: "
        + err[1].partition("Registered types: ")[2]
    )
