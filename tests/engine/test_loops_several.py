"""Graphs with several loops, through the public API and a store: loops in sequence and
side by side, same-named body nodes, a body node named like an outer node, `prev` in each
loop, nested loops, speculation, failures, deadlines and `max_cycles`.

The store records a body node by its bare id and its cycle number, so each assertion
reads a loop's own records (its `LOOP_CYCLE_STARTED` and stop events, its `CYCLE_SUMMARY`
traces, which name it) and the node runs in the order they were recorded.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.api import Pipeline
from engine.graph.loader import check_text
from tests.support.sched_nodes import backends, graph, registry

STOPS = ("LOOP_UNTIL_MET", "LOOP_MAX_CYCLES", "LOOP_STOPPED_SOFT_DEADLINE")


pytestmark = pytest.mark.anyio
anyio_backend = backends("trio-mock")


async def _stored(text: str, tmp_path: Path) -> Any:
    """Run one request of `text` on a fresh store in `tmp_path`; the result and the store's
    rows."""
    db = tmp_path / "moat.db"
    async with Pipeline(graph(text), db=db) as pipe:
        result = await pipe.run({}, run_id="run")
    return result, _Rows(db, result.request_id)


class _Rows:
    """A request's stored rows, in the order they were recorded."""

    def __init__(self, db: Path, request_id: str) -> None:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            args = (request_id,)
            self.runs = conn.execute(
                "SELECT * FROM node_runs WHERE request_id = ? ORDER BY id", args
            ).fetchall()
            self.events = conn.execute(
                "SELECT * FROM orchestration_events WHERE request_id = ? ORDER BY sequence", args
            ).fetchall()
            traces = conn.execute(
                "SELECT * FROM decision_traces WHERE request_id = ? AND stage = 'CYCLE_SUMMARY' "
                "ORDER BY id",
                args,
            ).fetchall()
        self.summaries = [
            {**json.loads(t["payload_json"]), "row_cycle": t["cycle"]} for t in traces
        ]

    def started(self, loop: str) -> list[int]:
        """The cycles of `loop`'s `LOOP_CYCLE_STARTED` events, in order."""
        return [
            e["cycle"]
            for e in self.events
            if e["event_type"] == "LOOP_CYCLE_STARTED" and e["stage"] == loop
        ]

    def stops(self, loop: str) -> list[tuple[str, int]]:
        return [
            (e["event_type"], e["cycle"])
            for e in self.events
            if e["event_type"] in STOPS and e["stage"] == loop
        ]

    def summary(self, loop: str) -> list[tuple[int, str, str | None]]:
        """(cycle, next_action, stop_reason) of each of `loop`'s `CYCLE_SUMMARY` traces."""
        found = []
        for s in self.summaries:
            if s["loop"] == loop:
                assert s["row_cycle"] == s["cycle"]
                found.append((s["cycle"], s["next_action"], s["stop_reason"]))
        return found

    def of(self, node: str) -> list[tuple[int, str]]:
        """(cycle, status) of each run of `node`, in the order they were recorded."""
        return [(r["cycle"], r["status"]) for r in self.runs if r["node"] == node]


SEQUENCE = """
moat: 1
name: sequence
nodes:
  step: {type: work, with: {value: 100}}
  la:
    type: loop
    max_cycles: 4
    until: "step.value >= 3"
    nodes:
      step:
        type: work
        with: {ms: 10, value: "{{ (prev.step.value if prev else 0) + 1 }}"}
    output: {value: step.value, cycles: cycle}
  lb:
    type: loop
    max_cycles: 3
    nodes:
      step:
        type: work
        with:
          ms: 5
          value: "{{ [la.value, prev.step.value if prev else none, cycle] }}"
    output: {value: step.value, cycles: cycle}
output:
  a: la.value
  b: lb.value
  outer: step.value
"""


async def test_two_loops_in_sequence_keep_their_cycles_prev_and_records_apart(
    tmp_path: Path,
) -> None:
    result, rows = await _stored(SEQUENCE, tmp_path)
    assert result.status.value == "ok"
    assert result.output == {
        "a": 3,
        # each loop's `prev` is its own body's last cycle; `step` outside is the top one
        "b": [3, [3, [3, None, 1], 2], 3],
        "outer": 100,
    }
    assert result.latency_ms == pytest.approx(3 * 10 + 3 * 5)  # one loop after the other
    # the top-level `step` (no wait), then `la`'s three cycles, then `lb`'s
    assert rows.of("step") == [(0, "succeeded")] + [(c, "succeeded") for c in (1, 2, 3)] * 2
    assert (rows.started("la"), rows.started("lb")) == ([1, 2, 3], [1, 2, 3])
    assert rows.stops("la") == [("LOOP_UNTIL_MET", 3)]
    assert rows.stops("lb") == [("LOOP_MAX_CYCLES", 3)]
    assert rows.summary("la") == [
        (1, "continue", None),
        (2, "continue", None),
        (3, "stop", "until_met"),
    ]
    assert rows.summary("lb") == [
        (1, "continue", None),
        (2, "continue", None),
        (3, "stop", "max_cycles"),
    ]
    assert len(rows.summaries) == 6


SIDE_BY_SIDE = """
moat: 1
name: side-by-side
nodes:
  la:
    type: loop
    max_cycles: 3
    until: "step.value < 0"
    nodes:
      step: {type: work, with: {ms: 10, value: "{{ cycle }}"}}
      hedge: {type: work, speculative: true, with: {ms: 1, value: "{{ cycle }}"}}
    output: {value: "step.value + hedge.value"}
  lb:
    type: loop
    max_cycles: 2
    until: "step.value < 0"
    nodes:
      step: {type: work, with: {ms: 15, value: "{{ cycle * 10 }}"}}
      hedge: {type: work, speculative: true, with: {ms: 100, value: 1}}
    output: {value: step.value}
output:
  total: "la.value + lb.value"
"""


async def test_two_loops_demanded_together_run_side_by_side_each_body_once_a_cycle(
    tmp_path: Path,
) -> None:
    result, rows = await _stored(SIDE_BY_SIDE, tmp_path)
    assert (result.status.value, result.output) == ("ok", {"total": 6 + 20})
    assert result.latency_ms == pytest.approx(max(3 * 10, 2 * 15))  # concurrently
    # both loops' `step` and `hedge` in cycles 1 and 2, only `la`'s in cycle 3
    steps = sorted(rows.of("step"))
    assert steps == [(1, "succeeded")] * 2 + [(2, "succeeded")] * 2 + [(3, "succeeded")]
    hedges = [(r["cycle"], r["status"], r["outcome"]) for r in rows.runs if r["node"] == "hedge"]
    assert sorted(c for c, _, _ in hedges) == [1, 1, 2, 2, 3]
    # `la` used its last cycle's hedge; `lb`'s never finished: cancelled, never used
    assert sorted((c, o) for c, _, o in hedges if o == "used") == [(3, "used")]
    assert sum(1 for _, s, o in hedges if (s, o) == ("cancelled", "cancelled")) == 2
    assert (rows.started("la"), rows.started("lb")) == ([1, 2, 3], [1, 2])
    assert rows.stops("la") == [("LOOP_MAX_CYCLES", 3)]
    assert rows.stops("lb") == [("LOOP_MAX_CYCLES", 2)]
    assert [c for c, _, _ in rows.summary("la")] == [1, 2, 3]
    assert [c for c, _, _ in rows.summary("lb")] == [1, 2]


SHADOW = """
moat: 1
name: shadow
nodes:
  draft:
    type: loop
    max_cycles: 1
    nodes:
      seed: {type: work, with: {value: 7}}
    output: {text: "'outer'"}
  refine:
    type: loop
    max_cycles: 2
    nodes:
      draft:
        type: work
        with: {value: "{{ (prev.draft.value if prev else 0) + 1 }}"}
      check:
        type: work
        with: {value: "{{ draft.value * 10 }}"}
    output: {value: check.value, draft: draft.value}
output:
  refined: refine.value
  inner: refine.draft
  outer: draft.text
"""


async def test_a_body_node_named_like_an_outer_node_hides_it_in_the_body(tmp_path: Path) -> None:
    result, rows = await _stored(SHADOW, tmp_path)
    assert result.output == {"refined": 20, "inner": 2, "outer": "outer"}
    assert rows.of("draft") == [(1, "succeeded"), (2, "succeeded"), (0, "succeeded")]


def test_the_checker_reads_a_name_in_a_body_as_the_body_node_it_names() -> None:
    """DESIGN: a loop body's own node ids are in scope there; the checker, like the
    scheduler, resolves a name in the innermost scope holding it."""
    wrong = SHADOW.replace("draft.value * 10", "draft.text")
    report = check_text(wrong, "shadow.yaml", registry=registry())
    [error] = report.errors
    assert "'draft.text' is not an output of node 'draft' (work)" in str(error)
    assert "Outputs: value" in str(error)
    outer = SHADOW.replace("outer: draft.text", "outer: draft.value")
    [error] = check_text(outer, "shadow.yaml", registry=registry()).errors
    assert "'draft.value' is not an output of node 'draft' (loop)" in str(error)


NESTED = """
moat: 1
name: nested
nodes:
  outer:
    type: loop
    max_cycles: 2
    nodes:
      step:
        type: work
        with: {value: "{{ (prev.step.value if prev else 0) + 100 }}"}
      inner:
        type: loop
        max_cycles: 3
        until: "step.value >= 2 + cycle_cap.value"
        nodes:
          cycle_cap: {type: work, with: {value: 1}}
          step:
            type: work
            with: {ms: 1, value: "{{ (prev.step.value if prev else 0) + 1 }}"}
        output: {value: step.value, cycles: cycle}
      both:
        type: work
        with: {value: "{{ [step.value, inner.value, inner.cycles] }}"}
    output: {value: both.value, prev: "prev.both.value if prev else none"}
output:
  v: outer.value
  p: outer.prev
"""


async def test_nested_loops_each_have_their_own_prev_and_cycles(tmp_path: Path) -> None:
    result, rows = await _stored(NESTED, tmp_path)
    assert result.output == {"v": [200, 3, 3], "p": [100, 3, 3]}
    # the inner loop ran in each outer cycle, 1..3 each time, and stopped each time
    assert rows.started("inner") == [1, 2, 3, 1, 2, 3]
    assert rows.stops("inner") == [("LOOP_UNTIL_MET", 3)] * 2
    assert rows.started("outer") == [1, 2]
    assert rows.stops("outer") == [("LOOP_MAX_CYCLES", 2)]
    inner = rows.summary("inner")
    assert [c for c, _, _ in inner] == [1, 2, 3, 1, 2, 3]
    assert [a for _, a, _ in inner] == ["continue", "continue", "stop"] * 2
    assert rows.of("inner") == [(1, "succeeded"), (2, "succeeded")]
    assert rows.of("outer") == [(0, "succeeded")]
    # `step` of the outer body in cycles 1, 2; the inner body's in 1..3 twice
    assert sorted(rows.of("step")) == sorted(
        [(1, "succeeded"), (2, "succeeded")] + [(c, "succeeded") for c in (1, 2, 3)] * 2
    )


FAILING = """
moat: 1
name: failing
nodes:
  la:
    type: loop
    max_cycles: 5
    until: "step.value > 99"
    nodes:
      step:
        type: work
        with: {ms: 10, value: "{{ cycle }}", fail: "{{ 'error' if cycle == 2 else none }}"}
    output: {value: step.value}
  lb:
    type: loop
    max_cycles: 3
    until: "step.value > 99"
    nodes:
      step: {type: work, with: {ms: 15, value: "{{ cycle }}"}}
    output: {value: step.value}
output:
  a: la.value
  b: lb.value
"""


async def test_a_loop_whose_body_fails_stops_there_and_leaves_the_other_loop_whole(
    tmp_path: Path,
) -> None:
    result, rows = await _stored(FAILING, tmp_path)
    assert result.status.value == "failed"
    assert result.error == "node 'step': ValueError: step broke on attempt 1"
    assert rows.started("la") == [1, 2]
    assert rows.summary("la") == [(1, "continue", None), (2, "stop", "failed")]
    assert rows.stops("la") == []
    assert rows.started("lb") == [1, 2, 3]
    assert rows.summary("lb")[-1] == (3, "stop", "max_cycles")
    assert sorted(rows.of("step")) == [
        (1, "succeeded"),
        (1, "succeeded"),
        (2, "failed"),
        (2, "succeeded"),
        (3, "succeeded"),
    ]
    assert rows.of("la") == [(0, "failed")]
    assert rows.of("lb") == [(0, "succeeded")]


DEADLINE = """
moat: 1
name: deadline
budget: {deadline_ms: 45, partial: true}
nodes:
  la:
    type: loop
    max_cycles: 9
    until: "step.value > 99"
    nodes:
      step: {type: work, with: {ms: 10, value: "{{ cycle }}"}}
    output: {value: step.value}
  lb:
    type: loop
    max_cycles: 9
    until: "step.value > 99"
    nodes:
      step: {type: work, with: {ms: 20, value: "{{ cycle }}"}}
    output: {value: step.value}
output:
  a: la.value
  b: lb.value
  c: "'kept'"
"""


async def test_a_deadline_mid_loop_stops_each_loop_in_its_current_cycle(tmp_path: Path) -> None:
    result, rows = await _stored(DEADLINE, tmp_path)
    assert (result.status.value, result.output) == ("partial", {"c": "kept"})
    assert rows.started("la") == [1, 2, 3, 4, 5]
    assert rows.started("lb") == [1, 2, 3]
    assert rows.summary("la")[-1] == (5, "stop", "deadline")
    assert rows.summary("lb")[-1] == (3, "stop", "deadline")
    assert [a for _, a, _ in rows.summary("la")[:-1]] == ["continue"] * 4
    assert rows.stops("la") == rows.stops("lb") == []
    assert sorted(rows.of("step")) == sorted(
        [(c, "succeeded") for c in (1, 2, 3, 4)]
        + [(5, "cancelled")]
        + [(1, "succeeded"), (2, "succeeded"), (3, "cancelled")]
    )
    assert rows.of("la") == rows.of("lb") == [(0, "cancelled")]


NEVER = """
moat: 1
name: never
nodes:
  la:
    type: loop
    max_cycles: 2
    until: "step.value < 0"
    nodes:
      step: {type: work, with: {value: "{{ cycle }}"}}
    output: {value: step.value}
  lb:
    type: loop
    max_cycles: 4
    until: "false"
    nodes:
      step: {type: work, with: {value: "{{ cycle }}"}}
    output: {value: step.value}
output:
  a: la.value
  b: lb.value
"""


async def test_until_that_never_holds_stops_each_loop_at_its_own_max_cycles(tmp_path: Path) -> None:
    result, rows = await _stored(NEVER, tmp_path)
    assert result.output == {"a": 2, "b": 4}
    assert rows.stops("la") == [("LOOP_MAX_CYCLES", 2)]
    assert rows.stops("lb") == [("LOOP_MAX_CYCLES", 4)]
    payloads = [
        json.loads(e["payload_json"]) for e in rows.events if e["event_type"] == "LOOP_MAX_CYCLES"
    ]
    assert payloads == [{"max_cycles": 2}, {"max_cycles": 4}]
    assert rows.summary("la")[-1] == (2, "stop", "max_cycles")
    assert rows.summary("lb")[-1] == (4, "stop", "max_cycles")


PREV_ONLY = """
moat: 1
name: prev-only
nodes:
  lp:
    type: loop
    max_cycles: CYCLES
    nodes:
      seen: {type: work, with: {value: "{{ cycle }}"}}
      step: {type: work, with: {value: "{{ prev.seen.value if prev else 0 }}"}}
    output: {value: step.value}
output:
  v: lp.value
"""


async def test_a_body_node_read_only_as_prev_runs_and_is_not_reported_as_never_running(
    tmp_path: Path,
) -> None:
    text = PREV_ONLY.replace("CYCLES", "3")
    assert check_text(text, "prev.yaml", registry=registry()).warnings == []
    result, rows = await _stored(text, tmp_path)
    assert result.output == {"v": 2}
    assert rows.of("seen") == [(1, "succeeded"), (2, "succeeded")]
    # with a single cycle there is no next one to read it: it never runs, as reported
    [warning] = check_text(
        PREV_ONLY.replace("CYCLES", "1"), "prev.yaml", registry=registry()
    ).warnings
    assert "node 'seen': nothing demands this node" in warning
