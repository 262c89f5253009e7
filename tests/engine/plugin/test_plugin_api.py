"""What a node author writes: typed `Node[Config, Output]` classes and the nested style."""

from __future__ import annotations

import warnings

import pytest
from pydantic import BaseModel

from engine import Node, NodeContext, Runner, SpecError, load_graph_text
from engine.plugin.registry import Registry


class GreetConfig(BaseModel):
    name: str


class GreetOutput(BaseModel):
    text: str


class Greet(Node[GreetConfig, GreetOutput]):
    """Greets by name."""

    type_name = "greet"

    async def run(self, config: GreetConfig, ctx: NodeContext) -> GreetOutput:
        return GreetOutput(text=f"hello {config.name}")


GRAPH = """
moat: 1
name: typed
input: {type: object, properties: {name: {type: string}}}
nodes:
  hello: {type: greet, with: {name: "{{ input.name }}"}}
output:
  text: hello.text
"""


def test_type_arguments_are_the_config_and_output_models() -> None:
    assert Greet.Config is GreetConfig
    assert Greet.Output is GreetOutput


@pytest.mark.anyio
async def test_a_typed_node_runs_and_its_output_fields_are_checked() -> None:
    graph = load_graph_text(GRAPH, registry=Registry([Greet]))
    async with Runner(graph) as runner:
        result = await runner.run({"name": "ada"})
    assert result.output == {"text": "hello ada"}
    with pytest.raises(SpecError, match=r"'hello.txt'.*Outputs: text"):
        load_graph_text(GRAPH.replace("hello.text", "hello.txt"), registry=Registry([Greet]))


def test_nested_models_win_over_type_arguments() -> None:
    class Other(Node[GreetConfig, GreetOutput]):
        type_name = "other"

        class Output(BaseModel):
            text: str
            loud: bool = False

    assert Other.Config is GreetConfig
    assert Other.Output is not GreetOutput and "loud" in Other.Output.model_fields


def test_model_fields_still_works_with_a_deprecation_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class Legacy(Node):
            type_name = "legacy"
            model_fields = ("model",)

    assert Legacy.model_keys == ("model",)
    [warning] = caught
    assert warning.category is DeprecationWarning
    assert "rename it to model_keys" in str(warning.message)


def test_ctx_store_is_the_deprecated_name_of_ctx_shared() -> None:
    from engine import SharedState

    shared = SharedState(db="the-store")
    assert shared.db == "the-store"
    with pytest.warns(DeprecationWarning, match=r"use \.db"):
        assert shared.store == "the-store"


def test_node_types_declare_their_own_event_names() -> None:
    from engine import EventType, PluginError

    class Sleeper(Node):
        type_name = "sleeper"
        event_types = ("SLEPT",)

        class Config(BaseModel):
            ms: int = 0

        class Output(BaseModel):
            ok: bool = True

        async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
            return self.Output()

    Registry([Sleeper])
    Sleeper.event_types = ("slept",)
    with pytest.raises(PluginError, match=r"'slept' is not UPPER_SNAKE_CASE; write it like 'SLEPT"):
        Registry([Sleeper])
    Sleeper.event_types = (EventType.NODE_FAILED.value,)
    with pytest.raises(PluginError, match=r"'NODE_FAILED' is one of the engine's own"):
        Registry([Sleeper])


def test_the_built_in_nodes_own_their_events_and_the_engine_does_not_list_them() -> None:
    from engine import EventType
    from nodes.cache import CacheNode
    from nodes.router import RouterNode

    assert "ROUTE_SELECTED" in RouterNode.event_types
    assert "CACHE_HIT" in CacheNode.event_types
    assert "ROUTE_SELECTED" not in set(EventType) and "CACHE_HIT" not in set(EventType)


def test_a_node_type_that_cannot_run_or_be_named_is_refused_when_registered() -> None:
    from engine import PluginError

    class NoRun(Node[GreetConfig, GreetOutput]):
        type_name = "no_run"

    class Blocking(Node[GreetConfig, GreetOutput]):
        type_name = "blocking"

        def run(self, config: GreetConfig, ctx: NodeContext) -> GreetOutput:  # type: ignore[override]
            return GreetOutput(text="")

    with pytest.raises(PluginError, match=r"NoRun does not define `run`; add `async def run"):
        Registry([NoRun])
    with pytest.raises(PluginError, match=r"Blocking.run must be a coroutine function"):
        Registry([Blocking])
    for name, fix in (("My Node!", "'my_node'"), ("9lives", "'node_9lives'"), ("a" * 65, None)):
        Greet.type_name = name
        try:
            with pytest.raises(PluginError, match=r"is not a short name") as caught:
                Registry([Greet])
        finally:
            Greet.type_name = "greet"
        if fix is not None:
            assert f"write it like {fix}" in str(caught.value)
    Greet.type_name = 5  # type: ignore[assignment]
    try:
        with pytest.raises(PluginError, match=r"`type_name` must be a string .* got 5"):
            Registry([Greet])
    finally:
        Greet.type_name = "greet"
