"""Reads of a store that other processes are writing, for the live views, at any size.

`LiveReader` never reads a whole table. It keeps the newest `WINDOW` finished requests
(the requests view pages further back through `page`, a keyset query) and reads only the
requests written since its last poll; a request's route and cycles come with it (its
`requests` row is written after all its events, so they are final). Figures come from
SQLite aggregates over indexes (`engine.store.reads`): a finished run's are read once and
kept, a running run's on every poll, the all-runs ones (percentiles over every request)
at most every `OVERALL_EVERY_S` on a large store. A first poll of a store of a million
requests therefore reads a few hundred rows and a few index ranges; the figures of old runs
follow within the next polls (`Metrics.complete` says when the all-runs ones are whole).

`poll()` returns a `Snapshot`: plain, immutable data the UI thread can render without
touching the store. It is meant to run in a worker thread; one reader must not be polled
from two threads at once (`page` may run beside it: the store serialises its queries).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import Store, StoreError
from engine.store import reads
from engine.store.reads import RequestPage, RunFacts

__all__ = [
    "WINDOW",
    "LiveReader",
    "Metrics",
    "PolicyRow",
    "RequestRow",
    "RunSummary",
    "Snapshot",
]

_SERIES_POINTS = 30

WINDOW = 300
"""The newest finished requests a reader keeps (older ones are read a page at a time).

Six screens of a tall terminal: the requests table measures every cell it is given, so a
window of 1,000 rows cost a third of a second of CPU on every open of that view."""
_RUN_BUDGET_S = 0.25
"""Seconds a poll spends at most on the figures of finished runs it has not read yet."""
OVERALL_EVERY_S = 5.0
"""On a store of over `_LARGE` requests, the all-runs figures are re-read this seldom."""
_LARGE = 100_000


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
    """The highest cycle a `LOOP_CYCLE_STARTED` event of it recorded."""
    row_id: int = 0
    """Its rowid in `requests`: the keyset of paging."""


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
    """CACHE_HIT events over CACHE_HIT and CACHE_MISS events (as `moat stats` counts)."""
    validation_success: float | None = None
    """VALIDATION_PASSED events over both validation events (as `moat stats` counts)."""
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
    complete: bool = True
    """False while the all-runs figures still miss the events of some runs (a first poll
    of a large store); the request figures are whole regardless."""


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
    """The newest finished requests (at most `WINDOW`), in arrival order."""
    changed: frozenset[str] = frozenset()
    """Ids of already shown requests whose row changed in this poll (none: a request's
    row and facts are final when it is read)."""
    metrics: Mapping[str | None, Metrics] = field(default_factory=dict)
    """Per run id, and under `None` for all runs together."""
    policies: tuple[PolicyRow, ...] = ()
    simulated: bool = False
    """True once any LLM call used the `sim` provider."""
    pruned: int = 0
    """How many times the reader saw runs go (`moat prune`); when it changes, views drop
    the rows they hold of runs no longer stored."""
    focus_gone: str | None = None
    """The focused run (`LiveReader.focus`) when the store does not hold it: pruned
    meanwhile, or never in this store; `focus_note` says which."""
    focus_note: str = ""
    polled_at: float = 0.0
    poll_ms: float = 0.0
    """How long the poll took."""


class LiveReader:
    """Polls one store file (see the module docstring).

    Args:
        path: the store file; it may not exist yet, in which case polls report so and retry.

    Attributes:
        focus: the run the views are on (None: every run); its figures are read first.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.focus: str | None = None
        self._store: Store | None = None
        self._last_request = 0
        self._simulated = False
        self._requests: deque[RequestRow] = deque(maxlen=WINDOW)
        self._finished: dict[str, tuple[Metrics, RunFacts]] = {}
        """Figures of runs no longer running: they never change."""
        self._live: dict[str, tuple[Metrics, RunFacts]] = {}
        self._overall: Metrics | None = None
        self._overall_at = 0.0
        self._deferred = False
        self._error = ""
        """Why the file at `path` cannot be read as a store (empty: it does not exist yet)."""
        self._runs_seen: set[str] = set()
        self._pruned = 0

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
            return Snapshot(
                message=self._error or f"no store at {self.path} yet: waiting for a run to start"
            )
        try:
            fresh = self._read_requests(store)
            for run_id in {r.run_id for r in fresh}:  # its figures changed
                self._finished.pop(run_id, None)
            runs = self._read_runs(store)
            known = {r.id for r in runs}
            gone = self._gone_focus(known)
            self._forget_pruned(known)
            metrics = self._read_metrics(store, runs, bool(fresh))
            policies = tuple(PolicyRow(**row) for row in store.list_policies())
        except StoreError as exc:
            return Snapshot(message=str(exc), requests=tuple(self._requests))
        return Snapshot(
            available=True,
            runs=tuple(_with_throughput(run, metrics) for run in runs),
            requests=tuple(self._requests),
            metrics=metrics,
            policies=policies,
            simulated=self._simulated,
            pruned=self._pruned,
            focus_gone=gone[0] if gone else None,
            focus_note=gone[1] if gone else "",
            polled_at=time.time(),
            poll_ms=(time.perf_counter() - began) * 1000,
        )

    def _gone_focus(self, known: set[str]) -> tuple[str, str] | None:
        """The focused run and why, when the store holds no such run (before
        `_forget_pruned` updates the runs seen)."""
        focus = self.focus
        if focus is None or focus in known:
            return None
        if focus in self._runs_seen:
            return focus, f"run {focus} no longer exists: it was pruned (`moat prune`)"
        return focus, f"run {focus} is not in this store (pruned, or never run here)"

    def _forget_pruned(self, known: set[str]) -> None:
        """Runs seen before are gone (`moat prune`): drop their requests, and read the
        all-runs figures again, which still count them."""
        if self._runs_seen - known:
            self._requests = deque((r for r in self._requests if r.run_id in known), maxlen=WINDOW)
            self._overall = None
            self._pruned += 1
        self._runs_seen = known

    def page(self, page: RequestPage, before: int | None, limit: int) -> list[RequestRow]:
        """Up to `limit` requests matching `page`, newest first, older than row `before`."""
        store = self._open()
        if store is None:
            return []
        return self._rows(store, reads.request_page(store, page, before, limit))

    def _open(self) -> Store | None:
        if self._store is None and self.path.exists():
            try:
                self._store = Store.open(self.path, readonly=True)
            except StoreError as exc:
                # Polls go on: the file may become a store (a run creating it, a migration).
                self._error = "" if reads.being_created(self.path) else str(exc)
                return None
            self._error = ""
        return self._store

    def _rows(self, store: Store, rows: Sequence[Mapping[str, Any]]) -> list[RequestRow]:
        facts = reads.request_facts(store, [row["id"] for row in rows])
        out = []
        for row in rows:
            route, cycles = facts.get(row["id"], ("", 0))
            out.append(
                RequestRow(
                    id=row["id"],
                    run_id=row["run_id"],
                    seq=row["seq"],
                    tenant=row["tenant"] or "",
                    status=row["status"],
                    started_at=row["started_at"],
                    finished_at=row["finished_at"],
                    latency_ms=row["latency_ms"],
                    cost_usd=row["cost_usd"],
                    policy_version=row["policy_version"],
                    route=route,
                    cycles=cycles,
                    row_id=row["row_id"],
                )
            )
        return out

    def _read_requests(self, store: Store) -> list[RequestRow]:
        high = reads.latest_request_rowid(store)
        if high <= self._last_request:
            return []
        if high - self._last_request > WINDOW:  # more than the window holds: its newest
            rows = list(reversed(reads.request_page(store, RequestPage(), high + 1, WINDOW)))
        else:
            rows = reads.requests_after(store, self._last_request, WINDOW)
        fresh = self._rows(store, rows)
        self._last_request = max([self._last_request, *(r.row_id for r in fresh)])
        self._requests.extend(fresh)
        if not self._simulated and fresh:
            self._simulated = reads.sim_call_in(store, [r.id for r in fresh[-50:]])
        return fresh

    def _read_runs(self, store: Store) -> list[RunSummary]:
        out = []
        for row in store.list_runs():
            done = _count(row["requests_done"]) or 0
            if row.get("stored_status", row["status"]) == "running" or not done:
                done = max(done, reads.request_count(store, row["id"]))
            out.append(
                RunSummary(
                    id=row["id"],
                    graph_name=row["graph_name"],
                    status=row["status"],
                    started_at=row["started_at"],
                    finished_at=row["finished_at"],
                    total=_count(row["requests_total"]),
                    done=done,
                    config=row["config"] if isinstance(row["config"], dict) else {},
                    throughput=None,
                )
            )
        return out

    def _read_metrics(
        self, store: Store, runs: Sequence[RunSummary], fresh: bool
    ) -> dict[str | None, Metrics]:
        running = {r.id for r in runs if r.status == "running"}
        for run_id in running & self._finished.keys():  # resumed
            del self._finished[run_id]
        newest = next((r.id for r in runs if r.done), None)
        wanted = {r.id for r in runs if r.done and r.id in running | {self.focus, newest}}
        if fresh or not wanted <= self._live.keys() | self._finished.keys():
            self._live = {}
            for run in runs:
                if run.id not in wanted or run.id in self._finished:
                    continue
                figures = _run_metrics(store, run)
                if run.id in running:
                    self._live[run.id] = figures
                else:
                    self._finished[run.id] = figures
        known = {r.id for r in runs}
        for gone in self._finished.keys() - known:  # pruned meanwhile
            del self._finished[gone]
        per_run = {**self._finished, **self._live}
        out: dict[str | None, Metrics] = {run_id: m for run_id, (m, _) in per_run.items()}
        out[None] = self._all_runs(store, runs, per_run.get(newest or ""), fresh)
        return out

    def _all_runs(
        self,
        store: Store,
        runs: Sequence[RunSummary],
        newest: tuple[Metrics, RunFacts] | None,
        fresh: bool,
    ) -> Metrics:
        now = time.monotonic()
        total = sum(r.done for r in runs)
        if self._overall is None and total > _LARGE and not self._deferred:
            # A first poll of a large store shows the runs and the newest requests at
            # once; the figures over every request follow with the next poll.
            self._deferred = True
            overall = Metrics(requests=total, complete=False)
        else:
            stale = self._overall is None or (
                fresh and (total < _LARGE or now - self._overall_at > OVERALL_EVERY_S)
            )
            if stale:
                figures, facts = reads.every_run(store)
                base = _request_metrics(store, None, figures)
                self._overall = replace(base, **_fact_fields(facts))
                self._overall_at = now
            assert self._overall is not None
            overall = self._overall
        # Across runs, wall-clock spans include the idle time between runs: add up each
        # run's own span instead, and draw the sparklines of the newest run with requests.
        spans: list[tuple[int, float]] = []
        for run in runs:
            rate = _run_rate(run)
            if run.done and rate:
                spans.append((run.done, rate))
        seconds = sum(n / rate for n, rate in spans)
        return replace(
            overall,
            throughput=sum(n for n, _ in spans) / seconds if seconds else None,
            latency_series=newest[0].latency_series if newest else (),
            throughput_series=newest[0].throughput_series if newest else (),
        )


def _run_rate(run: RunSummary) -> float | None:
    """A run's throughput: its own figure when read, else from its row (finished runs)."""
    if run.throughput is not None:
        return run.throughput
    if run.finished_at is not None and run.finished_at > run.started_at and run.done:
        return run.done / (run.finished_at - run.started_at)
    return None


def _fact_fields(facts: RunFacts) -> dict[str, Any]:
    cached = facts.cache_hits + facts.cache_misses
    validated = facts.validation_passed + facts.validation_failed
    return {
        "cache_hit_rate": facts.cache_hits / cached if cached else None,
        "validation_success": facts.validation_passed / validated if validated else None,
        "spec_used": facts.spec_used,
        "spec_discarded": facts.spec_discarded,
        "spec_cancelled": facts.spec_cancelled,
        "node_failures": facts.node_failures,
    }


def _request_metrics(
    store: Store, run_id: str | None, figures: Mapping[str, Any] | None = None
) -> Metrics:
    """The request figures of one run (or every run), all from indexes."""
    figures = figures if figures is not None else reads.run_figures(store, run_id)
    n = int(figures["requests"])
    if not n:
        return Metrics()
    p50, p95, p99 = reads.percentiles(store, run_id, "latency_ms", (50, 95, 99))
    (cost_p95,) = reads.percentiles(store, run_id, "cost_usd", (95,))
    return Metrics(
        requests=n,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        cost_per_case=float(figures["cost"]) / n,
        cost_p95=cost_p95,
        errors=int(figures["errors"]),
    )


def _run_metrics(store: Store, run: RunSummary) -> tuple[Metrics, RunFacts]:
    figures = reads.run_figures(store, run.id)
    base = _request_metrics(store, run.id, figures)
    if not base.requests:
        return base, RunFacts()
    facts = reads.run_facts(store, run.id)
    first = run.started_at if run.started_at is not None else figures["first_started"]
    last = figures["last_finished"]
    try:
        span = float(last - first)
    except TypeError:  # a time not stored, or stored as text
        span = math.nan
    if not 0 <= span < math.inf:  # no time, or clocks that disagree (a synced store)
        return replace(base, **_fact_fields(facts)), facts
    return (
        replace(
            base,
            **_fact_fields(facts),
            throughput=base.requests / span if span > 0 else None,
            **_series(store, run.id, first, last),
        ),
        facts,
    )


def _series(store: Store, run_id: str, first: float, last: float) -> dict[str, Any]:
    """Latency and throughput over `_SERIES_POINTS` buckets between `first` and `last`
    (`first < last`)."""
    width = max((last - first) / _SERIES_POINTS, 0.25)
    points = min(_SERIES_POINTS, int((last - first) / width) + 1)
    counts = [0] * points
    sums = [0.0] * points
    for bucket, n, total in reads.run_series(store, run_id, last - points * width, last, points):
        counts[bucket] += n
        sums[bucket] += total
    return {
        "latency_series": tuple(s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)),
        "throughput_series": tuple(c / width for c in counts),
    }


def _count(value: object) -> int | None:
    """A stored count, or None when the store holds no number there (a hand edit)."""
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _with_throughput(run: RunSummary, metrics: Mapping[str | None, Metrics]) -> RunSummary:
    found = metrics.get(run.id)
    return replace(run, throughput=found.throughput if found is not None else _run_rate(run))
