"""`after_success` work belongs to the answer: only runs whose result the request used leave it.

A node registers `ctx.after_success(callback)` while it runs (a cache store, a router
learning its route). The callback runs once the request succeeds, and only if the
request used that run's result: speculative work nobody joined (discarded or cancelled),
and a run that failed, leaves nothing behind.
"""

from __future__ import annotations

import textwrap
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

from engine import Node, NodeContext
from engine.events import MemorySink
from engine.graph.loader import load_graph_text
from engine.plugin.context import SharedState
from engine.plugin.registry import Registry
from engine.scheduler.runner import Runner
from tests.support.sched_nodes import Work, backends, run, runs

anyio_backend = backends("trio-mock", "asyncio")


class Remember(Node):
    """Registers an `after_success` callback noting the request, then sleeps `ms` and
    returns `value`, or fails."""

    type_name = "remember"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ms: float = 0
        value: Any = None
        fail: bool = False

    class Output(BaseModel):
        value: Any = None

    def __init__(self) -> None:
        self.remembered: list[str] = []

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        request_id = ctx.request.id

        async def remember() -> None:
            self.remembered.append(request_id)

        ctx.after_success(remember)
        await anyio.sleep(config.ms / 1000)
        if config.fail:
            raise ValueError("gave up after registering")
        return self.Output(value=config.value)


def graph(text: str) -> Any:
    return load_graph_text(textwrap.dedent(text), "test.yaml", registry=Registry([Work, Remember]))


def remembered(g: Any, node_id: str) -> list[str]:
    return g.nodes[node_id].impl.remembered  # type: ignore[no-any-return]


SPECULATIVE = """
moat: 1
name: speculative-aftermath
nodes:
  check: {type: work, with: {ms: 20, value: "{{ input.use }}"}}
  quick: {type: remember, speculative: true, with: {ms: 5, value: quick}}
  slow: {type: remember, speculative: true, with: {ms: 100, value: slow}}
output:
  answer: "[quick.value, slow.value] if check.value else 'neither'"
"""


@pytest.mark.anyio
async def test_speculative_runs_nobody_joined_leave_no_after_success_work(
    anyio_backend: Any,
) -> None:
    g = graph(SPECULATIVE)
    result, sink = await run(g, {"use": False})
    assert result.output == {"answer": "neither"}
    assert sorted(runs(sink)) == [
        ("check", 0, "succeeded", False, "used", 1),
        ("quick", 0, "succeeded", True, "discarded", 1),
        ("slow", 0, "cancelled", True, "cancelled", 1),
    ]
    assert (remembered(g, "quick"), remembered(g, "slow")) == ([], [])


@pytest.mark.anyio
async def test_speculative_runs_the_request_joined_leave_their_after_success_work(
    anyio_backend: Any,
) -> None:
    g = graph(SPECULATIVE)
    result, _ = await run(g, {"use": True})
    assert result.output == {"answer": ["quick", "slow"]}
    assert (remembered(g, "quick"), remembered(g, "slow")) == (["r1"], ["r1"])


FAILED = """
moat: 1
name: failed-aftermath
nodes:
  flaky: {type: remember, optional: true, with: {ms: 5, fail: true}}
  steady: {type: remember, with: {ms: 5, value: steady}}
output:
  answer: "flaky.value if flaky else steady.value"
"""


@pytest.mark.anyio
async def test_a_run_that_failed_leaves_no_after_success_work(anyio_backend: Any) -> None:
    g = graph(FAILED)
    result, _ = await run(g)
    assert (result.status.value, result.output) == ("ok", {"answer": "steady"})
    assert (remembered(g, "flaky"), remembered(g, "steady")) == ([], ["r1"])


SPECULATIVE_STORE = """
moat: 1
name: speculative-store
plugins: [tests.support.sched_nodes]
input: {type: object}
nodes:
  cached: {type: cache, with: {text: "{{ input.prompt }}", namespace: answers}}
  review: {type: work, with: {ms: 20, value: "{{ input.keep }}"}}  # time to store
  remember:
    type: cache
    speculative: true
    with: {mode: store, namespace: answers, text: "{{ input.prompt }}", value: "{{ input.draft }}"}
output:
  answer: "cached.value if cached.hit else input.draft"
  stored: "remember.stored if review.value else false"
"""


@pytest.mark.anyio
async def test_a_cache_store_started_speculatively_and_not_used_stores_nothing(
    anyio_backend: Any,
) -> None:
    g = load_graph_text(textwrap.dedent(SPECULATIVE_STORE), "store.yaml")
    shared = SharedState()  # the cache lives here, across runners

    async def ask(draft: str, keep: bool) -> Any:
        # leaving the runner waits for the request's `after_success` work
        async with Runner(g, sink=MemorySink(), shared=shared) as runner:
            prompt = "What is the capital of France?"
            result = await runner.run({"prompt": prompt, "draft": draft, "keep": keep})
        return result.output

    assert await ask("Lyon", keep=False) == {"answer": "Lyon", "stored": False}
    assert await ask("Paris", keep=True) == {"answer": "Paris", "stored": True}  # a miss
    assert await ask("Nice", keep=False) == {"answer": "Paris", "stored": False}  # a hit
