"""The view models of the request report: plain frozen dataclasses.

They hold the request detail of docs/architecture.md ("The request report").

They hold only what the store holds, already shaped for display; `engine.report.explain` builds
them, the markdown renderer and the TUI read them, and `report_json` serialises them with
stable keys (field order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CycleCard",
    "DecisionRow",
    "ExecutionStrategy",
    "LlmCallRow",
    "RequestReport",
    "SpeculativeOutcome",
    "Summary",
    "TimelineEntry",
    "TraceRow",
]


@dataclass(frozen=True, slots=True)
class Summary:
    """What happened to the request, in one glance."""

    request_id: str
    status: str
    """The request's status, or `unfinished` while it has no stored result."""
    run_id: str | None
    seq: int | None
    tenant: str | None
    started_at: float | None
    latency_ms: float | None
    cost_usd: float | None
    policy_name: str | None
    policy_version: int | None
    route: str | None
    """The decision of the request's last `ROUTE_SELECTED` event."""
    route_reasons: list[str]
    error: str | None
    simulated: bool
    """True if any LLM call went to the `sim` provider."""
    models: list[str]
    """`model (provider) xN` per model called."""
    output: Any
    llm_calls: int
    node_runs: int
    events: int
    degraded: list[str] = field(default_factory=list)
    """Why the request was answered in a degraded way: `model -> fallback (REASON)` per
    `MODEL_FALLBACK` event, and the soft deadline when it passed."""
    note: str | None = None
    """Where an `unfinished` request stands: in flight in a running run, or left
    unanswered by a run that stopped (and how to answer it)."""


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One orchestration event, as listed under runtime decisions."""

    sequence: int
    offset_ms: float
    """Milliseconds since the request started."""
    cycle: int
    stage: str
    component: str
    event_type: str
    decision: str | None
    status: str | None
    reasons: list[str]
    duration_ms: float | None
    loop: str | None = None
    """The loop whose cycle `cycle` counts (None at the top level, or when the records
    cannot tell which of two loops it was)."""


@dataclass(frozen=True, slots=True)
class SpeculativeOutcome:
    """What became of one node started speculatively."""

    node: str
    cycle: int
    status: str
    outcome: str
    """`used`, `discarded` or `cancelled`."""
    duration_ms: float
    cost_usd: float
    """Cost of the node's LLM calls in that cycle."""
    loop: str | None = None
    """The loop whose cycle `cycle` counts (None at the top level, or when the records
    cannot tell which of two loops it was)."""


@dataclass(frozen=True, slots=True)
class ExecutionStrategy:
    """How the scheduler and the nodes chose to run the request."""

    speculative: list[SpeculativeOutcome] = field(default_factory=list)
    strategies: list[DecisionRow] = field(default_factory=list)
    """`STRATEGY_SELECTED` per node."""
    reused: list[DecisionRow] = field(default_factory=list)
    """`RESULT_REUSED` and `PRINCIPLES_REUSED`."""
    gates: list[DecisionRow] = field(default_factory=list)
    """`GATE_DECISION`: run or skip, and why."""
    convergence: list[DecisionRow] = field(default_factory=list)
    """`CONVERGENCE_EVALUATED` and `EARLY_CONVERGENCE_*`."""
    cache: list[DecisionRow] = field(default_factory=list)
    """`CACHE_*` events."""
    cancellations: list[DecisionRow] = field(default_factory=list)
    """Short-circuits, cancelled branches and budget stops."""


@dataclass(frozen=True, slots=True)
class CycleCard:
    """One cycle of one loop: what was planned and done, and what the critic, simulator
    and convergence concluded.

    A request has one card per cycle of each loop it ran (a loop inside a loop body: per
    cycle of each of its runs); a card shows only its own loop's work."""

    cycle: int
    loop: str | None
    strategy: str | None
    planned: list[str]
    executed: list[str]
    skipped: list[str]
    cancelled: list[str]
    critic: str | None
    simulator: str | None
    """The simulator's outcome, or why it was skipped or cancelled."""
    convergence: str | None
    next_action: str | None
    outer_loop: str | None = None
    """For a loop inside another loop's body: that loop, whose cycle `outer_cycle` this
    run of `loop` ran in."""
    outer_cycle: int | None = None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One node run, placed on the request's clock."""

    node: str
    node_type: str
    cycle: int
    status: str
    outcome: str
    offset_ms: float
    duration_ms: float
    attempts: int
    marks: list[str]
    """Any of `speculative cancelled skipped failed timed_out discarded reused cached
    retried`."""
    error: str | None
    loop: str | None = None
    """The loop whose cycle `cycle` counts (None at the top level, or when the records
    cannot tell which of two loops it was)."""


@dataclass(frozen=True, slots=True)
class LlmCallRow:
    """One LLM call attempt."""

    node: str
    cycle: int
    model: str
    provider: str
    kind: str
    outcome: str
    cache_status: str
    status: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    offset_ms: float
    related_event: str | None
    """`EVENT_TYPE #sequence` of the event the call belongs to, if any."""
    error: str | None
    loop: str | None = None
    """The loop whose cycle `cycle` counts (None at the top level, or when the records
    cannot tell which of two loops it was)."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One decision trace (`RISK_ASSESSMENT`, `CYCLE_SUMMARY`, ...)."""

    cycle: int
    stage: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestReport:
    """Everything `moat report` shows about one request, from the store alone."""

    summary: Summary
    strategy: ExecutionStrategy
    decisions: list[DecisionRow]
    cycles: list[CycleCard]
    timeline: list[TimelineEntry]
    llm_calls: list[LlmCallRow]
    traces: list[TraceRow]
    raw_events: list[dict[str, Any]]
    """Every event row as stored (JSON columns decoded): the fallback view."""
