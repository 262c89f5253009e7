"""The event vocabulary and the records a run emits, shared by the store, logs and TUI.

Records are small slotted dataclasses rather than pydantic models: they are built on the
request path (dozens per request) and only ever produced by moat itself, so validation
would cost time and catch nothing. The store maps each record type to one table of
architecture: The store.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NewType, Protocol

from engine.frozen import freeze

__all__ = [
    "CacheStatus",
    "CallKind",
    "CallOutcome",
    "DecisionTrace",
    "EventType",
    "LlmCall",
    "MemorySink",
    "NodeId",
    "NodeOutcome",
    "NodeRun",
    "NodeStatus",
    "OrchestrationEvent",
    "PolicyPin",
    "Record",
    "RequestId",
    "RequestRecord",
    "RequestStatus",
    "RunId",
    "Sink",
    "hash_input",
    "json_safe",
    "now",
    "result_line",
    "strict_json",
]

NodeId = NewType("NodeId", str)
RunId = NewType("RunId", str)
RequestId = NewType("RequestId", str)


def now() -> float:
    """Wall-clock time in seconds since the epoch, as stored in `*_at` columns."""
    return time.time()


class EventType(StrEnum):
    """Every orchestration event type moat records (architecture: The store)."""

    # scheduler
    GATE_DECISION = "GATE_DECISION"
    """A node's `when` guard was evaluated; decision `run` or `skip`."""
    STRATEGY_SELECTED = "STRATEGY_SELECTED"
    """A `speculative:` expression chose between `speculative` and `on_demand`."""
    SPECULATIVE_STARTED = "SPECULATIVE_STARTED"
    """A speculative node started before anything demanded it."""
    SPECULATIVE_JOIN_REQUIRED = "SPECULATIVE_JOIN_REQUIRED"
    """Something demanded a speculative node: its result will be joined."""
    SPECULATIVE_JOIN_SKIPPED = "SPECULATIVE_JOIN_SKIPPED"
    """The request resolved without demanding a speculative node."""
    SPECULATIVE_RESULT_USED = "SPECULATIVE_RESULT_USED"
    """A speculative node's result was consumed."""
    SPECULATIVE_RESULT_DISCARDED = "SPECULATIVE_RESULT_DISCARDED"
    """A speculative node finished but nothing used its result."""
    SHORT_CIRCUIT_TRIGGERED = "SHORT_CIRCUIT_TRIGGERED"
    """A running speculative node's guard resolved false."""
    BRANCH_CANCEL_ATTEMPTED = "BRANCH_CANCEL_ATTEMPTED"
    """The scheduler asked a running branch to stop."""
    BRANCH_CANCELLED = "BRANCH_CANCELLED"
    """A branch stopped because it was cancelled."""
    BRANCH_COMPLETED_AFTER_SHORT_CIRCUIT = "BRANCH_COMPLETED_AFTER_SHORT_CIRCUIT"
    """A branch finished anyway after its cancellation was requested."""
    RESULT_REUSED = "RESULT_REUSED"
    """A second or later consumer read a memoised node result."""
    NODE_TIMEOUT = "NODE_TIMEOUT"
    """One attempt of a node ran past its `timeout_ms`."""
    NODE_RETRY = "NODE_RETRY"
    """A node attempt failed transiently and will be retried."""
    NODE_FAILED = "NODE_FAILED"
    """A node failed for good."""
    LOOP_CYCLE_STARTED = "LOOP_CYCLE_STARTED"
    """A loop began a cycle."""
    LOOP_UNTIL_MET = "LOOP_UNTIL_MET"
    """A loop's `until` became true."""
    LOOP_MAX_CYCLES = "LOOP_MAX_CYCLES"
    """A loop stopped at `max_cycles`."""
    LOOP_STOPPED_SOFT_DEADLINE = "LOOP_STOPPED_SOFT_DEADLINE"
    """A loop stopped after the current cycle because the soft deadline passed."""
    BUDGET_SOFT_DEADLINE = "BUDGET_SOFT_DEADLINE"
    """The request passed its soft deadline and is now degraded."""
    BUDGET_DEADLINE_EXCEEDED = "BUDGET_DEADLINE_EXCEEDED"
    """The request hit its hard deadline; remaining work was cancelled."""
    BUDGET_COST_EXCEEDED = "BUDGET_COST_EXCEEDED"
    """A model call was refused because it could exceed the cost budget."""
    POLICY_PINNED = "POLICY_PINNED"
    """The request pinned a policy version."""
    POLICY_ACTIVATED = "POLICY_ACTIVATED"
    """A policy version became active."""
    POLICY_ROLLED_BACK = "POLICY_ROLLED_BACK"
    """A policy version was rolled back (by hand or by its guard)."""
    # gateway
    CIRCUIT_OPENED = "CIRCUIT_OPENED"
    """A model's circuit breaker opened after repeated failures."""
    CIRCUIT_HALF_OPEN = "CIRCUIT_HALF_OPEN"
    """A model's circuit breaker let a probe call through."""
    CIRCUIT_CLOSED = "CIRCUIT_CLOSED"
    """A probe succeeded; the model's circuit breaker closed again."""
    # the gateway (the redact node records PII_REDACTED too)
    PII_REDACTED = "PII_REDACTED"
    """Personal data was replaced by typed placeholders."""
    EGRESS_BLOCKED = "EGRESS_BLOCKED"
    """Text was refused egress to a remote provider."""
    MODEL_FALLBACK = "MODEL_FALLBACK"
    """A remote model was unreachable or held back (offline, a gate, a failed probe, an open
    circuit, a refused connection): its `fallback:` model answered and the request is
    degraded; the reason code says why."""
    # a cluster batch (engine/cluster)
    WORKER_LOST = "WORKER_LOST"
    """A Ray worker died mid-batch; its unanswered requests went to the other workers
    (payload: worker, requeued, requests, workers_left, error)."""


class RequestStatus(StrEnum):
    """The final status of one request (the `status` of an `--out` line)."""

    OK = "ok"
    """Every output resolved."""
    PARTIAL = "partial"
    """The deadline passed; the outputs that could be evaluated were returned."""
    FAILED = "failed"
    """A non-optional node failed."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """The hard deadline passed and the graph does not allow partial results."""
    INVALID_INPUT = "invalid_input"
    """The request did not parse or failed the graph's `input` schema."""
    CANCELLED = "cancelled"
    """Its caller went away before it was answered (a `moat serve` client that hung up):
    its work was cancelled, model calls included. `moat run` never records it: a request
    of an interrupted batch stays unrecorded, so `--resume` answers it."""


class NodeStatus(StrEnum):
    """How one node run ended."""

    SUCCEEDED = "succeeded"
    """`run` returned an output."""
    FAILED = "failed"
    """`run` raised (after retries)."""
    SKIPPED = "skipped"
    """Its `when` guard was false; its value is `none`."""
    CANCELLED = "cancelled"
    """It was cancelled: short-circuit, undemanded speculation or the deadline."""
    TIMED_OUT = "timed_out"
    """Its last attempt ran past `timeout_ms`."""


class NodeOutcome(StrEnum):
    """What became of a node run's result.

    A speculative run's outcome is what `moat stats` counts as speculative work used,
    discarded or cancelled; `none` there is a run demanded that had no result to use.
    """

    USED = "used"
    """It succeeded and something demanded it (joined, if it ran speculatively)."""
    DISCARDED = "discarded"
    """It finished (speculatively) but nothing used it: nothing demanded it, or its
    guard turned out false; also when it failed, as that speculation was wasted too."""
    CANCELLED = "cancelled"
    """It never finished."""
    NONE = "none"
    """No result to use: the run was skipped, failed or timed out, and was demanded
    (or ran on demand) all the same."""


class CallKind(StrEnum):
    """Why an LLM call was made."""

    NORMAL = "normal"
    """On demand."""
    SPECULATIVE = "speculative"
    """By a node started speculatively."""
    SYNTHETIC = "synthetic"
    """Not a provider call: answered by a cache or made up by moat."""


class CallOutcome(StrEnum):
    """What became of an LLM call's result."""

    USED = "used"
    DISCARDED = "discarded"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    CACHED = "cached"
    NONE = "none"


class CacheStatus(StrEnum):
    """How an LLM call relates to a cache."""

    HIT = "hit"
    MISS = "miss"
    REUSED = "reused"
    NONE = "none"


@dataclass(slots=True)
class OrchestrationEvent:
    """One runtime decision (`orchestration_events` row).

    Not frozen (a frozen dataclass costs several times more to build on the request
    path), but treated as immutable once recorded: copy with `dataclasses.replace`.
    """

    run_id: str
    request_id: str
    cycle: int
    stage: str
    """The node id, or `request` for request-level events."""
    component: str
    """The node type, or `scheduler`."""
    event_type: str
    sequence: int
    """Increases within a request."""
    decision: str | None = None
    status: str | None = None
    started_at: float = field(default_factory=now)
    duration_ms: float | None = None
    reason_codes: Sequence[str] = ()
    inputs: Mapping[str, Any] | None = None
    outputs: Mapping[str, Any] | None = None
    payload: Mapping[str, Any] | None = None


@dataclass(slots=True)
class NodeRun:
    """One node run in one request and cycle (`node_runs` row).

    Not frozen (a frozen dataclass costs several times more to build on the request
    path), but treated as immutable once recorded: copy with `dataclasses.replace`.
    """

    request_id: str
    node: str
    node_type: str
    cycle: int
    status: NodeStatus
    speculative: bool
    outcome: NodeOutcome
    started_at: float
    duration_ms: float
    attempts: int
    error: str | None = None


@dataclass(slots=True)
class LlmCall:
    """One attempt of one model call (`llm_calls` row).

    Not frozen (a frozen dataclass costs several times more to build on the request
    path), but treated as immutable once recorded: copy with `dataclasses.replace`.
    """

    request_id: str
    node: str
    cycle: int
    model: str
    provider: str
    call_kind: CallKind
    call_outcome: CallOutcome
    cache_status: CacheStatus
    prompt_hash: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    started_at: float
    status: str
    """`ok`, `error`, `timeout`, `cancelled` or `refused`."""
    error: str | None = None
    related_event_id: int | None = None
    prompt_text: str | None = None
    """Only when the policy's `store_text` is `redacted` or `full`."""
    response_text: str | None = None
    finish_reason: str | None = None
    """Why the model stopped, as the provider said (`stop`, `length`, ...); for traces
    (`gen_ai.response.finish_reasons`), not stored."""


@dataclass(slots=True)
class DecisionTrace:
    """An audit-grade summary of one stage (`decision_traces` row).

    Not frozen (a frozen dataclass costs several times more to build on the request
    path), but treated as immutable once recorded: copy with `dataclasses.replace`.
    """

    request_id: str
    cycle: int
    stage: str
    """`RISK_ASSESSMENT`, `REQUEST_ANALYSIS_CONTEXT`, `CYCLE_SUMMARY`, ..."""
    payload: Mapping[str, Any]


@dataclass(slots=True)
class RequestRecord:
    """The final result of one request (`requests` row), emitted last for that request.

    Not frozen (a frozen dataclass costs several times more to build on the request
    path), but treated as immutable once recorded: copy with `dataclasses.replace`.
    """

    id: str
    run_id: str
    seq: int
    status: RequestStatus
    started_at: float
    finished_at: float
    latency_ms: float
    cost_usd: float
    output: Mapping[str, Any] | None
    error: str | None = None
    tenant: str | None = None
    policy_name: str | None = None
    policy_version: int | None = None
    input_hash: str | None = None
    conversation_id: str | None = None
    turn_index: int | None = None
    parent_request_id: str | None = None
    input: Mapping[str, Any] | None = None
    """The request's input, when `input_hash` is left to whoever stores the record: the
    hash (`hash_input`) is only needed in the stored row, so it is computed off the
    request path."""
    degraded: tuple[str, ...] = ()
    """Why the request was answered in a degraded way (the `MODEL_FALLBACK` reason codes,
    also in its events); empty when it was not."""
    validated: bool | None = None
    """Whether its output validated (`VALIDATION_PASSED` / `VALIDATION_FAILED`, also in
    its events); None when nothing validated it. Not a stored column: the policy guard
    reads it as the request finishes."""

    def stored_input_hash(self) -> str | None:
        """`input_hash`, or the hash of `input` when the scheduler left it to the store;
        computed once and kept (the store writer and the trace spans both ask, from their
        own threads: the same value either way)."""
        if self.input_hash is None and self.input is not None:
            self.input_hash = hash_input(self.input)
        return self.input_hash


def hash_input(value: Mapping[str, Any]) -> str:
    """The `requests.input_hash` of a request input: sha256 of its canonical JSON, 16 hex."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


Record = OrchestrationEvent | NodeRun | LlmCall | DecisionTrace | RequestRecord


@dataclass(frozen=True, slots=True)
class PolicyPin:
    """The policy snapshot a request pins at its start and keeps to its end.

    The policy manager hands pins out and the scheduler records them (`POLICY_PINNED`);
    the value lives here, below both.

    Attributes:
        name: the policy's name (None without a policy).
        version: the snapshot's version in the store (None when not versioned).
        body: the snapshot itself, read as `policy.…` and `ctx.policy`: frozen here, once
            per pin (`engine.frozen`), so no request can change what the others read.
    """

    name: str | None
    version: int | None
    body: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", freeze(self.body))


def result_line(
    request_id: str,
    status: str,
    output: Any,
    latency_ms: float,
    cost_usd: float,
    policy_version: int | None,
    error: str | None,
    degraded: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON object `moat run` writes for one request, whether it comes from a result,
    a record or a stored row: `request_id status output latency_ms cost_usd policy_version
    error`, and `degraded` (the fallback reason codes) only when a fallback model answered."""
    line = {
        "request_id": request_id,
        "status": str(status),
        "output": output,
        "latency_ms": round(latency_ms, 3),
        "cost_usd": round(cost_usd, 8),
        "policy_version": policy_version,
        "error": error,
    }
    if degraded:
        line["degraded"] = list(degraded)
    return line


def strict_json(value: Any) -> str:
    """`value` as JSON that any client parses: NaN and infinities, which strict JSON has
    no spelling for, go out as null (`json_safe`, only once strict encoding refused), and
    what JSON has no type for as its text."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(json_safe(value), ensure_ascii=False, default=str)


def json_safe(value: Any) -> Any:
    """`value` with each number JSON cannot carry (NaN, infinities) as None, as JavaScript's
    `JSON.stringify` writes them: a graph's output may compute one, and a reader's strict
    JSON parser would refuse the whole line or answer for it. (A walk over the value:
    called only when strict encoding refused it.)"""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


class Sink(Protocol):
    """Where a run's records go. `record` must never block or await: it is on the hot path.

    A sink may also offer `part_recorder()`: a callable taking a request's records before
    its `RequestRecord` (events, node runs, calls, traces), which may skip what `record`
    does once a request (the writer's wake-up, say); the `RequestRecord` still comes
    through `record`."""

    def record(self, item: Record) -> None:
        """Accept one record."""


class MemorySink:
    """Keeps the records in memory (every one, or the latest `max_records`); used by tests,
    benchmarks and `Pipeline(db=None)`."""

    def __init__(self, max_records: int | None = None) -> None:
        self.items: deque[Record] = deque(maxlen=max_records)

    def record(self, item: Record) -> None:
        self.items.append(item)

    def part_recorder(self) -> Callable[[Record], None]:
        """Where a request's records before its own go: the deque's `append` itself (no
        Python frame for each of the dozens a request records)."""
        return self.items.append

    def events(self, request_id: str | None = None) -> list[OrchestrationEvent]:
        """The orchestration events, optionally of one request, in emission order."""
        return [
            e
            for e in self.items
            if isinstance(e, OrchestrationEvent)
            and (request_id is None or e.request_id == request_id)
        ]

    def event_types(self, request_id: str | None = None) -> list[str]:
        """Just the event type names, in emission order."""
        return [e.event_type for e in self.events(request_id)]

    def node_runs(self, request_id: str | None = None) -> list[NodeRun]:
        """The node runs, optionally of one request."""
        return [
            r
            for r in self.items
            if isinstance(r, NodeRun) and (request_id is None or r.request_id == request_id)
        ]

    def llm_calls(self, request_id: str | None = None) -> list[LlmCall]:
        """The LLM call rows, optionally of one request."""
        return [
            c
            for c in self.items
            if isinstance(c, LlmCall) and (request_id is None or c.request_id == request_id)
        ]

    def traces(self, stage: str | None = None) -> list[DecisionTrace]:
        """The decision traces, optionally of one stage."""
        return [
            t
            for t in self.items
            if isinstance(t, DecisionTrace) and (stage is None or t.stage == stage)
        ]

    def requests(self) -> list[RequestRecord]:
        """The final request records."""
        return [r for r in self.items if isinstance(r, RequestRecord)]
