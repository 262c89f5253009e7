"""A loop's `timeout_ms` bounds the loop, never the nodes outside it that it reads.

A loop body reading an outer node that nothing has started yet demands it; if the loop
then runs out of its time, that outer node's one run must still reach the consumers
outside the loop that need it.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.events import DecisionTrace
from tests.support.sched_nodes import backends, graph, impl, run, runs

anyio_backend = backends("trio-mock", "asyncio")

OUTER_READ = """
moat: 1
name: loop-timeout-outer-read
nodes:
  outer: {type: work, with: {ms: 100, value: 1}}
  refine:
    type: loop
    timeout_ms: 50
    optional: true
    max_cycles: 1
    nodes:
      step: {type: work, with: {value: "{{ outer.value + 1 }}"}}
    output: {value: step.value}
output:
  answer: "refine.value if refine else outer.value"
"""


@pytest.mark.anyio
async def test_a_timed_out_loop_leaves_the_outer_node_it_read_to_its_other_consumers(
    anyio_backend: Any,
) -> None:
    g = graph(OUTER_READ)
    result, sink = await run(g)
    assert (result.status.value, result.output, result.error) == ("ok", {"answer": 1}, None)
    assert sorted(runs(sink)) == [
        ("outer", 0, "succeeded", False, "used", 1),
        ("refine", 0, "timed_out", False, "none", 1),
        ("step", 1, "cancelled", False, "cancelled", 0),  # its run never began
    ]
    outer = impl(g, "outer")
    assert (outer.started, outer.finished, outer.cancelled) == (1, 1, 0)


NOBODY_ELSE = """
moat: 1
name: loop-timeout-nobody-else
nodes:
  outer: {type: work, with: {ms: 100, value: 1}}
  refine:
    type: loop
    timeout_ms: 50
    optional: true
    max_cycles: 1
    nodes:
      step: {type: work, with: {value: "{{ outer.value + 1 }}"}}
    output: {value: step.value}
output:
  answer: "refine.value if refine else 'gave up'"
"""


@pytest.mark.anyio
async def test_what_a_timed_out_loop_left_running_and_nobody_needs_is_cancelled_at_the_end(
    anyio_backend: Any,
) -> None:
    g = graph(NOBODY_ELSE)
    result, sink = await run(g)
    assert (result.status.value, result.output) == ("ok", {"answer": "gave up"})
    assert result.latency_ms == pytest.approx(50, abs=30)  # not held back by `outer`
    assert sorted(runs(sink)) == [
        ("outer", 0, "cancelled", False, "cancelled", 1),
        ("refine", 0, "timed_out", False, "none", 1),
        ("step", 1, "cancelled", False, "cancelled", 0),  # its run never began
    ]
    outer = impl(g, "outer")
    assert (outer.started, outer.finished, outer.cancelled) == (1, 0, 1)


NESTED = """
moat: 1
name: inner-loop-timeout
nodes:
  outer:
    type: loop
    max_cycles: 2
    nodes:
      shared: {type: work, with: {ms: 100, value: "{{ cycle * 10 }}"}}
      inner:
        type: loop
        timeout_ms: 50
        optional: true
        max_cycles: 1
        nodes:
          step: {type: work, with: {value: "{{ shared.value + 1 }}"}}
        output: {value: step.value}
    output:
      value: "inner.value if inner else shared.value"
output:
  answer: outer.value
"""


@pytest.mark.anyio
async def test_an_inner_loop_timing_out_leaves_the_outer_body_node_it_read(
    anyio_backend: Any,
) -> None:
    g = graph(NESTED)
    result, sink = await run(g)
    assert (result.status.value, result.output, result.error) == ("ok", {"answer": 20}, None)
    assert [r for r in runs(sink) if r[0] == "shared"] == [
        ("shared", 2, "succeeded", False, "used", 1),
    ]
    assert [r for r in runs(sink) if r[0] == "inner"] == [
        ("inner", 2, "timed_out", False, "none", 1),
    ]


LEFT_RUNNING_IN_A_CYCLE = """
moat: 1
name: left-running-in-a-cycle
nodes:
  outer:
    type: loop
    max_cycles: 1
    nodes:
      shared: {type: work, with: {ms: 100, value: 1}}
      inner:
        type: loop
        timeout_ms: 50
        optional: true
        max_cycles: 1
        nodes:
          step: {type: work, with: {value: "{{ shared.value }}"}}
        output: {value: step.value}
    output: {value: "inner.value if inner else 'gave up'"}
output:
  answer: outer.value
"""


@pytest.mark.anyio
async def test_the_cycle_summary_counts_what_a_timed_out_loop_left_running_as_cancelled(
    anyio_backend: Any,
) -> None:
    result, sink = await run(graph(LEFT_RUNNING_IN_A_CYCLE))
    assert result.output == {"answer": "gave up"}
    assert ("shared", 1, "cancelled", False, "cancelled", 1) in runs(sink)
    summaries = [t.payload for t in sink.items if isinstance(t, DecisionTrace)]
    (summary,) = [s for s in summaries if s["loop"] == "outer"]
    assert summary["scheduler_strategy"] == "on_demand"  # nothing started speculatively
    assert summary["modules_cancelled"] == ["shared"]
    assert summary["modules_failed"] == ["inner"]


CUT_SHORT = """
moat: 1
name: cut-short
nodes:
  refine:
    type: loop
    timeout_ms: 250
    optional: true
    max_cycles: 3
    until: "check.value"
    nodes:
      draft: {type: work, with: {ms: 100, value: "{{ cycle }}"}}
      check: {type: work, with: {ms: 0, value: "{{ draft.value > 5 }}"}}
      spare: {type: work, speculative: true, with: {ms: 500, value: 0}}
    output: {value: draft.value}
output:
  answer: "refine.value if refine else 'gave up'"
"""


def _summaries(sink: Any) -> list[tuple[int, dict[str, Any]]]:
    return [
        (t.cycle, dict(t.payload))
        for t in sink.items
        if isinstance(t, DecisionTrace) and t.stage == "CYCLE_SUMMARY"
    ]


@pytest.mark.anyio
async def test_a_cycle_cut_short_by_the_loop_timeout_writes_its_summary(
    anyio_backend: Any,
) -> None:
    result, sink = await run(graph(CUT_SHORT))
    assert result.output == {"answer": "gave up"}
    summaries = _summaries(sink)
    assert [(cycle, s["next_action"], s["stop_reason"]) for cycle, s in summaries] == [
        (1, "continue", None),
        (2, "continue", None),
        (3, "stop", "timeout"),  # 250 ms: cycle 3's draft had run 50 ms of its 100
    ]
    _, last = summaries[-1]
    assert last["loop"] == "refine" and last["cycle"] == 3 and last["until"] is None
    assert last["modules_planned"] == ["draft", "check", "spare"]
    assert last["modules_executed"] == [] and last["modules_skipped"] == []
    assert sorted(last["modules_cancelled"]) == ["check", "draft", "spare"]  # check awaited draft
    assert last["modules_speculative"] == ["spare"]
    assert ("draft", 3, "cancelled", False, "cancelled", 1) in runs(sink)


@pytest.mark.anyio
async def test_a_cycle_cut_short_by_the_request_deadline_writes_its_summary(
    anyio_backend: Any,
) -> None:
    text = CUT_SHORT.replace("    timeout_ms: 250\n", "").replace(
        "nodes:\n  refine:", "budget: {deadline_ms: 150}\nnodes:\n  refine:", 1
    )
    result, sink = await run(graph(text))
    assert result.status.value == "deadline_exceeded"
    summaries = _summaries(sink)
    assert [(c, s["next_action"], s["stop_reason"]) for c, s in summaries] == [
        (1, "continue", None),
        (2, "stop", "deadline"),
    ]
    assert sorted(summaries[-1][1]["modules_cancelled"]) == ["check", "draft", "spare"]


@pytest.mark.anyio
async def test_a_cycle_cut_short_by_a_failure_writes_its_summary(anyio_backend: Any) -> None:
    text = CUT_SHORT.replace('{{ draft.value > 5 }}"', '{{ draft.value }}", fail: error')
    result, sink = await run(graph(text))
    assert result.output == {"answer": "gave up"}  # the loop is optional
    [(cycle, summary)] = _summaries(sink)
    assert (cycle, summary["next_action"], summary["stop_reason"]) == (1, "stop", "failed")
    assert summary["modules_executed"] == ["draft"]
    assert summary["modules_failed"] == ["check"]
    assert summary["modules_cancelled"] == ["spare"]
