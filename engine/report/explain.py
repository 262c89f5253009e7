"""Explains runs from the store: the request report and run stats.

The report is the request detail of docs/architecture.md ("The request report").

`request_report` turns everything stored about one request into a `RequestReport` view
model; `render_markdown` and `report_json` present it (`moat report`), and the TUI reads the
same model. `run_stats` aggregates one run (`moat stats`), `render_runs` lists runs
(`moat runs`).

Conventions the report relies on (the scheduler and nodes emit them this way):

- `LlmCall.related_event_id` is the `sequence` of an event of the same request.
- A `CYCLE_SUMMARY` trace payload may hold `loop`, `strategy`, `planned`, `executed`,
  `skipped`, `cancelled` (lists of node ids), `convergence_decision`,
  `convergence_reason` and `next_action`; whatever is missing is derived from the node runs
  and events of that cycle. The scheduler writes `loop`, `scheduler_strategy`,
  `next_action` and `modules_planned`, `modules_executed`, ... (lists of node ids).
- A cycle is one loop's (`engine.report._cycles` says how records are attributed to it):
  a graph with two loops has a card per cycle of each.
- A `POLICY_PINNED` payload holds `policy` (the name) and `version` (used while a request is
  unfinished).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import Any

from engine.errors import RequestNotFinished, StoreError
from engine.report._cycles import Attribution, Cycle, attribute
from engine.report.markdown import render_markdown
from engine.report.model import (
    CycleCard,
    DecisionRow,
    ExecutionStrategy,
    LlmCallRow,
    RequestReport,
    SpeculativeOutcome,
    Summary,
    TimelineEntry,
    TraceRow,
)
from engine.report.stats import (
    RunStats,
    render_runs,
    render_stats,
    run_stats,
    stats_json,
)
from engine.store.store import Row, Store

__all__ = [
    "CycleCard",
    "DecisionRow",
    "ExecutionStrategy",
    "LlmCallRow",
    "RequestReport",
    "RunStats",
    "SpeculativeOutcome",
    "Summary",
    "TimelineEntry",
    "TraceRow",
    "render_markdown",
    "render_runs",
    "render_stats",
    "report_json",
    "request_report",
    "run_stats",
    "stats_json",
]

REPORT_FORMAT = 1
"""Version of the `report_json` layout."""

_REUSE = {"RESULT_REUSED", "PRINCIPLES_REUSED"}
_CONVERGENCE = {"CONVERGENCE_EVALUATED", "EARLY_CONVERGENCE_ACCEPTED", "EARLY_CONVERGENCE_REJECTED"}
_CANCELLATION = {
    "SHORT_CIRCUIT_TRIGGERED",
    "BRANCH_CANCEL_ATTEMPTED",
    "BRANCH_CANCELLED",
    "BRANCH_COMPLETED_AFTER_SHORT_CIRCUIT",
    "BUDGET_DEADLINE_EXCEEDED",
    "BUDGET_COST_EXCEEDED",
}


def request_report(store: Store, request_id: str) -> RequestReport:
    """Build the report of one request from the store.

    A request with no `requests` row yet is reported as `unfinished` from what is stored
    of it, its `Summary.note` saying where it stands (in flight in a running run, or left
    unanswered by a run that stopped).

    Raises:
        RequestNotFinished: nothing is stored of the request yet, but its run (named by
            the id, `RUN_ID-SEQ`) is running, or stopped before answering it.
        StoreError: the store has no such request; the message says how to find ids.
    """
    rows = store.request_rows(request_id)
    request = rows["requests"][0] if rows["requests"] else None
    events, node_runs = rows["orchestration_events"], rows["node_runs"]
    calls, traces = rows["llm_calls"], rows["decision_traces"]
    if request is None and not (events or node_runs or calls or traces):
        raise _missing_request(store, request_id)
    t0 = _start_time(request, events, node_runs, calls)
    decisions = [_decision(e, t0) for e in events]
    found = attribute(traces, decisions, node_runs, calls, t0)
    decisions = [replace(d, loop=_loop(found.event_cycle.get(d.sequence))) for d in decisions]
    summary = _summary(request_id, request, events, node_runs, calls)
    if request is None:
        run_id = summary.run_id or _parse_id(request_id)[0]
        run = store.get_run(run_id) if run_id else None
        note = _standing(request_id, run, stored=True) if run else None
        summary = replace(summary, note=note)
    return RequestReport(
        summary=summary,
        strategy=_strategy(decisions, node_runs, calls, found),
        decisions=decisions,
        cycles=[_cycle_card(cycle) for cycle in found.cycles],
        timeline=_timeline(node_runs, decisions, calls, t0, found),
        llm_calls=_llm_calls(calls, events, t0, found),
        traces=[TraceRow(t["cycle"], t["stage"], dict(t["payload"] or {})) for t in traces],
        raw_events=events,
    )


def report_json(report: RequestReport) -> dict[str, Any]:
    """The report as JSON-able data with stable keys (`moat report --format json`)."""
    return {"report_format": REPORT_FORMAT, **asdict(report)}


_REQUEST_ID = re.compile(r"(.+)-(\d{6,})")
"""A request id as moat makes them: `RUN_ID-SEQ`, the seq written with at least 6 digits."""


def _parse_id(request_id: str) -> tuple[str | None, int | None]:
    """The run and seq a request id names (`RUN_ID-SEQ`), or Nones for another id."""
    match = _REQUEST_ID.fullmatch(request_id)
    return (match.group(1), int(match.group(2))) if match else (None, None)


def _standing(request_id: str, run: Row, *, stored: bool) -> str | None:
    """Where a request with no result stands in its run: in flight or waiting in a running
    run, or left unanswered by one that stopped; None while the run is being pruned."""
    run_id, status = run["id"], str(run["status"])
    total = run.get("requests_total")
    done = f"{run.get('requests_done') or 0}/{total if total is not None else '?'}"
    if status == "running":
        where = (
            "is in flight"
            if stored
            else "is not answered yet (it waits its turn, or has just "
            "started: nothing of it is stored yet)"
        )
        return (
            f"request '{request_id}' {where}: its run {run_id} is running ({done} requests "
            "done); `moat report` shows it whole once it is answered, and `moat runs` shows "
            "the run's progress"
        )
    if status == "pruning":
        return None
    config = run.get("config")
    resumable = isinstance(config, dict) and ("input" in config or "single" in config)
    resume = f"; `moat run --resume {run_id}` answers it" if resumable else ""
    return (
        f"request '{request_id}' never finished: its run {run_id} ended ({status}) before "
        f"answering it{resume}"
    )


def _missing_request(store: Store, request_id: str) -> StoreError:
    """Why nothing is stored of `request_id`: its run has not answered it (yet), the run
    is being pruned or no longer in the store, or no run has such a request."""
    run_id, seq = _parse_id(request_id)
    if run_id is None or seq is None:
        return _unknown_request(store, request_id)
    run = store.get_run(run_id)
    if run is None:
        why = f" No run '{run_id}' either: it was pruned (`moat prune`), or is another store's."
        return _unknown_request(store, request_id, why)
    total = run.get("requests_total")
    if str(run["status"]) == "pruning":
        return StoreError(
            f"{store.path}: request '{request_id}' is gone: its run {run_id} is being pruned "
            "(`moat prune` deletes it with everything of it)"
        )
    if isinstance(total, int) and not isinstance(total, bool) and seq >= total:
        last = f"{run_id}-{total - 1:06d}" if total else "none"
        return _unknown_request(
            store, request_id, f" Run {run_id} has {total} requests (the last: {last})."
        )
    standing = _standing(request_id, run, stored=False)
    assert standing is not None
    return RequestNotFinished(store.path, request_id, run_id, standing)


def _unknown_request(store: Store, request_id: str, why: str = "") -> StoreError:
    recent = store.recent_request_ids(3)
    hint = f" Recent requests: {', '.join(recent)}." if recent else ""
    return StoreError(
        f"{store.path}: no request '{request_id}'.{why}{hint} Find request ids with `moat "
        "runs` (runs) and `moat stats RUN_ID` (its slowest and failed requests), or pass the "
        "right store with --db"
    )


def _start_time(request: Row | None, *groups: list[Row]) -> float:
    if request is not None:
        return float(request["started_at"])
    starts = [row["started_at"] for group in groups for row in group]
    return float(min(starts)) if starts else 0.0


def _ms_since(t0: float, at: float | None) -> float:
    return round(((at or t0) - t0) * 1000.0, 3)


def _decision(e: Row, t0: float) -> DecisionRow:
    return DecisionRow(
        sequence=e["sequence"],
        offset_ms=_ms_since(t0, e["started_at"]),
        cycle=e["cycle"],
        stage=e["stage"],
        component=e["component"],
        event_type=e["event_type"],
        decision=e["decision"],
        status=e["status"],
        reasons=_codes(e["reason_codes"]),
        duration_ms=e["duration_ms"],
    )


def _summary(
    request_id: str, request: Row | None, events: list[Row], runs: list[Row], calls: list[Row]
) -> Summary:
    route = [e for e in events if e["event_type"] == "ROUTE_SELECTED"]
    pinned = next(
        (e["payload"] or {} for e in reversed(events) if e["event_type"] == "POLICY_PINNED"), {}
    )
    models = Counter(f"{c['model']} ({c['provider']})" for c in calls)
    req = request or {}
    return Summary(
        request_id=request_id,
        status=req.get("status", "unfinished"),
        run_id=req.get("run_id") or next((e["run_id"] for e in events), None),
        seq=req.get("seq"),
        tenant=req.get("tenant"),
        started_at=req.get("started_at"),
        latency_ms=req.get("latency_ms"),
        cost_usd=req.get("cost_usd"),
        policy_name=req.get("policy_name") or pinned.get("policy"),
        policy_version=req.get("policy_version") or pinned.get("version"),
        route=route[-1]["decision"] if route else None,
        route_reasons=_codes(route[-1]["reason_codes"]) if route else [],
        error=req.get("error"),
        simulated=any(c["provider"] == "sim" for c in calls),
        models=[f"{name} x{count}" for name, count in sorted(models.items())],
        output=req.get("output"),
        llm_calls=len(calls),
        node_runs=len(runs),
        events=len(events),
        degraded=_degraded(events),
    )


def _degraded(events: list[Row]) -> list[str]:
    found: list[str] = []
    for e in events:
        if e["event_type"] == "MODEL_FALLBACK":
            p = e["payload"] or {}
            reasons = ", ".join(_codes(e["reason_codes"]))
            found.append(f"{p.get('model', '?')} -> {p.get('fallback', '?')} ({reasons})")
        elif e["event_type"] == "BUDGET_SOFT_DEADLINE":
            found.append("soft deadline passed")
    return list(dict.fromkeys(found))


def _strategy(
    decisions: list[DecisionRow], runs: list[Row], calls: list[Row], found: Attribution
) -> ExecutionStrategy:
    def of(types: Iterable[str]) -> list[DecisionRow]:
        wanted = set(types)
        return [d for d in decisions if d.event_type in wanted]

    return ExecutionStrategy(
        speculative=[
            _speculative(i, run, calls, found) for i, run in enumerate(runs) if run["speculative"]
        ],
        strategies=of({"STRATEGY_SELECTED"}),
        reused=of(_REUSE),
        gates=of({"GATE_DECISION"}),
        convergence=of(_CONVERGENCE),
        cache=[d for d in decisions if d.event_type.startswith("CACHE_")],
        cancellations=of(_CANCELLATION),
    )


def _speculative(index: int, run: Row, calls: list[Row], found: Attribution) -> SpeculativeOutcome:
    cost = sum(c["cost_usd"] for j, c in enumerate(calls) if found.call_run[j] == index)
    outcome = "cancelled" if run["status"] == "cancelled" else run["outcome"]
    return SpeculativeOutcome(
        node=run["node"],
        cycle=run["cycle"],
        status=run["status"],
        outcome=outcome,
        duration_ms=run["duration_ms"],
        cost_usd=round(cost, 9),
        loop=_loop(found.run_cycle[index]),
    )


def _loop(cycle: Cycle | None) -> str | None:
    return cycle.run.loop if cycle is not None else None


def _codes(value: Any) -> list[str]:
    """A stored `reason_codes` list as text (a hand-edited or foreign row may hold numbers)."""
    return [str(code) for code in value or ()]


def _names(value: Any) -> list[str] | None:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return None


_SUMMARY_LISTS = {
    "executed": ("modules_executed", "modules_failed"),
    "skipped": ("modules_skipped",),
    "cancelled": ("modules_cancelled",),
}
"""The scheduler's `CYCLE_SUMMARY` lists behind each list of a card."""


def _cycle_card(cycle: Cycle) -> CycleCard:
    payload = cycle.summary or {}
    runs = cycle.runs
    by_status = {
        status: [r["node"] for r in runs if r["status"] in statuses]
        for status, statuses in (
            ("executed", {"succeeded", "failed", "timed_out"}),
            ("skipped", {"skipped"}),
            ("cancelled", {"cancelled"}),
        )
    }
    planned = [r["node"] for r in runs]
    if cycle.unsure and isinstance(payload.get("modules_planned"), list):
        # Two loops ran a body node of the same name in a cycle of the same number, and
        # nothing stored tells whose run was whose (node runs name the bare node id): the
        # cycle's own summary lists say what it did, so they stand in for its node runs.
        by_status = {
            status: _summary_names(payload, keys) for status, keys in _SUMMARY_LISTS.items()
        }
        ran = {name for names in by_status.values() for name in names}
        planned = [name for name in _summary_names(payload, ("modules_planned",)) if name in ran]
    outer = cycle.run.parent
    events = cycle.events
    return CycleCard(
        cycle=cycle.cycle,
        loop=cycle.run.loop,
        strategy=payload.get("strategy") or payload.get("scheduler_strategy"),
        planned=_names(payload.get("planned")) or planned,
        executed=_names(payload.get("executed")) or by_status["executed"],
        skipped=_names(payload.get("skipped")) or by_status["skipped"],
        cancelled=_names(payload.get("cancelled")) or by_status["cancelled"],
        critic=_outcome(events, {"CRITIC_DECISION"}),
        simulator=_simulator_outcome(events, runs),
        convergence=_convergence(payload, events),
        next_action=payload.get("next_action"),
        outer_loop=outer.run.loop if outer is not None else None,
        outer_cycle=outer.cycle if outer is not None else None,
    )


def _summary_names(payload: dict[str, Any], keys: Iterable[str]) -> list[str]:
    return [name for key in keys for name in _names(payload.get(key)) or ()]


def _explain(d: DecisionRow) -> str:
    text = d.decision or d.event_type.lower()
    return f"{text} ({', '.join(d.reasons)})" if d.reasons else text


def _outcome(events: list[DecisionRow], types: set[str]) -> str | None:
    found = [d for d in events if d.event_type in types]
    return _explain(found[-1]) if found else None


def _simulator_outcome(events: list[DecisionRow], runs: list[Row]) -> str | None:
    executed = _outcome(events, {"SIMULATOR_EXECUTED"})
    if executed is not None:
        return f"executed: {executed}"
    nodes = {r["node"] for r in runs if r["node_type"] == "simulator"}
    gates = [d for d in events if d.event_type == "GATE_DECISION" and d.stage in nodes]
    if gates and gates[-1].decision == "skip":
        return f"skipped: {', '.join(gates[-1].reasons) or 'guard was false'}"
    for run in runs:
        if run["node"] in nodes and run["status"] != "succeeded":
            return str(run["status"])
    return None


def _convergence(payload: dict[str, Any], events: list[DecisionRow]) -> str | None:
    decision = payload.get("convergence_decision")
    if decision is not None:
        reason = payload.get("convergence_reason")
        return f"{decision} ({reason})" if reason else str(decision)
    found = [d for d in events if d.event_type in _CONVERGENCE]
    if not found:
        return None
    return "; ".join(f"{d.event_type}: {_explain(d)}" for d in found)


def _timeline(
    runs: list[Row], decisions: list[DecisionRow], calls: list[Row], t0: float, found: Attribution
) -> list[TimelineEntry]:
    # marks go to the node run an event or call is about, not to every run of its
    # (node, cycle): two loops' bodies may each hold a node of that name
    reused = Counter(found.event_run.get(d.sequence) for d in decisions if d.event_type in _REUSE)
    cached = {found.event_run.get(d.sequence) for d in decisions if d.event_type == "CACHE_HIT"}
    cached |= {
        found.call_run[j]
        for j, c in enumerate(calls)
        if c["cache_status"] == "hit" or c["call_outcome"] == "cached"
    }
    return [
        _timeline_entry(r, reused[i], i in cached, _loop(found.run_cycle[i]), t0)
        for i, r in enumerate(runs)
    ]


def _timeline_entry(
    run: Row, reused: int, cached: bool, loop: str | None, t0: float
) -> TimelineEntry:
    marks = ["speculative"] if run["speculative"] else []
    if run["status"] != "succeeded":
        marks.append(run["status"])
    if run["outcome"] == "discarded":
        marks.append("discarded")
    if reused:
        marks.append("reused" if reused == 1 else f"reused x{reused}")
    if cached:
        marks.append("cached")
    if run["attempts"] > 1:
        marks.append("retried")
    return TimelineEntry(
        node=run["node"],
        node_type=run["node_type"],
        cycle=run["cycle"],
        status=run["status"],
        outcome=run["outcome"],
        offset_ms=_ms_since(t0, run["started_at"]),
        duration_ms=run["duration_ms"],
        attempts=run["attempts"],
        marks=marks,
        error=run["error"],
        loop=loop,
    )


def _llm_calls(
    calls: list[Row], events: list[Row], t0: float, found: Attribution
) -> list[LlmCallRow]:
    by_sequence = {e["sequence"]: e["event_type"] for e in events}

    def related(sequence: int | None) -> str | None:
        if sequence is None:
            return None
        return f"{by_sequence.get(sequence, 'event')} #{sequence}"

    return [
        LlmCallRow(
            node=c["node"],
            cycle=c["cycle"],
            model=c["model"],
            provider=c["provider"],
            kind=c["call_kind"],
            outcome=c["call_outcome"],
            cache_status=c["cache_status"],
            status=c["status"],
            input_tokens=c["input_tokens"],
            output_tokens=c["output_tokens"],
            cost_usd=c["cost_usd"],
            latency_ms=c["latency_ms"],
            offset_ms=_ms_since(t0, c["started_at"]),
            related_event=related(c["related_event_id"]),
            error=c["error"],
            loop=_run_loop(found, found.call_run[j]),
        )
        for j, c in enumerate(calls)
    ]


def _run_loop(found: Attribution, index: int | None) -> str | None:
    return _loop(found.run_cycle[index]) if index is not None else None
