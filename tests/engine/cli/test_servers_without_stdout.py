"""A server does not need its stdout: one whose reader has gone before it printed its
address (`moat sim-server | head -0`, a supervisor that closed the pipe) keeps serving,
and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str, deadline_s: float = 60.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return bool(response.status == 200)
        # (TimeoutError: the socket is bound before the server accepts, so on a loaded
        # machine a request may wait past its timeout in the queue: not yet serving)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    ("command", "path"),
    [
        (["sim-server"], "/v1/models"),
        (["serve", str(ROOT / "graphs" / "governed-answer.yaml"), "--db", "{db}"], "/healthz"),
        (
            [
                "serve",
                str(ROOT / "graphs" / "governed-answer.yaml"),
                "--db",
                "{db}",
                "--workers",
                "2",
            ],
            "/healthz",
        ),
        (["sync-server", "--db", "{db}"], "/v1/sync/health"),
    ],
    ids=["sim-server", "serve", "serve-workers", "sync-server"],
)
def test_a_server_whose_stdout_reader_has_gone_keeps_serving(
    command: list[str], path: str, tmp_path: Path
) -> None:
    port = _free_port()
    args = [arg.replace("{db}", str(tmp_path / "s.db")) for arg in command]
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read what it prints
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", *args, "--port", str(port)],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    os.close(write_end)
    try:
        assert _answers(f"http://127.0.0.1:{port}{path}"), "it stopped serving"
        assert server.poll() is None
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "Traceback" not in err and "internal error" not in err
