"""Without `--ray` nothing loads Ray, and without Ray installed `--ray` says how to get it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.store.store import Store

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


def closed_port() -> int:
    """A loopback port nothing listens on (a connection to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "--ray '': not a Ray cluster address; give `auto`"),
        ("headnode", "--ray 'headnode': not a Ray cluster address"),
        ("headnode:99999", "--ray 'headnode:99999': not a Ray cluster address"),
        ("ray://:10001", "--ray 'ray://:10001': not a Ray cluster address"),
        ("http://headnode:8265", "that is a web URL (the dashboard's, for `ray job submit`)"),
    ],
)
def test_a_malformed_ray_address_exits_2_before_anything_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str, message: str
) -> None:
    graph, requests = _files(tmp_path)
    db = tmp_path / "t.db"
    code = main(["run", str(graph), "--input", str(requests), "--db", str(db), f"--ray={address}"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not db.exists()


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_ray_address_nothing_answers_at_exits_2_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scheme: str
) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # (a Ray already joined is used as it is)
        pytest.skip("Ray is connected in this process")
    graph, requests = _files(tmp_path)
    db, port = tmp_path / "t.db", closed_port()
    address = f"{scheme}127.0.0.1:{port}"
    started = time.monotonic()
    code = main(["run", str(graph), "--input", str(requests), "--db", str(db), "--ray", address])
    assert time.monotonic() - started < 15  # Ray alone retries for minutes
    assert code == 2
    err = capsys.readouterr().err
    assert (
        f"--ray {address}: cannot reach a Ray cluster there: nothing listens on port {port} "
        "of 127.0.0.1 (connection refused). Start the head node (`ray start --head`)"
    ) in err
    assert "Traceback" not in err
    with Store.open(db, readonly=True) as store:
        assert store.list_runs() == []


def test_ray_auto_checks_the_address_ray_address_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is connected in this process")
    graph, requests = _files(tmp_path)
    port = closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    db = tmp_path / "t.db"
    code = main(["run", str(graph), "--input", str(requests), "--db", str(db), "--ray", "auto"])
    assert code == 2
    assert (
        f"--ray auto: RAY_ADDRESS=127.0.0.1:{port}: cannot reach a Ray cluster there"
        in capsys.readouterr().err
    )


def test_ray_alone_starts_a_local_instance_even_where_ray_address_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.cluster import connect

    calls: list[dict[str, object]] = []

    class FakeRay:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**options: object) -> None:
            calls.append(options)

    monkeypatch.setitem(sys.modules, "ray", FakeRay)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # Ray joins it unless told `local`
    connect(None, num_cpus=3)
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 3
