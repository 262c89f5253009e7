"""Races between speculative tasks: a cancelled or re-started node never fails a request.

Each test pins one interleaving the random-graph properties found (see
`test_scheduler_loop_props.py`), on trio's mock clock so the timing is exact.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.sched_nodes import backends, graph, impl, run, runs

anyio_backend = backends("trio-mock", "asyncio")

LATE_STRATEGY = """
moat: 1
name: late-strategy
nodes:
  slow: {type: work, with: {ms: 10, value: 1}}
  early: {type: work, with: {ms: 5, value: 1}}
  x:                           # its strategy is decided only once `slow` finished (10 ms)
    type: work
    speculative: "slow.value == 1"
    with: {ms: 50, value: 7}
  s:                           # starts at once; at 5 ms it needs `x` and starts it itself
    type: work
    speculative: true
    with: {value: "{{ x.value + 1 if early.value == 1 else 0 }}"}
output: {v: s.value}
"""


@pytest.mark.anyio
async def test_a_node_started_while_its_strategy_is_pending_runs_once_to_the_end(
    anyio_backend: Any,
) -> None:
    g = graph(LATE_STRATEGY)
    result, sink = await run(g)
    assert (result.status.value, result.output, result.error) == ("ok", {"v": 8}, None)
    assert sorted(runs(sink)) == [
        ("early", 0, "succeeded", True, "used", 1),
        ("s", 0, "succeeded", True, "used", 1),
        ("slow", 0, "succeeded", True, "used", 1),
        ("x", 0, "succeeded", True, "used", 1),
    ]
    assert (impl(g, "x").started, impl(g, "x").finished) == (1, 1)


LATE_STRATEGY_IN_A_LOOP = """
moat: 1
name: late-strategy-loop
nodes:
  l:
    type: loop
    max_cycles: 2
    until: s.value > 100
    nodes:
      slow: {type: work, with: {ms: 10, value: 1}}
      early: {type: work, with: {ms: 5, value: 1}}
      x:
        type: work
        speculative: "slow.value == 1"
        with: {ms: 50, value: 7}
      s:
        type: work
        speculative: true
        with: {value: "{{ x.value + cycle if early.value == 1 else 0 }}"}
    output: {v: s.value}
output: {v: l.v}
"""


@pytest.mark.anyio
async def test_the_same_race_inside_a_loop_body(anyio_backend: Any) -> None:
    result, sink = await run(graph(LATE_STRATEGY_IN_A_LOOP))
    assert (result.status.value, result.output, result.error) == ("ok", {"v": 9}, None)
    assert [r for r in runs(sink) if r[0] == "x"] == [
        ("x", 1, "succeeded", True, "used", 1),
        ("x", 2, "succeeded", True, "used", 1),
    ]
