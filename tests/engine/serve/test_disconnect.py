"""Watching a client while its answer is prepared: the work is cancelled when it hangs
up, and a request answered leaves nothing for the garbage collector to find."""

from __future__ import annotations

import gc
from typing import Any

import anyio
import pytest

from engine.serve.disconnect import until_disconnect

pytestmark = pytest.mark.anyio


class _Client:
    """What `until_disconnect` reads of a Starlette request: `receive`, which answers
    `http.disconnect` once the client has hung up."""

    def __init__(self) -> None:
        self.gone = anyio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def _answer(delay_s: float = 0.0) -> str:
    await anyio.sleep(delay_s)
    return "answer"


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_answer_comes_back_while_the_client_stays(anyio_backend: str) -> None:
    assert await until_disconnect(_Client(), _answer()) == "answer"  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_client_that_hangs_up_cancels_the_work(anyio_backend: str) -> None:
    client = _Client()
    finished: list[str] = []

    async def slow() -> str:
        await anyio.sleep(30)
        finished.append("done")
        return "late"

    async def hang_up() -> None:
        await anyio.sleep(0.05)
        client.gone.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hang_up)
            assert await until_disconnect(client, slow()) is None  # type: ignore[arg-type]
    assert finished == []


async def test_answered_requests_leave_no_reference_cycles() -> None:
    # a watcher cancelled at the end of each request left its CancelledError, traceback
    # and frames in cycles: ~40 objects a request for the collector to find and free
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            await until_disconnect(_Client(), _answer())  # type: ignore[arg-type]
        assert gc.collect() < 100
    finally:
        gc.enable()
