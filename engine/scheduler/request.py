"""The per-request runtime: records, budgets, deadlines and the services nodes delegate to.

`RequestState` implements `engine.plugin.context.RequestRuntime`. It owns the request's event
sequence, turns node fates into `node_runs` and `llm_calls` rows, and knows the request's
clocks (hard and soft deadline) and cost budget. It holds no scheduling logic.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from engine.errors import ERROR_CHARS, NodeError, exception_text
from engine.events import (
    CallOutcome,
    DecisionTrace,
    EventType,
    LlmCall,
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    Record,
    now,
)
from engine.logs import get_logger
from engine.models import CallScope, Gateway, RequestBudget
from engine.plugin import event_names
from engine.plugin.context import ModelClient, NodeContext, RequestInfo, SharedState
from engine.scheduler.lazy import FINISHED

if TYPE_CHECKING:
    from engine.graph.compiled import Graph
    from engine.scheduler.frame import Frame
    from engine.scheduler.lazy import LazyNode

__all__ = ["ERROR_CHARS", "NodeCtx", "RequestState", "RequestView", "describe_error"]

_VALIDATION_PASSED = "VALIDATION_PASSED"
_VALIDATIONS = frozenset({_VALIDATION_PASSED, "VALIDATION_FAILED"})
"""The events the built-in `validate` node records its verdict with (`validated`)."""
_ALLOWED_EVENTS = event_names.ALLOWED
"""(node type, event name) pairs `ctx.emit` judged fine already: one lookup a call."""

SCHEDULER = "scheduler"
"""The `component` of events the scheduler itself records."""
REQUEST_STAGE = "request"
"""The `stage` of request-level events."""

_log = get_logger("moat.scheduler")
_node_log = get_logger("moat.node")

_CALL_OUTCOMES = {
    NodeOutcome.USED: CallOutcome.USED,
    NodeOutcome.DISCARDED: CallOutcome.DISCARDED,
    NodeOutcome.CANCELLED: CallOutcome.CANCELLED,
}


def describe_error(node_id: str, error: BaseException) -> str:
    """A one-line error naming the node: `node 'risk': ValueError: boom`.

    What a plugin's exception says is its author's: its text is cut to `ERROR_CHARS`
    and its control characters escaped, so an error fits a log line, a terminal and a
    store row, and one whose `__str__` raises is described by its type.
    """
    if isinstance(error, NodeError) and error.node_id == node_id:
        return exception_text(error)
    text = exception_text(error)
    prefix = f"node '{node_id}': "
    text = text.removeprefix(prefix)
    if isinstance(error, NodeError):
        return prefix + text
    return f"{prefix}{type(error).__name__}: {text}"


class NodeCtx(NodeContext):
    """The `NodeContext` the scheduler hands to a node run; remembers its lazy node.

    One is built for every node run, so it fills its slots straight from the lazy node
    instead of through `NodeContext`'s keyword arguments, and binds its logger to the
    run, request and node ids only when the node logs.
    """

    __slots__ = ("cell",)

    def __init__(self, cell: LazyNode, shared: SharedState) -> None:
        node = cell.node
        frame = cell.frame
        req = frame.req
        self.cell = cell
        self.node_id = node.id
        self.node_type = node.type_name
        self.request = req.info
        self.policy = req.policy
        self.cycle = frame.cycle
        self.speculative = cell.speculative
        self.shared = shared
        self._runtime = req

    def written(self, key: str) -> bool:
        """Whether the graph writes `with: key` itself rather than an expression making it."""
        made = self.cell.node.config.open_keys
        return made is not None and key not in made

    def after_success(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` after the request succeeds, off the response path (cache
        stores), and only if the request used this run's result: a speculative run
        nobody joined, or a run that failed or was cancelled, leaves nothing behind."""
        self._runtime.after_success(callback, self.cell)  # type: ignore[call-arg]

    def __getattr__(self, name: str) -> Any:
        # Only reached while the `log` slot is empty: bind on first use, then keep it.
        if name != "log":
            raise AttributeError(name)
        info = self.request
        log = _node_log.bind(run_id=info.run_id, request_id=info.id, node=self.node_id)
        self.log = log
        return log


class RequestState:
    """Everything one request owns while it runs (see module docstring).

    Args:
        graph: the graph being run.
        info: the request, as nodes see it (`ctx.request`): without hidden labels.
        labels: the request's hidden benchmark labels. They reach the model gateway only
            (`CallScope.request`, a copy of `info` that holds them, for the `sim`
            provider): a node plugin can read none of them, so no graph can score itself
            by the answer it is benchmarked against.
        policy_name: the pinned policy's name.
        policy_version: the pinned policy's version.
        policy: the pinned snapshot's body.
        sink_record: where records go.
        gateway: the model gateway, if the graph has models.
        clock: the backend's `current_time` (so a trio `MockClock` drives every duration).
    """

    __slots__ = (
        "_callbacks",
        "_idle",
        "_labelled",
        "_memos",
        "_rng",
        "_soft_emitted",
        "budget",
        "clock",
        "deadline",
        "degraded_reasons",
        "frame",
        "gateway",
        "graph",
        "info",
        "live",
        "policy",
        "policy_name",
        "policy_version",
        "record",
        "run_id",
        "seq",
        "soft_at",
        "spent_usd",
        "started_at",
        "t0",
        "validated",
    )

    def __init__(
        self,
        graph: Graph,
        info: RequestInfo,
        *,
        labels: Mapping[str, Any] | None = None,
        policy_name: str | None,
        policy_version: int | None,
        policy: Mapping[str, Any],
        sink_record: Callable[[Record], None],
        gateway: Gateway | None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.graph = graph
        self.clock = clock
        """`anyio.current_time` of the running backend, looked up once per runner."""
        self.info = info
        self._labelled = info if not labels else replace(info, labels=labels)
        """The request the model gateway sees (`CallScope.request`): `info` with its labels."""
        self.run_id = info.run_id
        self.policy_name = policy_name
        self.policy_version = policy_version
        self.policy = policy
        self.record = sink_record
        self.gateway = gateway
        self.seq = 0
        self.t0 = clock()
        self.started_at = now()
        budget = graph.budget
        self.deadline = None if budget.deadline_ms is None else self.t0 + budget.deadline_ms / 1000
        self.soft_at = (
            None if budget.soft_deadline_ms is None else self.t0 + budget.soft_deadline_ms / 1000
        )
        self._soft_emitted = False
        self.degraded_reasons: tuple[str, ...] = ()
        """Why a fallback model answered for this request (`MODEL_FALLBACK` reason codes)."""
        self.validated: bool | None = None
        """Whether the request's output validated: False once a node recorded
        `VALIDATION_FAILED`, else True once one recorded `VALIDATION_PASSED`, else None (the
        policy guard's `min_validation_success` counts these)."""
        self.budget = RequestBudget(budget.cost_usd)
        self.spent_usd = 0.0
        self.live = 0
        self._idle: anyio.Event | None = None
        self._callbacks: list[_Callback] | None = None
        self._memos: dict[str, _Memo] | None = None
        self._rng: random.Random | None = None
        self.frame: Frame | None = None
        """The request's top-level frame (set by the frame), released at its end."""

    # -- recording ----------------------------------------------------------------------

    def event(
        self,
        event_type: str,
        stage: str,
        *,
        component: str = SCHEDULER,
        cycle: int = 0,
        decision: str | None = None,
        reason_codes: Sequence[str] = (),
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        payload: Mapping[str, Any] | None = None,
        duration_ms: float | None = None,
        status: str | None = None,
    ) -> int:
        """Record one orchestration event; returns its sequence number."""
        return self._event(
            stage,
            component,
            cycle,
            event_type,
            decision,
            status,
            duration_ms,
            reason_codes,
            inputs,
            outputs,
            payload,
        )

    def node_event(
        self,
        cell: LazyNode,
        event_type: str,
        *,
        decision: str | None = None,
        reason_codes: Sequence[str] = (),
        payload: Mapping[str, Any] | None = None,
        duration_ms: float | None = None,
    ) -> int:
        """Record a scheduler event about one node (stage = node id, cycle = its cycle)."""
        return self._event(
            cell.node.id,
            SCHEDULER,
            cell.frame.cycle,
            event_type,
            decision,
            None,
            duration_ms,
            reason_codes,
            None,
            None,
            payload,
        )

    def _event(
        self,
        stage: str,
        component: str,
        cycle: int,
        event_type: str,
        decision: str | None,
        status: str | None,
        duration_ms: float | None,
        reason_codes: Sequence[str],
        inputs: Mapping[str, Any] | None,
        outputs: Mapping[str, Any] | None,
        payload: Mapping[str, Any] | None,
    ) -> int:
        # positional all the way: several events are recorded per request
        self.seq += 1
        self.record(
            OrchestrationEvent(
                self.run_id,
                self.info.id,
                cycle,
                stage,
                component,
                event_type,
                self.seq,
                decision,
                status,
                time.time(),
                duration_ms,
                reason_codes,
                inputs,
                outputs,
                payload,
            )
        )
        return self.seq

    def settle(self, cell: LazyNode, outcome: NodeOutcome) -> None:
        """The node's fate is final: record its `node_runs` row and its LLM calls."""
        if cell.settled:
            return
        cell.settled = True
        node = cell.node
        error = cell.error
        run_status = cell.run_status
        assert run_status is not None
        t0 = cell.t0
        self.record(
            NodeRun(
                self.info.id,
                node.id,
                node.type_name,
                cell.frame.cycle,
                run_status,
                cell.speculative,
                outcome,
                # Wall time derived from the backend's clock: one clock read per node run,
                # and under a mock clock the timeline stays in step with the durations.
                self.started_at + (t0 - self.t0) if t0 >= 0 else now(),
                cell.duration_ms,
                cell.attempts,
                None if error is None else describe_error(cell.error_node or node.id, error),
            )
        )
        if cell.calls:
            self._record_calls(cell.calls, outcome)

    def _record_calls(self, calls: list[LlmCall], outcome: NodeOutcome) -> None:
        # The calls are the node run's own (the gateway appends each attempt to the
        # run's list and records nothing): they are set right here, then recorded once.
        final = _CALL_OUTCOMES.get(outcome)
        for call in calls:
            self.spent_usd += call.cost_usd
            target = final
            status = call.status
            if status == "cancelled":
                target = CallOutcome.CANCELLED
            elif status != "ok" and final is not CallOutcome.CANCELLED:
                target = None  # a failed attempt: nothing came of it to use (`none`)
            elif final is CallOutcome.USED and call.call_outcome is not CallOutcome.NONE:
                target = None  # the gateway already said what it was
            if target is not None and target is not call.call_outcome:
                call.call_outcome = target
            self.record(call)

    def cycle_trace(self, cycle: int, stage: str, payload: Mapping[str, Any]) -> None:
        """Record a decision trace of the scheduler (`CYCLE_SUMMARY`)."""
        self.record(DecisionTrace(self.info.id, cycle, stage, payload))

    # -- clocks and budgets ---------------------------------------------------------------

    def elapsed_ms(self) -> float:
        """Milliseconds since the request started."""
        return (self.clock() - self.t0) * 1000

    def check_soft_deadline(self) -> bool:
        """True once the soft deadline has passed (records `BUDGET_SOFT_DEADLINE` once)."""
        soft_at = self.soft_at
        if soft_at is None:
            return False
        if self._soft_emitted:
            return True
        if self.clock() < soft_at:
            return False
        self._soft_emitted = True
        self.event(
            EventType.BUDGET_SOFT_DEADLINE,
            REQUEST_STAGE,
            decision="degraded",
            payload={
                "soft_deadline_ms": self.graph.budget.soft_deadline_ms,
                "elapsed_ms": round(self.elapsed_ms(), 3),
            },
        )
        return True

    def backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry `attempt` (exponential, full jitter, seeded)."""
        if retry_after_s is not None:
            return retry_after_s
        rng = self._rng
        if rng is None:
            rng = self._rng = random.Random(f"{self.info.seed}:{self.info.id}")
        return min(2.0, 0.05 * 2.0 ** (attempt - 1)) * (0.5 + rng.random() / 2)

    # -- background work ----------------------------------------------------------------

    def task_started(self) -> None:
        """A task of this request started in the runner's background group."""
        self.live += 1

    def task_done(self) -> None:
        """A background task of this request ended."""
        self.live -= 1
        if self.live == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no background task of this request is left."""
        if self.live:
            self._idle = anyio.Event()
            await self._idle.wait()

    def release(self) -> None:
        """The request is over and recorded: let go of its frames and lazy nodes.

        Frames and their lazy nodes point at each other; breaking those cycles here
        frees a finished request at once instead of leaving it to the cyclic garbage
        collector, whose passes over thousands of such requests cost more than the
        requests themselves.
        """
        frame, self.frame = self.frame, None
        if frame is not None:
            frame.release()
        # Memoised values and `after_success` callbacks are the nodes' closures, which
        # hold their contexts and through them this state.
        self._memos = None
        self._callbacks = _RAN

    @property
    def callbacks(self) -> list[_Callback]:
        """The `after_success` callbacks nodes registered, each with its node run (None
        when registered other than through a node run's context)."""
        return self._callbacks or []

    # -- RequestRuntime -------------------------------------------------------------------

    def model(self, name: str, ctx: NodeContext) -> ModelClient:
        """The logical model `name` for the node run of `ctx`, through the gateway.

        Raises:
            NodeError: the request has ended, or the runner has no gateway.
        """
        if self.frame is None and self._callbacks is _RAN:
            raise self._ended(ctx, "model()")
        if self.gateway is None:
            raise NodeError(
                f"model '{name}' asked for, but the runner has no model gateway",
                node_id=ctx.node_id,
                request_id=self.info.id,
            )
        cell = ctx.cell if isinstance(ctx, NodeCtx) else None
        calls: list[LlmCall] = []
        if cell is not None:
            if cell.calls is None:
                cell.calls = []
            calls = cell.calls
        scope = CallScope(
            request=self._labelled,
            node_id=ctx.node_id,
            cycle=ctx.cycle,
            node_attempt=max(cell.attempts - 1, 0) if cell is not None else 0,
            speculative=ctx.speculative,
            budget=self.budget,
            policy=self.policy,
            emit=partial(self._node_emit, ctx),
            calls=calls,
            deadline=self.deadline,
            degrade=self.note_degraded,
            clock=self.clock,
        )
        return self.gateway.client(name, scope)

    def emit(
        self,
        ctx: NodeContext,
        event_type: str,
        *,
        decision: str | None,
        reason_codes: Sequence[str],
        inputs: Mapping[str, Any] | None,
        outputs: Mapping[str, Any] | None,
        payload: Mapping[str, Any] | None,
        duration_ms: float | None,
    ) -> int:
        """Record an event a node emits (stage = node id, component = node type).

        Raises:
            NodeError: the name is malformed, the engine's own, or another node type's
                (`engine.plugin.event_names`); or the request has ended.
        """
        if self.frame is None and self._callbacks is _RAN:
            raise self._ended(ctx, "emit()")
        node_type = ctx.node_type
        if type(event_type) is not str or (node_type, event_type) not in _ALLOWED_EVENTS:
            refused = event_names.problem(node_type, event_type)
            if refused is not None:
                raise NodeError(refused, node_id=ctx.node_id, request_id=self.info.id)
        if event_type in _VALIDATIONS and self.validated is not False:
            self.validated = event_type == _VALIDATION_PASSED
        return self._event(
            ctx.node_id,
            node_type,
            ctx.cycle,
            event_type,
            decision,
            None,
            duration_ms,
            reason_codes,
            inputs,
            outputs,
            payload,
        )

    def _node_emit(
        self,
        ctx: NodeContext,
        event_type: str,
        *,
        decision: str | None = None,
        reason_codes: Sequence[str] = (),
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        payload: Mapping[str, Any] | None = None,
        duration_ms: float | None = None,
    ) -> int:
        """Record an event for the node of `ctx`, unchecked: the gateway's own events
        (`BUDGET_COST_EXCEEDED`, `CIRCUIT_OPENED`, ...) about the node's model calls."""
        if event_type in _VALIDATIONS and self.validated is not False:
            self.validated = event_type == _VALIDATION_PASSED
        return self._event(
            ctx.node_id,
            ctx.node_type,
            ctx.cycle,
            event_type,
            decision,
            None,
            duration_ms,
            reason_codes,
            inputs,
            outputs,
            payload,
        )

    def trace(self, ctx: NodeContext, stage: str, payload: Mapping[str, Any]) -> None:
        """Record a decision trace a node emits.

        Raises:
            NodeError: the request has ended.
        """
        if self.frame is None and self._callbacks is _RAN:
            raise self._ended(ctx, "trace()")
        self.record(DecisionTrace(self.info.id, ctx.cycle, stage, payload))

    async def memo(
        self, ctx: NodeContext, key: str, factory: Callable[[], Awaitable[Any]]
    ) -> tuple[Any, bool]:
        """The value under `key`, computed once per request; concurrent callers wait.

        Raises:
            NodeError: the request has ended.
        """
        memos = self._memos
        if memos is None:
            if self.frame is None and self._callbacks is _RAN:
                raise self._ended(ctx, "memo()")
            memos = self._memos = {}
        while True:
            entry = memos.get(key)
            if entry is None:
                return await self._compute_memo(memos, key, factory), False
            await entry.event.wait()
            if entry.ok:
                self.event(
                    EventType.RESULT_REUSED,
                    ctx.node_id,
                    cycle=ctx.cycle,
                    decision="reused",
                    payload={"memo": key},
                )
                return entry.value, True

    async def _compute_memo(
        self, memos: dict[str, _Memo], key: str, factory: Callable[[], Awaitable[Any]]
    ) -> Any:
        entry = memos[key] = _Memo()
        try:
            entry.value = await factory()
            entry.ok = True
        finally:
            if not entry.ok:
                del memos[key]  # let a later caller try again
            entry.event.set()
        return entry.value

    def _ended(self, ctx: NodeContext, call: str) -> NodeError:
        """The error for a node's context used once its request has ended (recorded and
        released): what it did then would be put on a request whose record is written,
        or, from another request's run, on the wrong request; a model call would be
        neither recorded nor counted in any request's cost."""
        return NodeError(
            f"ctx.{call} called after request '{self.info.id}' had ended; a NodeContext "
            "serves only the run it was given to: use it while run() runs, or in an "
            "`after_success` callback",
            node_id=ctx.node_id,
            request_id=self.info.id,
        )

    def after_success(
        self, callback: Callable[[], Awaitable[None]], cell: LazyNode | None = None
    ) -> None:
        """Run `callback` after the request succeeds, off the response path, if the node
        run `cell` that registers it (when given) is one whose result the request used.

        Raises:
            RuntimeError: the request has ended, or its callbacks are running (a callback
                that registered another would keep the request from ever ending).
        """
        callbacks = self._callbacks
        if callbacks is _RAN:
            raise RuntimeError(
                "after_success() called once the request had ended; register callbacks "
                "while the node runs"
            )
        if callbacks is None:
            callbacks = self._callbacks = []
        callbacks.append((callback, cell))

    @property
    def remaining_ms(self) -> float | None:
        """Milliseconds left before the hard deadline, or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - self.clock()) * 1000)

    @property
    def remaining_usd(self) -> float | None:
        """Dollars left in the request's cost budget, or None without one."""
        return self.budget.remaining_usd

    @property
    def degraded(self) -> bool:
        """True once the soft deadline has passed, or a fallback model has answered."""
        return self.check_soft_deadline() or bool(self.degraded_reasons)

    def note_degraded(self, reason: str) -> None:
        """A fallback model answered for a remote one, for `reason` (a reason code)."""
        if reason not in self.degraded_reasons:
            self.degraded_reasons = (*self.degraded_reasons, reason)

    async def run_callbacks(self) -> None:
        """Run the `after_success` callbacks, each for `AFTER_SUCCESS_S` at most; one that
        fails or runs out of time is logged, never raised (the request is answered), and
        one registered from now on is refused."""
        callbacks, self._callbacks = self.callbacks, _RAN
        for callback, cell in callbacks:
            if cell is not None and not _used(cell):
                continue  # what the run did was not part of the answer: nor is its aftermath
            problem: str | None = None
            with anyio.move_on_after(AFTER_SUCCESS_S) as scope:
                try:
                    await callback()
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:
                    problem = exception_text(exc, with_type=True)
                except BaseException as exc:  # (exit(), a BaseException of its own)
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    problem = exception_text(exc, with_type=True)
            if scope.cancelled_caught:
                problem = f"still running after {AFTER_SUCCESS_S:g} s: cancelled"
            if problem is not None:
                _log.warning(
                    "after_success.failed",
                    request_id=self.info.id,
                    callback=getattr(callback, "__qualname__", type(callback).__name__),
                    error=problem,
                )


AFTER_SUCCESS_S = 10.0
"""How long one `after_success` callback may run before it is cancelled."""
_Callback = tuple[Callable[[], Awaitable[None]], "LazyNode | None"]
"""An `after_success` callback and the node run that registered it."""
_RAN: list[_Callback] = []
"""The callbacks of a request that has ended or runs its callbacks: no more are taken."""


def _used(cell: LazyNode) -> bool:
    """Whether the request used the result of the node run `cell`: it succeeded, and
    something demanded it (a speculative run nobody joined was discarded or cancelled)."""
    return cell.status is FINISHED and cell.run_status is NodeStatus.SUCCEEDED and cell.demanded


class _Memo:
    __slots__ = ("event", "ok", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.ok = False
        self.value: Any = None


class RequestView(Mapping[str, Any]):
    """`request` in expressions: id, tenant, degraded, remaining_ms, remaining_usd and
    policy_version (the version the request pinned; None without a store)."""

    __slots__ = ("_state",)
    _KEYS = ("id", "tenant", "degraded", "remaining_ms", "remaining_usd", "policy_version")

    def __init__(self, state: RequestState) -> None:
        self._state = state  # the state never points back: no cycle to collect

    def __getitem__(self, key: str) -> Any:
        state = self._state
        if key == "id":
            return state.info.id
        if key == "tenant":
            return state.info.tenant
        if key == "degraded":
            return state.degraded
        if key == "remaining_ms":
            return state.remaining_ms
        if key == "remaining_usd":
            return state.remaining_usd
        if key == "policy_version":
            return state.policy_version
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    def __repr__(self) -> str:
        return f"<request {self._state.info.id!r}>"
