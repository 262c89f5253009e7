"""A node's `retries:` on the `sim` provider draws a fresh attempt, as a real endpoint would.

The scheduler retries a failed node by running it again, and the gateway numbers the calls
of each node run from 0: the sim, seeded per attempt, must still see the node's retry as a
new attempt, or a node retry would replay the very fault it retries. First attempts are
unchanged (every golden and digest of the sim holds).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import pytest
from trio.testing import MockClock

from engine.events import MemorySink
from engine.graph.loader import load_graph_text
from engine.graph.spec import ModelSpec
from engine.models import CallScope, Gateway, ProviderRequest, ProviderResponse
from engine.plugin.context import RequestInfo
from engine.scheduler.runner import Runner

pytestmark = pytest.mark.anyio

GRAPH = """\
moat: 1
name: node-retry
models:
  m: {provider: sim, profile: small, max_retries: 0, faults: {error: 0.5}}
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes:
  answer:
    type: model
    retries: 3
    with: {model: m, prompt: "{{ input.prompt }}", task: answer}
output: {answer: answer.text}
"""


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


async def test_a_node_retry_on_sim_is_a_fresh_draw_not_a_replay() -> None:
    """At a 50 % error rate and no gateway retries, a node with `retries: 3` fails only
    when four independent attempts all fail: most requests whose first attempt failed
    succeed on a retry, and no two attempts of a node run share the same answer."""
    sink = MemorySink()
    graph = load_graph_text(textwrap.dedent(GRAPH), "test.yaml")
    ids = [f"req-{i}" for i in range(24)]
    results = []
    for i in ids:  # a runner each: no circuit breaker carries failures across requests
        async with Runner(graph, sink=sink) as runner:
            results.append(await runner.run({"prompt": "What is 2+2?"}, request_id=i))
    retried = [i for i in ids if len(sink.llm_calls(i)) > 1]
    assert len(retried) >= 6  # the fault rate is 1/2: about half the requests retried
    rescued = [r.request_id for r in results if r.request_id in retried and r.status == "ok"]
    assert len(rescued) >= len(retried) * 2 // 3
    for i in ids:
        statuses = [c.status for c in sink.llm_calls(i)]
        assert statuses == ["error"] * (len(statuses) - 1) + [statuses[-1]]


class _Recorder:
    """A provider that records the attempt number of every call and answers at once."""

    name = "sim"

    def __init__(self) -> None:
        self.attempts: list[int] = []

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        self.attempts.append(call.attempt)
        return ProviderResponse("ok", "fake", 1, 1)

    async def aclose(self) -> None:
        return None


def _scope(**kw: Any) -> CallScope:
    info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    return CallScope(request=info, node_id="answer", **kw)


@pytest.mark.parametrize(
    ("spec", "node_attempts", "sent"),
    [
        ({"max_retries": 2}, [0], [0]),
        ({"max_retries": 2}, [0, 1, 2], [0, 3, 6]),
        ({"max_retries": 0}, [0, 1, 2], [0, 1, 2]),
    ],
)
async def test_the_provider_attempt_counts_every_attempt_of_the_node(
    spec: Mapping[str, Any], node_attempts: list[int], sent: list[int]
) -> None:
    """Node attempt n starts after the n * (max_retries + 1) provider attempts the node's
    earlier runs may have made: no two attempts of a call share a number."""
    model = ModelSpec(provider="sim", profile="small", **spec)
    recorder = _Recorder()
    async with Gateway({"m": model}, providers={"m": recorder}) as gateway:
        for n in node_attempts:
            await gateway.client("m", _scope(node_attempt=n)).complete(prompt="x")
    assert recorder.attempts == sent
