"""Without `--ray` nothing loads Ray, and without Ray installed `--ray` says how to get it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

GRAPH = """
moat: 1
name: echo
input:
  type: object
  required: [prompt]
  properties: {prompt: {type: string}}
nodes:
  clean: {type: redact, with: {text: "{{ input.prompt }}"}}
output:
  text: clean.text
"""


def _files(tmp_path: Path) -> tuple[Path, Path]:
    graph, requests = tmp_path / "echo.yaml", tmp_path / "in.jsonl"
    graph.write_text(GRAPH)
    requests.write_text("".join(json.dumps({"prompt": f"hi {i}"}) + "\n" for i in range(3)))
    return graph, requests


def test_a_local_run_never_imports_ray(tmp_path: Path) -> None:
    graph, requests = _files(tmp_path)
    script = (
        "import sys\n"
        "from engine.cli import main\n"
        f"code = main(['run', {str(graph)!r}, '--input', {str(requests)!r}, "
        f"'--db', {str(tmp_path / 't.db')!r}, '--out', {str(tmp_path / 'o.jsonl')!r}, "
        "'--quiet'])\n"
        "assert code == 0, code\n"
        "assert 'ray' not in sys.modules, 'a local run imported ray'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


def test_ray_missing_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    graph, requests = _files(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    db = tmp_path / "t.db"
    code = main(["run", str(graph), "--input", str(requests), "--db", str(db), "--ray"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--ray: Ray is not installed; install it with: pip install 'moat[ray]'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "2"], "--workers 2: workers are Ray actors; add --ray"),
        (["--ray", "--workers", "0"], "--workers 0: give at least 1"),
    ],
)
def test_workers_needs_ray_and_a_positive_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    graph, requests = _files(tmp_path)
    code = main(
        ["run", str(graph), "--input", str(requests), "--db", str(tmp_path / "t.db"), *extra]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.db").exists()


def test_a_graph_after_ray_is_not_taken_for_its_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph, requests = _files(tmp_path)
    code = main(
        ["run", "--input", str(requests), "--db", str(tmp_path / "t.db"), "--ray", str(graph)]
    )
    assert code == 2
    assert "that is a file, not a cluster address" in capsys.readouterr().err
