"""What a node sees while it runs: `NodeContext`, and the model client it hands out.

The scheduler builds one `NodeContext` per node run. Everything request-scoped (emitting
events, memoising, budgets, the model gateway) is delegated to the request's runtime, which
implements the small `RequestRuntime` protocol below; nodes never see the scheduler.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from engine.errors import NodeError, shown
from engine.events import CallOutcome
from engine.logs import get_logger

__all__ = [
    "Completion",
    "ModelClient",
    "NodeContext",
    "RequestInfo",
    "RequestRuntime",
    "SharedState",
]

T = TypeVar("T")


@dataclass(slots=True)
class RequestInfo:
    """The request a node runs for.

    Not frozen (a frozen dataclass costs several times more to build, and one is built
    for every request), but treated as immutable: nodes read it, nobody changes it.
    """

    id: str
    """Unique request id (stable across `--resume`)."""
    run_id: str
    seq: int
    """Position in the run's input, 0-based."""
    tenant: str
    input: Mapping[str, Any]
    """The validated request input (defaults applied)."""
    labels: Mapping[str, Any] = field(default_factory=dict)
    """Hidden benchmark labels (`_labels` in a request line), for the `sim` provider only:
    the scheduler puts them on the copy of the request it hands the model gateway
    (`CallScope.request`); the request a node sees (`ctx.request`) has none."""
    seed: int = 0
    """Seed for deterministic simulated models."""


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to one model call, whichever provider gave it."""

    text: str
    model: str
    """The logical model name from the graph's `models:`."""
    provider: str
    provider_model: str
    """What the provider calls the model (`gpt-4o-mini`, `sim-small`)."""
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    json: Any = None
    """The parsed JSON value when structured output was asked for and the text parsed."""
    simulated: bool = False
    """True when the embedded `sim` provider produced this answer."""
    handle: Any = field(default=None, repr=False, compare=False)
    """The gateway's handle on the call's record, for `NodeContext.discard`."""


class ModelClient(Protocol):
    """A logical model bound to one node run; every call goes through the gateway."""

    name: str

    async def complete(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, str]] | None = None,
        system: str | None = None,
        schema: Mapping[str, Any] | None = None,
        json_mode: bool = False,
        task: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        speculative: bool = False,
    ) -> Completion:
        """Make one call (with the gateway's retries, budget check and recording).

        Args:
            prompt: a single user message.
            messages: a full chat (`role`/`content`), instead of `prompt`.
            system: an optional system message.
            schema: a JSON Schema the answer must follow (structured output).
            json_mode: ask for a JSON object without a schema.
            task: what the call is for (`answer`, `draft`, `risk`, `critique`, `simulate`,
                `repair`, `extract`, `verify`); real providers ignore it, `sim` uses it to
                give plausible answers.
            max_tokens: upper bound on the answer's length (also bounds the cost estimate).
            temperature: sampling temperature, when the provider supports it.
            speculative: the call is a bet the node may lose (a cheap draft, a call raced
                against another): recorded as `call_kind` speculative, its outcome `used`
                unless the node calls `ctx.discard(completion)` because it went unused.
        """
        ...


class RequestRuntime(Protocol):
    """The request-scoped services a `NodeContext` delegates to (implemented by the scheduler)."""

    def model(self, name: str, ctx: NodeContext) -> ModelClient: ...

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
    ) -> int: ...

    def trace(self, ctx: NodeContext, stage: str, payload: Mapping[str, Any]) -> None: ...

    async def memo(
        self, ctx: NodeContext, key: str, factory: Callable[[], Awaitable[Any]]
    ) -> tuple[Any, bool]: ...

    def after_success(self, callback: Callable[[], Awaitable[None]]) -> None: ...

    @property
    def remaining_ms(self) -> float | None: ...

    @property
    def remaining_usd(self) -> float | None: ...

    @property
    def degraded(self) -> bool: ...


class SharedState:
    """Process-wide state shared by the requests of one loaded graph (caches, statistics).

    Args:
        db: the run's SQLite store when it has one (`engine.Store`), for node state that
            should survive restarts; `None` with an in-memory sink.
    """

    def __init__(self, db: Any = None) -> None:
        self.db = db
        self._items: dict[str, Any] = {}

    @property
    def store(self) -> Any:
        """Deprecated name of `db`."""
        warnings.warn("SharedState.store is deprecated: use .db", DeprecationWarning, stacklevel=2)
        return self.db

    def get(self, key: str, factory: Callable[[], T]) -> T:
        """The value under `key`, created by `factory` the first time."""
        try:
            return self._items[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._items[key] = factory()
            return value


class NodeContext:
    """Everything a node may use while it runs one request (or one loop cycle).

    A context serves only the run it was given to (and that request's `after_success`
    callbacks): once its request has ended, `emit`, `trace`, `memo` and `model` raise
    `NodeError` rather than add to a request whose record is written.

    Attributes:
        node_id: the node's id in its graph or loop body.
        node_type: the node's `type:`.
        request: the request being answered.
        policy: the pinned policy snapshot (read-only mapping).
        cycle: the loop cycle (1-based), 0 outside loops.
        speculative: whether this run started speculatively.
        shared: state shared across requests of the graph (`shared.get(key, factory)`,
            `shared.db`).
        log: a structlog logger bound to run, request and node ids.
    """

    __slots__ = (
        "_runtime",
        "cycle",
        "log",
        "node_id",
        "node_type",
        "policy",
        "request",
        "shared",
        "speculative",
    )

    def __init__(
        self,
        *,
        node_id: str,
        node_type: str,
        request: RequestInfo,
        policy: Mapping[str, Any],
        cycle: int,
        speculative: bool,
        shared: SharedState,
        runtime: RequestRuntime,
        log: Any = None,
    ) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.request = request
        self.policy = policy
        self.cycle = cycle
        self.speculative = speculative
        self.shared = shared
        self._runtime = runtime
        self.log = log if log is not None else get_logger("moat.node")

    @property
    def store(self) -> SharedState:
        """Deprecated name of `shared` (it never was the SQLite store)."""
        warnings.warn("ctx.store is deprecated: use ctx.shared", DeprecationWarning, stacklevel=2)
        return self.shared

    def written(self, key: str) -> bool:
        """Whether the graph writes `with: key` itself (a literal, or left to its default),
        as opposed to an expression that makes it on each run from request data or a
        policy value. A context with no graph behind it (a test double) says True."""
        return True

    def resolve_path(
        self,
        path: str,
        *,
        key: str | None = None,
        root: str | None = None,
        root_key: str | None = None,
    ) -> str:
        """A file path from `with:`, relative to the graph file's folder (not the working
        directory), so a graph reads the same files wherever it is run from.

        A path the graph writes is its author's choice and may name any file. Pass `key`,
        the `with:` key the path came from: when an expression made it, the path must
        resolve, symlinks followed, inside `root` (a folder, relative to the graph file's;
        `root_key` is the `with:` key that names it, which the graph must write itself)
        or else inside the graph file's folder, so that a request cannot make the node
        read `/etc/passwd` or `../../secret`.

        Raises:
            NodeError: an expression made a path outside its folder, or made the folder.
        """
        joined = self._joined(path)
        if key is None or self.written(key):
            return joined
        if root is not None and root_key is not None and not self.written(root_key):
            raise NodeError(
                f"`{root_key}` {shown(root)} was made by an expression; write the folder "
                "itself in the graph (requests may not choose where files are read from)",
                node_id=self.node_id,
            )
        top = os.path.realpath(self._joined(root if root is not None else "."))
        real = os.path.realpath(joined)
        if os.path.commonpath([real, top]) != top:
            where = f"`{root_key}`" if root is not None and root_key else "the graph file's folder"
            fix = f", or set `{root_key}:` to the folder such files live in" if root_key else ""
            raise NodeError(
                f"`{key}` {shown(path)}, made by an expression, resolves to {real!r}, outside "
                f"{where} {top!r}; a path request data or a policy chooses must stay inside "
                f"it: name a file there{fix}",
                node_id=self.node_id,
            )
        return real

    def _joined(self, path: str) -> str:
        path = os.path.expanduser(path)
        # The runtime is the scheduler's request (it holds the graph); a test double may not.
        base = getattr(getattr(self._runtime, "graph", None), "base_dir", None)
        if base is None or os.path.isabs(path):
            return path
        return os.path.join(base, path)

    def model(self, name: str) -> ModelClient:
        """The logical model `name` (a key of the graph's `models:`), through the gateway."""
        return self._runtime.model(name, self)

    def emit(
        self,
        event_type: str,
        *,
        decision: str | None = None,
        reason_codes: Sequence[str] = (),
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        payload: Mapping[str, Any] | None = None,
        duration_ms: float | None = None,
    ) -> int:
        """Record an orchestration event for this node; returns its sequence number.

        `event_type` is an UPPER_SNAKE_CASE name of at most 64 characters, and the node's
        own: not one of the engine's (`engine.EventType`), nor one another node type lists
        in its `event_types` unless this node type lists it too.

        `decision` is a short text, `reason_codes` a list or tuple of texts, `inputs`,
        `outputs` and `payload` mappings, `duration_ms` a number.

        Raises:
            NodeError: the name or an argument is refused (the message says why and what to
                do instead).
        """
        if (
            (decision is not None and type(decision) is not str)
            or (type(reason_codes) is not tuple and type(reason_codes) is not list)
            or (payload is not None and type(payload) is not dict)
            or (inputs is not None and type(inputs) is not dict)
            or (outputs is not None and type(outputs) is not dict)
            or (
                duration_ms is not None
                and (
                    (type(duration_ms) is not float and type(duration_ms) is not int)
                    or duration_ms - duration_ms != 0  # (NaN or infinite)
                )
            )
        ):
            self._refuse(
                _emit_problem(decision, reason_codes, duration_ms, inputs, outputs, payload)
            )
        elif reason_codes:
            try:
                "".join(reason_codes)  # (the quick test that every code is a text)
            except TypeError:
                self._refuse(_emit_problem(decision, reason_codes, duration_ms, None, None, None))
        return self._runtime.emit(
            self,
            event_type,
            decision=decision,
            reason_codes=reason_codes,
            inputs=inputs,
            outputs=outputs,
            payload=payload,
            duration_ms=duration_ms,
        )

    def trace(self, stage: str, payload: Mapping[str, Any]) -> None:
        """Record a decision trace (`RISK_ASSESSMENT`, `REQUEST_ANALYSIS_CONTEXT`, ...).

        Raises:
            NodeError: `stage` is not a non-empty text, or `payload` not a mapping.
        """
        if not isinstance(stage, str) or not stage:
            self._refuse(
                f"the stage must be a name such as 'RISK_ASSESSMENT', not {_kind(stage)}",
                "ctx.trace",
            )
        if type(payload) is not dict and not isinstance(payload, Mapping):
            self._refuse(
                f"the payload must be a mapping (a dict of JSON values), not {_kind(payload)}",
                "ctx.trace",
            )
        self._runtime.trace(self, stage, payload)

    def _refuse(self, problem: str | None, call: str = "ctx.emit") -> None:
        if problem is not None:
            raise NodeError(f"{call}: {problem}", node_id=self.node_id, request_id=self.request.id)

    async def memo(self, key: str, factory: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Request-scoped reuse: the value under `key`, computed once per request.

        `key` is a text; `factory` an async function of no arguments (or one that returns
        an awaitable), called only when no value is stored under `key` yet.

        Returns:
            The value, and whether it was reused (True) or computed now (False).

        Raises:
            NodeError: `key` is no text, or `factory` returned something not awaitable.
        """
        try:
            value, reused = await self._runtime.memo(self, key, factory)
        except TypeError as exc:  # (only then is the call itself judged: nothing per call)
            problem = _memo_problem(key, factory, exc)
            if problem is None:
                raise
            raise NodeError(
                f"ctx.memo: {problem}", node_id=self.node_id, request_id=self.request.id
            ) from exc
        return value, reused

    def after_success(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` after the request succeeds, off the response path (cache stores)."""
        self._runtime.after_success(callback)

    def discard(self, completion: Completion) -> None:
        """Record that `completion`, a call this run made, went unused (a draft that lost,
        the slower of two raced calls): its `call_outcome` is `discarded`, and when the
        call was made `speculative=True` its cost counts as wasted speculation in
        `moat stats`. A call cancelled before it answered is recorded `cancelled` anyway."""
        attempt = completion.handle
        call = getattr(attempt, "logged", None)
        if call is not None and call.node == self.node_id and call.status == "ok":
            call.call_outcome = CallOutcome.DISCARDED

    @property
    def remaining_ms(self) -> float | None:
        """Milliseconds left before the hard deadline, or None without one."""
        return self._runtime.remaining_ms

    @property
    def remaining_usd(self) -> float | None:
        """Dollars left in the request's cost budget, or None without one."""
        return self._runtime.remaining_usd

    @property
    def degraded(self) -> bool:
        """True once the soft deadline has passed."""
        return self._runtime.degraded

    def __repr__(self) -> str:
        return f"<NodeContext {self.node_id!r} request={self.request.id!r} cycle={self.cycle}>"


def _emit_problem(decision: Any, reason_codes: Any, duration_ms: Any, *mappings: Any) -> str | None:
    """What is wrong with `ctx.emit`'s arguments, once the quick test found something
    that is not plainly right (a `str` subclass is a text too, any mapping a mapping)."""
    if decision is not None and not isinstance(decision, str):
        return (
            f"`decision` must be a text such as 'accept', not {_kind(decision)}; put "
            "structured data in `payload`"
        )
    if isinstance(reason_codes, str | bytes):
        return (
            f"`reason_codes` must be a list of codes, not one {_kind(reason_codes)}; "
            f"write reason_codes=[{shown(reason_codes)}]"
        )
    if not isinstance(reason_codes, list | tuple):
        return f"`reason_codes` must be a list of texts, not {_kind(reason_codes)}"
    for code in reason_codes:
        if not isinstance(code, str):
            return f"`reason_codes` must hold texts only, not {_kind(code)}"
    if duration_ms is not None and (
        isinstance(duration_ms, bool)
        or not isinstance(duration_ms, int | float)
        or not math.isfinite(duration_ms)
    ):
        return f"`duration_ms` must be a finite number of milliseconds, not {_kind(duration_ms)}"
    for name, value in zip(("inputs", "outputs", "payload"), mappings, strict=True):
        if value is not None and not isinstance(value, Mapping):
            return f"`{name}` must be a mapping (a dict of JSON values), not {_kind(value)}"
    return None


def _memo_problem(key: Any, factory: Any, exc: TypeError) -> str | None:
    """Why `ctx.memo` raised `exc` when the key or the factory was at fault, else None (the
    factory's own TypeError, raised as it was)."""
    try:
        hash(key)
    except TypeError:
        return f"the key must be a text naming the value, not {_kind(key)}"
    if "can't be used in 'await' expression" in str(exc) and not inspect.iscoroutinefunction(
        factory
    ):
        name = getattr(factory, "__name__", type(factory).__name__)
        return (
            f"the factory {name!r} returned a value, not an awaitable; write it "
            f"`async def {name if name.isidentifier() else 'make'}(): ...` (a blocking one "
            "goes in `await anyio.to_thread.run_sync(...)`)"
        )
    return None


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {shown(value)}"
