"""What the scheduler takes from the running backend: its clock, tasks and waiters.

The clock is the backend's `current_time` (so a trio `MockClock` drives every duration),
read through the cheapest call that gives it: `time.monotonic` on asyncio's default loop.

A speculative node runs in a task of its own under the node's own `CancelScope`, and the
task body never lets an exception out. On asyncio, anyio's `TaskGroup.start_soon` wraps
every task in a handle with a second cancel scope and an event, which costs more Python
calls than running a small node; such tasks are therefore started as plain asyncio tasks,
which the runner tracks and waits for (or cancels) when it closes. On trio they start in a
nursery of the runner's own, for the same reason. The node's cancel scope works the same in
every kind of task.

Nodes demanded together run side by side: the first in the demanding task, the others in
tasks of their own (`Backend.together`). On asyncio those are plain tasks too, which the
demanding task waits for, and cancels and waits for when it is cancelled itself: what an
anyio task group does for them, without a task group's cancel scope, nor a handle, a
second scope and a done callback for each task. Elsewhere they run in an anyio task group.

A task waiting for a lazy node waits on a `Waiter` of its own. On asyncio that is a bare
future from the loop: an `anyio.Event` holds an `asyncio.Event`, whose queue of waiters
alone takes about 600 bytes, and a thousand requests in flight each wait somewhere. anyio
cancels a task waiting on a future the same way it cancels one waiting on an event. On
trio a waiter wraps an `anyio.Event`.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - the asyncio fast paths are the point of this module
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import TaskGroup

__all__ = [
    "Backend",
    "BackgroundTasks",
    "Resolvable",
    "Together",
    "Waiter",
    "cancelled_by_itself",
    "current_backend",
    "soon_from_thread",
]


class Waiter(Protocol):
    """What one task waits on until another wakes it: the part of a future in use."""

    def done(self) -> bool:
        """True once woken (or cancelled)."""

    def set_result(self, result: None) -> None:
        """Wake the task waiting on it; only while not done."""

    def __await__(self) -> Generator[Any, None, Any]:
        """Wait until woken."""


class _EventWaiter:
    """A waiter for backends without futures (trio): an `anyio.Event` set once."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, result: None) -> None:
        self._event.set()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._event.wait().__await__()


class BackgroundTasks(Protocol):
    """Starts the runner's background tasks and waits for them when the runner closes."""

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start `fn(*args)` in a new task; it must not raise (but cancellation), and it
        must call `ended` last, in a `finally`."""

    def ended(self) -> None:
        """The task calling this is about to end (its body's last step)."""

    def closing(self) -> None:
        """The runner is closing: its task group exits next and waits for what it holds."""

    async def aclose(self) -> None:
        """After the runner's task group has exited: cancel the tasks still running and
        wait until they have ended (where that exit has not done it already)."""


class _TaskGroupTasks:
    """The runner's own anyio task group: it waits for its tasks when it exits."""

    __slots__ = ("_tg",)

    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        self._tg.start_soon(fn, *args)

    def ended(self) -> None:
        pass  # the task group keeps track of its own tasks

    def closing(self) -> None:
        pass  # nothing to let go of: the task group's exit waits for its tasks

    async def aclose(self) -> None:
        pass  # the task group's own exit waited for its tasks


class _NurseryTasks:
    """A trio nursery of the runner's own, open in a task of its task group until it closes.

    anyio's `start_soon` wraps every task in a handle with a cancel scope and an event of
    its own; a nursery's `start_soon` is what a speculative node needs.
    """

    __slots__ = ("_closing", "_nursery")

    def __init__(self) -> None:
        self._closing = anyio.Event()
        self._nursery: Any = None

    async def open(self, tg: TaskGroup) -> None:
        self._nursery = await tg.start(self._host)

    async def _host(self, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
        import trio  # running: trio is the backend

        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await self._closing.wait()
        # leaving the nursery waited for the tasks still in it

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        self._nursery.start_soon(fn, *args)

    def ended(self) -> None:
        pass  # the nursery keeps track of its own tasks

    def closing(self) -> None:
        self._closing.set()

    async def aclose(self) -> None:
        pass  # the task group's exit waited for the nursery's host, and so for its tasks


class _AsyncioTasks:
    """Plain asyncio tasks, tracked so the runner can wait for them.

    A task leaves the set itself when its body ends (`ended`), which spares every task a
    done callback and the extra turn of the event loop that runs it.
    """

    __slots__ = ("_loop", "_tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tasks: set[asyncio.Task[Any]] = set()

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        self._tasks.add(self._loop.create_task(fn(*args)))

    def ended(self) -> None:
        self._tasks.discard(asyncio.current_task())

    def closing(self) -> None:
        pass  # what is left once the task group has exited is cancelled in `aclose`

    async def aclose(self) -> None:
        # A task cancelled before its first step never runs its body, so never calls
        # `ended`: wait for the tasks themselves.
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._tasks.clear()


class Resolvable(Protocol):
    """What `Backend.together` runs: a lazy node, which can be waited for."""

    def wait(self) -> Awaitable[None]:
        """Wait until it has resolved."""


Together = Callable[
    [Callable[[Any, bool], Coroutine[Any, Any, None]], Sequence[Resolvable]], Awaitable[None]
]
"""`together(fn, items)`: run `fn(items[0], False)` in the current task and `fn(item,
False)` for every other item in a task of its own, and return once every item has
resolved. `fn` never raises but its cancellation, and resolves its item as its last step;
when the current task is cancelled, so are the others, and the cancellation goes on once
they have all ended."""


async def _together_in_task_group(
    fn: Callable[[Any, bool], Coroutine[Any, Any, None]], items: Sequence[Resolvable]
) -> None:
    async with anyio.create_task_group() as tg:
        for item in items[1:]:
            tg.start_soon(fn, item, False)
        await fn(items[0], False)


def _together_on(loop: asyncio.AbstractEventLoop) -> Together:
    create_task = loop.create_task

    async def together(
        fn: Callable[[Any, bool], Coroutine[Any, Any, None]], items: Sequence[Resolvable]
    ) -> None:
        tasks = [create_task(fn(item, False)) for item in items[1:]]
        try:
            await fn(items[0], False)
            # Waiting for the items rather than their tasks wakes this task once per item
            # that is late, where `asyncio.wait` costs a done callback per task and two
            # turns of the loop: a task's last step resolves its item, then it ends.
            for item in items[1:]:
                await item.wait()
        except BaseException:  # cancelled (`fn` raises nothing else): so are the others
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)
            raise

    return together


@dataclass(frozen=True, slots=True)
class Backend:
    """What the scheduler uses of the running backend, looked up once per runner.

    Attributes:
        clock: its `current_time`, through the cheapest call that gives it.
        tasks: where background tasks start.
        new_waiter: makes what one task waits on until a lazy node resolves.
        new_scope: makes a `CancelScope`: the backend's own class, called directly,
            which skips the lookup of the backend that `anyio.CancelScope()` does first.
        together: runs nodes demanded together side by side (`Together`).
    """

    clock: Callable[[], float]
    tasks: BackgroundTasks
    new_waiter: Callable[[], Waiter]
    new_scope: Callable[[], anyio.CancelScope]
    together: Together = _together_in_task_group


async def current_backend(tg: TaskGroup) -> Backend:
    """The running backend's `Backend`; `tg` is the runner's own (entered) task group."""
    token = anyio.lowlevel.current_token()
    native = token.native_token
    new_scope = type(anyio.CancelScope())
    if isinstance(native, asyncio.AbstractEventLoop):
        # what the default loop's `time` returns, without the method call around it
        default_time = type(native).time is asyncio.BaseEventLoop.time
        clock = time.monotonic if default_time else native.time
        return Backend(
            clock, _AsyncioTasks(native), native.create_future, new_scope, _together_on(native)
        )
    trio = sys.modules.get("trio")  # imported by whoever runs trio
    if trio is not None and isinstance(native, trio.lowlevel.TrioToken):
        nursery = _NurseryTasks()
        await nursery.open(tg)
        # the run's clock itself (a `MockClock` in simulated time), without the three
        # calls anyio and trio make to find it on every read
        clock = trio.lowlevel.current_clock().current_time
        return Backend(clock, nursery, _EventWaiter, new_scope)
    clock = token.backend_class.current_time
    return Backend(clock, _TaskGroupTasks(tg), _EventWaiter, new_scope)


def cancelled_by_itself(exc: BaseException) -> bool:
    """Whether `exc` is a `CancelledError` that code raised itself while nothing
    cancelled the current task (asyncio: no `cancel()` is pending on it). A real
    cancellation, and anything trio raises (its `Cancelled` cannot be raised by hand),
    is not."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on an asyncio loop
        return False
    return task is not None and not task.cancelling()


def soon_from_thread() -> Callable[[Callable[[], object]], None]:
    """A function that any thread may call to run `fn()` soon in the running event loop,
    without waiting for it (`anyio.from_thread.run_sync` waits, which would hold up a
    thread that only has news to hand over, such as the store writer's).

    Raises:
        RuntimeError: the backend is neither asyncio nor trio.
    """
    native = anyio.lowlevel.current_token().native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        loop = native

        def soon(fn: Callable[[], object]) -> None:
            loop.call_soon_threadsafe(fn)

        return soon
    trio = sys.modules.get("trio")
    if trio is not None and isinstance(native, trio.lowlevel.TrioToken):
        return native.run_sync_soon  # type: ignore[no-any-return]
    raise RuntimeError(f"no thread-safe call for the event loop {native!r}")
