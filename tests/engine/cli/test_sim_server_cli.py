"""`moat sim-server` on the command line: a busy or bad port is a clear usage error (exit 2)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from engine.cli import main
from tests.support.imports import without


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_a_busy_port_says_it_is_in_use_and_how_to_pick_another(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim-server", "--port", str(busy_port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{busy_port}" in err and "in use" in err
    assert "--port 0" in err
    assert "internal error" not in err and "ExceptionGroup" not in err


def test_a_host_that_is_not_local_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # 203.0.113.0/24 is reserved for documentation: never an address of this machine
    assert main(["sim-server", "--host", "203.0.113.7", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 203.0.113.7:0" in err and "--host" in err
    assert "internal error" not in err


@pytest.mark.parametrize("value", ["-1", "65536", "99999999999", "abc", "1.5", "", "0x50"])
def test_a_port_that_is_not_a_port_number_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sim-server", "--port", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --port: {value!r} is not a port" in err
    assert "1-65535" in err and "0 for any free port" in err


def test_port_zero_serves_on_a_free_port_and_prints_it() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", "sim-server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        port = int(base_url.removeprefix("http://127.0.0.1:").removesuffix("/v1"))
        assert port > 0
        with urllib.request.urlopen(f"{base_url}/models", timeout=10) as response:
            models = json.load(response)
        assert {m["id"] for m in models["data"]} == {"sim-small", "sim-medium", "sim-large"}
    finally:
        server.terminate()
        server.communicate(timeout=10)


def test_without_the_serve_extra_it_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without(monkeypatch, "uvicorn", reloaded="engine.serve")
    assert main(["sim-server", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "sim-server needs Starlette and uvicorn" in err and "pip install 'moat[serve]'" in err


def test_sigterm_stops_it_cleanly() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", "sim-server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().startswith("http://127.0.0.1:")
    server.terminate()
    _, err = server.communicate(timeout=15)
    assert server.returncode == 0, err
    assert "Traceback" not in err
