"""Measures whether work awaited on the event loop leaves the loop free for other tasks,
and holds a store's write lock to make such work wait."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

HOSTILE_60KB = ("01 " * 10_000 + "1-" * 10_000 + "a-a " * 2_500)[:60_000]
"""60 KB that costs the PII detector and the cache's template the most (linear, but long)."""


async def heartbeats_during(work: Callable[[], Awaitable[object]]) -> int:
    """How often a 1 ms heartbeat on the same loop ticked while `work` was awaited.

    Work that blocks the loop lets it tick at most once; work in a worker thread lets it
    tick throughout (the thread gives the interpreter up every few milliseconds).
    """
    ticks = 0
    running = True

    async def heartbeat() -> None:
        nonlocal ticks
        while running:
            await anyio.sleep(0.001)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        await anyio.sleep(0.005)
        before = ticks
        await work()
        during = ticks - before
        running = False
    return during


async def finishes_first(
    big: Callable[[], Awaitable[object]], small: Callable[[], Awaitable[object]]
) -> str:
    """Start `big`, then `small` on the same loop: the name of the one that finished first."""
    order: list[str] = []

    async def run(name: str, work: Callable[[], Awaitable[object]]) -> None:
        await work()
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "big", big)
        await anyio.sleep(0.002)  # the big one is under way
        tg.start_soon(run, "small", small)
    return order[0]


@contextmanager
def write_lock_held(db: Path, seconds: float) -> Iterator[None]:
    """Another connection (a server's worker, `moat prune`) holds the store's write lock
    for `seconds`, released from a thread of its own."""
    holder = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, holder.execute, ("COMMIT",))
    release.start()
    try:
        yield
    finally:
        release.join()
        holder.close()
