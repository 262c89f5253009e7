"""A server gives the heap memory it freed back to the system while it runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import pytest

from engine.serve import app as serve_app
from engine.serve.app import MoatServer
from engine.serve.heap import trimmer
from tests.engine.serve.test_serve import echo_graph


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


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


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or trimmer() is None, reason="glibc's malloc_trim"
)
def test_trimming_gives_freed_pages_below_live_ones_back() -> None:
    # 4 KB blocks come from malloc's heap (below its mmap threshold); keeping every 64th
    # alive pins the heap's top, so freeing the rest leaves ~60 MiB resident and free
    blocks = [bytes(4000) for _ in range(16_000)]
    kept = blocks[::64]
    del blocks
    before = _rss_kib()
    trim = trimmer()
    assert trim is not None
    trim()
    assert before - _rss_kib() > 30_000, "freed heap pages stayed resident"
    assert len(kept) == 250
