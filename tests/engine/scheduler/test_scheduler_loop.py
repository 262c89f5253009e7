"""Loops: `until`, `max_cycles`, `prev` and `cycle`, the soft deadline, and `CYCLE_SUMMARY`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.sched_nodes import backends, events, graph, impl, mock_trio, run, runs

anyio_backend = backends("asyncio", "trio-mock")

COUNTING = """
moat: 1
name: counting
budget: {soft_deadline_ms: SOFT}
nodes:
  refine:
    type: loop
    max_cycles: 4
    until: step.value >= input.target
    nodes:
      step:
        type: work
        with: {ms: 10, value: "{{ (prev.step.value if prev else 0) + cycle }}"}
    output:
      value: step.value
      cycles: cycle
      degraded: request.degraded
output:
  value: refine.value
  cycles: refine.cycles
  degraded: refine.degraded
"""


def counting(soft_ms: float = 10_000) -> Any:
    return graph(COUNTING.replace("SOFT", str(soft_ms)))


@pytest.mark.anyio
async def test_loop_stops_when_until_is_met(anyio_backend: Any) -> None:
    result, sink = await run(counting(), {"target": 3})
    assert result.output == {"value": 3, "cycles": 2, "degraded": False}
    assert runs(sink) == [
        ("step", 1, "succeeded", False, "used", 1),
        ("step", 2, "succeeded", False, "used", 1),
        ("refine", 0, "succeeded", False, "used", 1),
    ]
    assert events(sink) == [
        ("LOOP_CYCLE_STARTED", "refine"),
        ("LOOP_CYCLE_STARTED", "refine"),
        ("LOOP_UNTIL_MET", "refine"),
    ]
    assert [e.cycle for e in sink.events() if e.event_type.startswith("LOOP")] == [1, 2, 2]


@pytest.mark.anyio
async def test_loop_stops_at_max_cycles(anyio_backend: Any) -> None:
    result, sink = await run(counting(), {"target": 100})
    assert result.output == {"value": 10, "cycles": 4, "degraded": False}
    assert [r.cycle for r in sink.node_runs() if r.node == "step"] == [1, 2, 3, 4]
    assert events(sink)[-1] == ("LOOP_MAX_CYCLES", "refine")
    if isinstance(anyio_backend, tuple):
        assert result.latency_ms == pytest.approx(40)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
async def test_soft_deadline_stops_the_loop_after_the_current_cycle(anyio_backend: Any) -> None:
    result, sink = await run(counting(soft_ms=25), {"target": 100})
    assert result.output == {"value": 6, "cycles": 3, "degraded": True}
    assert events(sink)[-2:] == [
        ("BUDGET_SOFT_DEADLINE", "request"),
        ("LOOP_STOPPED_SOFT_DEADLINE", "refine"),
    ]


DELIBERATE = """
moat: 1
name: deliberate
nodes:
  deliberate:
    type: loop
    max_cycles: 3
    until: converge.value == 'done'
    nodes:
      critic:
        type: work
        with: {ms: 10, value: "{{ input.verdicts[cycle - 1] }}"}
      simulator:
        type: work
        when: critic.value == 'revise'
        with: {ms: 30, value: simulated}
      perspectives:
        type: work
        speculative: true
        with: {ms: 500, value: unused}
      converge:
        type: work
        with:
          value: "{{ 'done' if critic.value == 'proceed' else 'again' }}"
          ms: "{{ 1 if simulator else 2 }}"
    output:
      verdict: critic.value
      cycles: cycle
output:
  verdict: deliberate.verdict
  cycles: deliberate.cycles
"""


@pytest.mark.anyio
async def test_cycle_summary_says_what_ran_was_skipped_and_cancelled(anyio_backend: Any) -> None:
    g = graph(DELIBERATE)
    result, sink = await run(g, {"verdicts": ["revise", "proceed", "proceed"]})
    assert result.output == {"verdict": "proceed", "cycles": 2}
    summaries = [dict(t.payload) for t in sink.traces("CYCLE_SUMMARY")]
    assert [(s["cycle"], s["next_action"], s["stop_reason"], s["until"]) for s in summaries] == [
        (1, "continue", None, False),
        (2, "stop", "until_met", True),
    ]
    first, second = summaries
    assert first["modules_planned"] == ["critic", "perspectives", "simulator", "converge"]
    assert first["modules_executed"] == ["critic", "simulator", "converge"]
    assert first["modules_cancelled"] == ["perspectives"]
    assert first["modules_speculative"] == ["perspectives"]
    assert second["modules_executed"] == ["critic", "converge"]
    assert second["modules_skipped"] == ["simulator"]
    assert second["modules_cancelled"] == ["perspectives"]
    # the speculative body node was cancelled in each cycle, the loop never waited for it
    assert [r for r in runs(sink) if r[0] == "perspectives"] == [
        ("perspectives", 1, "cancelled", True, "cancelled", 1),
        ("perspectives", 2, "cancelled", True, "cancelled", 1),
    ]
    assert impl(g, "perspectives", loop="deliberate").finished == 0
    if isinstance(anyio_backend, tuple):
        assert result.latency_ms == pytest.approx(10 + 30 + 1 + 10 + 2)


@pytest.mark.anyio
async def test_body_nodes_read_outer_nodes_once(anyio_backend: Any) -> None:
    # without `until` nothing would demand the body before the last cycle
    g = graph(
        """
        moat: 1
        name: outer
        nodes:
          base: {type: work, with: {ms: 5, value: 10}}
          again:
            type: loop
            max_cycles: 3
            until: add.value > 100
            nodes:
              add: {type: work, with: {value: "{{ base.value + cycle }}"}}
            output:
              last: add.value
        output:
          last: again.last
        """
    )
    result, sink = await run(g)
    assert result.output == {"last": 13}
    assert impl(g, "base").started == 1
    assert [(r.node, r.cycle) for r in sink.node_runs()] == [
        ("base", 0),
        ("add", 1),
        ("add", 2),
        ("add", 3),
        ("again", 0),
    ]
    assert events(sink).count(("RESULT_REUSED", "base")) == 2
