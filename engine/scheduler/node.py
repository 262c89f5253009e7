"""Running one node: guard, config, attempts with timeouts and retries, and its final fate.

`NodeRunner` is the scheduler's executor. A node runs inline in the task that demanded
it; only speculative starts (and nodes a speculative task needs) get a task of their own,
each under its own `CancelScope` kept on the lazy node, so a short-circuit cancels exactly
that branch. Every failure becomes a value (`Outcome`, `_outcome.py`) and then the lazy
node's state: nothing here lets an exception escape into a task group. How each node runs
is worked out on its first run (`Plan`, `_plan.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel

from engine.errors import EvaluationError, NodeError, NodeTimeout, TransientError
from engine.events import EventType, NodeOutcome, NodeStatus
from engine.logs import get_logger
from engine.scheduler._outcome import Outcome, failure
from engine.scheduler._plan import GATED, PLAIN, Plan
from engine.scheduler.frame import (
    Consumer,
    InputFailed,
    claim_single,
    demand_all,
    evaluate,
    mark_used,
)
from engine.scheduler.lazy import FINISHED, PENDING, RUNNING, LazyNode
from engine.scheduler.request import NodeCtx, describe_error

if TYPE_CHECKING:
    from engine.expr.expression import Expr
    from engine.plugin.context import SharedState
    from engine.scheduler.backend import Backend

__all__ = ["NodeRunner", "Outcome"]

_log = get_logger("moat.scheduler")

_OUTCOMES = {status: NodeOutcome.NONE for status in NodeStatus} | {
    NodeStatus.SUCCEEDED: NodeOutcome.USED
}
"""What became of a node run's result, by how it ended (speculative runs aside)."""

_GATE_PAYLOADS: dict[Expr | None, dict[str, str | None]] = {}
"""`GATE_DECISION` payloads by guard, shared by the events (never changed once recorded)."""
_GUARD = ("guard",)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError | TimeoutError)


class NodeRunner:
    """Runs lazy nodes for every request of one runner.

    Args:
        backend: the running backend (its tasks run speculative nodes).
        shared: state shared across requests (`ctx.shared`).
        run_loop: runs a loop node's cycles (injected to keep modules acyclic).
    """

    __slots__ = (
        "_plans",
        "_run_loop",
        "_sorted",
        "new_scope",
        "new_waiter",
        "shared",
        "tasks",
        "together",
    )

    def __init__(
        self,
        backend: Backend,
        shared: SharedState,
        run_loop: Callable[[NodeRunner, LazyNode, Consumer], Awaitable[Any]],
    ) -> None:
        self.tasks = backend.tasks
        self.new_waiter = backend.new_waiter
        """Makes what a task waits on until a lazy node resolves (`Executor.new_waiter`)."""
        self.new_scope = backend.new_scope
        self.together = backend.together
        """Runs nodes demanded together side by side (`Executor.together`)."""
        self.shared = shared
        self._run_loop = run_loop
        self._plans: dict[int, Plan] = {}
        self._sorted: dict[frozenset[str], tuple[str, ...]] = {}

    # -- caches ---------------------------------------------------------------------------

    def sorted_names(self, names: frozenset[str]) -> tuple[str, ...]:
        """`names` sorted, so concurrent demands start in a stable order."""
        found = self._sorted.get(names)
        if found is None:
            found = self._sorted[names] = tuple(sorted(names))
        return found

    def _plan(self, cell: LazyNode) -> Plan:
        # (a node's frames are all under a loop with a timeout, or none is)
        plan = self._plans[id(cell.node)] = Plan(cell.node, cell.frame.fence >= 0)
        return plan

    def busy_input(self, cell: LazyNode) -> LazyNode | None:
        """An input `cell` reads on every path that is still running, or None.

        Inputs nobody has started yet are searched in turn: a node two steps downstream
        of a running one cannot start before it either.
        """
        plan = self._plans.get(id(cell.node)) or self._plan(cell)
        frame = cell.frame
        for name in plan.inputs:
            dep = frame.cell(name)
            if dep is None:
                continue  # `input`, `policy`, ...
            if dep.status is RUNNING:
                return dep
            if dep.status is PENDING:
                found = self.busy_input(dep)
                if found is not None:
                    return found
        return None

    def only_pending_input(self, cell: LazyNode) -> LazyNode | None:
        """The one input a plain `cell` has left to wait for, when that is all it waits for.

        A plain node (no guard, timeout, retries or loop; a config reading the same nodes
        on every path) demands its inputs as soon as it starts: with a single one still
        pending, running that input first and the node after it, in the same task, starts
        everything when it would have started anyway, without a task for the input.
        """
        plan = self._plans.get(id(cell.node)) or self._plan(cell)
        if plan.kind is not PLAIN:
            return None
        frame = cell.frame
        found: LazyNode | None = None
        for name in plan.inputs:
            dep = frame.cell(name)
            if dep is None or dep.status is FINISHED:
                continue
            if found is not None or dep.status is not PENDING:
                return None
            found = dep
        return found

    # -- running a node in the current task ---------------------------------------------

    async def execute(self, cell: LazyNode, spawn: bool) -> None:
        """Run a claimed node here: guard, config, attempts; record its fate.

        Never raises, except the cancellation of the current task (then the node is
        recorded as cancelled). A node without guard, retries, timeout or loop runs on a
        short path, one coroutine frame per node; a plain one (no conditional config)
        also runs a single pending input right here, so a chain of inline nodes costs
        one frame per node, and builds its config from its inputs without a `Consumer`.
        """
        node = cell.node
        plan = self._plans.get(id(node)) or self._plan(cell)
        cell.t0 = cell.frame.req.clock()
        if plan.kind is GATED:
            await self._execute_gated(cell, spawn)
            return
        outcome: Outcome | None = None
        try:
            cell.attempts = 1
            if plan.kind is PLAIN:
                waiting = plan.read_inputs(cell)
                if waiting is not None:
                    dep = claim_single(waiting, spawn)
                    if dep is None:
                        await demand_all(self, waiting, spawn, node.id)
                    else:  # one input to run right here: no task, no wait
                        waiting = None  # not kept alive while the input runs
                        await self.execute(dep, False)
                        if dep.status is not FINISHED:
                            raise InputFailed(dep)
                config = plan.configure(cell)
            else:
                consumer = Consumer(cell.frame, cell, spawn, node.id)
                config = self.validated(cell, await evaluate(node.config, consumer))
            output = await node.impl.run(config, NodeCtx(cell, self.shared))  # type: ignore[union-attr]
            if not isinstance(output, node.impl.Output):  # type: ignore[union-attr]
                output = self._checked(cell, output)  # raises
            outcome = self._finish(cell, output)
        except BaseException as exc:  # the node or an input failed: a value from here on
            outcome = failure(exc, node.id)
            if outcome is None:  # cancelled
                self.cancelled(cell)
                raise
        if outcome is not None:
            self.resolve(cell, outcome)
        if cell.speculative:
            self.finished(cell)
        else:  # `finished`, inline: every node run ends here
            cell.frame.req.settle(cell, _OUTCOMES[cell.run_status])  # type: ignore[index]

    async def _execute_gated(self, cell: LazyNode, spawn: bool) -> None:
        """`execute` for a node with a guard, retries, a timeout or a loop."""
        try:
            outcome = await self._gate_then_run(
                cell, Consumer(cell.frame, cell, spawn, cell.node.id)
            )
        except BaseException as exc:
            failed = failure(exc, cell.node.id)
            if failed is None:  # cancelled
                self.cancelled(cell)
                raise
            outcome = failed
        self.resolve(cell, outcome)
        self.finished(cell)

    def validated(self, cell: LazyNode, raw: Any) -> BaseModel:
        """The node's `Config` from its built `with:` value."""
        plan = self._plans.get(id(cell.node)) or self._plan(cell)
        return plan.validated(cell.node, raw)

    async def _gate_then_run(self, cell: LazyNode, consumer: Consumer) -> Outcome:
        when = cell.node.when
        if when is not None:
            try:
                allowed = await evaluate(when, consumer)
            except InputFailed as exc:
                return Outcome.from_input(exc)
            except EvaluationError as exc:
                return Outcome(None, NodeStatus.FAILED, exc, cell.node.id)
            if not self.gate(cell, allowed):
                return Outcome(None, NodeStatus.SKIPPED)
        return await self.outcome(cell, consumer)

    def gate(self, cell: LazyNode, allowed: Any, reason: str = "guard") -> bool:
        """Record the guard's decision (`GATE_DECISION`); True when the node may run."""
        run = bool(allowed)
        when = cell.node.when
        payload = _GATE_PAYLOADS.get(when)
        if payload is None:
            if len(_GATE_PAYLOADS) >= 4096:  # one per guard: only many graphs get here
                _GATE_PAYLOADS.clear()
            payload = _GATE_PAYLOADS[when] = {"when": when.source if when else None}
        cell.frame.req.node_event(
            cell,
            EventType.GATE_DECISION,
            decision="run" if run else "skip",
            reason_codes=_GUARD if reason == "guard" else (reason,),
            payload=payload,
        )
        return run

    async def outcome(self, cell: LazyNode, consumer: Consumer) -> Outcome:
        """Build the config and run the node (or the loop); failures become values."""
        node = cell.node
        try:
            if node.loop is not None:
                return await self._loop(cell, consumer)
            config = await self._config(cell, consumer)
        except InputFailed as exc:
            return Outcome.from_input(exc)
        except Exception as exc:
            return Outcome(None, NodeStatus.FAILED, exc, node.id)
        return await self._attempts(cell, config)

    async def _loop(self, cell: LazyNode, consumer: Consumer) -> Outcome:
        cell.attempts = 1
        timeout_ms = cell.node.timeout_ms
        if timeout_ms is None:
            return Outcome(await self._run_loop(self, cell, consumer), NodeStatus.SUCCEEDED)
        value: Any = None
        with anyio.move_on_after(timeout_ms / 1000) as scope:
            value = await self._run_loop(self, cell, consumer)
        if scope.cancel_called:  # (also when a node swallowed the cancellation and returned)
            return Outcome(None, NodeStatus.TIMED_OUT, self._timeout(cell, 1), cell.node.id)
        return Outcome(value, NodeStatus.SUCCEEDED)

    async def _config(self, cell: LazyNode, consumer: Consumer) -> BaseModel:
        node = cell.node
        return self.validated(cell, await evaluate(node.config, consumer))

    async def _attempts(self, cell: LazyNode, config: BaseModel) -> Outcome:
        node = cell.node
        ctx = NodeCtx(cell, self.shared)
        if not node.retries and node.timeout_ms is None:
            cell.attempts = 1
            impl = node.impl
            assert impl is not None
            try:
                output = self._checked(cell, await impl.run(config, ctx))
            except Exception as exc:
                return Outcome.from_error(exc, node.id)
            outcome = Outcome(output, NodeStatus.SUCCEEDED)
        else:
            outcome = await self._retrying(cell, config, ctx)
        req = cell.frame.req
        if req.deadline is not None and outcome.error is None and req.clock() >= req.deadline:
            return self._late(cell)
        return outcome

    def _finish(self, cell: LazyNode, output: BaseModel) -> Outcome | None:
        """Resolve `cell` with the value its run returned; once the request's deadline has
        passed, the value is late: the timed-out outcome to resolve it with instead."""
        req = cell.frame.req
        if req.deadline is None:
            cell.finish(output, NodeStatus.SUCCEEDED)
            return None
        now = req.clock()  # (read once: `finish` needs it too)
        if now >= req.deadline:
            return self._late(cell)
        cell.finish(output, NodeStatus.SUCCEEDED, now)
        return None

    def _late(self, cell: LazyNode) -> Outcome:
        """A run that returned once the request's deadline had passed: it caught the
        cancellation the deadline sent it, or blocked the event loop. Its value came too
        late to be part of the answer, so it is not one."""
        req = cell.frame.req
        deadline_ms = req.graph.budget.deadline_ms
        assert deadline_ms is not None  # (the request has a deadline)
        error = NodeTimeout(
            f"returned {req.elapsed_ms() - deadline_ms:.0f} ms after the request's "
            f"deadline_ms={deadline_ms:g} had passed; its value is not used (let the "
            "cancellation the deadline sends reach the end of run(): never catch it "
            "without raising it again, and keep blocking work off the event loop with "
            "`await anyio.to_thread.run_sync(...)`)",
            node_id=cell.node.id,
            request_id=req.info.id,
        )
        return Outcome(None, NodeStatus.TIMED_OUT, error, cell.node.id)

    async def _retrying(self, cell: LazyNode, config: BaseModel, ctx: NodeCtx) -> Outcome:
        node = cell.node
        req = cell.frame.req
        attempt = 0
        while True:
            attempt += 1
            cell.attempts = attempt
            try:
                return Outcome(
                    await self._attempt(cell, config, ctx, attempt), NodeStatus.SUCCEEDED
                )
            except Exception as exc:
                if attempt > node.retries or not _retryable(exc):
                    return Outcome.from_error(exc, node.id)
                delay = req.backoff_s(attempt, getattr(exc, "retry_after_s", None))
                req.node_event(
                    cell,
                    EventType.NODE_RETRY,
                    decision="retry",
                    reason_codes=(type(exc).__name__,),
                    payload={
                        "attempt": attempt,
                        "error": describe_error(node.id, exc),
                        "delay_ms": round(delay * 1000, 3),
                    },
                )
            await anyio.sleep(delay)

    async def _attempt(
        self, cell: LazyNode, config: BaseModel, ctx: NodeCtx, attempt: int
    ) -> BaseModel:
        node = cell.node
        impl = node.impl
        assert impl is not None
        timeout_ms = node.timeout_ms
        if timeout_ms is None:
            output = await impl.run(config, ctx)
        else:
            output = None
            with anyio.move_on_after(timeout_ms / 1000) as scope:
                output = await impl.run(config, ctx)
            if scope.cancel_called:  # a value returned after the timeout is not an answer
                raise self._timeout(cell, attempt)
            if cell.frame.req.clock() > scope.deadline:  # no cancellation could reach it:
                raise self._timeout(cell, attempt, blocked=True)  # it blocked the loop
        return self._checked(cell, output)

    @staticmethod
    def _checked(cell: LazyNode, output: Any) -> BaseModel:
        impl = cell.node.impl
        if not isinstance(output, impl.Output):  # type: ignore[union-attr]
            missing = ""
            if isinstance(output, Awaitable):  # `return self.helper()`, an `await` left out
                missing = " (an `await` is missing: `return await ...`)"
                if isinstance(output, Coroutine):
                    output.close()  # never awaited: no warning from the collector later on
            raise NodeError(
                f"run() returned {type(output).__name__}{missing}, expected "
                f"{type(impl).__name__}.Output",
                node_id=cell.node.id,
            )
        return output

    def _timeout(self, cell: LazyNode, attempt: int, *, blocked: bool = False) -> NodeTimeout:
        timeout_ms = cell.node.timeout_ms
        req = cell.frame.req
        req.node_event(
            cell,
            EventType.NODE_TIMEOUT,
            decision="timeout",
            payload={"timeout_ms": timeout_ms, "attempt": attempt},
        )
        how = (
            " while blocking the event loop, where no cancellation could reach it (blocking "
            "work belongs in `await anyio.to_thread.run_sync(...)`)"
            if blocked
            else ""
        )
        return NodeTimeout(
            f"attempt {attempt} ran past timeout_ms={timeout_ms:g}{how}",
            node_id=cell.node.id,
            request_id=req.info.id,
        )

    # -- fates ----------------------------------------------------------------------------

    def resolve(self, cell: LazyNode, outcome: Outcome) -> None:
        """Apply an outcome: a value, or a failure (none for optional nodes)."""
        error = outcome.error
        if error is None:
            cell.finish(outcome.value, outcome.status)
            return
        node = cell.node
        root = outcome.error_node or node.id
        cell.frame.req.node_event(
            cell,
            EventType.NODE_FAILED,
            decision="optional" if node.optional else "fail",
            reason_codes=("input_failed",) if root != node.id else (type(error).__name__,),
            payload={"error": describe_error(root, error), "attempts": cell.attempts},
        )
        if node.optional:
            cell.error = error
            cell.error_node = root
            cell.finish(None, outcome.status)
        else:
            cell.fail(error, root, outcome.status)

    def finished(self, cell: LazyNode) -> None:
        """A node resolved: record it now unless a speculative result awaits its join."""
        if cell.speculative:
            if cell.demanded:
                mark_used(cell)
            elif cell.cancel_requested:
                discard(cell, completed_after_cancel=True)
            return
        cell.frame.req.settle(cell, _OUTCOMES[cell.run_status])  # type: ignore[index]

    def cancelled(self, cell: LazyNode) -> None:
        """The task running `cell` was cancelled: record when, and that it never finished."""
        cell.cancelled()
        req = cell.frame.req
        if cell.cancel_requested:
            req.node_event(
                cell,
                EventType.BRANCH_CANCELLED,
                decision="cancelled",
                duration_ms=round(cell.duration_ms, 3),
            )
        req.settle(cell, NodeOutcome.CANCELLED)

    # -- background tasks -----------------------------------------------------------------

    def spawn(self, cell: LazyNode, by: str) -> None:
        """Start a node a speculative task needs, in its own cancellable task."""
        cell.claim()
        if cell.frame.closed:  # the frame is done and its tasks are being cancelled
            cell.cancelled()
            return
        cell.speculative = True
        cell.frame.req.node_event(
            cell,
            EventType.SPECULATIVE_STARTED,
            decision="speculative",
            reason_codes=("input_of_speculative",),
            payload={"for": by},
        )
        self.start_task(cell, self.execute, cell, True)

    def detach(self, cell: LazyNode) -> None:
        """Run a pending node on demand in a task of its own, under its own cancel scope
        (`fence_out`): a loop with a timeout needs it from outside itself. The node is
        no speculative start; its frame's cleanup cancels it if it is still running."""
        cell.claim()
        frame = cell.frame
        if frame.closed:  # the frame is done and its tasks are being cancelled
            cell.cancelled()
            return
        if frame.detached is None:
            frame.detached = [cell]
        else:
            frame.detached.append(cell)
        earlier = cell.scope  # (a strategy being decided: nothing left for it to do)
        scope = cell.scope = self.new_scope()
        if earlier is not None:
            earlier.cancel()
        frame.req.task_started()
        self.tasks.start_soon(self._task, cell, scope, self.execute, (cell, False))

    def start_task(self, cell: LazyNode, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `fn(*args)` for `cell` in the background under the node's own cancel scope.

        A node whose `speculative:` strategy is still being decided in a task of its own
        can be started again by a speculative task that needs it: the deciding task then
        has nothing left to do and is cancelled, and the new task owns the run.
        """
        earlier = cell.scope
        scope = cell.scope = self.new_scope()
        if earlier is not None:
            earlier.cancel()
        spec_cells = cell.frame.spec_cells
        if cell not in spec_cells:  # (a handful per frame)
            spec_cells.append(cell)
        cell.frame.req.task_started()
        self.tasks.start_soon(self._task, cell, scope, fn, args)

    async def _task(
        self,
        cell: LazyNode,
        scope: anyio.CancelScope,
        fn: Callable[..., Awaitable[None]],
        args: tuple[Any, ...],
    ) -> None:
        try:
            with scope:
                if not scope.cancel_called:  # cancelled before its turn: the node never runs
                    await fn(*args)
        except Exception as exc:  # a bug must not take the runner's task group down
            _log.error("scheduler.task_crashed", node=cell.node.id, error=repr(exc))
            if not cell.done and cell.scope is scope:
                cell.fail(exc, cell.node.id, NodeStatus.FAILED)
                cell.frame.req.settle(cell, NodeOutcome.NONE)
        finally:
            # Only the node's latest task owns its run: an earlier one (a strategy being
            # decided) ending must neither forget the scope nor cancel the run.
            if cell.scope is scope:
                cell.scope = None  # the task is over: nothing left to cancel
                if cell.status is RUNNING and cell.speculative:
                    self.cancelled(cell)
            cell.frame.req.task_done()
            self.tasks.ended()


def discard(cell: LazyNode, *, completed_after_cancel: bool = False) -> None:
    """Nobody demanded a finished speculative node: record it as discarded."""
    if cell.settled:
        return
    req = cell.frame.req
    if not completed_after_cancel:
        req.node_event(cell, EventType.SPECULATIVE_JOIN_SKIPPED, decision="skip_join")
    req.node_event(
        cell,
        EventType.SPECULATIVE_RESULT_DISCARDED,
        decision="discarded",
        reason_codes=("completed_after_cancel",) if completed_after_cancel else ("not_demanded",),
    )
    req.settle(cell, NodeOutcome.DISCARDED)
