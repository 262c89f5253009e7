"""A store is read as the file it names, whatever characters that name holds: the
read-only commands open it through a SQLite URI, where `?`, `#` and `%` mean something."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main

GRAPH = """\
moat: 1
name: names
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes: {}
output: {p: input.prompt}
"""


@pytest.fixture
def graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def listed(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("name", ["a#b.db", "why?.db", "p%41.db", "sp ace \u00fc.db"])
def test_a_store_named_with_uri_characters_is_read_as_itself(
    graph: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    db = graph.parent / name
    code, _, err = run(capsys, "run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet")
    assert code == 0, err
    for command in (("runs",), ("stats", "--format", "json"), ("policy", "list")):
        code, out, err = run(capsys, *command, "--db", str(db))
        assert code == 0, (command, err)
        assert out
    others = {p for p in listed(graph.parent) if not p.startswith(name)}
    assert others == {"g.yaml"}  # a reader opened no other file (`a`, `why`) read-write
