"""Runs requests through a graph, doing only the work the answer needs.

The scheduler demands a request's `output` expressions and, through them, exactly the
nodes their evaluation reaches (section 4 of the design): nodes run inline in the task
that demands them, concurrently where an expression needs several on every path,
speculatively in their own cancellable tasks where the graph says so, and every decision
is recorded. The response returns as soon as the outputs are known; leftover speculative
work is cancelled or discarded in the runner's background task group, and the request's
`RequestRecord` is recorded last.

```python
async with Runner(graph, sink=MemorySink()) as runner:
    result = await runner.run({"prompt": "hello"})
print(result.status, result.output)
```
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel

from engine.errors import EvaluationError
from engine.events import (
    EventType,
    PolicyPin,
    Record,
    RequestRecord,
    RequestStatus,
    Sink,
    now,
    result_line,
)
from engine.graph.compiled import Graph
from engine.models import Gateway
from engine.plugin import event_names
from engine.plugin.context import RequestInfo, SharedState
from engine.plugin.registry import Registry
from engine.scheduler.backend import current_backend
from engine.scheduler.frame import Consumer, Frame, InputFailed, evaluate_outputs, try_evaluate
from engine.scheduler.lazy import (
    LazyNode,
    LazyNodeCancelled,
    LazyNodeFailed,
    LazyNodeNotFinished,
)
from engine.scheduler.loop import run_loop
from engine.scheduler.node import NodeRunner
from engine.scheduler.request import REQUEST_STAGE, RequestState, RequestView, describe_error
from engine.scheduler.speculate import cleanup, start_speculative

__all__ = [
    "LazyNode",
    "LazyNodeCancelled",
    "LazyNodeFailed",
    "LazyNodeNotFinished",
    "RequestResult",
    "Runner",
    "run_request",
]

_SCALARS = (str, int, float, bool, type(None))
_NO_LABELS: Mapping[str, Any] = MappingProxyType({})
"""The labels of a request that has none (one shared, read-only mapping)."""
_NO_DEADLINE = contextlib.nullcontext()
"""Stands in for the deadline's cancel scope when the graph has no deadline."""

_Answer = tuple[RequestStatus, dict[str, Any] | None, str | None]
"""A request's status, output and error."""


@dataclass(slots=True)
class RequestResult:
    """What one request produced (one `--out` line).

    Not frozen (a frozen dataclass costs several times more to build, and one is built
    for every request), but treated as immutable once returned.

    Attributes:
        request_id: the request's id.
        status: `ok`, `partial`, `failed`, `deadline_exceeded` or (only when the caller
            asks for it) `cancelled`.
        output: the `output:` values (JSON-ready), or None when there are none.
        latency_ms: time from the start of the request to its response.
        cost_usd: dollars spent on model calls by the time of the response.
        policy_version: the pinned policy version, if the policy is versioned.
        error: what went wrong, naming the node, for `failed` and `deadline_exceeded`.
        seq: the request's position in its run's input.
        degraded: why a fallback model answered (reason codes), empty if none did.
    """

    request_id: str
    status: RequestStatus
    output: dict[str, Any] | None
    latency_ms: float
    cost_usd: float
    policy_version: int | None
    error: str | None
    seq: int = 0
    degraded: tuple[str, ...] = ()

    def to_json_line(self) -> dict[str, Any]:
        """The JSON object `moat run` writes for this request."""
        return result_line(
            self.request_id,
            self.status,
            self.output,
            self.latency_ms,
            self.cost_usd,
            self.policy_version,
            self.error,
            self.degraded,
        )


class _NullSink:
    def record(self, item: Record) -> None:
        pass


class Runner:
    """Runs requests through one graph; owns the background work they leave behind.

    Use it as an async context manager: leaving it waits for background work (the
    cleanup of speculative branches, `after_success` callbacks) and closes the gateway
    it created.

    Args:
        graph: the loaded graph.
        sink: where records go (events, node runs, LLM calls, request records).
        gateway: the model gateway; default `Gateway(graph.models)`.
        shared: state shared by the requests (`ctx.shared`); default a fresh one.
        run_id: the run the requests belong to (`runs.id`).
        policy: the policy pin, or a function returning the active one, called at the
            start of every request; default the graph's own policy, unversioned.
        seed: seed for simulated models and retry jitter.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        sink: Sink | None = None,
        gateway: Gateway | None = None,
        shared: SharedState | None = None,
        run_id: str = "run",
        policy: Callable[[], PolicyPin] | PolicyPin | None = None,
        seed: int = 0,
    ) -> None:
        self.graph = graph
        self.sink: Sink = sink if sink is not None else _NullSink()
        self._owns_gateway = gateway is None
        self.gateway = gateway if gateway is not None else Gateway(graph.models)
        self.shared = shared if shared is not None else SharedState()
        self.run_id = run_id
        self._policy = policy or PolicyPin(graph.policy_name, None, graph.policy)
        self._pinned: tuple[PolicyPin, dict[str, Any]] | None = None
        """The last pin and its `POLICY_PINNED` payload, shared by the requests pinning it."""
        self._record = self.sink.record  # bound once, not once per request
        self._part_recorder: Callable[[], Callable[[Record], None]] | None = getattr(
            self.sink, "part_recorder", None
        )
        """A sink's choice, per request, of where the records before the request's own go."""
        self.seed = seed
        _claim_event_names(graph)
        self._tg: TaskGroup | None = None
        self._ex: NodeRunner | None = None
        self._ids = itertools.count(1)
        self._clock: Callable[[], float] = anyio.current_time

    async def __aenter__(self) -> Runner:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        backend = await current_backend(tg)
        self._ex = NodeRunner(backend, self.shared, run_loop)
        self._clock = backend.clock
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, ex, self._tg, self._ex = self._tg, self._ex, None, None
        assert tg is not None and ex is not None
        try:
            try:
                ex.tasks.closing()
                return await tg.__aexit__(exc_type, exc, tb)
            finally:
                # The task group has waited for every finished request's background work;
                # what is left belongs to requests cancelled or failed mid-way.
                with anyio.CancelScope(shield=True):
                    await ex.tasks.aclose()
        finally:
            if self._owns_gateway:
                with anyio.CancelScope(shield=True):
                    await self.gateway.aclose()

    async def run(
        self,
        input: Mapping[str, Any],
        *,
        request_id: str | None = None,
        seq: int = 0,
        labels: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        meta: Mapping[str, Any] | None = None,
        record_cancelled: bool | Callable[[], str | None] = False,
    ) -> RequestResult:
        """Run one request and return as soon as its outputs are known.

        Args:
            input: the request (already validated against the graph's `input` schema).
            request_id: its id; default `RUN_ID-N`.
            seq: its position in the run's input.
            labels: hidden benchmark labels, read only by the `sim` provider.
            tenant: default `input["tenant"]`, else `public`.
            meta: extra request columns (`conversation_id`, `turn_index`,
                `parent_request_id`).
            record_cancelled: when the caller cancels the request, record it `cancelled`
                (after its cancelled work, as any request) before the cancellation goes
                on. By default a cancelled request leaves no request record, so an
                interrupted batch can answer it again on resume. A function instead of
                True says why, when asked at the cancellation (None: its caller hung up).

        Returns:
            The result; node failures and deadlines are reported in it, never raised.
        """
        ex = self._ex
        if ex is None:
            raise RuntimeError("use `async with Runner(graph) as runner:` before `runner.run`")
        req = self._start(input, request_id, seq, labels, tenant)
        frame = Frame(
            req,
            ex,
            self.graph.scope,
            None,
            0,
            {"input": req.info.input, "policy": req.policy, "request": RequestView(req)},
        )
        consumer = Consumer(frame, None, False, "output")
        answer: _Answer | None = None
        abandoned = False
        try:
            start_speculative(ex, frame)
            deadline = None if req.deadline is None else anyio.CancelScope(deadline=req.deadline)
            with _NO_DEADLINE if deadline is None else deadline:
                try:
                    values = await evaluate_outputs(self.graph.output, consumer)
                    answer = _answer(self.graph, RequestStatus.OK, values)
                except InputFailed as exc:
                    answer = RequestStatus.FAILED, None, describe_error(exc.node_id, exc.error)
                except EvaluationError as exc:
                    answer = RequestStatus.FAILED, None, str(exc)
            if deadline is not None and (
                deadline.cancel_called or self._clock() >= deadline.deadline
            ):
                # the deadline passed: whatever came back after it (a node that swallowed
                # its cancellation and returned, or blocked the loop past it) is not an
                # answer. What the outputs can be evaluated from is read before the
                # cleanup, which would discard a speculative result they use.
                answer = self._deadline_passed(req, consumer)
        except anyio.get_cancelled_exc_class():
            abandoned = record_cancelled is not False
            raise
        finally:
            cleanup(frame)  # also when the caller cancels the request
            if abandoned:
                why = record_cancelled() if callable(record_cancelled) else None
                self._finish(req, _cancelled(req, seq, why), meta)
        assert answer is not None
        status, output, error = answer
        req.check_soft_deadline()
        result = RequestResult(  # positional: one is built per request
            req.info.id,
            status,
            output,
            req.elapsed_ms(),
            req.budget.spent_usd,
            req.policy_version,
            error,
            seq,
            req.degraded_reasons,
        )
        self._finish(req, result, meta)
        return result

    # -- the steps of a request --------------------------------------------------------

    def _pin(self) -> PolicyPin:
        policy = self._policy
        return policy if isinstance(policy, PolicyPin) else policy()

    def _start(
        self,
        input: Mapping[str, Any],
        request_id: str | None,
        seq: int,
        labels: Mapping[str, Any] | None,
        tenant: str | None,
    ) -> RequestState:
        pin = self._pin()
        info = RequestInfo(  # positional: one is built per request
            request_id if request_id is not None else f"{self.run_id}-{next(self._ids)}",
            self.run_id,
            seq,
            tenant if tenant is not None else str(input.get("tenant", "public")),
            input,
            _NO_LABELS,  # what nodes see: the labels go to the model gateway only
            self.seed,
        )
        req = RequestState(
            self.graph,
            info,
            labels=labels,
            policy_name=pin.name,
            policy_version=pin.version,
            policy=pin.body,
            sink_record=self._record if self._part_recorder is None else self._part_recorder(),
            gateway=self.gateway,
            clock=self._clock,
        )
        pinned = self._pinned
        if pinned is None or pinned[0] is not pin:
            pinned = self._pinned = pin, {"policy": pin.name, "version": pin.version}
        req.event(
            EventType.POLICY_PINNED,
            REQUEST_STAGE,
            decision=None if pin.version is None else str(pin.version),
            payload=pinned[1],  # records are never changed once recorded
        )
        return req

    def _deadline_passed(self, req: RequestState, consumer: Consumer) -> _Answer:
        budget = self.graph.budget
        elapsed = req.elapsed_ms()
        partial = _partial_outputs(self.graph, consumer) if budget.partial else {}
        req.event(
            EventType.BUDGET_DEADLINE_EXCEEDED,
            REQUEST_STAGE,
            decision="partial" if partial else "deadline_exceeded",
            payload={
                "deadline_ms": budget.deadline_ms,
                "elapsed_ms": round(elapsed, 3),
                "outputs": sorted(partial),
            },
        )
        missing = [name for name in self.graph.output if name not in partial]
        error = f"deadline_ms={budget.deadline_ms:g} passed after {elapsed:.0f} ms"
        if missing:
            error += f"; outputs not resolved: {', '.join(missing)}"
        if partial:
            status, output, unwritable = _answer(self.graph, RequestStatus.PARTIAL, partial)
            return status, output, unwritable or error
        return RequestStatus.DEADLINE_EXCEEDED, None, error

    def _finish(
        self, req: RequestState, result: RequestResult, meta: Mapping[str, Any] | None
    ) -> None:
        """Record the request last: now, or after its background work in the background."""
        if req.live == 0 and not req.callbacks:
            self.sink.record(_request_record(req, result, meta))
            req.release()
            return
        assert self._tg is not None
        self._tg.start_soon(self._finish_later, req, result, meta)

    async def _finish_later(
        self, req: RequestState, result: RequestResult, meta: Mapping[str, Any] | None
    ) -> None:
        await req.wait_idle()
        if result.status in (RequestStatus.OK, RequestStatus.PARTIAL):
            await req.run_callbacks()
        self.sink.record(_request_record(req, result, meta))
        req.release()

    def __repr__(self) -> str:
        return f"<Runner {self.graph.name!r} run={self.run_id!r}>"


def _claim_event_names(graph: Graph) -> None:
    """The event names of the installed node types and of the graph's own are theirs:
    `ctx.emit` refuses them to any other node type (`engine.plugin.event_names`)."""
    Registry.claim_installed()
    scopes = [graph.scope]
    while scopes:
        for node in scopes.pop().nodes.values():
            if node.impl is not None:
                event_names.claim(node.type_name, type(node.impl).event_types)
            if node.loop is not None:
                scopes.append(node.loop.body)


def _cancelled(req: RequestState, seq: int, why: str | None = None) -> RequestResult:
    """The result of a request its caller cancelled (a client that hung up), or `why`."""
    return RequestResult(
        req.info.id,
        RequestStatus.CANCELLED,
        None,
        req.elapsed_ms(),
        req.budget.spent_usd,
        req.policy_version,
        why or "cancelled by its caller before it was answered",
        seq,
    )


def _partial_outputs(graph: Graph, consumer: Consumer) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, expr in graph.output.items():
        try:
            resolved, value = try_evaluate(expr, consumer)
        except EvaluationError:
            continue
        if resolved:
            values[name] = value
    return values


def _request_record(
    req: RequestState, result: RequestResult, meta: Mapping[str, Any] | None
) -> RequestRecord:
    info = req.info
    record = RequestRecord(  # positional: one is built per request
        info.id,
        req.run_id,
        info.seq,
        result.status,
        req.started_at,
        now(),
        result.latency_ms,
        req.budget.spent_usd,
        result.output,
        result.error,
        info.tenant,
        req.policy_name,
        req.policy_version,
        input=info.input,  # hashed by the store, off the request path
        degraded=req.degraded_reasons,
        validated=req.validated,
    )
    if meta:
        record.conversation_id = meta.get("conversation_id")
        record.turn_index = meta.get("turn_index")
        record.parent_request_id = meta.get("parent_request_id")
    return record


def _jsonable(value: Any) -> Any:
    """Node outputs and loop values as plain JSON data.

    Raises:
        RecursionError: `value` holds itself, or is nested deeper than the stack allows.
        Exception: what a value's `__str__` raises.
    """
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json")
        except Exception:  # (an odd value in an `Any` field) the fields as any other value
            return {name: _jsonable(item) for name, item in value}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


def _answer(graph: Graph, status: RequestStatus, values: dict[str, Any]) -> _Answer:
    """The request's answer from its output values; `failed` when one of them is not data
    a result line can carry (a plugin's `Output` holding itself, say), naming it."""
    try:
        return status, _jsonable(values), None
    except Exception:  # (RecursionError too) the failure path: find the culprit
        pass
    for name, value in values.items():
        try:
            _jsonable(value)
        except RecursionError:
            reason = "it holds itself, or is nested too deep"
        except Exception as exc:
            reason = describe_error(name, exc).removeprefix(f"node '{name}': ")
        else:
            continue
        nodes = sorted(graph.output[name].names & graph.scope.nodes.keys())
        source = f" (from node {', '.join(repr(n) for n in nodes)})" if nodes else ""
        return (
            RequestStatus.FAILED,
            None,
            (
                f"output '{name}'{source}: its value cannot be written as JSON: {reason}; a "
                "node's Output holds JSON data (strings, numbers, lists, mappings) or models of it"
            ),
        )
    return RequestStatus.FAILED, None, "the outputs cannot be written as JSON"  # (not twice)


async def run_request(
    graph: Graph,
    input: Mapping[str, Any],
    *,
    sink: Sink | None = None,
    gateway: Gateway | None = None,
    shared: SharedState | None = None,
    run_id: str = "run",
    policy: Callable[[], PolicyPin] | PolicyPin | None = None,
    seed: int = 0,
    **run_options: Any,
) -> RequestResult:
    """Run one request in a runner of its own and wait for its background work (tests).

    `run_options` are passed to `Runner.run` (`request_id`, `seq`, `labels`, `tenant`,
    `meta`).
    """
    runner = Runner(
        graph, sink=sink, gateway=gateway, shared=shared, run_id=run_id, policy=policy, seed=seed
    )
    async with runner:
        return await runner.run(input, **run_options)
