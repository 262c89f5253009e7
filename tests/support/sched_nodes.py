"""Tiny node types and helpers for the scheduler tests: graphs in YAML, golden records."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

from engine import Node, NodeContext
from engine.errors import TransientError
from engine.events import MemorySink, NodeRun
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph_text
from engine.plugin.registry import Registry
from engine.scheduler.runner import RequestResult, Runner


class Work(Node):
    """Sleeps `ms` (simulated time under a mock clock), then returns `value` or fails."""

    type_name = "work"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ms: float = 0
        value: Any = None
        fail: str | None = None
        """`error` (ValueError), `transient` (TransientError), `cancelled` (a
        CancelledError of its own, while nothing cancels it) or `exit` (SystemExit)."""
        fail_times: int = 0
        """Fail only the first N attempts of a request (0: every attempt)."""
        linger_ms: float = 0
        """When cancelled, take this long to stop (shielded, like closing a stream)."""

    class Output(BaseModel):
        value: Any = None

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.cancelled = 0
        self.failed = 0
        self.attempts: dict[tuple[str, int], int] = {}

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        self.started += 1
        key = (ctx.request.id, ctx.cycle)
        attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        try:
            if config.ms:
                await anyio.sleep(config.ms / 1000)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            if config.linger_ms:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(config.linger_ms / 1000)
            raise
        if config.fail == "cancelled":  # as a library's own timeout might, uncancelled
            self.failed += 1
            raise asyncio.CancelledError()
        if config.fail == "exit":
            self.failed += 1
            raise SystemExit(3)
        if config.fail and (config.fail_times == 0 or attempt <= config.fail_times):
            kind = TransientError if config.fail == "transient" else ValueError
            self.failed += 1
            raise kind(f"{ctx.node_id} broke on attempt {attempt}")
        self.finished += 1
        return self.Output(value=config.value)


class Emit(Node):
    """Emits a custom event, logs, uses request memo and `after_success`, returns the memo."""

    type_name = "emit"
    event_types = ("CACHE_MISS",)  # shared with the cache node, declared as it must be

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        key: str = "k"

    class Output(BaseModel):
        value: Any = None
        reused: bool = False

    def __init__(self) -> None:
        self.stored: list[str] = []

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        async def compute() -> str:
            await anyio.sleep(0.001)
            return f"memo-{config.key}"

        value, reused = await ctx.memo(config.key, compute)
        ctx.emit("CACHE_MISS", decision="miss", payload={"key": config.key})
        ctx.log.warning("emit.done", reused=reused)  # a warning: tests keep warnings only

        async def store() -> None:
            self.stored.append(ctx.request.id)

        ctx.after_success(store)
        return self.Output(value=value, reused=reused)


DATA = Path(__file__).parents[1] / "data" / "sched"
"""Holds `policy.yaml` (`threshold`, `speculate`) for graphs that read `policy`."""


def graph(text: str) -> Graph:
    """Load a YAML graph written inline in a test (`policy: policy.yaml` is available)."""
    return load_graph_text(textwrap.dedent(text), "test.yaml", registry=registry(), base_dir=DATA)


def impl(g: Graph, node_id: str, loop: str | None = None) -> Any:
    """The node instance behind `node_id` (inside loop `loop` if given)."""
    scope = g.scope if loop is None else g.nodes[loop].loop.body  # type: ignore[union-attr]
    return scope.nodes[node_id].impl


async def run(
    g: Graph, input: Mapping[str, Any] | None = None, **options: Any
) -> tuple[RequestResult, MemorySink]:
    """Run one request to the end (background cleanup included) and return its records."""
    sink = MemorySink()
    async with Runner(g, sink=sink, **options) as runner:
        result = await runner.run(input or {}, request_id="r1")
    return result, sink


def runs(sink: MemorySink) -> list[tuple[str, int, str, bool, str, int]]:
    """Node runs as (node, cycle, status, speculative, outcome, attempts), in record order."""
    return [
        (r.node, r.cycle, r.status.value, r.speculative, r.outcome.value, r.attempts)
        for r in sink.node_runs()
    ]


def run_of(sink: MemorySink, node: str, cycle: int = 0) -> NodeRun:
    """The one node run of `node` (in `cycle`)."""
    found = [r for r in sink.node_runs() if r.node == node and r.cycle == cycle]
    assert len(found) == 1, found
    return found[0]


def events(sink: MemorySink, *, scheduler_only: bool = True) -> list[tuple[str, str]]:
    """Events as (event_type, stage), in sequence order, without the policy pin."""
    return [
        (e.event_type, e.stage)
        for e in sorted(sink.events(), key=lambda e: e.sequence)
        if e.event_type != "POLICY_PINNED" and (not scheduler_only or e.component == "scheduler")
    ]


class Ask(Node):
    """Asks a model once and returns its text."""

    type_name = "ask"
    model_keys = ("model",)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: str = "small"
        prompt: str = "hello"
        max_tokens: int = 64

    class Output(BaseModel):
        text: str = ""

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        completion = await ctx.model(config.model).complete(
            prompt=config.prompt, task="answer", max_tokens=config.max_tokens
        )
        return self.Output(text=completion.text)


def registry() -> Registry:
    """A registry with only the scheduler's test node types."""
    return Registry([Work, Emit, Ask])


def backends(*names: str) -> Any:
    """An `anyio_backend` fixture over `names` (`asyncio`, `trio`, `trio-mock`).

    `trio-mock` is trio with a fresh `MockClock(autojump_threshold=0)` per test: simulated
    sleeps take no wall time and durations come out exact.
    """

    @pytest.fixture(params=names, name="anyio_backend")
    def fixture(request: pytest.FixtureRequest) -> Any:
        if request.param == "trio-mock":
            from trio.testing import MockClock

            return ("trio", {"clock": MockClock(autojump_threshold=0)})
        return request.param

    return fixture


def mock_trio() -> Any:
    """One `anyio_backend` parameter: trio with a mock clock (for `parametrize`)."""
    from trio.testing import MockClock

    return pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mock")


class Stubborn(Node):
    """Sleeps `ms`, and when cancelled returns `value` instead of stopping (as a plugin
    that catches every exception might): moat must not take that for an answer."""

    type_name = "stubborn"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ms: float = 0
        value: Any = None
        block: bool = False
        """Block the event loop for `ms` instead (`time.sleep`): no cancellation reaches it."""

    class Output(BaseModel):
        value: Any = None

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        if config.block:
            time.sleep(config.ms / 1000)
            return self.Output(value=config.value)
        try:
            await anyio.sleep(config.ms / 1000)
        except anyio.get_cancelled_exc_class():
            return self.Output(value="swallowed")
        return self.Output(value=config.value)
