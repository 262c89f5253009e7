"""How `moat run` stops on a signal: cleanly on the first, at once on the next.

The first Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal went away) stops the batch
cleanly: requests in flight are cancelled, what finished is kept, the run is recorded
`interrupted`, the summary is printed and moat exits 130. One more while it stops (an
impatient second Ctrl-C, or a stop that hangs on a stuck reader of `--out`) ends the
process at once, still with exit 130 and one line saying how to resume: what finished is
committed, and `moat run --resume` answers the rest and writes the result lines `--out`
lacks, exactly as after a `kill -9`. So a signal never surfaces as a traceback, an
"internal error" or an exit code of its own, wherever it lands.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType

import anyio
import anyio.abc

from engine.cli import EXIT_INTERRUPTED

__all__ = ["STOP_SIGNALS", "stoppable"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a run: Ctrl-C, `kill`, and the hangup of a closed terminal."""


@asynccontextmanager
async def stoppable(hint: Callable[[], str]) -> AsyncIterator[anyio.CancelScope]:
    """A cancel scope for the batch that the first stop signal cancels.

    The signals are watched for as long as the body runs (the batch, the last result
    lines, the summary), and the body's own errors pass through as they are, not inside an
    exception group.

    Args:
        hint: the line printed when a second signal ends the process at once (which run
            to resume, and how).
    """
    scope = anyio.CancelScope()
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(_watch, scope, hint)  # watching once this returns
        try:
            yield scope
        except Exception as exc:  # raised below, outside the task group
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _watch(
    scope: anyio.CancelScope,
    hint: Callable[[], str],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for _ in signals:
            break
        else:  # pragma: no cover (the receiver never ends by itself)
            return
    scope.cancel()
    # From now on, for the rest of the process (its shutdown included), any stop signal
    # ends it at once: installed after the receiver restored the default handlers.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _at_once(hint))


def _at_once(hint: Callable[[], str]) -> Callable[[int, FrameType | None], None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        message = f"\nmoat: stopped at once ({signal.Signals(signum).name}); {hint()}\n"
        with contextlib.suppress(OSError):  # (a closed terminal)
            os.write(2, message.encode("utf-8", "replace"))
        os._exit(EXIT_INTERRUPTED)

    return stop
