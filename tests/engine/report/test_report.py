"""The request report and run stats, read back from records written through `StoreWriter`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from engine.cli import main
from engine.errors import StoreError
from engine.events import (
    CacheStatus,
    CallKind,
    CallOutcome,
    DecisionTrace,
    LlmCall,
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    Record,
    RequestRecord,
    RequestStatus,
)
from engine.report.explain import (
    render_markdown,
    render_runs,
    render_stats,
    report_json,
    request_report,
    run_stats,
    stats_json,
)
from engine.stats import percentile
from engine.store.store import Store

T0 = 1_795_305_600.0  # 2026-11-22 00:00:00 UTC
RUN = "r-20261122-000000-ab12"

# (sequence offset ms, cycle, stage, component, event type, decision, reasons)
EVENTS: list[tuple[int, int, str, str, str, str | None, tuple[str, ...]]] = [
    (0, 0, "request", "scheduler", "POLICY_PINNED", "gov@3", ()),
    (1, 0, "route", "router", "ROUTE_SELECTED", "small", ("short_prompt",)),
    (6, 0, "cache", "cache", "CACHE_MISS", None, ()),
    (8, 0, "draft", "scheduler", "STRATEGY_SELECTED", "speculative", ("low_risk",)),
    (10, 0, "draft", "scheduler", "SPECULATIVE_STARTED", None, ()),
    (10, 0, "hedge", "scheduler", "SPECULATIVE_STARTED", None, ()),
    (12, 1, "deliberate", "scheduler", "LOOP_CYCLE_STARTED", None, ()),
    (12, 1, "critic", "critic", "PRINCIPLES_RETRIEVED", None, ()),
    (90, 1, "critic", "critic", "CRITIC_DECISION", "revise", ("violation:privacy",)),
    (91, 1, "simulator", "scheduler", "GATE_DECISION", "run", ()),
    (200, 1, "simulator", "simulator", "SIMULATOR_EXECUTED", "expected_harm=0.20", ()),
    (201, 1, "converge", "converge", "CONVERGENCE_EVALUATED", "not_converged", ("revise",)),
    (201, 1, "converge", "converge", "EARLY_CONVERGENCE_REJECTED", None, ("critic_revise",)),
    (202, 2, "deliberate", "scheduler", "LOOP_CYCLE_STARTED", None, ()),
    (202, 2, "critic", "critic", "PRINCIPLES_REUSED", None, ()),
    (300, 2, "critic", "critic", "CRITIC_DECISION", "proceed", ()),
    (301, 2, "simulator", "scheduler", "GATE_DECISION", "skip", ("critic_clean",)),
    (302, 2, "converge", "converge", "CONVERGENCE_EVALUATED", "converged", ("all_clean",)),
    (302, 2, "deliberate", "scheduler", "LOOP_UNTIL_MET", None, ()),
    (303, 0, "draft", "scheduler", "SPECULATIVE_RESULT_DISCARDED", None, ()),
    (303, 0, "hedge", "scheduler", "BRANCH_CANCELLED", "cancelled", ("undemanded",)),
]

# (node, type, cycle, status, speculative, outcome, offset ms, duration ms, attempts)
NODE_RUNS: list[tuple[str, str, int, str, bool, str, int, float, int]] = [
    ("route", "router", 0, "succeeded", False, "used", 0, 5.0, 1),
    ("cache", "cache", 0, "succeeded", False, "used", 5, 2.0, 1),
    ("draft", "model", 0, "succeeded", True, "discarded", 10, 290.0, 1),
    ("hedge", "model", 0, "cancelled", True, "cancelled", 10, 293.0, 1),
    ("critic", "critic", 1, "succeeded", False, "used", 12, 78.0, 2),
    ("simulator", "simulator", 1, "succeeded", False, "used", 91, 109.0, 1),
    ("converge", "converge", 1, "succeeded", False, "used", 200, 1.0, 1),
    ("critic", "critic", 2, "succeeded", False, "used", 202, 98.0, 1),
    ("simulator", "simulator", 2, "skipped", False, "none", 301, 0.0, 0),
    ("converge", "converge", 2, "succeeded", False, "used", 301, 1.0, 1),
    ("answer", "model", 0, "succeeded", False, "used", 303, 500.0, 1),
]

# (node, cycle, model, kind, outcome, cache, offset ms, cost, related event sequence)
CALLS: list[tuple[str, int, str, str, str, str, int, float, int | None]] = [
    ("draft", 0, "small", "speculative", "discarded", "miss", 10, 0.0002, 4),
    ("hedge", 0, "large", "speculative", "cancelled", "none", 10, 0.003, 5),
    ("critic", 1, "small", "normal", "used", "miss", 12, 0.0001, 8),
    ("critic", 2, "small", "normal", "used", "hit", 202, 0.0, 15),
    ("answer", 0, "large", "normal", "used", "none", 303, 0.004, None),
]


def known_request(request_id: str = "q-1", run_id: str = RUN, seq: int = 0) -> list[Record]:
    """A hand-built request: routed, speculated, two loop cycles, answered."""
    t0 = T0 + seq
    records: list[Record] = [
        OrchestrationEvent(
            run_id=run_id,
            request_id=request_id,
            cycle=cycle,
            stage=stage,
            component=component,
            event_type=event_type,
            sequence=sequence,
            decision=decision,
            started_at=t0 + ms / 1000,
            duration_ms=0.5,
            reason_codes=reasons,
            # the shape the scheduler records (see test_request_scope_policy_pin_and_tenant)
            payload={"policy": "gov", "version": 3} if event_type == "POLICY_PINNED" else None,
        )
        for sequence, (ms, cycle, stage, component, event_type, decision, reasons) in enumerate(
            EVENTS
        )
    ]
    records += [
        NodeRun(
            request_id,
            node,
            node_type,
            cycle,
            NodeStatus(status),
            spec,
            NodeOutcome(outcome),
            t0 + ms / 1000,
            duration,
            attempts,
        )
        for node, node_type, cycle, status, spec, outcome, ms, duration, attempts in NODE_RUNS
    ]
    records += [
        LlmCall(
            request_id,
            node,
            cycle,
            model,
            "sim",
            CallKind(kind),
            CallOutcome(outcome),
            CacheStatus(cache),
            f"h{i}",
            100,
            50,
            cost,
            80.0,
            t0 + ms / 1000,
            "cancelled" if outcome == "cancelled" else "ok",
            related_event_id=related,
        )
        for i, (node, cycle, model, kind, outcome, cache, ms, cost, related) in enumerate(CALLS)
    ]
    records += [
        DecisionTrace(request_id, 0, "RISK_ASSESSMENT", {"risk_score": 0.2, "category": "low"}),
        DecisionTrace(
            request_id, 1, "CYCLE_SUMMARY",
            {"loop": "deliberate", "strategy": "full_parallel",
             "planned": ["critic", "simulator", "converge"],
             "executed": ["critic", "simulator", "converge"], "skipped": [], "cancelled": [],
             "convergence_decision": "not_converged", "convergence_reason": "critic_revise",
             "next_action": "revise"},
        ),
        DecisionTrace(request_id, 2, "CYCLE_SUMMARY", {"strategy": "critic_gated"}),
        RequestRecord(
            id=request_id, run_id=run_id, seq=seq, status=RequestStatus.OK, started_at=t0,
            finished_at=t0 + 0.812, latency_ms=812.0, cost_usd=0.0073,
            output={"answer": "Use a password manager."}, tenant="acme", policy_name="gov",
            policy_version=3,
        ),
    ]  # fmt: skip
    return records


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "moat.db") as opened:
        yield opened


def write(store: Store, records: list[Record]) -> None:
    with store.writer() as writer:
        for item in records:
            writer.record(item)


GOLDEN = """\
# Request q-1

## Summary

|  |  |
|---|---|
| Status | ok |
| Latency | 812.0 ms |
| Cost | $0.007300 |
| Policy | gov v3 |
| Route | small (short_prompt) |
| Tenant | acme |
| Run | r-20261122-000000-ab12 (seq 0) |
| Started | 2026-11-22 00:00:00.000Z |
| Models | large (sim) x2, small (sim) x3 |
| Recorded | 21 events, 11 node runs, 5 LLM calls |
| Error | — |

> **Simulated models.** LLM calls went to the `sim` provider: latency, cost and outputs \
are simulated, not measured on real models.

Output:

```json
{
  "answer": "Use a password manager."
}
```

## Execution strategy

- **Speculative**: `draft` c0: discarded ($0.000200); `hedge` c0: cancelled ($0.003000)
- **Strategy**: `draft` c0: speculative (low_risk)
- **Reused**: `critic` c2: PRINCIPLES_REUSED
- **Gates**: `simulator` c1: run; `simulator` c2: skip (critic_clean)
- **Convergence**: c1 CONVERGENCE_EVALUATED: `converge` c1: not_converged (revise); \
c1 EARLY_CONVERGENCE_REJECTED: `converge` c1: EARLY_CONVERGENCE_REJECTED (critic_revise); \
c2 CONVERGENCE_EVALUATED: `converge` c2: converged (all_clean)
- **Cache**: `cache` c0: CACHE_MISS
- **Cancellations**: `hedge` c0: BRANCH_CANCELLED

## Runtime decisions

| # | +ms | cycle | stage | component | event | decision | reasons | ms |
|---|---|---|---|---|---|---|---|---|
| 0 | 0.0 | 0 | request | scheduler | POLICY_PINNED | gov@3 | — | 0.5 |
| 1 | 1.0 | 0 | route | router | ROUTE_SELECTED | small | short_prompt | 0.5 |
| 2 | 6.0 | 0 | cache | cache | CACHE_MISS | — | — | 0.5 |
| 3 | 8.0 | 0 | draft | scheduler | STRATEGY_SELECTED | speculative | low_risk | 0.5 |
| 4 | 10.0 | 0 | draft | scheduler | SPECULATIVE_STARTED | — | — | 0.5 |
| 5 | 10.0 | 0 | hedge | scheduler | SPECULATIVE_STARTED | — | — | 0.5 |
| 6 | 12.0 | 1 | deliberate | scheduler | LOOP_CYCLE_STARTED | — | — | 0.5 |
| 7 | 12.0 | 1 | critic | critic | PRINCIPLES_RETRIEVED | — | — | 0.5 |
| 8 | 90.0 | 1 | critic | critic | CRITIC_DECISION | revise | violation:privacy | 0.5 |
| 9 | 91.0 | 1 | simulator | scheduler | GATE_DECISION | run | — | 0.5 |
| 10 | 200.0 | 1 | simulator | simulator | SIMULATOR_EXECUTED | expected_harm=0.20 | — | 0.5 |
| 11 | 201.0 | 1 | converge | converge | CONVERGENCE_EVALUATED | not_converged | revise | 0.5 |
| 12 | 201.0 | 1 | converge | converge | EARLY_CONVERGENCE_REJECTED | — | critic_revise | 0.5 |
| 13 | 202.0 | 2 | deliberate | scheduler | LOOP_CYCLE_STARTED | — | — | 0.5 |
| 14 | 202.0 | 2 | critic | critic | PRINCIPLES_REUSED | — | — | 0.5 |
| 15 | 300.0 | 2 | critic | critic | CRITIC_DECISION | proceed | — | 0.5 |
| 16 | 301.0 | 2 | simulator | scheduler | GATE_DECISION | skip | critic_clean | 0.5 |
| 17 | 302.0 | 2 | converge | converge | CONVERGENCE_EVALUATED | converged | all_clean | 0.5 |
| 18 | 302.0 | 2 | deliberate | scheduler | LOOP_UNTIL_MET | — | — | 0.5 |
| 19 | 303.0 | 0 | draft | scheduler | SPECULATIVE_RESULT_DISCARDED | — | — | 0.5 |
| 20 | 303.0 | 0 | hedge | scheduler | BRANCH_CANCELLED | cancelled | undemanded | 0.5 |

## Cycles

### Cycle 1 (loop `deliberate`)

- Strategy: full_parallel
- Planned: critic, simulator, converge
- Executed: critic, simulator, converge
- Skipped: —
- Cancelled: —
- Critic: revise (violation:privacy)
- Simulator: executed: expected_harm=0.20
- Convergence: not_converged (critic_revise)
- Next: revise

### Cycle 2 (loop `deliberate`)

- Strategy: critic_gated
- Planned: critic, simulator, converge
- Executed: critic, converge
- Skipped: simulator
- Cancelled: —
- Critic: proceed
- Simulator: skipped: critic_clean
- Convergence: CONVERGENCE_EVALUATED: converged (all_clean)
- Next: —

## Timeline

| node | type | cycle | +ms | ms | status | marks |  |
|---|---|---|---|---|---|---|---|
| route | router | 0 | 0.0 | 5.0 | succeeded | — | `█·······················` |
| cache | cache | 0 | 5.0 | 2.0 | succeeded | — | `█·······················` |
| draft | model | 0 | 10.0 | 290.0 | succeeded | speculative, discarded | `█████████···············` |
| hedge | model | 0 | 10.0 | 293.0 | cancelled | speculative, cancelled | `█████████···············` |
| critic | critic | 1 | 12.0 | 78.0 | succeeded | retried | `██······················` |
| simulator | simulator | 1 | 91.0 | 109.0 | succeeded | — | `··███···················` |
| converge | converge | 1 | 200.0 | 1.0 | succeeded | — | `·····█··················` |
| critic | critic | 2 | 202.0 | 98.0 | succeeded | reused, cached | `·····███················` |
| simulator | simulator | 2 | 301.0 | 0.0 | skipped | skipped | `········█···············` |
| converge | converge | 2 | 301.0 | 1.0 | succeeded | — | `········█···············` |
| answer | model | 0 | 303.0 | 500.0 | succeeded | — | `········███████████████·` |

## LLM calls

| node | cycle | model | provider | kind | outcome | cache | status | tokens in/out | cost | ms | +ms | event |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
| draft | 0 | small | sim | speculative | discarded | miss | ok | 100/50 | $0.000200 | 80.0 | 10.0 | SPECULATIVE_STARTED #4 |
| hedge | 0 | large | sim | speculative | cancelled | none | cancelled | 100/50 | $0.003000 | 80.0 | 10.0 | SPECULATIVE_STARTED #5 |
| critic | 1 | small | sim | normal | used | miss | ok | 100/50 | $0.000100 | 80.0 | 12.0 | CRITIC_DECISION #8 |
| critic | 2 | small | sim | normal | used | hit | ok | 100/50 | $0.000000 | 80.0 | 202.0 | CRITIC_DECISION #15 |
| answer | 0 | large | sim | normal | used | none | ok | 100/50 | $0.004000 | 80.0 | 303.0 | — |

## Decision traces

### RISK_ASSESSMENT (cycle 0)

```json
{
  "category": "low",
  "risk_score": 0.2
}
```
"""  # noqa: E501 (a golden file: table rows are as wide as they render)


def test_the_report_of_a_known_request_matches_the_golden_markdown(store: Store) -> None:
    write(store, known_request())
    assert render_markdown(request_report(store, "q-1"), raw=False) == GOLDEN


def test_raw_events_stay_available_as_the_fallback_view(store: Store) -> None:
    write(store, known_request())
    markdown = render_markdown(request_report(store, "q-1"))
    raw = markdown.split("## Raw events", 1)[1]
    lines = [json.loads(line) for line in raw.splitlines() if line.startswith("{")]
    assert [line["event_type"] for line in lines] == [e[4] for e in EVENTS]
    assert lines[0]["payload"] == {"policy": "gov", "version": 3}


def test_report_json_has_stable_keys_and_is_json(store: Store) -> None:
    write(store, known_request())
    data = report_json(request_report(store, "q-1"))
    assert list(data) == [
        "report_format", "summary", "strategy", "decisions", "cycles", "timeline",
        "llm_calls", "traces", "raw_events",
    ]  # fmt: skip
    assert data["summary"]["simulated"] is True
    assert data["summary"]["route"] == "small"
    assert [s["outcome"] for s in data["strategy"]["speculative"]] == ["discarded", "cancelled"]
    assert [c["cycle"] for c in data["cycles"]] == [1, 2]
    assert json.loads(json.dumps(data)) == data


def test_an_unfinished_request_is_reported_from_what_is_stored(store: Store) -> None:
    write(store, [r for r in known_request() if not isinstance(r, RequestRecord)])
    summary = request_report(store, "q-1").summary
    assert (summary.status, summary.latency_ms) == ("unfinished", None)
    assert (summary.policy_name, summary.policy_version, summary.run_id) == ("gov", 3, RUN)


def test_cycle_cards_are_derived_from_node_runs_without_a_cycle_summary(store: Store) -> None:
    records = [
        r
        for r in known_request()
        if not (isinstance(r, DecisionTrace) and r.stage == "CYCLE_SUMMARY")
    ]
    write(store, records)
    card = request_report(store, "q-1").cycles[1]
    assert (card.cycle, card.loop, card.strategy) == (2, "deliberate", None)
    assert (card.executed, card.skipped, card.cancelled) == (
        ["critic", "converge"],
        ["simulator"],
        [],
    )


def test_an_unknown_request_says_how_to_find_request_ids(store: Store) -> None:
    write(store, known_request())
    with pytest.raises(StoreError, match=r"no request 'nope'\. Recent requests: q-1\..*moat runs"):
        request_report(store, "nope")


def _partial(request_id: str, run_id: str, seq: int) -> list[Record]:
    """What a request in flight has stored: its records before its own `RequestRecord`."""
    return [r for r in known_request(request_id, run_id, seq) if not isinstance(r, RequestRecord)]


@pytest.mark.usefixtures("cli_logging")
def test_a_request_in_flight_says_so_shows_what_is_stored_and_exits_1(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    run = store.create_run("governed-answer", "h", 3, {"input": "in.jsonl"})  # ours: running
    write(store, _partial(f"{run}-000000", run, 0))
    db = str(store.path)

    assert main(["report", f"{run}-000000", "--db", db]) == 1
    captured = capsys.readouterr()
    in_flight = f"request '{run}-000000' is in flight: its run {run} is running (0/3 requests done)"
    assert f"| Status | unfinished |\n| Note | {in_flight}" in captured.out
    assert captured.err == f"moat: {db}: {in_flight}; `moat report` shows it whole once it is " \
        "answered, and `moat runs` shows the run's progress\n"  # fmt: skip
    assert main(["report", f"{run}-000000", "--db", db, "--format", "json"]) == 1
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["status"] == "unfinished" and summary["note"].startswith(in_flight)

    # one that has not started: nothing to show, but not an unknown id either
    assert main(["report", f"{run}-000002", "--db", db]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"request '{run}-000002' is not answered yet (it waits its turn" in captured.err
    assert f"its run {run} is running (0/3 requests done)" in captured.err


@pytest.mark.usefixtures("cli_logging")
def test_a_request_its_stopped_run_left_unanswered_names_the_resume(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    run = store.create_run("governed-answer", "h", 3, {"input": "in.jsonl"})
    write(store, _partial(f"{run}-000000", run, 0))
    store.finish_run(run, "interrupted")
    db = str(store.path)
    never = f"never finished: its run {run} ended (interrupted) before answering it; " \
        f"`moat run --resume {run}` answers it"  # fmt: skip

    assert main(["report", f"{run}-000000", "--db", db]) == 1
    captured = capsys.readouterr()
    assert f"| Note | request '{run}-000000' {never} |" in captured.out
    assert captured.err == f"moat: {db}: request '{run}-000000' {never}\n"
    assert main(["report", f"{run}-000001", "--db", db]) == 1
    assert capsys.readouterr().err == f"moat: {db}: request '{run}-000001' {never}\n"


def test_an_id_past_its_runs_last_request_or_of_no_stored_run_is_unknown(store: Store) -> None:
    run = store.create_run("governed-answer", "h", 3, {})
    with pytest.raises(StoreError, match=rf"no request '{run}-000003'\. Run {run} has 3 "
                       rf"requests \(the last: {run}-000002\)\. Find request ids"):  # fmt: skip
        request_report(store, f"{run}-000003")
    with pytest.raises(StoreError, match=r"no request 'r-1-000001'\. No run 'r-1' either: it "
                       r"was pruned \(`moat prune`\), or is another store's\."):  # fmt: skip
        request_report(store, "r-1-000001")


def test_a_request_of_a_run_being_pruned_is_gone(store: Store) -> None:
    run = store.create_run("governed-answer", "h", 3, {})
    store.finish_run(run, "pruning")
    with pytest.raises(StoreError, match=f"request '{run}-000001' is gone: its run {run} is "
                       "being pruned"):  # fmt: skip
        request_report(store, f"{run}-000001")


def stats_run(store: Store) -> str:
    run_id = store.create_run("governed-answer", "h", 4, {})
    records: list[Record] = []
    latencies = [100.0, 200.0, 300.0, 400.0]
    for seq, latency in enumerate(latencies):
        rid = f"q{seq}"
        for item in known_request(rid, run_id, seq):
            if isinstance(item, RequestRecord):
                status = RequestStatus.FAILED if seq == 3 else RequestStatus.OK
                item = RequestRecord(
                    rid, run_id, seq, status, item.started_at, item.started_at + latency / 1000,
                    latency, 0.01 * (seq + 1), None, error="boom" if seq == 3 else None,
                )  # fmt: skip
            records.append(item)
        kind = "CACHE_HIT" if seq < 3 else "CACHE_MISS"
        validation = "VALIDATION_PASSED" if seq % 2 == 0 else "VALIDATION_FAILED"
        for n, event_type in enumerate((kind, validation)):
            records.append(OrchestrationEvent(run_id, rid, 0, "x", "x", event_type, 100 + n))
    write(store, records)
    store.finish_run(run_id, "finished")
    return run_id


def test_run_stats_math(store: Store) -> None:
    run_id = stats_run(store)
    stats = run_stats(store, run_id)
    assert stats.requests == 4
    assert stats.latency_ms == {
        "p50": 250.0,
        "p95": 385.0,
        "p99": 397.0,
        "mean": 250.0,
        "max": 400.0,
    }
    assert stats.cost_total_usd == pytest.approx(0.1)
    assert stats.cost_per_case_usd == pytest.approx(0.025)
    assert stats.cache == {"hits": 3, "misses": 5, "hit_rate": 0.375}  # 4 misses in the base
    assert stats.validation == {"passed": 2, "failed": 2, "success_rate": 0.5}
    assert stats.speculative == {
        "started": 8, "used": 0, "discarded": 4, "cancelled": 4,
        "cost_usd": pytest.approx(0.0128), "wasted_usd": pytest.approx(0.0128),
    }  # fmt: skip
    assert stats.llm_calls == 20
    assert stats.llm_calls_per_request == 5.0
    assert stats.by_status == {"failed": 1, "ok": 3}
    assert stats.by_route == {"small": 4}
    assert stats.by_model["large (sim)"]["calls"] == 8
    assert stats.simulated is True
    assert [s["request_id"] for s in stats.slowest] == ["q3", "q2", "q1", "q0"]
    assert stats.failed == [{"request_id": "q3", "status": "failed", "error": "boom"}]
    assert run_stats(store).run_id == run_id  # latest run by default
    assert stats_json(stats)["latency_ms"]["p95"] == 385.0


def test_stats_rendering_says_the_figures_are_simulated(store: Store) -> None:
    text = render_stats(run_stats(store, stats_run(store)))
    assert "figures come from simulated models" in text
    assert "p50 250.0  p95 385.0  p99 397.0" in text
    assert "hit rate 37.5%" in text
    assert "success 50.0%" in text
    assert "used 0  discarded 4  cancelled 4" in text
    assert "failed       q3 failed" in text


def test_stats_of_an_unknown_run_or_an_empty_store_say_what_to_do(store: Store) -> None:
    with pytest.raises(StoreError, match="no runs yet; start one with `moat run GRAPH`"):
        run_stats(store)
    with pytest.raises(StoreError, match=r"no run 'nope'.*moat runs"):
        run_stats(store, "nope")


def test_percentiles_interpolate_between_ranks() -> None:
    values: list[Any] = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_runs_listing(store: Store) -> None:
    assert render_runs(store.list_runs()) == "no runs yet; start one with `moat run GRAPH`\n"
    run_id = stats_run(store)
    lines = render_runs(store.list_runs()).splitlines()
    assert lines[0].split() == ["RUN", "GRAPH", "STATUS", "DONE", "STARTED", "(UTC)", "TOOK"]
    assert lines[1].split()[:4] == [run_id, "governed-answer", "finished", "4/4"]


def test_runs_listing_columns_fit_long_run_ids_and_graph_names() -> None:
    # a run synced from another box keeps its id as ID@ORIGIN; the cells after it stay in line
    def run(run_id: str, graph: str, done: int, total: int | None) -> dict[str, Any]:
        return {
            "id": run_id,
            "graph_name": graph,
            "status": "finished",
            "requests_done": done,
            "requests_total": total,
            "started_at": T0,
            "finished_at": T0 + 2.5,
        }

    listing = render_runs(
        [
            run(f"{RUN}@08bbdfd63212da06.2", "triage", 12_345, 12_345),
            run(RUN, "a-graph-name-longer-than-twenty", 1, None),
            run("r-2", "g" * 50, 0, 3),
        ]
    )
    cut = "g" * 39 + "…"  # a graph name is free text: cut, `moat stats RUN_ID` shows it
    assert listing == (
        "RUN                                        GRAPH                                     "
        "STATUS           DONE  STARTED (UTC)        TOOK\n"
        f"{RUN}@08bbdfd63212da06.2  triage                                    "
        "finished  12345/12345  2026-11-22 00:00:00  2.5s\n"
        f"{RUN}                     a-graph-name-longer-than-twenty           "
        "finished          1/?  2026-11-22 00:00:00  2.5s\n"
        f"r-2                                        {cut}  "
        "finished          0/3  2026-11-22 00:00:00  2.5s\n"
    )


@pytest.fixture
def cli_logging() -> Iterator[None]:
    # `main` binds structlog to the current (captured) stderr, closed after the test
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("cli_logging")
def test_stats_without_a_run_id_sums_up_the_latest_run_as_its_help_says(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:

    older = stats_run(store)
    newer = store.create_run("governed-answer", "h", 0, {})
    store.finish_run(newer, "finished")
    assert run_stats(store).run_id == newer
    assert main(["stats", "--db", str(store.path), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["run_id"], shown["requests"]) == (newer, 0)
    assert main(["stats", older, "--db", str(store.path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 4

    with pytest.raises(SystemExit):
        main(["stats", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the run to sum up (default: the latest run; `moat runs` lists the others)" in help_text
