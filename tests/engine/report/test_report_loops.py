"""The request report of graphs with more than one loop: one card per cycle of each loop.

Node ids are unique only within the graph or one loop body, and the store names a node run
by its bare id, so two loops' `step` store the same (node, cycle) pairs: each card still
shows only its own loop's work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from engine.cli import main
from engine.events import (
    DecisionTrace,
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    Record,
)
from engine.report.explain import CycleCard, render_markdown, report_json, request_report
from engine.store.store import Store
from tests.support.fast_graphs import fast_copy

TWO_LOOPS = """
moat: 1
name: twoloops
models:
  small: {provider: sim, profile: small, time_scale: 0.01}
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes:
  a:
    type: loop
    max_cycles: 2
    until: "len(step.text) > 0 and cycle >= 2"
    nodes:
      step: {type: model, with: {model: small, prompt: "A {{ input.prompt }}"}}
    output: {text: step.text}
  b:
    type: loop
    max_cycles: 2
    until: "len(step.text) > 0 and len(str(extra)) > 0 and cycle >= 2"
    nodes:
      step: {type: model, with: {model: small, prompt: "B {{ input.prompt }} {{ a.text }}"}}
      extra: {type: model, when: "cycle > 1", with: {model: small, prompt: "C {{ input.prompt }}"}}
    output: {text: step.text}
output: {x: b.text}
"""

NESTED = """
moat: 1
name: nested
models:
  small: {provider: sim, profile: small, time_scale: 0.01}
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes:
  outer:
    type: loop
    max_cycles: 2
    until: "len(step.text) > 0 and len(inner.text) > 0 and cycle >= 2"
    nodes:
      step: {type: model, with: {model: small, prompt: "O {{ input.prompt }} {{ cycle }}"}}
      inner:
        type: loop
        max_cycles: 2
        until: "len(step.text) > 0 and cycle >= 2"
        nodes:
          step: {type: model, with: {model: small, prompt: "I {{ input.prompt }} {{ cycle }}"}}
        output: {text: step.text}
    output: {text: step.text}
output: {x: outer.text}
"""


@pytest.fixture(autouse=True)
def cli_logging() -> Iterator[None]:
    # `main` binds structlog to the current (captured) stderr, closed after the test
    yield
    structlog.reset_defaults()


def run_graph(tmp_path: Path, graph: Path | str) -> tuple[Path, str]:
    """Run `graph` on one request into a fresh store; the store and the request id."""
    if isinstance(graph, str):
        path = tmp_path / "graph.yaml"
        path.write_text(graph)
        graph = path
    requests, out, db = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "moat.db"
    requests.write_text(json.dumps({"prompt": "hi"}) + "\n")
    assert (
        main(["run", str(graph), "--input", str(requests), "--out", str(out), "--db", str(db)]) == 0
    )
    answer = json.loads(out.read_text().splitlines()[0])
    assert answer["status"] == "ok", answer
    return db, str(answer["request_id"])


def cards_of(db: Path, request_id: str) -> list[CycleCard]:
    with Store.open(db) as store:
        return request_report(store, request_id).cycles


def card_lists(card: CycleCard) -> tuple[Any, ...]:
    return (card.loop, card.cycle, sorted(card.planned), sorted(card.executed), card.skipped)


def test_two_loops_give_a_card_per_cycle_of_each_loop_with_its_own_work(tmp_path: Path) -> None:
    db, request_id = run_graph(tmp_path, TWO_LOOPS)
    # `b` starts first (the output reads it); its first cycle's `step` reads `a.text`
    assert [card_lists(card) for card in cards_of(db, request_id)] == [
        ("b", 1, ["extra", "step"], ["step"], ["extra"]),
        ("b", 2, ["extra", "step"], ["extra", "step"], []),
        ("a", 1, ["step"], ["step"], []),
        ("a", 2, ["step"], ["step"], []),
    ]


def test_two_loops_name_their_loop_in_the_markdown_and_json(tmp_path: Path) -> None:
    db, request_id = run_graph(tmp_path, TWO_LOOPS)
    with Store.open(db) as store:
        report = request_report(store, request_id)
    markdown = render_markdown(report, raw=False)
    headings = [line for line in markdown.splitlines() if line.startswith("### Cycle")]
    assert headings == [
        "### Cycle 1 (loop `b`)",
        "### Cycle 2 (loop `b`)",
        "### Cycle 1 (loop `a`)",
        "### Cycle 2 (loop `a`)",
    ]
    # a cycle number alone no longer says whose cycle it is: the tables name the loop
    assert "| node | type | loop | cycle |" in markdown
    assert "| node | loop | cycle | model |" in markdown
    body = {(e.loop, e.node, e.cycle) for e in report.timeline if e.cycle}
    assert body == {
        ("a", "step", 1), ("a", "step", 2), ("b", "step", 1), ("b", "step", 2),
        ("b", "extra", 1), ("b", "extra", 2),
    }  # fmt: skip
    assert [(c["loop"], c["cycle"]) for c in report_json(report)["cycles"]] == [
        ("b", 1), ("b", 2), ("a", 1), ("a", 2),
    ]  # fmt: skip


def test_a_loop_in_a_loop_body_says_which_loop_and_outer_cycle(tmp_path: Path) -> None:
    db, request_id = run_graph(tmp_path, NESTED)
    cards = cards_of(db, request_id)
    assert [(c.loop, c.cycle, c.outer_loop, c.outer_cycle) for c in cards] == [
        ("outer", 1, None, None),
        ("inner", 1, "outer", 1),
        ("inner", 2, "outer", 1),
        ("outer", 2, None, None),
        ("inner", 1, "outer", 2),
        ("inner", 2, "outer", 2),
    ]
    # both bodies hold a `step`: each card lists only its own loop's
    assert [sorted(c.executed) for c in cards] == [["inner", "step"], ["step"], ["step"]] * 2
    with Store.open(db) as store:
        markdown = render_markdown(request_report(store, request_id), raw=False)
    assert "### Cycle 2 (loop `inner`, in loop `outer` cycle 1)" in markdown


def test_the_flagship_report_keeps_one_card_per_deliberation_cycle(tmp_path: Path) -> None:
    db, request_id = run_graph(tmp_path, fast_copy("governed-answer", tmp_path, time_scale=0.01))
    with Store.open(db) as store:
        report = request_report(store, request_id)
    cycles = [c.cycle for c in report.cycles]
    assert cycles == list(range(1, len(cycles) + 1))
    assert {c.loop for c in report.cycles} <= {"deliberate"}
    assert all(e.loop == "deliberate" for e in report.timeline if e.cycle)
    markdown = render_markdown(report, raw=False)
    assert "| node | type | cycle |" in markdown  # one loop: no loop column


T0 = 1_795_305_600.0
RUN = "r-20261122-000000-ab12"


def two_loop_records(
    *, summaries: bool, same_time: bool = False, b_ran: bool = False
) -> list[Record]:
    """Loops `a` and `b`, each with a `step` in cycle 1: `a`'s ran, `b`'s was skipped (or
    ran too)."""
    b_at = 0.0 if same_time else 0.5
    b_status = "succeeded" if b_ran else "skipped"

    def event(seq: int, at: float, loop: str, kind: str) -> OrchestrationEvent:
        return OrchestrationEvent(RUN, "q", 1, loop, "scheduler", kind, seq, started_at=T0 + at)

    def run(node: str, kind: str, cycle: int, status: str, at: float, ms: float) -> NodeRun:
        outcome = NodeOutcome.USED if status == "succeeded" else NodeOutcome.NONE
        return NodeRun("q", node, kind, cycle, NodeStatus(status), False, outcome, T0 + at, ms, 1)

    records: list[Record] = [
        event(1, 0.0, "a", "LOOP_CYCLE_STARTED"),
        event(2, b_at, "b", "LOOP_CYCLE_STARTED"),
        event(3, 0.6, "a", "LOOP_MAX_CYCLES"),
        event(4, 0.9, "b", "LOOP_MAX_CYCLES"),
        run("a", "loop", 0, "succeeded", 0.0, 400.0),
        run("step", "model", 1, "succeeded", 0.0, 300.0),
        run("b", "loop", 0, "succeeded", b_at, 400.0),
        run("step", "model", 1, b_status, b_at, 300.0 if b_ran else 0.0),
    ]
    if summaries:
        records += [
            DecisionTrace("q", 1, "CYCLE_SUMMARY", {
                "loop": loop, "modules_planned": ["step"], "modules_executed": executed,
                "modules_failed": [], "modules_skipped": skipped, "modules_cancelled": [],
            })
            for loop, executed, skipped in (
                ("a", ["step"], []),
                ("b", ["step"], []) if b_ran else ("b", [], ["step"]),
            )
        ]  # fmt: skip
    return records


def write(store: Store, records: list[Record]) -> None:
    with store.writer() as writer:
        for item in records:
            writer.record(item)


def test_without_summaries_node_runs_go_to_the_loop_they_ran_in(tmp_path: Path) -> None:
    with Store.open(tmp_path / "moat.db") as store:
        write(store, two_loop_records(summaries=False))
        cards = request_report(store, "q").cycles
    assert [(c.loop, c.executed, c.skipped) for c in cards] == [
        ("a", ["step"], []),
        ("b", [], ["step"]),
    ]


def test_runs_no_record_tells_apart_are_shown_on_no_card_without_a_summary(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "moat.db") as store:
        write(store, two_loop_records(summaries=False, same_time=True))
        report = request_report(store, "q")
    assert [(c.loop, c.planned, c.executed, c.skipped) for c in report.cycles] == [
        ("a", [], [], []),
        ("b", [], [], []),
    ]
    assert [e.loop for e in report.timeline if e.cycle] == [None, None]


def test_the_summaries_say_whose_run_was_whose_when_the_runs_cannot(tmp_path: Path) -> None:
    with Store.open(tmp_path / "moat.db") as store:
        write(store, two_loop_records(summaries=True, same_time=True))
        report = request_report(store, "q")
    assert [(c.loop, c.planned, c.executed, c.skipped) for c in report.cycles] == [
        ("a", ["step"], ["step"], []),
        ("b", ["step"], [], ["step"]),
    ]
    assert {(e.loop, e.status) for e in report.timeline if e.cycle} == {
        ("a", "succeeded"),
        ("b", "skipped"),
    }


def test_runs_neither_records_nor_summaries_tell_apart_are_left_to_the_summaries(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "moat.db") as store:
        write(store, two_loop_records(summaries=True, same_time=True, b_ran=True))
        report = request_report(store, "q")
    assert [(c.loop, c.planned, c.executed) for c in report.cycles] == [
        ("a", ["step"], ["step"]),
        ("b", ["step"], ["step"]),
    ]
    assert [e.loop for e in report.timeline if e.cycle] == [None, None]  # no guess
