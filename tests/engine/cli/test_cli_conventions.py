"""The conventions of a command line, for every command: `-` is standard input or output
and never a file called `-`, `~` is the home folder even after `--db=`, an unknown flag
shows its command's usage, text that the output's encoding cannot write is escaped, and
the terminal UI is drawn only on a terminal."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine.cli import main

GRAPH = """\
moat: 1
name: f\u00e4st
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes: {}
output: {p: input.prompt}
"""
TOTAL = 4


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture
def graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A graph with a non-ASCII name, in a working directory of its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOAT_DB", raising=False)
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse refuses an argument
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def listed(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_db_dash_is_refused_and_no_store_is_made_in_a_file_called_dash(
    graph: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = graph.parent / "p.yaml"
    policy.write_text("name: p\nthreshold: 1\n")
    commands = [
        ("run", str(graph), "--prompt", "hi", "--db", "-"),
        ("policy", "apply", str(policy), "--db", "-"),
        ("runs", "--db", "-"),
        ("prune", "--keep-runs", "1", "--db", "-"),
    ]
    for command in commands:
        code, out, err = run(capsys, *command)
        assert code == 2, (command, err)
        assert "--db -: a store is a SQLite file that moat opens by name" in err, command
        assert out == ""
    monkeypatch.setenv("MOAT_DB", "-")
    code, _, err = run(capsys, "run", str(graph), "--prompt", "hi")
    assert code == 2 and "$MOAT_DB -: a store is a SQLite file" in err
    assert listed(graph.parent) == {"g.yaml", "p.yaml"}  # no `-`, no `--writer`


def test_an_empty_db_is_refused_rather_than_the_working_directory_s_store(
    graph: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "run", str(graph), "--prompt", "hi", "--db", "")
    assert code == 2
    assert "--db '': an empty path (a shell variable that is not set?)" in err
    assert not (graph.parent / "moat.db").exists()


def test_a_tilde_in_db_is_the_home_folder_as_the_shell_would_have_it(
    graph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    code, _, err = run(capsys, "run", str(graph), "--prompt", "hi", "--db=~/s.db", "--quiet")
    assert code == 0, err
    assert (home / "s.db").is_file()
    code, out, err = run(capsys, "runs", "--db=~/s.db")
    assert code == 0 and "f\u00e4st" in out, err
    monkeypatch.setenv("MOAT_DB", "~/s.db")
    code, out, err = run(capsys, "stats", "--format", "json")
    assert code == 0 and json.loads(out)["requests_total"] == 1, err
    assert not (graph.parent / "~").exists()


@pytest.mark.parametrize(
    "command",
    [
        ("check", "g.yaml", "-"),
        ("show", "-"),
        ("nodes", "--graph", "-"),
        ("run", "-", "--prompt", "hi"),
        ("serve", "-"),
        ("serve", "g.yaml", "--keys", "-"),
        ("policy", "apply", "-"),
        ("policy", "apply", "p.yaml", "--graph", "-"),
        ("policy", "diff", "-", "p.yaml"),
    ],
)
def test_dash_where_a_file_is_read_is_refused_with_the_command_s_usage(
    graph: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    (graph.parent / "-").write_text("moat: 1\n")  # a file called `-` is not read either
    code, out, err = run(capsys, *command)
    assert code == 2, err
    assert err.startswith(f"usage: moat {command[0]}"), err
    assert "moat does not read standard input" in err and "save the" in err, err
    assert out == ""


def test_run_policy_dash_says_what_to_do_with_a_policy(
    graph: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "run", str(graph), "--prompt", "hi", "--policy", "-")
    assert code == 2
    assert "--policy -: moat does not read standard input; save the policy to a file" in err
    assert "count its requests" not in err  # (that is why --input is not read from stdin)
    assert not (graph.parent / "moat.db").exists()


def test_a_resume_with_out_dash_writes_its_answers_to_standard_output(
    graph: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = graph.parent / "in.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(TOTAL)))
    out_file, db = graph.parent / "out.jsonl", graph.parent / "t.db"
    args = ["run", str(graph), "--input", str(requests), "--out", str(out_file)]
    assert run(capsys, *args, "--db", str(db), "--quiet")[0] == 0
    with sqlite3.connect(db) as conn:  # the process died after two requests
        (run_id,) = conn.execute("SELECT id FROM runs").fetchone()
        conn.execute("DELETE FROM requests WHERE seq >= 2")
        conn.execute(
            "UPDATE runs SET status = 'running', finished_at = NULL, config_json = "
            'json_set(config_json, \'$.owner\', json(\'{"pid": 1, "host": "gone"}\'), '
            "'$.heartbeat_at', 0)"
        )
    before = out_file.read_text()
    code, out, err = run(
        capsys, "run", "--resume", run_id, "--db", str(db), "--out", "-", "--quiet"
    )
    assert code == 0, err
    answered = sorted(json.loads(line)["request_id"] for line in out.splitlines())
    assert answered == [f"{run_id}-{seq:06d}" for seq in (2, 3)]
    assert out_file.read_text() == before  # the run's own --out is left as it was


@pytest.mark.parametrize(
    "command",
    [("run", "g.yaml", "--prompt", "hi"), ("runs",), ("schema",), ("policy", "list")],
)
def test_an_unknown_flag_shows_the_usage_of_its_command(
    graph: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    code, _, err = run(capsys, *command, "--bogus")
    assert code == 2
    assert err.startswith(f"usage: moat {' '.join(command[: 2 if command[0] == 'policy' else 1])}")
    assert "error: unrecognized arguments: --bogus" in err
    assert not (graph.parent / "moat.db").exists()


def test_text_the_output_cannot_encode_is_escaped_not_an_internal_error(
    graph: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LC_ALL=C` without UTF-8 mode: standard output is ASCII."""
    db = graph.parent / "t.db"
    assert run(capsys, "run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet")[0] == 0
    for command in (("check", str(graph)), ("show", str(graph)), ("runs", "--db", str(db))):
        ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
        monkeypatch.setattr(sys, "stdout", ascii_out)
        code = main(list(command))
        assert code == 0, (command, capsys.readouterr().err)
        ascii_out.flush()
        assert "f\\xe4st" in ascii_out.buffer.getvalue().decode("ascii"), command  # type: ignore[attr-defined]
        assert "internal error" not in capsys.readouterr().err


def test_moat_tui_off_a_terminal_is_refused_rather_than_drawn(
    graph: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tui.app

    drawn: list[str] = []
    monkeypatch.setattr(tui.app, "run_tui", lambda path, run_id=None: drawn.append(path))
    db = graph.parent / "t.db"
    assert run(capsys, "run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet")[0] == 0
    code, _, err = run(capsys, "tui", "--db", str(db))  # (pytest's stdin is no terminal)
    assert code == 2
    assert "moat tui: the terminal UI needs a terminal" in err
    assert drawn == []


def test_moat_run_without_a_graph_says_what_to_give_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "run")
    assert code == 2
    assert err.strip() == "moat: give a GRAPH file to run (or --resume RUN_ID to finish a run)"


def test_moat_tui_refuses_an_empty_db_as_the_other_commands_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "tui", "--db", "")
    assert code == 2
    assert "--db '': an empty path" in err


def test_a_store_named_by_moat_db_is_called_that_in_moat_run_s_error(
    graph: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = graph.parent / "stores"
    folder.mkdir()
    monkeypatch.setenv("MOAT_DB", str(folder))
    code, _, err = run(capsys, "run", str(graph), "--prompt", "hi")
    assert code == 2
    assert f"$MOAT_DB {folder}: is a folder" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_terminal_ui_is_refused_when_only_its_error_output_is_redirected(
    graph: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Textual draws on standard error: with `2>file` and a terminal for the rest, the UI
    was drawn into the file and the command waited for keys on a blank screen."""
    import tui.app

    drawn: list[str] = []
    monkeypatch.setattr(tui.app, "run_tui", lambda path, run_id=None: drawn.append(path))
    db = graph.parent / "t.db"
    assert run(capsys, "run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet")[0] == 0
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(sys, "__stderr__", io.StringIO())  # (`2>err.txt`)
    for command in (["tui", "--db", str(db)], ["run", str(graph), "--prompt", "a", "--tui"]):
        monkeypatch.setattr(sys, "stdout", _Terminal())
        code = main(command)
        assert code == 2, command
        assert "error output is not one" in capsys.readouterr().err
    assert drawn == []
