"""How a node run ended, as a value: `Outcome`, and the failure an exception makes of a run.

A node's failure travels as an `Outcome` until the lazy node takes it, so nothing a
plugin raises escapes into a task group; only a cancellation goes on up (`failure`
returns None for it).
"""

from __future__ import annotations

import signal
from typing import Any

import anyio

from engine.errors import NodeError
from engine.events import NodeStatus
from engine.scheduler.backend import cancelled_by_itself
from engine.scheduler.frame import InputFailed
from engine.scheduler.request import describe_error

__all__ = ["Outcome", "failure"]


class Outcome:
    """How a node run ended, before it is applied to the lazy node.

    Attributes:
        value: the output (None unless succeeded).
        status: the node run's status.
        error: the error, for failures.
        error_node: the node where the error started (an input, or the node itself).
    """

    __slots__ = ("error", "error_node", "status", "value")

    def __init__(
        self,
        value: Any,
        status: NodeStatus,
        error: BaseException | None = None,
        error_node: str | None = None,
    ) -> None:
        self.value = value
        self.status = status
        self.error = error
        self.error_node = error_node

    @classmethod
    def from_input(cls, exc: InputFailed) -> Outcome:
        """The failure of a node whose input failed."""
        return cls(None, NodeStatus.FAILED, exc.error, exc.node_id)

    @classmethod
    def from_error(cls, exc: Exception, node_id: str) -> Outcome:
        """The failure of node `node_id` (`timed_out` for a timeout), or of its input."""
        if isinstance(exc, InputFailed):
            return cls.from_input(exc)
        status = NodeStatus.TIMED_OUT if isinstance(exc, TimeoutError) else NodeStatus.FAILED
        return cls(None, status, exc, node_id)


def failure(exc: BaseException, node_id: str) -> Outcome | None:
    """The failure `exc` makes of node `node_id`'s run; None when it is a cancellation,
    which must go on up.

    Whatever else a plugin raises fails its own node, never the request's task or a
    batch's task group: `exit()`, `GeneratorExit`, a `BaseException` of its own, a
    `BaseExceptionGroup`. A `CancelledError` it raises while nothing cancelled its task
    (a library's own timeout inside a plugin, say) is its failure too: left to go on up,
    it would pass for the cancellation of the whole request, or of a batch's task group.
    A `KeyboardInterrupt` interrupts the process as Ctrl-C does (`_interrupted`) and fails
    the node on the way.
    """
    if isinstance(exc, Exception):
        return Outcome.from_error(exc, node_id)
    if cancelled_by_itself(exc):
        reason = (
            "raised CancelledError without being cancelled; a node reports a failure with "
            "an ordinary exception (a timeout of its own as TimeoutError)"
        )
    elif _holds(exc, anyio.get_cancelled_exc_class()):
        return None
    elif _holds(exc, KeyboardInterrupt):
        if not _interrupted():  # nobody turns Ctrl-C into a graceful stop: go on up
            return None
        reason = "raised KeyboardInterrupt: the run is interrupted, as by Ctrl-C"
    elif isinstance(exc, SystemExit):  # a plugin's `exit()` ends its request, not the process
        reason = f"called exit() ({exc.code!r}); a node reports a failure by raising an exception"
    else:
        reason = (
            f"raised {describe_error(node_id, exc).removeprefix(f'node {node_id!r}: ')} "
            f"(a BaseException, which only the runtime may raise); a node reports a failure "
            "by raising an Exception"
        )
    error = NodeError(reason, node_id=node_id)
    error.__cause__ = exc
    return Outcome(None, NodeStatus.FAILED, error, node_id)


def _holds(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `exc` is a `kind`, or a group (a plugin's own task group) holding one."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_holds(inner, kind) for inner in exc.exceptions)
    return isinstance(exc, kind)


def _interrupted() -> bool:
    """A node raised `KeyboardInterrupt`: interrupt the process as Ctrl-C would; False
    when nothing here turns SIGINT into a graceful stop (then the node's
    `KeyboardInterrupt` goes on up, as Python's own handler would raise it).

    Where something does (`moat run` and `moat serve` cancel the batch, asyncio's runner
    cancels its main task) the signal is raised for it to handle, and the node fails like
    any other. Raised on up from a node's task instead, asyncio would stop its loop with
    tasks half-way and print their tracebacks while it tears them down.
    """
    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.default_int_handler or not callable(handler):
        return False
    try:
        signal.raise_signal(signal.SIGINT)  # (its Python handler runs before this returns)
    except KeyboardInterrupt:  # the handler raises it right here (trio's does)
        return False
    return True
