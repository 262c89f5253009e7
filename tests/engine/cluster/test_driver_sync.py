"""`ClusterPipeline.sync`: when it returns, what the driver had learned has reached every
worker, even while the periodic push is under way (no Ray needed: the pushes are faked)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from engine.cluster.driver import ClusterPipeline, _Slot

pytestmark = pytest.mark.anyio

ENTRY = ("save", "answers", "acme", {"key": "k"})


def _driver(pushed: list[tuple[int, list[Any]]], push_s: float) -> ClusterPipeline:
    """A driver of two workers, with an entry learned on worker 0, whose pushes take
    `push_s` and are noted in `pushed` once they have reached the worker."""
    driver = object.__new__(ClusterPipeline)  # no Ray: only what `sync` reads
    driver.store = None
    driver.policy = None
    driver._slots = [_Slot(0, None), _Slot(1, None)]
    driver._cache_in = [(0, ENTRY)]
    driver._codes_out = {}
    driver._dictionary = None
    driver._activation = 0
    driver._syncing = anyio.Lock()

    async def push(slot: _Slot, policy: Any, ops: list[Any], *rest: Any) -> None:
        await anyio.sleep(push_s)
        pushed.append((slot.index, ops))

    driver._push = push  # type: ignore[method-assign]
    return driver


async def test_a_sync_returns_only_once_a_push_under_way_has_reached_the_workers() -> None:
    pushed: list[tuple[int, list[Any]]] = []
    driver = _driver(pushed, push_s=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.sync)  # the periodic one: it takes the entry and pushes it
        with anyio.fail_after(5):
            while driver._cache_in:
                await anyio.sleep(0.001)
        await driver.sync()  # a caller's, with nothing new of its own to push
        assert pushed == [(1, [ENTRY])]  # worker 1 has the entry worker 0 learned


async def test_a_sync_with_nothing_learned_pushes_nothing() -> None:
    pushed: list[tuple[int, list[Any]]] = []
    driver = _driver(pushed, push_s=0.0)
    driver._cache_in = []
    await driver.sync()
    assert pushed == []
