"""`ctx.emit` and `ctx.trace` take what the store can keep as it was meant: a decision is
a text, reason codes a list of texts, a duration a number, inputs, outputs and payloads
mappings. A careless argument fails the node (at its id, saying what to write) instead of
being stored as something else: `reason_codes="LOW_RISK"` as eight codes of one letter,
a decision mapping as its Python repr, a duration "fast" in a number column."""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from typing import Any, ClassVar

import anyio
import pytest
from pydantic import BaseModel

from engine import MemorySink, Node, NodeContext, Runner, load_graph_text
from engine.plugin.registry import Registry


class Decision(enum.StrEnum):
    ACCEPT = "accept"


class Recorder(Node):
    """Records one event with the keyword arguments of its class attribute `emitted`."""

    type_name = "recorder"
    event_types = ("RECORDED",)
    emitted: ClassVar[dict[str, Any]] = {}
    traced: ClassVar[tuple[Any, Any] | None] = None

    class Config(BaseModel):
        pass

    class Output(BaseModel):
        done: bool = True

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        if type(self).traced is not None:
            ctx.trace(*type(self).traced)
        else:
            ctx.emit("RECORDED", **type(self).emitted)
        return self.Output()


GRAPH = """
moat: 1
name: record
nodes:
  rec: {type: recorder}
output:
  done: rec.done
"""


async def _record(
    emitted: dict[str, Any], traced: tuple[Any, Any] | None = None
) -> tuple[Any, MemorySink]:
    Recorder.emitted, Recorder.traced = emitted, traced
    sink = MemorySink()
    graph = load_graph_text(GRAPH, registry=Registry([Recorder]))
    async with Runner(graph, sink=sink) as runner:
        result = await runner.run({}, request_id="r-000000")
    return result, sink


@pytest.mark.parametrize(
    ("emitted", "said"),
    [
        (
            {"reason_codes": "LOW_RISK"},
            "`reason_codes` must be a list of codes, not one str 'LOW_RISK'; write "
            "reason_codes=['LOW_RISK']",
        ),
        ({"reason_codes": {"A", "B"}}, "`reason_codes` must be a list of texts, not set"),
        ({"reason_codes": ["A", 3]}, "`reason_codes` must hold texts only, not int 3"),
        ({"reason_codes": (None,)}, "`reason_codes` must hold texts only, not NoneType None"),
        (
            {"decision": {"route": "small"}},
            "`decision` must be a text such as 'accept', not dict {'route': 'small'}; put "
            "structured data in `payload`",
        ),
        ({"decision": 1}, "`decision` must be a text such as 'accept', not int 1"),
        (
            {"duration_ms": "fast"},
            "`duration_ms` must be a finite number of milliseconds, not str 'fast'",
        ),
        ({"duration_ms": True}, "`duration_ms` must be a finite number of milliseconds, not bool"),
        ({"duration_ms": math.nan}, "`duration_ms` must be a finite number of milliseconds"),
        ({"payload": [1, 2]}, "`payload` must be a mapping (a dict of JSON values), not list"),
        ({"inputs": "text"}, "`inputs` must be a mapping (a dict of JSON values), not str"),
        ({"outputs": 5}, "`outputs` must be a mapping (a dict of JSON values), not int 5"),
    ],
)
def test_a_careless_emit_argument_fails_the_node_saying_what_to_write(
    emitted: dict[str, Any], said: str
) -> None:
    result, sink = anyio.run(_record, emitted)
    assert result.status == "failed"
    assert result.error.startswith(f"node 'rec': ctx.emit: {said}"), result.error
    assert not [e for e in sink.events() if e.event_type == "RECORDED"]


@pytest.mark.parametrize(
    ("traced", "said"),
    [
        ((None, {"a": 1}), "ctx.trace: the stage must be a name such as 'RISK_ASSESSMENT', not"),
        (("", {"a": 1}), "ctx.trace: the stage must be a name such as 'RISK_ASSESSMENT', not"),
        (("STAGE", [1]), "ctx.trace: the payload must be a mapping (a dict of JSON values), not"),
    ],
)
def test_a_careless_trace_fails_the_node_saying_what_to_write(
    traced: tuple[Any, Any], said: str
) -> None:
    result, sink = anyio.run(_record, {}, traced)
    assert result.status == "failed" and result.error.startswith(f"node 'rec': {said}")
    assert not sink.traces()


@pytest.mark.parametrize(
    "emitted",
    [
        {},
        {"decision": Decision.ACCEPT, "reason_codes": ("A", "B"), "duration_ms": 3},
        {"decision": "x", "reason_codes": ["A"], "duration_ms": 2.5, "payload": {"k": 1}},
        {"inputs": OrderedDict(a=1), "outputs": {"b": 2}, "payload": {"s": {1, 2}}},
    ],
)
def test_well_formed_emit_arguments_are_recorded_as_given(emitted: dict[str, Any]) -> None:
    result, sink = anyio.run(_record, emitted)
    assert result.status == "ok", result.error
    [event] = [e for e in sink.events() if e.event_type == "RECORDED"]
    assert list(event.reason_codes) == list(emitted.get("reason_codes", ()))
    assert event.decision == emitted.get("decision")
    assert event.duration_ms == emitted.get("duration_ms")
