"""Lazy node futures: one per node per request (per cycle inside a loop), resolved once.

A `LazyNode` is in the shape of anyio's `Future`: a `Status` enum, a result set once, and
distinct errors for reading it too early, after a cancellation or after a failure. It
also carries the bookkeeping the scheduler needs to record the node run when its fate is
final (timings, attempts, speculation, who consumed it, the LLM calls it made).
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from enum import Enum
from typing import TYPE_CHECKING, Any

import anyio

from engine.errors import MoatError
from engine.events import NodeStatus

if TYPE_CHECKING:
    from engine.events import LlmCall
    from engine.graph.compiled import CompiledNode
    from engine.scheduler.backend import Waiter
    from engine.scheduler.frame import Frame

__all__ = ["LazyNode", "LazyNodeCancelled", "LazyNodeFailed", "LazyNodeNotFinished"]


class LazyNodeNotFinished(MoatError, RuntimeError):
    """The node's value was read before the node finished."""


class LazyNodeCancelled(MoatError, RuntimeError):
    """The node was cancelled before it finished (deadline, short-circuit, cleanup)."""


class LazyNodeFailed(MoatError, RuntimeError):
    """The node (or an input it needed) failed; `__cause__` is the original error."""


class Status(Enum):
    """Where a lazy node is in its life."""

    PENDING = "pending"
    """Nothing has started it yet."""
    RUNNING = "running"
    """Claimed by a task: evaluating its guard and config, or running."""
    FINISHED = "finished"
    """Has a value: its output, or none when skipped or an optional node failed."""
    FAILED = "failed"
    """Failed for good (or an input it needed failed); consumers fail too."""
    CANCELLED = "cancelled"
    """Stopped before it finished; it has no value."""


PENDING = Status.PENDING
RUNNING = Status.RUNNING
FINISHED = Status.FINISHED
FAILED = Status.FAILED
CANCELLED = Status.CANCELLED


class _Ready:
    """What awaiting a node that has already resolved awaits: nothing."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()  # done at once, without suspending


_READY = _Ready()


class LazyNode:
    """One node in one request (or loop cycle): run at most once, read by every consumer.

    Attributes:
        node: the compiled node.
        frame: the scope instance (request top level or one loop cycle) it belongs to.
        status: see `Status`.
        run_status: how the node run ended, for the `node_runs` row.
        speculative: whether it started before anything on the request path demanded it.
        demanded: whether the request path (transitively) consumed it.
        consumers: how many consumers read it (the second and later are reuses).
        reads: the nodes its run read, in order: demanding it demands them too.
        t0: when it started, on the backend's clock (-1 before it starts).
        scope: the cancel scope of the background task running it, while that runs.
        result: what `value` returns once the node finished, read without its checks
            by the scheduler's own hot paths.
    """

    Status = Status

    __slots__ = (
        "_waiters",
        "attempts",
        "calls",
        "cancel_requested",
        "consumers",
        "demanded",
        "duration_ms",
        "error",
        "error_node",
        "frame",
        "node",
        "reads",
        "result",
        "run_status",
        "scope",
        "settled",
        "speculative",
        "status",
        "t0",
    )

    def __init__(self, node: CompiledNode, frame: Frame) -> None:
        self.node = node
        self.frame = frame
        self.status = PENDING
        self.run_status: NodeStatus | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_node: str | None = None
        self.speculative = False
        self.demanded = False
        self.consumers = 0
        self.reads: list[LazyNode] | None = None
        self.t0 = -1.0
        self.duration_ms = 0.0
        self.attempts = 0
        self.calls: list[LlmCall] | None = None
        self._waiters: list[Waiter] | None = None
        self.scope: anyio.CancelScope | None = None
        self.cancel_requested = False
        self.settled = False

    # -- the future ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the node has finished, failed or been cancelled."""
        return self.status is not RUNNING and self.status is not PENDING

    @property
    def value(self) -> Any:
        """The node's value (its output, or none when skipped / optional and failed).

        Raises:
            LazyNodeNotFinished: the node has not finished yet.
            LazyNodeCancelled: the node was cancelled.
            LazyNodeFailed: the node failed; the original error is the cause.
        """
        status = self.status
        if status is FINISHED:
            return self.result
        if status is FAILED:
            raise LazyNodeFailed(f"node {self.node.id!r} failed") from self.error
        if status is CANCELLED:
            raise LazyNodeCancelled(f"node {self.node.id!r} was cancelled")
        raise LazyNodeNotFinished(f"node {self.node.id!r} has not finished yet")

    @property
    def exception(self) -> BaseException | None:
        """The error of a failed node (None if it finished with a value).

        Raises:
            LazyNodeNotFinished: the node has not finished yet.
            LazyNodeCancelled: the node was cancelled.
        """
        if self.status is CANCELLED:
            raise LazyNodeCancelled(f"node {self.node.id!r} was cancelled")
        if not self.done:
            raise LazyNodeNotFinished(f"node {self.node.id!r} has not finished yet")
        return self.error if self.status is FAILED else None

    def wait(self) -> Awaitable[None]:
        """Wait until the node has finished, failed or been cancelled: `await node.wait()`.

        A plain method returning what to await, so a wait in flight holds no coroutine
        frame of its own (a thousand requests in flight each wait somewhere).
        """
        if self.status is not RUNNING and self.status is not PENDING:
            return _READY
        # One waiter per waiting task, so cancelling one never wakes another.
        waiter = self.frame.ex.new_waiter()
        waiters = self._waiters
        if waiters is None:
            self._waiters = [waiter]
        else:
            waiters.append(waiter)
        return waiter

    # -- transitions (the scheduler's side) -------------------------------------------

    def claim(self) -> None:
        """Mark the node as taken by a task, so nobody else starts it."""
        self.status = RUNNING

    def finish(self, value: Any, run_status: NodeStatus, now: float | None = None) -> None:
        """Resolve with a value (`run_status` says how the run ended; `now`, the clock's
        time if the caller has just read it)."""
        self.result = value
        self.run_status = run_status
        self.status = FINISHED
        t0 = self.t0
        if t0 < 0:
            self.duration_ms = 0.0
        else:
            self.duration_ms = ((self.frame.req.clock() if now is None else now) - t0) * 1000
        if self._waiters is not None:  # `_wake`, inline but for this: every run ends here
            self._wake_waiters()

    def fail(self, error: BaseException, error_node: str, run_status: NodeStatus) -> None:
        """Resolve with an error; `error_node` is the node where it started."""
        self.error = error
        self.error_node = error_node
        self.run_status = run_status
        self.status = FAILED
        self._wake()

    def cancelled(self) -> None:
        """Resolve as cancelled (the task running it was cancelled)."""
        self.run_status = NodeStatus.CANCELLED
        self.status = CANCELLED
        self._wake()

    def _wake(self) -> None:
        t0 = self.t0
        self.duration_ms = (self.frame.req.clock() - t0) * 1000 if t0 >= 0 else 0.0
        if self._waiters is not None:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters = self._waiters
        self._waiters = None  # nobody waits on a resolved node
        for waiter in waiters or ():
            if not waiter.done():  # a cancelled waiter is done already
                waiter.set_result(None)

    def __repr__(self) -> str:
        where = f" cycle={self.frame.cycle}" if self.frame.cycle else ""
        return f"<LazyNode {self.status.value} {self.node.id!r}{where}>"
