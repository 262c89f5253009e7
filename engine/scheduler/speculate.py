"""Speculation: starting nodes before anything demands them, short-circuits, and cleanup.

At the start of a frame (the request, or a loop cycle) every node that may run
speculatively is considered: a `speculative:` expression is decided (`STRATEGY_SELECTED`),
a guard that is already false skips the node, and otherwise the node starts in its own
task (`SPECULATIVE_STARTED`). A guard that is not decidable yet is watched beside the
running node and cancels it the moment it resolves false (`SHORT_CIRCUIT_TRIGGERED`).
When the frame's outputs are resolved, speculative work nobody demanded is cancelled if
still running and discarded if finished; demanded work was already joined and used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from engine.errors import EvaluationError
from engine.events import EventType, NodeOutcome, NodeStatus
from engine.scheduler.frame import Consumer, Frame, InputFailed, evaluate, mark_used, try_evaluate
from engine.scheduler.lazy import PENDING, RUNNING, LazyNode
from engine.scheduler.node import NodeRunner, Outcome, discard

if TYPE_CHECKING:
    from engine.expr.expression import Expr

__all__ = ["cleanup", "start_speculative"]


def start_speculative(ex: NodeRunner, frame: Frame) -> None:
    """Start (or decide about) every speculative node of `frame`."""
    for node_id in frame.scope.speculative:
        cell = frame.cell(node_id)
        if cell is None or cell.status is not PENDING:
            continue
        strategy = cell.node.speculative
        if strategy is True and cell.node.when is None:  # nothing to decide first
            _claim(cell)
            ex.start_task(cell, ex.execute, cell, True)
            continue
        consumer = Consumer(frame, cell, True, node_id)
        if strategy is not True:
            assert not isinstance(strategy, bool)
            decided, value = _try(strategy, consumer)
            if not decided:
                ex.start_task(cell, _decide_then_run, ex, cell, consumer)
                continue
            if not _strategy_selected(cell, value):
                cell.reads = None  # what the strategy read is not what the node will read
                continue
        _start(ex, cell, consumer)


def _try(expr: Expr, consumer: Consumer) -> tuple[bool, Any]:
    try:
        return try_evaluate(expr, consumer)
    except EvaluationError:
        return False, None  # evaluated for real (and failing visibly) in the task


_STRATEGY_PAYLOADS: dict[object, dict[str, Any]] = {}
"""`STRATEGY_SELECTED` payloads by strategy, shared by the events (never changed once
recorded)."""


def _strategy_selected(cell: LazyNode, value: Any) -> bool:
    speculative = bool(value)
    strategy = cell.node.speculative
    payload = _STRATEGY_PAYLOADS.get(strategy)
    if payload is None:
        if len(_STRATEGY_PAYLOADS) >= 4096:  # one per strategy: only many graphs get here
            _STRATEGY_PAYLOADS.clear()
        source = getattr(strategy, "source", strategy)
        payload = _STRATEGY_PAYLOADS[strategy] = {"speculative": source}
    cell.frame.req.node_event(
        cell,
        EventType.STRATEGY_SELECTED,
        decision="speculative" if speculative else "on_demand",
        payload=payload,
    )
    return speculative


def _start(ex: NodeRunner, cell: LazyNode, consumer: Consumer) -> None:
    guard_known = _pre_guard(ex, cell, consumer)
    if guard_known is None:
        return
    _claim(cell)
    if cell.node.when is None:  # nothing to race: the same path as a demanded node
        ex.start_task(cell, ex.execute, cell, True)
    else:
        ex.start_task(cell, run_speculative, ex, cell, consumer, guard_known)


def _pre_guard(ex: NodeRunner, cell: LazyNode, consumer: Consumer) -> bool | None:
    """Decide the guard now if it can be: None when false (skipped), else whether known."""
    when = cell.node.when
    if when is None:
        return False
    decided, value = _try(when, consumer)
    if decided and not value:
        cell.claim()
        cell.t0 = cell.frame.req.clock()
        ex.gate(cell, False, reason="speculative_start")
        cell.finish(None, NodeStatus.SKIPPED)
        cell.frame.req.settle(cell, NodeOutcome.NONE)
        return None
    return decided


def _claim(cell: LazyNode) -> None:
    cell.claim()
    cell.speculative = True
    cell.frame.req.node_event(cell, EventType.SPECULATIVE_STARTED, decision="speculative")


async def _decide_then_run(ex: NodeRunner, cell: LazyNode, consumer: Consumer) -> None:
    strategy = cell.node.speculative
    assert not isinstance(strategy, bool)
    try:
        value = await evaluate(strategy, consumer)
    except (InputFailed, EvaluationError):
        value = False
    if cell.status is not PENDING or cell.frame.closed:
        return  # demanded meanwhile (it runs on demand already), or no longer needed
    if not _strategy_selected(cell, value):
        cell.reads = None  # what the strategy read is not what the node will read
        return
    guard_known = _pre_guard(ex, cell, consumer)
    if guard_known is None:
        return
    _claim(cell)
    await run_speculative(ex, cell, consumer, guard_known)


async def run_speculative(
    ex: NodeRunner, cell: LazyNode, consumer: Consumer, guard_known: bool
) -> None:
    """The body of a speculative node's task (under the node's own cancel scope)."""
    cell.t0 = cell.frame.req.clock()
    outcome: Outcome | None = None
    done = False
    try:
        if cell.node.when is None or guard_known:
            if guard_known:
                ex.gate(cell, True, reason="speculative_start")
            outcome = await ex.outcome(cell, consumer)
        else:
            outcome = await _race_guard(ex, cell, consumer)
        done = True
    finally:
        if not done:
            ex.cancelled(cell)
    if outcome is not None:
        ex.resolve(cell, outcome)
        ex.finished(cell)


class _Race:
    __slots__ = ("cancel_attempted", "failure", "guard", "result")

    def __init__(self) -> None:
        self.guard: bool | None = None
        self.failure: Outcome | None = None
        self.result: Outcome | None = None
        self.cancel_attempted = False


async def _race_guard(ex: NodeRunner, cell: LazyNode, consumer: Consumer) -> Outcome | None:
    """Run the node while its guard resolves; None when the guard short-circuited it."""
    race = _Race()
    body = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_guard, ex, cell, consumer, body, race)
        with body:
            race.result = await ex.outcome(cell, consumer)
    if race.failure is not None:
        return race.failure
    if race.guard:
        return race.result
    _short_circuited(cell, race)
    return None


async def _watch_guard(
    ex: NodeRunner, cell: LazyNode, consumer: Consumer, body: anyio.CancelScope, race: _Race
) -> None:
    when = cell.node.when
    assert when is not None
    try:
        value = await evaluate(when, consumer)
    except InputFailed as exc:
        race.failure = Outcome.from_input(exc)
        body.cancel()
        return
    except Exception as exc:
        race.failure = Outcome(None, NodeStatus.FAILED, exc, cell.node.id)
        body.cancel()
        return
    if cell.cancel_requested:
        return  # the request no longer needs it and is cancelling it already
    race.guard = ex.gate(cell, value, reason="guard_resolved")
    if race.guard:
        return
    req = cell.frame.req
    req.node_event(
        cell,
        EventType.SHORT_CIRCUIT_TRIGGERED,
        decision="cancel" if race.result is None else "discard",
        payload={"when": when.source},
    )
    if race.result is None:
        race.cancel_attempted = True
        req.node_event(
            cell, EventType.BRANCH_CANCEL_ATTEMPTED, decision="cancel", reason_codes=("guard",)
        )
        body.cancel()


def _short_circuited(cell: LazyNode, race: _Race) -> None:
    """The guard resolved false: the node's value is none; record what became of its run."""
    req = cell.frame.req
    if race.result is None:
        cell.finish(None, NodeStatus.CANCELLED)
        req.node_event(
            cell,
            EventType.BRANCH_CANCELLED,
            decision="cancelled",
            duration_ms=round(cell.duration_ms, 3),
        )
        req.settle(cell, NodeOutcome.CANCELLED)
        return
    cell.finish(None, race.result.status)
    if race.cancel_attempted:
        req.node_event(cell, EventType.BRANCH_COMPLETED_AFTER_SHORT_CIRCUIT, decision="discard")
    req.node_event(
        cell, EventType.SPECULATIVE_RESULT_DISCARDED, decision="discarded", reason_codes=("guard",)
    )
    req.settle(cell, NodeOutcome.DISCARDED)


def cleanup(frame: Frame) -> list[str]:
    """The frame's outputs are resolved: cancel or discard speculative work left over.

    Returns:
        The ids of the nodes whose cancellation was requested.
    """
    cancelled: list[str] = []
    req = frame.req
    frame.closed = True
    for cell in frame.spec_cells:
        if cell.settled:
            continue
        status = cell.status
        if status is PENDING or (status is RUNNING and not cell.speculative):
            if cell.scope is not None:
                cell.scope.cancel()  # a strategy still deciding: nothing started
            continue
        if status is RUNNING:
            if cell.scope is not None:
                if not cell.demanded:
                    req.node_event(cell, EventType.SPECULATIVE_JOIN_SKIPPED, decision="skip_join")
                req.node_event(
                    cell,
                    EventType.BRANCH_CANCEL_ATTEMPTED,
                    decision="cancel",
                    reason_codes=("not_demanded",) if not cell.demanded else ("request_ended",),
                )
                cell.cancel_requested = True
                cell.scope.cancel()
                cancelled.append(cell.node.id)
            continue
        if cell.demanded:
            mark_used(cell)
        else:
            discard(cell)
    for cell in frame.detached or ():
        # a node a timed-out loop left running on demand (`fence_out`): nobody is left
        # to use it; its run records the cancellation
        if cell.status is RUNNING and cell.scope is not None:
            cell.scope.cancel()
            cancelled.append(cell.node.id)
    return cancelled
