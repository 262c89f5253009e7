"""Incremental reads of a store that other processes are writing, for the live views.

`LiveReader` keeps what it has seen (the highest row ids of `requests`, `orchestration_events`
and `llm_calls`) and on each `poll()` reads only newer rows, aggregating events in SQLite so
a busy run costs one short query per table per refresh. It returns a `Snapshot`: plain,
immutable data the UI thread can render without touching the store. `poll()` is meant to run
in a worker thread; one reader must not be polled from two threads at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import Store, StoreError
from engine.stats import FAILED_STATUSES, percentile
from engine.store import reads

__all__ = [
    "LiveReader",
    "Metrics",
    "PolicyRow",
    "RequestRow",
    "RunSummary",
    "Snapshot",
]

_SERIES_POINTS = 30

_EVENT_CHUNK = 10_000
"""At most this many event ids per poll, so one poll stays short after a burst of writes;
the next polls catch up."""
_REQUEST_CHUNK = 5_000


@dataclass(slots=True)
class RequestRow:
    """One finished request as the requests table shows it."""

    id: str
    run_id: str
    seq: int
    tenant: str
    status: str
    started_at: float
    finished_at: float
    latency_ms: float
    cost_usd: float
    policy_version: int | None
    route: str = ""
    """The decision of the request's last `ROUTE_SELECTED` event."""
    cycles: int = 0
    """The highest cycle any of its events recorded."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run with its progress."""

    id: str
    graph_name: str
    status: str
    started_at: float
    finished_at: float | None
    total: int | None
    done: int
    config: Mapping[str, Any]
    throughput: float | None
    """Finished requests per second between the run's start and its last finished request."""


@dataclass(frozen=True, slots=True)
class Metrics:
    """Aggregates over the requests of one run, or of every run."""

    requests: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    cost_per_case: float | None = None
    cost_p95: float | None = None
    cache_hit_rate: float | None = None
    """Share of requests with a cache event that had a hit."""
    validation_success: float | None = None
    """Share of validated requests whose last validation passed."""
    spec_used: int = 0
    spec_discarded: int = 0
    spec_cancelled: int = 0
    errors: int = 0
    """Requests that ended failed, deadline_exceeded or invalid_input."""
    node_failures: int = 0
    throughput: float | None = None
    latency_series: tuple[float, ...] = ()
    """Mean latency per time bucket, oldest first."""
    throughput_series: tuple[float, ...] = ()
    """Requests per second per time bucket, oldest first."""


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One policy name with its version count and active version."""

    name: str
    versions: int
    latest: int | None
    active: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the store held at one poll."""

    available: bool = False
    """False while the store file cannot be opened (yet)."""
    message: str = ""
    runs: tuple[RunSummary, ...] = ()
    requests: tuple[RequestRow, ...] = ()
    """Every finished request seen so far, in arrival order."""
    changed: frozenset[str] = frozenset()
    """Ids of already seen requests whose route or cycles changed in this poll."""
    metrics: Mapping[str | None, Metrics] = field(default_factory=dict)
    """Per run id, and under `None` for all runs together."""
    policies: tuple[PolicyRow, ...] = ()
    simulated: bool = False
    """True once any LLM call used the `sim` provider."""
    polled_at: float = 0.0
    poll_ms: float = 0.0
    """How long the poll took."""


@dataclass(slots=True)
class _Facts:
    run_id: str = ""
    max_cycle: int = 0
    route: str = ""
    cache_hit: int = 0
    cache_miss: int = 0
    valid_id: int = 0
    invalid_id: int = 0
    spec_used: int = 0
    spec_discarded: int = 0
    spec_cancelled: int = 0
    node_failed: int = 0

    def merge(self, row: Mapping[str, Any]) -> None:
        self.run_id = row["run_id"] or self.run_id
        self.max_cycle = max(self.max_cycle, int(row["max_cycle"] or 0))
        self.valid_id = max(self.valid_id, int(row["valid_id"] or 0))
        self.invalid_id = max(self.invalid_id, int(row["invalid_id"] or 0))
        for name in (
            "cache_hit",
            "cache_miss",
            "spec_used",
            "spec_discarded",
            "spec_cancelled",
            "node_failed",
        ):
            setattr(self, name, getattr(self, name) + int(row[name] or 0))


class LiveReader:
    """Polls one store file incrementally (see the module docstring).

    Args:
        path: the store file; it may not exist yet, in which case polls report so and retry.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._store: Store | None = None
        self._last_request = 0
        self._last_event = 0
        self._last_call = 0
        self._simulated = False
        self._requests: list[RequestRow] = []
        self._by_id: dict[str, RequestRow] = {}
        self._facts: dict[str, _Facts] = {}
        self._metrics: dict[str | None, Metrics] = {}

    @property
    def store(self) -> Store | None:
        """The open read-only store, once the file exists."""
        return self._store

    def close(self) -> None:
        """Close the store connection."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def poll(self) -> Snapshot:
        """Read what is new since the last poll and return the whole picture."""
        began = time.perf_counter()
        store = self._open()
        if store is None:
            return Snapshot(message=f"no store at {self.path} yet: waiting for a run to start")
        try:
            changed = self._read_events(store)
            fresh = self._read_requests(store)
            self._read_calls(store)
            runs = self._read_runs(store)
            policies = tuple(PolicyRow(**row) for row in store.list_policies())
        except StoreError as exc:
            return Snapshot(message=str(exc), requests=tuple(self._requests))
        if fresh or changed or not self._metrics:
            self._metrics = _all_metrics(self._requests, self._facts, runs)
        return Snapshot(
            available=True,
            runs=tuple(_with_throughput(run, self._metrics) for run in runs),
            requests=tuple(self._requests),
            changed=frozenset(changed - fresh),
            metrics=dict(self._metrics),
            policies=policies,
            simulated=self._simulated,
            polled_at=time.time(),
            poll_ms=(time.perf_counter() - began) * 1000,
        )

    def _open(self) -> Store | None:
        if self._store is None and self.path.exists():
            try:
                self._store = Store.open(self.path, readonly=True)
            except StoreError:
                return None
        return self._store

    def _read_events(self, store: Store) -> set[str]:
        high = min(reads.max_id(store, "orchestration_events"), self._last_event + _EVENT_CHUNK)
        if high <= self._last_event:
            return set()
        low, self._last_event = self._last_event, high
        changed: set[str] = set()
        routes: list[int] = []
        for row in reads.event_facts(store, low, high):
            self._facts.setdefault(row["request_id"], _Facts()).merge(row)
            changed.add(row["request_id"])
            if row["route_id"] is not None:
                routes.append(int(row["route_id"]))
        for request_id, route in reads.route_decisions(store, routes).items():
            self._facts[request_id].route = route
        for request_id in changed & self._by_id.keys():
            _apply_facts(self._by_id[request_id], self._facts[request_id])
        return changed

    def _read_requests(self, store: Store) -> set[str]:
        rows = reads.requests_after(store, self._last_request, _REQUEST_CHUNK)
        fresh: set[str] = set()
        for row in rows:
            self._last_request = max(self._last_request, int(row.pop("row_id")))
            row["tenant"] = row["tenant"] or ""
            request = RequestRow(**row)
            facts = self._facts.get(request.id)
            if facts is not None:
                _apply_facts(request, facts)
            if request.id not in self._by_id:
                self._requests.append(request)
            self._by_id[request.id] = request
            fresh.add(request.id)
        return fresh

    def _read_calls(self, store: Store) -> None:
        high = reads.max_id(store, "llm_calls")
        if not self._simulated and high > self._last_call:
            self._simulated = reads.sim_call_between(store, self._last_call, high)
        self._last_call = high

    def _read_runs(self, store: Store) -> list[RunSummary]:
        counts = reads.request_counts_by_run(store)
        return [
            RunSummary(
                id=row["id"],
                graph_name=row["graph_name"],
                status=row["status"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                total=row["requests_total"],
                done=max(int(row["requests_done"] or 0), counts.get(row["id"], 0)),
                config=row["config"] if isinstance(row["config"], dict) else {},
                throughput=None,
            )
            for row in store.list_runs()
        ]


def _apply_facts(request: RequestRow, facts: _Facts) -> None:
    request.route = facts.route
    request.cycles = facts.max_cycle


def _with_throughput(run: RunSummary, metrics: Mapping[str | None, Metrics]) -> RunSummary:
    found = metrics.get(run.id)
    if found is None:
        return run
    return RunSummary(**{**_fields(run), "throughput": found.throughput})


def _fields(run: RunSummary) -> dict[str, Any]:
    return {name: getattr(run, name) for name in RunSummary.__slots__}


def _all_metrics(
    requests: Sequence[RequestRow], facts: Mapping[str, _Facts], runs: Sequence[RunSummary]
) -> dict[str | None, Metrics]:
    by_run: dict[str, list[RequestRow]] = {}
    for request in requests:
        by_run.setdefault(request.run_id, []).append(request)
    facts_by_run: dict[str, list[_Facts]] = {}
    for item in facts.values():
        facts_by_run.setdefault(item.run_id, []).append(item)
    started = {run.id: run.started_at for run in runs}
    out: dict[str | None, Metrics] = {
        run_id: _compute_metrics(rows, facts_by_run.get(run_id, ()), started.get(run_id))
        for run_id, rows in by_run.items()
    }
    overall = _compute_metrics(requests, facts.values(), min(started.values(), default=None))
    # Across runs, wall-clock spans include the idle time between runs: add up each run's
    # own span instead, and draw the sparklines of the newest run that has requests.
    spans = [(len(by_run[r.id]), out[r.id].throughput) for r in runs if r.id in by_run]
    seconds = sum(n / rate for n, rate in spans if rate)
    newest = next((out[r.id] for r in runs if r.id in by_run), overall)
    out[None] = replace(
        overall,
        throughput=sum(n for n, rate in spans if rate) / seconds if seconds else None,
        latency_series=newest.latency_series,
        throughput_series=newest.throughput_series,
    )
    return out


def _compute_metrics(
    requests: Sequence[RequestRow], facts: Iterable[_Facts], started_at: float | None
) -> Metrics:
    if not requests:
        return Metrics()
    latencies = sorted(r.latency_ms for r in requests)
    costs = sorted(r.cost_usd for r in requests)
    facts = list(facts)
    cached = [f for f in facts if f.cache_hit or f.cache_miss]
    validated = [f for f in facts if f.valid_id or f.invalid_id]
    first = started_at if started_at is not None else min(r.started_at for r in requests)
    last = max(r.finished_at for r in requests)
    span = last - first
    return Metrics(
        requests=len(requests),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        cost_per_case=sum(costs) / len(costs),
        cost_p95=percentile(costs, 95),
        cache_hit_rate=sum(1 for f in cached if f.cache_hit) / len(cached) if cached else None,
        validation_success=(
            sum(1 for f in validated if f.valid_id > f.invalid_id) / len(validated)
            if validated
            else None
        ),
        spec_used=sum(f.spec_used for f in facts),
        spec_discarded=sum(f.spec_discarded for f in facts),
        spec_cancelled=sum(f.spec_cancelled for f in facts),
        errors=sum(1 for r in requests if r.status in FAILED_STATUSES),
        node_failures=sum(f.node_failed for f in facts),
        throughput=len(requests) / span if span > 0 else None,
        **_series(requests, first, last),
    )


def _series(requests: Sequence[RequestRow], first: float, last: float) -> dict[str, Any]:
    width = max((last - first) / _SERIES_POINTS, 0.25)
    points = min(_SERIES_POINTS, int((last - first) / width) + 1)
    counts = [0] * points
    sums = [0.0] * points
    start = last - points * width
    for request in requests:
        index = min(points - 1, max(0, int((request.finished_at - start) / width)))
        counts[index] += 1
        sums[index] += request.latency_ms
    return {
        "latency_series": tuple(s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)),
        "throughput_series": tuple(c / width for c in counts),
    }
