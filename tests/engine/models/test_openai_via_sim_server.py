"""A shipped graph runs unchanged on sim, and through the openai provider against sim-server."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from tests.support.fast_graphs import fast_copy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_baseline_runs_through_the_openai_provider_against_sim_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", "sim-server", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        graph = fast_copy("baseline", tmp_path)
        env = {
            **os.environ,
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "OPENAI_API_KEY": "not-needed-for-sim",
            "MOAT_DEBUG": "1",
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "run",
                str(graph),
                "--prompt",
                "What is the capital of Australia?",
                "--model",
                "large=openai:gpt-4o-mini",
                "--db",
                "t.db",
                "--quiet",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    result = json.loads(line)
    assert result["status"] == "ok" and result["output"]["answer"]
    with sqlite3.connect(tmp_path / "t.db") as db:
        calls = db.execute("select provider, model, status from llm_calls").fetchall()
    # the sim-server marks its answers simulated: they are recorded under `sim`, so the
    # run's figures are labelled simulated wherever they are shown
    assert calls and {c[0] for c in calls} == {"sim"}
    assert all(c[2] == "ok" for c in calls)
    assert main(["stats", "--db", str(tmp_path / "t.db")]) == 0
    assert "figures come from simulated models" in capsys.readouterr().out
