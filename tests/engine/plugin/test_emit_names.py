"""`ctx.emit` records a node's own events only: never the engine's, never another node type's."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from engine import EventType, MemorySink, Node, NodeContext, Runner, load_graph_text
from engine.plugin.event_names import MAX_CHARS
from engine.plugin.registry import Registry

SCHEDULER_EVENTS = [
    "GATE_DECISION",
    "STRATEGY_SELECTED",
    "SPECULATIVE_STARTED",
    "SPECULATIVE_JOIN_REQUIRED",
    "SPECULATIVE_JOIN_SKIPPED",
    "SPECULATIVE_RESULT_USED",
    "SPECULATIVE_RESULT_DISCARDED",
    "SHORT_CIRCUIT_TRIGGERED",
    "BRANCH_CANCEL_ATTEMPTED",
    "BRANCH_CANCELLED",
    "BRANCH_COMPLETED_AFTER_SHORT_CIRCUIT",
    "RESULT_REUSED",
    "NODE_TIMEOUT",
    "NODE_RETRY",
    "NODE_FAILED",
    "LOOP_CYCLE_STARTED",
    "LOOP_UNTIL_MET",
    "LOOP_MAX_CYCLES",
    "LOOP_STOPPED_SOFT_DEADLINE",
    "BUDGET_SOFT_DEADLINE",
    "BUDGET_DEADLINE_EXCEEDED",
    "BUDGET_COST_EXCEEDED",
    "POLICY_PINNED",
    "POLICY_ACTIVATED",
    "POLICY_ROLLED_BACK",
]
"""The event types the scheduler emits (the contract's list; architecture: Events)."""


class Forger(Node):
    """Records the event named by its class attribute `name`."""

    type_name = "forger"
    event_types = ("FORGER_DONE",)
    name: ClassVar[Any] = "FORGER_DONE"

    class Config(BaseModel):
        pass

    class Output(BaseModel):
        sequence: int = 0

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        return self.Output(sequence=ctx.emit(type(self).name, decision="forged"))


class Validator(Node):
    """A third-party validator that shares the built-in validate node's verdict events."""

    type_name = "my_validator"
    event_types = ("VALIDATION_PASSED", "VALIDATION_FAILED")

    class Config(BaseModel):
        pass

    class Output(BaseModel):
        ok: bool = True

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        ctx.emit("VALIDATION_PASSED", decision="valid")
        return self.Output()


GRAPH = """
moat: 1
name: forge
nodes:
  forge: {type: forger}
output:
  sequence: forge.sequence
"""


async def _emit(name: Any) -> tuple[Any, MemorySink]:
    Forger.name = name
    sink = MemorySink()
    graph = load_graph_text(GRAPH, registry=Registry([Forger]))
    async with Runner(graph, sink=sink) as runner:
        result = await runner.run({}, request_id="r-000000")
    return result, sink


def _node_events(sink: MemorySink) -> list[str]:
    return [e.event_type for e in sink.events() if e.component == "forger"]


@pytest.mark.parametrize("name", SCHEDULER_EVENTS)
def test_a_node_cannot_record_an_event_of_the_scheduler(name: str) -> None:
    result, sink = anyio.run(_emit, name)
    assert result.status == "failed"
    assert result.error.startswith(f"node 'forge': ctx.emit: {name!r} is one of the events")
    assert "Give the node's event a name of its own" in result.error
    assert "`event_types` of node type 'forger'" in result.error
    assert _node_events(sink) == []
    # the scheduler's own record of the failure is still there, and the only one
    failed = [e for e in sink.events() if e.event_type == "NODE_FAILED"]
    assert [e.component for e in failed] == ["scheduler"]


def test_the_scheduler_list_of_the_design_is_the_engines() -> None:
    assert set(SCHEDULER_EVENTS) <= set(EventType)


@pytest.mark.parametrize("name", ["CACHE_HIT", "ROUTE_SELECTED", "VALIDATION_PASSED"])
def test_a_built_in_nodes_event_is_refused_to_other_node_types(name: str) -> None:
    result, sink = anyio.run(_emit, name)
    assert result.status == "failed"
    assert re.search(
        rf"{name!r} is an event of node type '\w+'; to record it too, list it", result.error
    )
    assert _node_events(sink) == []


def test_a_node_type_records_the_names_it_declares_even_those_it_shares() -> None:
    async def main() -> tuple[Any, MemorySink]:
        sink = MemorySink()
        text = GRAPH.replace("type: forger", "type: my_validator").replace(
            "forge.sequence", "forge.ok"
        )
        graph = load_graph_text(text, registry=Registry([Validator]))
        async with Runner(graph, sink=sink) as runner:
            return await runner.run({}, request_id="r-000000"), sink

    result, sink = anyio.run(main)
    assert result.status == "ok", result.error
    assert [e.event_type for e in sink.events() if e.component == "my_validator"] == [
        "VALIDATION_PASSED"
    ]
    ok, _ = anyio.run(_emit, "FORGER_DONE")
    assert ok.status == "ok"
    fresh, _ = anyio.run(_emit, "SOMETHING_NEW")  # a name nobody declares is free
    assert fresh.status == "ok"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", r"the event type is empty"),
        (None, r"must be a string .* not NoneType None"),
        (7, r"must be a string .* not int 7"),
        (["A"], r"must be a string .* not list \['A'\]"),
        ("slept", r"'slept' is not UPPER_SNAKE_CASE .* write it like 'SLEPT'"),
        (
            "BAD\nNAME\x1b[2J",
            r"'BAD\\nNAME\\x1b\[2J' is not UPPER_SNAKE_CASE .* like 'BAD_NAME_2J'",
        ),
        ("9LIVES", r"write it like 'EVENT_9LIVES'"),
        pytest.param(
            "A" * 10_000,
            rf"is 10000 characters long; give the event a name of at most {MAX_CHARS}",
            id="huge",
        ),
    ],
)
def test_a_malformed_event_name_is_refused_clearly(name: Any, message: str) -> None:
    result, sink = anyio.run(_emit, name)
    assert result.status == "failed"
    assert re.search(message, result.error), result.error
    assert len(result.error) < 600  # a huge name is not echoed whole
    assert _node_events(sink) == []


_VALID = re.compile(r"[A-Z][A-Z0-9_]*")


def _claimed_by_others() -> set[str]:
    """The event names the installed node types declare (the forger declares its own)."""
    installed = Registry.default()
    return {
        name
        for type_name in installed.names()
        for name in getattr(installed.get(type_name), "event_types", ())
    }


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.one_of(
        st.text(max_size=80),
        st.from_regex(_VALID, fullmatch=True).filter(lambda s: len(s) <= 80),
        st.sampled_from([e.value for e in EventType]),
        st.integers(),
        st.none(),
        st.binary(max_size=8),
    )
)
def test_an_event_is_recorded_exactly_when_its_name_is_a_free_upper_snake_name(name: Any) -> None:
    result, sink = anyio.run(_emit, name)
    free = (
        isinstance(name, str)
        and bool(_VALID.fullmatch(name))
        and len(name) <= MAX_CHARS
        and name not in set(EventType)
        and name not in _claimed_by_others()
    )
    if free or name == "FORGER_DONE":
        assert result.status == "ok", result.error
        assert _node_events(sink) == [name]
    else:
        assert result.status == "failed" and "node 'forge': ctx.emit: " in result.error
        assert _node_events(sink) == []
