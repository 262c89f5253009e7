"""The serve bench's floor: the same HTTP stack with nothing of moat, passing a chat
completion through to the upstream and its answer back unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio

from engine.serve.sim_app import serve as serve_sim

ROOT = Path(__file__).resolve().parents[2]


def _post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer any"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_the_floor_passes_a_chat_completion_through_on_every_worker() -> None:
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            sim = await tg.start(serve_sim, "127.0.0.1", 0)
            floor = subprocess.Popen(
                [sys.executable, "-m", "bench._floor_proxy", sim.base_url, "--workers", "2"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert floor.stdout is not None
                url = await anyio.to_thread.run_sync(floor.stdout.readline)
                chat = url.strip() + "/chat/completions"
                for _ in range(4):  # spread over both workers by the kernel
                    status, answer = await anyio.to_thread.run_sync(_post, chat, body)
                    assert status == 200
                    assert answer["object"] == "chat.completion"
                    assert answer["model"] == "sim-small"
                direct = await anyio.to_thread.run_sync(
                    _post, sim.base_url + "/chat/completions", body
                )
                assert answer["choices"] == direct[1]["choices"]  # the upstream's own answer
            finally:
                floor.terminate()
                assert await anyio.to_thread.run_sync(floor.wait, 30) == 0
                floor.stdout.close()  # type: ignore[union-attr]
            assert sim.requests == 5
            tg.cancel_scope.cancel()

    anyio.run(main)
