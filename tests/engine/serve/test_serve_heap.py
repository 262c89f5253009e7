"""A server gives the heap memory it freed back to the system while it runs, and settles
its collector before it serves."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from engine.serve import app as serve_app
from engine.serve.app import MoatServer
from tests.engine.serve.test_serve import echo_graph


@pytest.mark.anyio
async def test_a_server_trims_its_heap_every_heartbeat_while_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(serve_app, "HEARTBEAT_S", 0.02)
    monkeypatch.setattr(serve_app, "trimmer", lambda: lambda: calls.append(time.monotonic()))
    async with MoatServer([echo_graph(tmp_path)], db=None):
        await anyio.sleep(0.2)
    trimmed = len(calls)
    await anyio.sleep(0.1)
    assert trimmed >= 3
    assert len(calls) == trimmed  # stopped with the server


_REMOTE = """moat: 1
name: remote
models:
  m: {provider: openai, model: sim-small, base_url: "http://127.0.0.1:9/v1", max_retries: 0}
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes:
  answer: {type: model, with: {model: m, prompt: "{{ input.prompt }}"}}
output: {answer: answer.text}
"""
_IMPORTED_WHEN_OPEN = """
import sys, anyio
from engine.serve.app import MoatServer

async def main() -> None:
    async with MoatServer([sys.argv[1]], db=None):
        names = ("engine.models.openai_provider", "engine.models._direct_http")
        print(sorted(m for m in names if m in sys.modules))

anyio.run(main)
"""


def test_a_server_imports_its_providers_before_it_serves(tmp_path: Path) -> None:
    """What the first request would import is alive before the server freezes its
    startup heap, so full collections never walk the SDK's ~90,000 objects."""
    graph = tmp_path / "remote.yaml"
    graph.write_text(_REMOTE)
    ran = subprocess.run(
        [sys.executable, "-c", _IMPORTED_WHEN_OPEN, str(graph)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # (the provider, and the prepared route that carries a direct endpoint's calls)
    assert ran.stdout.strip() == "['engine.models._direct_http', 'engine.models.openai_provider']"


_COLLECTOR_WHEN_SERVING = """
import gc, os, signal, socket
from engine.serve.listen import run_app

async def app(scope, receive, send) -> None:
    return None

def ready() -> None:
    print(gc.get_threshold(), gc.get_freeze_count() > 0, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
run_app(app, sock, on_ready=ready)
"""


def test_a_server_freezes_its_startup_heap_and_collects_young_objects_less_often() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _COLLECTOR_WHEN_SERVING],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert ran.stdout.strip() == "(20000, 10, 10) True"
