"""`moat run` and `moat serve` refuse, before a run exists, a graph whose `openai` model has
no API key or an endpoint that is no URL: exit 2, one message, nothing in the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

GRAPH = """\
moat: 1
name: k
models:
  big: {provider: openai, model: gpt-4o}
nodes:
  answer:
    type: model
    with: {model: big, prompt: "{{ input.q }}"}
output: {text: answer.text}
"""


def _files(tmp_path: Path) -> tuple[Path, Path]:
    graph = tmp_path / "g.yaml"
    graph.write_text(GRAPH)
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"q": "a"}\n{"q": "b"}\n')
    return graph, requests


def _moat(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MOAT_"))}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


def test_a_run_without_the_api_key_is_refused_before_it_exists(tmp_path: Path) -> None:
    _, requests = _files(tmp_path)
    proc = _moat(tmp_path, "run", "g.yaml", "--input", str(requests))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "moat: g.yaml: model 'big' (openai:gpt-4o) needs an API key, and the environment "
        "variable OPENAI_API_KEY is not set; set it (export OPENAI_API_KEY=...), name the "
        "variable that holds the key with `api_key_env:` under `models.big`, give the model a "
        "`base_url:` (a self-hosted endpoint needs no key), or run it on the simulator "
        "(--model big=sim:large)\n"
    )
    assert not (tmp_path / "moat.db").exists()  # no store, so no run in it


def test_a_run_whose_endpoint_is_no_url_is_refused_naming_the_variable(tmp_path: Path) -> None:
    _, requests = _files(tmp_path)
    proc = _moat(
        tmp_path,
        "run",
        "g.yaml",
        "--input",
        str(requests),
        OPENAI_API_KEY="x",
        OPENAI_BASE_URL="notaurl",
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(
        "moat: g.yaml: model 'big' (openai:gpt-4o): its endpoint 'notaurl' (from the "
        "environment variable OPENAI_BASE_URL) is not an absolute http:// or https:// URL"
    )
    assert "set OPENAI_BASE_URL to the endpoint's full URL" in proc.stderr
    assert not (tmp_path / "moat.db").exists()


def test_the_model_rebound_to_sim_runs_without_a_key(tmp_path: Path) -> None:
    _, requests = _files(tmp_path)
    proc = _moat(
        tmp_path, "run", "g.yaml", "--input", str(requests), "--model", "big=sim:small", "--quiet"
    )
    assert proc.returncode == 0, proc.stderr
    assert [line.count('"status": "ok"') for line in proc.stdout.splitlines()] == [1, 1]


def test_serve_refuses_the_graph_at_startup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    graph, _ = _files(tmp_path)
    db = tmp_path / "m.db"
    assert main(["serve", str(graph), "--port", "0", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"moat: {graph}: model 'big' (openai:gpt-4o) needs an API key" in err
    assert "OPENAI_API_KEY is not set" in err
    assert not db.exists()


def test_check_still_passes_a_graph_whose_key_is_not_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking a graph offline (in CI, without secrets) is what `moat check` is for."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    graph, _ = _files(tmp_path)
    assert main(["check", str(graph)]) == 0
    assert capsys.readouterr().err == ""
