"""Bounded loops: run a body frame per cycle until `until`, `max_cycles` or the soft deadline.

Each cycle is a fresh frame (its own lazy nodes, `cycle` and `prev` in scope) whose body
runs as lazily as the top level: only what `until`, the loop's `output`, the next cycle's
`prev` and the body's speculative nodes need. After every cycle a `CYCLE_SUMMARY` trace
records what was planned, executed, skipped and cancelled, the `until` value and the next
action; a cycle cut short (the loop's timeout, the request's deadline, a cancellation, a
failure) records one too, with `next_action` stop and why in `stop_reason`.

`prev` is none in cycle 1; from cycle 2 on it is a plain mapping of every body node to its
value in the cycle before (`Frame.values`): the node's output when that cycle needed it
and it finished; none when it was skipped (its guard, or a short-circuit), cancelled,
never needed, speculative work nobody used, or an optional node that failed. Every body
node the loop reads as `prev.X` (`CompiledLoop.prev_reads`) is demanded at the end of each
cycle that another follows (joined if speculative), so what `prev.X` shows never depends on
timing. A finished cycle's frame is let go at once: the loop holds the current cycle and
the previous one's values, never the cycles before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from engine.events import EventType, NodeStatus
from engine.scheduler.frame import Consumer, Frame, evaluate, evaluate_outputs, note_read
from engine.scheduler.lazy import CANCELLED, FAILED, FINISHED, LazyNode
from engine.scheduler.speculate import cleanup, start_speculative

if TYPE_CHECKING:
    from engine.graph.compiled import CompiledLoop
    from engine.scheduler.node import NodeRunner

__all__ = ["run_loop"]

CYCLE_SUMMARY = "CYCLE_SUMMARY"


async def run_loop(ex: NodeRunner, cell: LazyNode, consumer: Consumer) -> dict[str, Any]:
    """Run the loop node `cell`; its value is its `output:` in the last cycle's scope.

    Raises:
        InputFailed: a body node the loop needed failed.
        EvaluationError: `until` or an output expression failed.
    """
    loop = cell.node.loop
    assert loop is not None
    prev: dict[str, Any] | None = None
    cycle = 0
    while True:
        cycle += 1
        frame = _cycle_frame(ex, cell, cycle, prev)
        try:
            result = await _run_cycle(ex, cell, loop, frame, consumer.spawn)
            if result is not None:
                return result
            prev = frame.values()
        finally:
            _forget(cell, frame)


def _cycle_frame(ex: NodeRunner, cell: LazyNode, cycle: int, prev: Any) -> Frame:
    loop = cell.node.loop
    assert loop is not None
    outer = cell.frame
    fixed = {**outer.fixed, "cycle": cycle, "prev": prev}
    timed = cell.node.timeout_ms is not None
    return Frame(outer.req, ex, loop.body, outer, cycle, fixed, timed)


def _forget(cell: LazyNode, frame: Frame) -> None:
    """A cycle is over: let go of its frame, so a loop holds one cycle's values, not all.

    The next cycle sees only `prev` (plain values). The loop node's `reads` (shared by the
    cycle's consumers) drop the cycle's nodes, which are settled by now or being
    cancelled, and the enclosing frame no longer lists it for the request's release.
    """
    reads = cell.reads
    if reads:  # in place: the loop's consumers share this list
        reads[:] = [read for read in reads if read.frame is not frame]
    parent = frame.parent
    siblings = parent.children if parent is not None else None
    if siblings is not None and frame in siblings:
        siblings.remove(frame)
    # Cycles of an inner loop still listed here belong to a cancelled inner loop that is
    # still winding down: it lets go of them itself, once its cleanup has recorded them.
    frame.children = None
    frame.release()
    # A cancelled task of the cycle that has not had its turn yet still holds the frame;
    # its `prev` would keep the cycle before alive too, and so on down the loop.
    frame.fixed["prev"] = None


class _CycleConsumer(Consumer):
    """The loop's own consumer in one cycle (`until`, `output`, what `prev` will read).

    What it reads of the cycle is demanded even while the loop itself is speculative: the
    loop's value depends on it, and `prev` must not depend on whether anyone had joined
    the loop by then. Outer nodes are read on the loop's behalf, as its other reads are.
    """

    __slots__ = ()

    def note(self, cell: LazyNode) -> None:
        """Record that the loop reads `cell` in this cycle."""
        self.seen.append(cell)
        note_read(cell, None if cell.frame is self.frame else self.owner, self.label)


async def _run_cycle(
    ex: NodeRunner, cell: LazyNode, loop: CompiledLoop, frame: Frame, spawn: bool
) -> dict[str, Any] | None:
    """One cycle; the loop's value when it stops here, None to go on."""
    req = frame.req
    cycle = frame.cycle
    loop_id = cell.node.id
    req.event(
        EventType.LOOP_CYCLE_STARTED,
        loop_id,
        cycle=cycle,
        decision="start",
        payload={"cycle": cycle, "max_cycles": loop.max_cycles},
    )
    consumer = _CycleConsumer(frame, cell, spawn, loop_id)
    until: Any = None
    stop_reason: str | None = None
    output: dict[str, Any] | None = None
    start_speculative(ex, frame)
    try:
        if loop.until is not None:
            until = await evaluate(loop.until, consumer)
        stop_reason = _stop_reason(cell, loop, cycle, until)
        if stop_reason is not None:
            output = await evaluate_outputs(loop.output, consumer)
        elif loop.prev_reads:
            await _demand_prev(loop, consumer)
    except BaseException as exc:  # cut short: its summary says why, then it goes on up
        stop_reason = _cut_short(cell, exc)
        raise
    finally:
        # (no await here: a cycle being cancelled still records what it got to do)
        _summarise(cell, frame, until, stop_reason, cleanup(frame))
    return output


def _cut_short(cell: LazyNode, exc: BaseException) -> str:
    """Why a cycle ended before `until` was decided or the loop's output evaluated:
    `timeout` (the loop's `timeout_ms`), `deadline` (the request's `deadline_ms`),
    `cancelled` (anything else that cancelled it: an enclosing loop's timeout, the end of
    the request that no longer needs a speculative loop, its caller) or `failed` (a body
    node it needed failed, or `until` or an output expression did)."""
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return "failed"
    req = cell.frame.req
    now = req.clock()
    timeout_ms = cell.node.timeout_ms
    if timeout_ms is not None and cell.t0 >= 0 and now >= cell.t0 + timeout_ms / 1000:
        return "timeout"
    if req.deadline is not None and now >= req.deadline:
        return "deadline"
    return "cancelled"


async def _demand_prev(loop: CompiledLoop, consumer: Consumer) -> None:
    """Another cycle follows: what it reads as `prev.X` is demanded (joined if speculative).

    Raises:
        InputFailed: one of them failed (an optional one is none instead).
    """
    needed: list[LazyNode] = []
    consumer.pending(loop.prev_reads, needed)
    if needed:
        await consumer.demand_all(needed)


def _stop_reason(cell: LazyNode, loop: CompiledLoop, cycle: int, until: Any) -> str | None:
    req = cell.frame.req
    loop_id = cell.node.id
    if until:
        req.event(EventType.LOOP_UNTIL_MET, loop_id, cycle=cycle, decision="stop")
        return "until_met"
    if cycle >= loop.max_cycles:
        req.event(
            EventType.LOOP_MAX_CYCLES,
            loop_id,
            cycle=cycle,
            decision="stop",
            payload={"max_cycles": loop.max_cycles},
        )
        return "max_cycles"
    if req.check_soft_deadline():
        req.event(
            EventType.LOOP_STOPPED_SOFT_DEADLINE,
            loop_id,
            cycle=cycle,
            decision="stop",
            payload={"elapsed_ms": round(req.elapsed_ms(), 3)},
        )
        return "soft_deadline"
    return None


def _summarise(
    cell: LazyNode, frame: Frame, until: Any, stop_reason: str | None, cancelled: list[str]
) -> None:
    executed: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    gone: list[str] = list(cancelled)
    for node_id in frame.scope.order:
        body_cell = frame.cells.get(node_id)
        if body_cell is None or node_id in gone:
            continue
        status = body_cell.status
        run_status = body_cell.run_status
        if status is CANCELLED or run_status is NodeStatus.CANCELLED:
            gone.append(node_id)
        elif run_status is NodeStatus.SKIPPED:
            skipped.append(node_id)
        elif status is FAILED or run_status in (NodeStatus.FAILED, NodeStatus.TIMED_OUT):
            failed.append(node_id)
        elif status is FINISHED:
            executed.append(node_id)
    frame.req.cycle_trace(
        frame.cycle,
        CYCLE_SUMMARY,
        {
            "loop": cell.node.id,
            "cycle": frame.cycle,
            "scheduler_strategy": "speculative" if frame.spec_cells else "on_demand",
            "modules_planned": list(frame.scope.order),
            "modules_executed": executed,
            "modules_skipped": skipped,
            "modules_failed": failed,
            "modules_cancelled": gone,
            "modules_speculative": [c.node.id for c in frame.spec_cells if c.speculative],
            "until": _plain(until),
            "next_action": "continue" if stop_reason is None else "stop",
            "stop_reason": stop_reason,
        },
    )


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
