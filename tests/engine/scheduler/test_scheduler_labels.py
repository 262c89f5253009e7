"""A request's hidden benchmark labels reach the model gateway, never a node plugin.

Only the `sim` provider may read `_labels` (to simulate whether a model gets the answer
right); a node that could read them could grade itself by the answer it is benchmarked
against. The scheduler hands nodes a request without them (`ctx.request`) and the gateway
a copy with them (`CallScope.request`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from engine import Node, NodeContext
from engine.api import Pipeline
from engine.events import MemorySink
from engine.graph.loader import load_graph_text
from engine.models import Gateway
from engine.models.base import ProviderRequest, ProviderResponse
from engine.models.sim import SimProvider
from engine.plugin.registry import Registry
from engine.scheduler.runner import Runner
from tests.support.sched_nodes import Ask

SECRET = "the-benchmark-answer-7f3a"


class Peek(Node):
    """A node that looks for the request's labels wherever its context offers them."""

    type_name = "peek"
    seen: ClassVar[list[Any]] = []

    class Config(BaseModel):
        pass

    class Output(BaseModel):
        labels: Any = None

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        request = ctx.request
        found = getattr(request, "labels", None)
        type(self).seen.append((dict(found or {}), repr(request), dict(request.input)))
        return self.Output(labels=dict(found) if found else None)


class Spy:
    """The `sim` provider, recording the labels each call carries."""

    name = "sim"

    def __init__(self, inner: SimProvider) -> None:
        self.inner = inner
        self.labels: list[Mapping[str, Any]] = []

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        self.labels.append(dict(call.request.labels))
        return await self.inner.complete(call)

    async def aclose(self) -> None:
        await self.inner.aclose()


GRAPH = """
moat: 1
name: labels
models:
  small: {provider: sim, profile: small, time_scale: 0}
nodes:
  peek: {type: peek}
  ask: {type: ask, with: {prompt: "What is the capital of France?"}}
output:
  labels: peek.labels
  text: ask.text
"""


async def _run(labels: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, Spy]:
    graph = load_graph_text(GRAPH, registry=Registry([Peek, Ask]))
    spy = Spy(SimProvider(graph.models["small"]))
    async with (
        Gateway(graph.models, providers={"small": spy}) as gateway,
        Runner(graph, sink=MemorySink(), gateway=gateway) as runner,
    ):
        result = await runner.run({"prompt": "q"}, request_id="r1", labels=labels)
    assert result.status == "ok", result.error
    return result.output, spy


LABELS = st.dictionaries(
    st.text("abcdefghij_", min_size=1, max_size=8),
    st.one_of(st.just(SECRET), st.integers(), st.booleans(), st.lists(st.just(SECRET))),
    min_size=1,
    max_size=4,
)


@settings(max_examples=25, deadline=None, database=None)
@given(labels=LABELS)
def test_no_node_sees_the_labels_the_model_provider_gets(labels: dict[str, Any]) -> None:
    Peek.seen = []
    output, spy = anyio.run(_run, labels)
    assert output is not None and output["labels"] is None
    [(seen, shown, input)] = Peek.seen
    assert seen == {} and SECRET not in shown and "_labels" not in input
    assert spy.labels == [labels]  # every call, with the labels as given


@pytest.mark.anyio
async def test_labelled_or_not_a_node_sees_the_same_request() -> None:
    Peek.seen = []
    plain, plain_spy = await _run(None)
    labelled, spy = await _run({"answer": "Paris", "difficulty": 0.1})
    assert plain_spy.labels == [{}] and spy.labels == [{"answer": "Paris", "difficulty": 0.1}]
    assert [seen for seen, _, _ in Peek.seen] == [{}, {}]
    assert plain is not None and labelled is not None
    assert plain["labels"] is None and labelled["labels"] is None


@pytest.mark.anyio
async def test_a_request_line_labels_stay_out_of_the_node_context() -> None:
    """Through the public API, a request line's `_labels` become no node's to read."""
    Peek.seen = []
    graph = load_graph_text(GRAPH, registry=Registry([Peek, Ask]))
    async with Pipeline(graph, db=None) as pipeline:
        result = await pipeline.run({"prompt": "q", "_labels": {"answer": SECRET}})
    assert result.status == "ok", result.error
    [(seen, shown, input)] = Peek.seen
    assert seen == {} and SECRET not in shown and SECRET not in repr(input)
