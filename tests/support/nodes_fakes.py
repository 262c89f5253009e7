"""Test doubles for node tests: a scripted model gateway and an in-memory request runtime.

`FakeRuntime` implements `engine.plugin.context.RequestRuntime` the way the scheduler would, but
records everything in lists so a test can assert a node's outputs *and* the events and
traces it emitted. `FakeModel` answers each `task` from a script of replies (strings,
JSON-able values, `Completion`s, exceptions or callables) and records every call.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import BaseModel

from engine.plugin.context import Completion, NodeContext, RequestInfo, SharedState
from engine.plugin.node import Node

Reply = Any
"""str (text), dict/list (JSON), Completion, BaseException, or callable(call) -> Reply."""


@dataclass
class Call:
    """One recorded model call."""

    model: str
    task: str | None
    prompt: str | None
    system: str | None
    schema: Mapping[str, Any] | None
    messages: Sequence[Mapping[str, str]] | None = None
    cancelled: bool = False
    speculative: bool = False


@dataclass
class Emitted:
    """One recorded event."""

    node: str
    type: str
    decision: str | None
    reason_codes: list[str]
    payload: Mapping[str, Any] | None
    cycle: int


class FakeModel:
    """A scripted logical model.

    Args:
        name: the logical model name.
        script: replies per task (`"*"` for any task); a list is consumed in order and its
            last item repeats.
        cost: dollars per call.
        delay: seconds to sleep before answering (checkpoint for cancellation tests).
    """

    def __init__(
        self,
        name: str,
        script: Mapping[str, Reply | list[Reply]] | None = None,
        *,
        cost: float = 0.001,
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.script = {k: (v if isinstance(v, list) else [v]) for k, v in (script or {}).items()}
        self.cost = cost
        self.delay = delay
        self.calls: list[Call] = []
        self._pos: dict[str, int] = {}

    def _next(self, task: str) -> Reply:
        key = task if task in self.script else "*"
        replies = self.script.get(key) or [f"{self.name} says hello"]
        i = self._pos.get(key, 0)
        self._pos[key] = i + 1
        return replies[min(i, len(replies) - 1)]

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
        call = Call(self.name, task, prompt, system, schema, messages, speculative=speculative)
        self.calls.append(call)
        try:
            await anyio.sleep(self.delay)
        except anyio.get_cancelled_exc_class():
            call.cancelled = True
            raise
        reply = self._next(task or "answer")
        if callable(reply) and not isinstance(reply, type):
            reply = reply(call)
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, Completion):
            return reply
        if isinstance(reply, str):
            text, value = reply, None
            if schema is not None or json_mode:
                try:
                    value = json.loads(reply)
                except ValueError:
                    value = None
        else:
            text, value = json.dumps(reply), reply
        return Completion(
            text=text,
            model=self.name,
            provider="fake",
            provider_model=f"fake-{self.name}",
            input_tokens=len((prompt or "").split()) + 5,
            output_tokens=len(text.split()) + 1,
            cost_usd=self.cost,
            latency_ms=self.delay * 1000,
            json=value,
            simulated=True,
        )


@dataclass
class FakeRuntime:
    """An in-memory `RequestRuntime` for one request."""

    models: dict[str, FakeModel] = field(default_factory=dict)
    remaining_usd_value: float | None = None
    remaining_ms_value: float | None = None
    degraded_value: bool = False
    events: list[Emitted] = field(default_factory=list)
    traces: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    memo_values: dict[str, Any] = field(default_factory=dict)
    memo_log: list[tuple[str, bool]] = field(default_factory=list)
    callbacks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def model(self, name: str, ctx: NodeContext) -> FakeModel:
        if name not in self.models:
            self.models[name] = FakeModel(name)
        return self.models[name]

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
        json.dumps(payload)  # events must be JSON-serialisable for the store
        self.events.append(
            Emitted(ctx.node_id, str(event_type), decision, list(reason_codes), payload, ctx.cycle)
        )
        return len(self.events)

    def trace(self, ctx: NodeContext, stage: str, payload: Mapping[str, Any]) -> None:
        json.dumps(payload)
        self.traces.append((stage, dict(payload)))

    async def memo(
        self, ctx: NodeContext, key: str, factory: Callable[[], Awaitable[Any]]
    ) -> tuple[Any, bool]:
        if key in self.memo_values:
            self.memo_log.append((key, True))
            return self.memo_values[key], True
        value = self.memo_values[key] = await factory()
        self.memo_log.append((key, False))
        return value, False

    def after_success(self, callback: Callable[[], Awaitable[None]]) -> None:
        self.callbacks.append(callback)

    async def succeed(self) -> None:
        """Run the after-success callbacks, as the scheduler does once the request is done."""
        callbacks, self.callbacks = self.callbacks, []
        for cb in callbacks:
            await cb()

    @property
    def remaining_ms(self) -> float | None:
        return self.remaining_ms_value

    @property
    def remaining_usd(self) -> float | None:
        return self.remaining_usd_value

    @property
    def degraded(self) -> bool:
        return self.degraded_value

    def types(self) -> list[str]:
        """Emitted event types in order."""
        return [e.type for e in self.events]

    def last(self, event_type: str) -> Emitted:
        """The last event of a type."""
        return [e for e in self.events if e.type == event_type][-1]


def make_ctx(
    node: Node,
    runtime: FakeRuntime,
    *,
    node_id: str = "n",
    tenant: str = "public",
    input: Mapping[str, Any] | None = None,
    request_id: str = "r1",
    cycle: int = 0,
    store: SharedState | None = None,
    policy: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> NodeContext:
    """A context for running `node` on one fake request."""
    return NodeContext(
        node_id=node_id,
        node_type=node.type_name,
        request=RequestInfo(
            id=request_id,
            run_id="run1",
            seq=0,
            tenant=tenant,
            input=dict(input or {}),
            seed=seed,
        ),
        policy=policy or {},
        cycle=cycle,
        speculative=False,
        shared=store or SharedState(),
        runtime=runtime,
    )


async def run_node(
    node: Node,
    config: Mapping[str, Any],
    runtime: FakeRuntime | None = None,
    **ctx_args: Any,
) -> Any:
    """Validate `config` with the node's `Config` and run it once; returns the `Output`."""
    runtime = runtime if runtime is not None else FakeRuntime()
    ctx = make_ctx(node, runtime, **ctx_args)
    out = await node.run(node.Config.model_validate(config), ctx)
    assert isinstance(out, BaseModel)
    assert isinstance(out, node.Output)
    return out


def completion(
    text: str, *, model: str = "m", cost: float = 0.001, value: Any = None
) -> Completion:
    """A hand-made completion."""
    return Completion(
        text=text,
        model=model,
        provider="fake",
        provider_model="fake",
        input_tokens=10,
        output_tokens=5,
        cost_usd=cost,
        latency_ms=1.0,
        json=value,
        simulated=True,
    )
