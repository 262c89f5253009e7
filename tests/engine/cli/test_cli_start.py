"""A command's start imports only what it needs: the parser is built from the one module
that defines the command, and `engine`'s public names load on first use."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import engine
from engine import cli


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def test_every_command_of_the_full_parser_is_mapped_to_its_module() -> None:
    full = _commands(cli.build_parser()) - {"tui"}  # the TUI comes through an entry point
    assert full == set(cli._COMMANDS)
    for command, module in cli._COMMANDS.items():
        assert command in _commands(cli.build_parser(command)), (command, module)


def test_an_entry_point_command_builds_without_the_engine_s_modules() -> None:
    assert _commands(cli.build_parser("tui")) == {"tui"}


def test_reading_commands_do_not_import_the_request_path(tmp_path: Path) -> None:
    probe = (
        "import sys; from engine.cli import main; "
        f"code = main(['runs', '--db', {str(tmp_path / 'none.db')!r}]); "
        "print(sorted(m for m in ('engine.api', 'engine.scheduler.runner', 'pydantic', "
        "'structlog') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_public_names_load_on_first_use() -> None:
    assert set(engine.__all__) <= set(dir(engine))
    assert engine.Pipeline.__name__ == "Pipeline"


def test_python_m_engine_in_a_folder_with_its_own_nodes_module_loads_moat_s_nodes(
    tmp_path: Path,
) -> None:
    # a graph's folder may hold its plugins as `nodes.py`; `python -m` puts the working
    # directory first on sys.path, where it would stand in for moat's `nodes` package
    (tmp_path / "nodes.py").write_text(
        "from pydantic import BaseModel\n"
        "from engine import Node, NodeContext\n\n\n"
        "class EchoConfig(BaseModel):\n    value: object = None\n\n\n"
        "class Echo(Node[EchoConfig, EchoConfig]):\n"
        "    type_name = 'echo'\n\n"
        "    async def run(self, config: EchoConfig, ctx: NodeContext) -> EchoConfig:\n"
        "        return config\n"
    )
    (tmp_path / "g.yaml").write_text(
        "moat: 1\nname: local\nplugins: [nodes]\n"
        "input: {type: object, properties: {prompt: {type: string}}}\n"
        "models:\n  small: {provider: sim, profile: small, time_scale: 0}\n"
        "nodes:\n"
        "  echo: {type: echo, with: {value: '{{ input.prompt }}'}}\n"
        "  answer: {type: model, with: {model: small, prompt: '{{ echo.value }}'}}\n"
        "output:\n  answer: answer.text\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "engine", "check", "g.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "ok (local: 2 nodes" in done.stdout
