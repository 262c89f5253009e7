"""Isolation: what a node does to the config it was given stays with that run.

A plugin may change its `config` (assign a field, append to a list in it, set a key of a
dict in it); the next request's run of the same node, in the same runner, is given the
config its graph says, not the one the last run left behind.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from engine import Node, NodeContext
from engine.events import MemorySink
from engine.graph.loader import load_graph_text
from engine.plugin.registry import Registry
from engine.scheduler.runner import Runner

pytestmark = pytest.mark.anyio


def _meddle(value: Any) -> Any:
    """Change every list and dict in `value` in place, all the way down."""
    if isinstance(value, list):
        for item in value:
            _meddle(item)
        value.append("meddled")
    elif isinstance(value, dict):
        for item in value.values():
            _meddle(item)
        value["meddled"] = True
    return value


class Meddle(Node):
    """Returns the config it was given, then changes everything in it it can."""

    type_name = "meddle"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        tag: str = ""
        items: list[Any] = []
        table: dict[str, Any] = {}
        value: Any = None

    class Output(BaseModel):
        seen: str = ""

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        seen = json.dumps(config.model_dump(), sort_keys=True)
        _meddle(config.items)
        _meddle(config.table)
        _meddle(config.value)
        config.tag = "meddled"
        config.items = ["replaced"]
        return self.Output(seen=seen)


def _graph(config: dict[str, Any]) -> str:
    return json.dumps(
        {
            "moat": 1,
            "name": "meddling",
            "input": {"type": "object"},
            "nodes": {
                "fixed": {"type": "meddle", "with": config},
                "read": {"type": "meddle", "with": {**config, "tag": "{{ input.tag }}"}},
            },
            "output": {"fixed": "fixed.seen", "read": "read.seen"},
        }
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-9, 9) | st.text("ab", max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("xy", max_size=2), inner),
    max_leaves=8,
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "tag": st.text("abc", max_size=3),
        "items": st.lists(json_values, max_size=3),
        "table": st.dictionaries(st.text("pq", max_size=2), json_values, max_size=3),
        "value": json_values,
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, requests=st.integers(2, 4))
def test_a_node_that_changes_its_config_changes_no_later_requests_config(
    config: dict[str, Any], requests: int
) -> None:
    g = load_graph_text(_graph(copy.deepcopy(config)), "meddle.yaml", registry=Registry([Meddle]))
    tag = config.get("tag", "")
    expected = json.dumps(Meddle.Config(**config).model_dump(), sort_keys=True)

    async def main() -> list[Any]:
        async with Runner(g, sink=MemorySink()) as runner:
            return [await runner.run({"tag": tag}, request_id=f"r{n}") for n in range(requests)]

    for result in anyio.run(main):
        assert result.status == "ok", result.error
        assert result.output == {"fixed": expected, "read": expected}
