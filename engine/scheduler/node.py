"""Running one node: guard, config, attempts with timeouts and retries, and its final fate.

`NodeRunner` is the scheduler's executor. A node runs inline in the task that demanded
it; only speculative starts (and nodes a speculative task needs) get a task of their own,
each under its own `CancelScope` kept on the lazy node, so a short-circuit cancels exactly
that branch. Every failure becomes a value (`Outcome`) and then the lazy node's state:
nothing here lets an exception escape into a task group.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ValidationError

from engine.errors import EvaluationError, NodeError, NodeTimeout, TransientError
from engine.events import EventType, NodeOutcome, NodeStatus
from engine.expr.wording import config_problem
from engine.graph.compiled import LOOP_SCOPE_NAMES, SCOPE_NAMES
from engine.logs import get_logger
from engine.scheduler.backend import cancelled_by_itself
from engine.scheduler.frame import (
    Consumer,
    InputFailed,
    claim_single,
    demand_all,
    evaluate,
    mark_used,
    note_read,
)
from engine.scheduler.lazy import CANCELLED, FAILED, FINISHED, PENDING, RUNNING, LazyNode
from engine.scheduler.request import NodeCtx, describe_error

if TYPE_CHECKING:
    from engine.expr.expression import Expr
    from engine.graph.compiled import CompiledNode
    from engine.plugin.context import SharedState
    from engine.scheduler.backend import Backend

__all__ = ["NodeRunner", "Outcome"]

_log = get_logger("moat.scheduler")


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


def _failure(exc: BaseException, node_id: str) -> Outcome | None:
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


_OUTCOMES = {status: NodeOutcome.NONE for status in NodeStatus} | {
    NodeStatus.SUCCEEDED: NodeOutcome.USED
}
"""What became of a node run's result, by how it ended (speculative runs aside)."""

_GATE_PAYLOADS: dict[Expr | None, dict[str, str | None]] = {}
"""`GATE_DECISION` payloads by guard, shared by the events (never changed once recorded)."""
_GUARD = ("guard",)

_GATED = object()
"""A node with a guard, retries, a timeout or a loop: the full path."""
_PLAIN = object()
"""A node whose config reads the same nodes on every evaluation."""
_CONDITIONAL = object()
"""A node whose config has conditional parts, but nothing else to gate its run."""


class _Plan:
    """How one compiled node runs, worked out on its first run in a runner.

    Attributes:
        kind: `_GATED`, `_PLAIN` or `_CONDITIONAL`.
        inputs: the nodes a plain node's `with:` reads on every evaluation, sorted (so
            concurrent demands start in a stable order).
        config: the validated config of a node whose `with:` reads nothing, shared by
            every run.
    """

    __slots__ = ("_validate", "config", "inputs", "kind")

    def __init__(self, node: CompiledNode) -> None:
        template = node.config
        gated = node.loop is not None or node.when is not None or node.timeout_ms is not None
        if gated or node.retries:
            self.kind = _GATED
        elif template.constant or len(template.names) == len(template.certain):
            self.kind = _PLAIN
        else:
            self.kind = _CONDITIONAL
        self.inputs = tuple(sorted(template.certain - SCOPE_NAMES - LOOP_SCOPE_NAMES))
        self.config: BaseModel | None = None
        # The model's own validator (the registry saw to it that the model is built),
        # called as `model_validate` would but without the keyword arguments it passes on
        # every call, which cost about as much as validating a small config.
        self._validate: Callable[[Any], BaseModel] | None = (
            None if node.impl is None else node.impl.Config.__pydantic_validator__.validate_python
        )

    def validated(self, node: CompiledNode, raw: Any) -> BaseModel:
        """The node's `Config` from its built `with:` value.

        Raises:
            NodeError: the value is not a valid config; the message lists the problems.
        """
        validate = self._validate
        assert validate is not None
        try:
            return validate(raw)
        except ValidationError as exc:
            raise NodeError(
                f"invalid `with:` for a '{node.type_name}' node: {_validation_summary(exc)}",
                node_id=node.id,
            ) from exc

    def read_inputs(self, cell: LazyNode) -> list[LazyNode] | None:
        """Note the inputs of a plain node as read; those not resolved yet, or None.

        Raises:
            InputFailed: one of them already failed.
        """
        frame = cell.frame
        cells = frame.cells
        reads = cell.reads
        waiting: list[LazyNode] | None = None
        for name in self.inputs:
            dep = cells.get(name) or frame.cell(name)
            if dep is None:
                continue
            if reads is None:
                reads = cell.reads = [dep]  # exactly sized: most nodes read one node
                note_read(dep, cell, cell.node.id)
            elif dep not in reads:  # (its `speculative:` expression may have read it)
                reads.append(dep)
                note_read(dep, cell, cell.node.id)
            status = dep.status
            if status is FINISHED:
                continue
            if status is FAILED or status is CANCELLED:
                raise InputFailed(dep)
            if waiting is None:
                waiting = [dep]
            else:
                waiting.append(dep)
        return waiting

    def configure(self, cell: LazyNode) -> BaseModel:
        """A plain node's config from its resolved inputs (kept when it reads nothing).

        Raises:
            NodeError: the config is not valid.
            EvaluationError: an expression in `with:` failed.
        """
        node = cell.node
        template = node.config
        scope = cell.frame.fixed
        reads = cell.reads
        if reads:  # a plain mapping: cheaper to build than a `Consumer` is to read
            scope = scope.copy()
            for dep in reads:
                scope[dep.node.id] = dep.result
        try:
            raw = template.build(scope)
        except Exception:
            raw = template.evaluate(scope)  # raises the error it is, naming the key
        config = self.validated(node, raw)
        if template.constant:
            self.config = config
        return config


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError | TimeoutError)


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(config)"
        parts.append(f"{where}: {config_problem(err)}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


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
        self._plans: dict[int, _Plan] = {}
        self._sorted: dict[frozenset[str], tuple[str, ...]] = {}

    # -- caches ---------------------------------------------------------------------------

    def sorted_names(self, names: frozenset[str]) -> tuple[str, ...]:
        """`names` sorted, so concurrent demands start in a stable order."""
        found = self._sorted.get(names)
        if found is None:
            found = self._sorted[names] = tuple(sorted(names))
        return found

    def _plan(self, node: CompiledNode) -> _Plan:
        plan = self._plans[id(node)] = _Plan(node)
        return plan

    def busy_input(self, cell: LazyNode) -> LazyNode | None:
        """An input `cell` reads on every path that is still running, or None.

        Inputs nobody has started yet are searched in turn: a node two steps downstream
        of a running one cannot start before it either.
        """
        plan = self._plans.get(id(cell.node)) or self._plan(cell.node)
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
        plan = self._plans.get(id(cell.node)) or self._plan(cell.node)
        if plan.kind is not _PLAIN:
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
        plan = self._plans.get(id(node)) or self._plan(node)
        cell.t0 = cell.frame.req.clock()
        if plan.kind is _GATED:
            await self._execute_gated(cell, spawn)
            return
        outcome: Outcome | None = None
        try:
            cell.attempts = 1
            if plan.kind is _PLAIN:
                config = plan.config
                if config is None:
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
                config = self.validated(node, await evaluate(node.config, consumer))
            output = await node.impl.run(config, NodeCtx(cell, self.shared))  # type: ignore[union-attr]
            if not isinstance(output, node.impl.Output):  # type: ignore[union-attr]
                output = self._checked(cell, output)  # raises
            cell.finish(output, NodeStatus.SUCCEEDED)
        except BaseException as exc:  # the node or an input failed: a value from here on
            outcome = _failure(exc, node.id)
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
            failed = _failure(exc, cell.node.id)
            if failed is None:  # cancelled
                self.cancelled(cell)
                raise
            outcome = failed
        self.resolve(cell, outcome)
        self.finished(cell)

    def validated(self, node: CompiledNode, raw: Any) -> BaseModel:
        """The node's `Config` from its built `with:` value."""
        plan = self._plans.get(id(node)) or self._plan(node)
        return plan.validated(node, raw)

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
        return self.validated(node, await evaluate(node.config, consumer))

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
            return Outcome(output, NodeStatus.SUCCEEDED)
        return await self._retrying(cell, config, ctx)

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
            raise NodeError(
                f"run() returned {type(output).__name__}, expected {type(impl).__name__}.Output",
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
