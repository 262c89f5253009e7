"""Isolation of inputs: a node that changes its request's input changes only that
request's copy, never the caller's objects nor another request that shares them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api import Pipeline

GRAPH = """\
moat: 1
name: meddling
plugins: [tests.support.hostile_nodes]
input: {type: object, properties: {mode: {type: string}}}
nodes:
  h: {type: hostile, with: {mode: "{{ input.mode }}"}}
output:
  seen: h.value
"""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-9, 9) | st.text("ab", max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("xy", max_size=2), inner),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("isolation") / "meddling.yaml"
    path.write_text(GRAPH)
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shared=json_values, requests=st.integers(2, 5), single=st.booleans())
def test_a_node_changing_its_input_changes_neither_the_callers_objects_nor_other_requests(
    graph: Path, shared: Any, requests: int, single: bool
) -> None:
    items = [{"mode": "meddle_input", "n": n, "shared": shared} for n in range(requests)]
    pristine = copy.deepcopy(items)

    async def main() -> list[Any]:
        async with Pipeline(graph, db=None) as pipe:
            if single:  # one request after the other, through `run`
                return [(await pipe.run(item)).output for item in items]
            records: list[Any] = []
            await pipe.run_batch(items, concurrency=requests, on_record=records.append)
            return [r.output for r in sorted(records, key=lambda r: r.seq)]

    outputs = anyio.run(main)
    assert items == pristine
    assert outputs == [{"seen": json.dumps(item, sort_keys=True)} for item in pristine]
