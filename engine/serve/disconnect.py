"""A client that hangs up while its answer is prepared cancels the work for it.

Once a request's body is read, the next ASGI message the server sends the app is the
client's disconnect, so a request is watched by awaiting `request.receive()`. On asyncio
(uvicorn, Ray Serve) that is a bare task with a done callback: a tenth of the CPU of a
task group with an anyio task, and no cancelled task left behind. A task group's watcher,
cancelled at the end of every request, left its `CancelledError`, traceback and frames in
reference cycles: the sim-server answering 500 requests a second made 15,000 such objects
for each young-generation collection, which then paused it 8-18 ms every second
(bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - the watch every request pays for (see above)
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
import sniffio
from starlette.requests import Request

__all__ = ["cancel_on_disconnect", "until_disconnect", "watch_disconnect"]

T = TypeVar("T")


def watch_disconnect(request: Request, scope: anyio.CancelScope) -> asyncio.Future[Any]:
    """Cancel `scope` when the client disconnects (asyncio only); cancel the returned
    future to stop watching."""
    task: asyncio.Future[Any] = asyncio.ensure_future(request.receive())

    def done(finished: asyncio.Future[Any]) -> None:
        if finished.cancelled() or finished.exception() is not None:
            return
        if finished.result()["type"] == "http.disconnect":
            scope.cancel()

    task.add_done_callback(done)
    return task


async def cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    """`watch_disconnect` as an anyio task, for an event loop other than asyncio's."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work` while watching the client; None (and `work` cancelled) if it hangs up."""
    if sniffio.current_async_library() == "asyncio":
        scope = anyio.CancelScope()
        watch = watch_disconnect(request, scope)
        try:
            with scope:
                return await work
        finally:
            watch.cancel()
        return None  # the scope was cancelled: the client is gone
    done: list[T] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_on_disconnect, request, tg.cancel_scope)
        done.append(await work)
        tg.cancel_scope.cancel()
    return done[0] if done else None
