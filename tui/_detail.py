"""The request detail view model: one request's rows shaped for the detail screen.

`load_detail` reads everything stored about a request in one consistent snapshot
(`Store.request_rows`) and derives what DESIGN.md section 9 asks for: the summary, the
execution strategy, each graph node's state and timing, a timeline of node runs with their
marks, the runtime decisions, one card per loop cycle, the LLM calls and the raw events.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import MoatError
from engine.graph import Graph, Scope
from engine.loader import load_graph
from engine.registry import Registry
from engine.store import Store

__all__ = ["GraphLine", "RequestDetail", "TimelineRow", "load_detail", "node_state"]

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class GraphLine:
    """One node of the drawn graph (loop bodies nested one level per loop)."""

    depth: int
    node: str
    node_type: str
    state: str
    """`succeeded`, `skipped`, `cancelled`, `discarded`, `failed`, `timed_out` or `not run`."""
    duration_ms: float | None
    cycle: int | None = None
    """Set on loop-body lines: the cycle this line shows."""


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One node run placed on the request's time axis."""

    node: str
    cycle: int
    state: str
    offset_ms: float
    duration_ms: float
    marks: str
    """Letters: S speculative, X cancelled, K skipped, D discarded, R reused, C cached."""


@dataclass(frozen=True, slots=True)
class RequestDetail:
    """Everything the detail screen shows about one request."""

    request_id: str
    found: bool
    request: Row = field(default_factory=dict)
    run: Row = field(default_factory=dict)
    route: str = ""
    strategy: tuple[tuple[str, str], ...] = ()
    """(label, text) lines of the execution strategy summary."""
    graph: tuple[GraphLine, ...] = ()
    graph_source: str = ""
    """Where the drawn graph came from: the graph file, or `node runs` as a fallback."""
    timeline: tuple[TimelineRow, ...] = ()
    latency_ms: float = 0.0
    events: tuple[Row, ...] = ()
    cycles: tuple[Row, ...] = ()
    """`CYCLE_SUMMARY` decision traces, each with `cycle` and `payload`."""
    llm_calls: tuple[Row, ...] = ()


def node_state(run: Mapping[str, Any] | None) -> str:
    """The display state of a node from its `node_runs` row (None: the node never ran)."""
    if run is None:
        return "not run"
    status = str(run["status"])
    if status == "succeeded" and run["outcome"] in ("discarded", "cancelled"):
        return "discarded"
    return status


def load_detail(store: Store, request_id: str, registry: Registry | None = None) -> RequestDetail:
    """Read and shape one request; `found` is False when nothing is stored for it yet.

    Args:
        store: the store to read.
        request_id: the request.
        registry: node types for loading the run's graph (default: the installed ones).
    """
    rows = store.request_rows(request_id)
    request = rows["requests"][0] if rows["requests"] else {}
    events = rows["orchestration_events"]
    node_runs = rows["node_runs"]
    if not request and not events and not node_runs:
        return RequestDetail(request_id=request_id, found=False)
    run_id = request.get("run_id") or (events[0]["run_id"] if events else "")
    run = (store.get_run(run_id) if run_id else None) or {}
    graph = _graph_of(run, registry)
    calls = rows["llm_calls"]
    started = request.get("started_at") or min((n["started_at"] for n in node_runs), default=0.0)
    latency = float(request.get("latency_ms") or _span_ms(node_runs, started) or 0.0)
    routes = [e["decision"] for e in events if e["event_type"] == "ROUTE_SELECTED"]
    return RequestDetail(
        request_id=request_id,
        found=True,
        request=request,
        run=run,
        route=str(routes[-1]) if routes and routes[-1] is not None else "",
        strategy=_strategy(events, node_runs),
        graph=_graph_lines(graph, node_runs) if graph else _fallback_lines(node_runs),
        graph_source=f"{graph.name}, {Path(graph.path).name}" if graph else "from node runs",
        timeline=_timeline(node_runs, events, calls, started),
        latency_ms=latency,
        events=tuple(events),
        cycles=tuple(t for t in rows["decision_traces"] if t["stage"] == "CYCLE_SUMMARY"),
        llm_calls=tuple(calls),
    )


def _span_ms(node_runs: Sequence[Row], started: float | None) -> float | None:
    """From `started` (default: the first run's start) to the end of the last node run."""
    if not node_runs:
        return None
    first = started if started is not None else min(float(n["started_at"]) for n in node_runs)
    ends = [float(n["started_at"]) + float(n["duration_ms"]) / 1000 for n in node_runs]
    return max(0.0, (max(ends) - first) * 1000)


def _graph_of(run: Mapping[str, Any], registry: Registry | None) -> Graph | None:
    config = run.get("config")
    path = config.get("graph_path") if isinstance(config, dict) else None
    return _load_graph(str(path), registry) if path else None


@functools.lru_cache(maxsize=16)
def _load_graph(path: str, registry: Registry | None) -> Graph | None:
    try:
        return load_graph(path, registry=registry)
    except (MoatError, OSError):
        return None


def _graph_lines(graph: Graph, node_runs: Sequence[Row]) -> tuple[GraphLine, ...]:
    last: dict[tuple[str, int], Row] = {}
    for run in node_runs:
        last[(run["node"], int(run["cycle"]))] = run
    lines: list[GraphLine] = []
    _scope_lines(graph.scope, last, 0, None, lines)
    return tuple(lines)


def _scope_lines(
    scope: Scope,
    last: Mapping[tuple[str, int], Row],
    depth: int,
    cycle: int | None,
    out: list[GraphLine],
) -> None:
    for node_id in scope.order:
        node = scope.nodes[node_id]
        run = last.get((node_id, cycle or 0))
        if run is None and cycle is None:
            runs = [r for (n, _), r in last.items() if n == node_id]
            run = runs[-1] if runs else None
        if node.loop is None:
            duration = float(run["duration_ms"]) if run else None
            out.append(GraphLine(depth, node_id, node.type_name, node_state(run), duration, cycle))
            continue
        body = set(node.loop.body.order)
        body_runs = [r for (n, _), r in last.items() if n in body]
        state = node_state(run) if run or not body_runs else "succeeded"
        duration = float(run["duration_ms"]) if run else _span_ms(body_runs, None)
        out.append(GraphLine(depth, node_id, node.type_name, state, duration, cycle))
        for each in sorted({int(r["cycle"]) for r in body_runs}):
            _scope_lines(node.loop.body, last, depth + 1, each, out)


def _fallback_lines(node_runs: Sequence[Row]) -> tuple[GraphLine, ...]:
    return tuple(
        GraphLine(
            1 if int(r["cycle"]) else 0,
            r["node"],
            r["node_type"],
            node_state(r),
            float(r["duration_ms"]),
            int(r["cycle"]) or None,
        )
        for r in node_runs
    )


def _timeline(
    node_runs: Sequence[Row], events: Sequence[Row], calls: Sequence[Row], started: float
) -> tuple[TimelineRow, ...]:
    reused = {(e["stage"], e["cycle"]) for e in events if e["event_type"] == "RESULT_REUSED"}
    cached = {(c["node"], c["cycle"]) for c in calls if c["cache_status"] in ("hit", "reused")}
    cached |= {(e["stage"], e["cycle"]) for e in events if e["event_type"] == "CACHE_HIT"}
    rows = []
    for run in node_runs:
        key = (run["node"], run["cycle"])
        state = node_state(run)
        marks = "".join(
            letter
            for letter, present in (
                ("S", bool(run["speculative"])),
                ("X", state == "cancelled"),
                ("K", state == "skipped"),
                ("D", state == "discarded"),
                ("R", key in reused),
                ("C", key in cached),
            )
            if present
        )
        rows.append(
            TimelineRow(
                node=run["node"],
                cycle=int(run["cycle"]),
                state=state,
                offset_ms=max(0.0, (run["started_at"] - started) * 1000),
                duration_ms=float(run["duration_ms"]),
                marks=marks,
            )
        )
    return tuple(rows)


def _strategy(events: Sequence[Row], node_runs: Sequence[Row]) -> tuple[tuple[str, str], ...]:
    def decisions(*types: str) -> str:
        found = [
            f"{e['stage']}={e['decision']}" if e["decision"] else str(e["stage"])
            for e in events
            if e["event_type"] in types
        ]
        return ", ".join(dict.fromkeys(found)) or "-"

    speculative = [f"{r['node']}:{r['outcome']}" for r in node_runs if r["speculative"]]
    return (
        ("speculative", ", ".join(speculative) or "-"),
        ("strategy", decisions("STRATEGY_SELECTED")),
        ("reused", decisions("RESULT_REUSED")),
        ("gates", decisions("GATE_DECISION")),
        (
            "convergence",
            decisions(
                "CONVERGENCE_EVALUATED", "EARLY_CONVERGENCE_ACCEPTED", "EARLY_CONVERGENCE_REJECTED"
            ),
        ),
    )
