"""Prometheus metrics counted from finished requests: the figures of `moat stats`, live.

One `MoatMetrics` serves `moat run --metrics-port` and `moat serve`'s `/metrics` alike. Its
figures are counted from the same records the store gets, the same way `moat stats` counts
them (engine/report/stats.py), so the two agree on a run:

- requests by status, latency and cost per request (histograms: sum/count is the cost per
  case, `histogram_quantile` the latency percentiles Grafana draws);
- `moat_request_latency_window_seconds`: p50/p95/p99 of the latest requests computed with
  `engine.stats.percentile`, the one definition `moat stats` quotes;
- cache hits and misses, validations passed and failed, speculative node runs used,
  discarded and cancelled and their wasted spend, budget exhaustions, LLM calls, tokens and
  cost per model, routes;
- scrape-time figures: each graph's active policy version and its guard's rollbacks.

Labels are `graph` and `policy_version` (and `status`, `model`, ... where they apply), all
bounded by the graphs and policies loaded. `tenant` is added only when asked for
(`tenant=True`): tenants come from request input, an unbounded set, and one time series per
tenant is the classic way to exhaust a Prometheus server.

Needs the `telemetry` extra (prometheus-client).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from engine.events import PolicyPin
from engine.stats import percentile
from engine.telemetry.feed import FinishedRequest

__all__ = [
    "COST_BUCKETS_USD",
    "LATENCY_BUCKETS_S",
    "METRIC_NAMES",
    "MoatMetrics",
    "PolicySource",
]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds of the request latency histogram, in seconds."""
COST_BUCKETS_USD = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds of the cost-per-request histogram, in dollars."""
QUANTILES = (50.0, 95.0, 99.0)
"""The percentiles of `moat_request_latency_window_seconds` (those `moat stats` shows)."""

_BUDGETS = {"BUDGET_DEADLINE_EXCEEDED": "deadline", "BUDGET_COST_EXCEEDED": "cost"}
_CACHE = {"CACHE_HIT": "hit", "CACHE_MISS": "miss"}
_VALIDATION = {"VALIDATION_PASSED": "passed", "VALIDATION_FAILED": "failed"}


@dataclass(slots=True)
class PolicySource:
    """Where scrape-time policy figures come from: a graph's policy manager."""

    current: Callable[[], PolicyPin]
    """The active pin (`PolicyManager.current`)."""
    rollbacks: Callable[[], int]
    """How many versions this process's guard rolled back."""


class _Children(dict[tuple[str, ...], Any]):
    """A metric's children by their label values. `labels()` checks and locks on every
    call, about 2 us, and a flagship request counts some 35 children; the children never
    change once made, so each is looked up once."""

    __slots__ = ("metric",)

    def __init__(self, metric: Counter | Histogram) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, labels: tuple[str, ...]) -> Any:
        child = self[labels] = self.metric.labels(*labels)
        return child


class _Instruments:
    """The counters and histograms, with the label names each one takes."""

    def __init__(self, registry: CollectorRegistry, base: tuple[str, ...]) -> None:
        def counter(name: str, doc: str, *extra: str) -> _Children:
            return _Children(Counter(name, doc, (*base, *extra), registry=registry))

        self.requests = counter("moat_requests_total", "Requests answered.", "status")
        self.latency = _Children(
            Histogram(
                "moat_request_latency_seconds",
                "Request latency (simulated when the graph's models are sim).",
                (*base, "status"),
                registry=registry,
                buckets=LATENCY_BUCKETS_S,
            )
        )
        self.cost = _Children(
            Histogram(
                "moat_request_cost_usd",
                "Dollars per request; _sum/_count is the cost per case (simulated for sim).",
                (*base, "status"),
                registry=registry,
                buckets=COST_BUCKETS_USD,
            )
        )
        self.calls = counter(
            "moat_llm_calls_total", "LLM calls (attempts).", "model", "provider", "status"
        )
        self.call_cost = counter(
            "moat_llm_cost_usd_total", "Dollars spent on LLM calls.", "model", "provider"
        )
        self.tokens = counter("moat_llm_tokens_total", "LLM tokens.", "model", "type")
        self.cache = counter("moat_cache_lookups_total", "Semantic cache lookups.", "result")
        self.validations = counter(
            "moat_validations_total", "Structured output validations.", "result"
        )
        self.speculative = counter(
            "moat_speculative_runs_total", "Speculative node runs by their fate.", "outcome"
        )
        self.spec_cost = counter(
            "moat_speculative_cost_usd_total", "Dollars spent on speculative LLM calls."
        )
        self.spec_waste = counter(
            "moat_speculative_wasted_usd_total",
            "Dollars of speculative LLM calls discarded or cancelled.",
        )
        self.budgets = counter(
            "moat_budget_exhaustions_total", "Deadline or cost budgets exhausted.", "budget"
        )
        self.nodes = counter("moat_node_runs_total", "Node runs.", "node", "status")
        self.routes = counter("moat_routes_total", "Requests per route (last decision).", "route")


class MoatMetrics:
    """The metrics of every graph a process answers; a `Consumer` of the `RecordFeed`.

    Args:
        tenant: label request figures by tenant too (an unbounded label set: opt in only
            when tenants are few and known, as with `moat serve --keys`).
        window: how many of the latest requests per graph the latency percentiles cover.
        drain: called before every scrape (the feed's `drain`), so a scrape sees every
            request recorded before it.
    """

    def __init__(
        self,
        *,
        tenant: bool = False,
        window: int = 100_000,
        drain: Callable[[], object] | None = None,
    ) -> None:
        self.tenant = tenant
        self.registry = CollectorRegistry(auto_describe=False)
        self._base = ("graph", "policy_version", *(("tenant",) if tenant else ()))
        self._m = _Instruments(self.registry, self._base)
        self._window = window
        self._latencies: dict[str, deque[float]] = {}
        self._policies: dict[str, PolicySource] = {}
        self.drain = drain
        self.scrapes = 0
        """Scrapes answered so far (counted by whoever serves `exposed`)."""
        self.registry.register(_ScrapeTime(self))
        self.exposed = CollectorRegistry(auto_describe=False)
        """What to serve: drains the feed, then collects `registry`."""
        self.exposed.register(_Drained(self))

    def add_policy(self, graph: str, source: PolicySource) -> None:
        """Report `graph`'s active policy version and guard rollbacks at every scrape."""
        self._policies[graph] = source

    def consume(self, request: FinishedRequest) -> None:
        record = request.record
        base = self._labels(request)
        labels = (*base, str(record.status))
        m = self._m
        m.requests[labels].inc()
        m.latency[labels].observe(record.latency_ms / 1000)
        m.cost[labels].observe(record.cost_usd)
        window = self._latencies.get(request.graph)
        if window is None:
            window = self._latencies[request.graph] = deque(maxlen=self._window)
        window.append(record.latency_ms)
        self._calls(request, base)
        self._events(request, base)
        for run in request.node_runs:
            m.nodes[(*base, run.node, str(run.status))].inc()
            if run.speculative:
                outcome = "cancelled" if run.status == "cancelled" else str(run.outcome)
                m.speculative[(*base, outcome)].inc()

    def _labels(self, request: FinishedRequest) -> tuple[str, ...]:
        record = request.record
        version = "" if record.policy_version is None else str(record.policy_version)
        if self.tenant:
            return (request.graph, version, record.tenant or "")
        return (request.graph, version)

    def _calls(self, request: FinishedRequest, base: tuple[str, ...]) -> None:
        m = self._m
        for call in request.llm_calls:
            cost = max(call.cost_usd, 0.0)
            m.calls[(*base, call.model, call.provider, call.status)].inc()
            m.call_cost[(*base, call.model, call.provider)].inc(cost)
            m.tokens[(*base, call.model, "input")].inc(max(call.input_tokens, 0))
            m.tokens[(*base, call.model, "output")].inc(max(call.output_tokens, 0))
            if call.call_kind == "speculative":
                m.spec_cost[base].inc(cost)
                if call.call_outcome in ("discarded", "cancelled"):
                    m.spec_waste[base].inc(cost)

    def _events(self, request: FinishedRequest, base: tuple[str, ...]) -> None:
        m = self._m
        counts: Tally[str] = Tally(e.event_type for e in request.events)
        for event_type, result in _CACHE.items():
            if counts[event_type]:
                m.cache[(*base, result)].inc(counts[event_type])
        for event_type, result in _VALIDATION.items():
            if counts[event_type]:
                m.validations[(*base, result)].inc(counts[event_type])
        for event_type, budget in _BUDGETS.items():
            if counts[event_type]:
                m.budgets[(*base, budget)].inc(counts[event_type])
        routes = [e.decision for e in request.events if e.event_type == "ROUTE_SELECTED"]
        if routes:
            m.routes[(*base, routes[-1] or "(none)")].inc()

    def latency_percentiles(self, graph: str) -> dict[float, float | None]:
        """p50/p95/p99 in milliseconds of `graph`'s latest requests (`engine.stats`)."""
        values = list(self._latencies.get(graph, ()))
        return {q: percentile(values, q) for q in QUANTILES}

    def exposition(self) -> bytes:
        """Every figure in the Prometheus text format (0.0.4), the feed drained first."""
        return generate_latest(self.exposed)

    def close(self) -> None:
        """Nothing to flush: figures live until the process ends."""


class _Drained(Collector):
    """The served registry: drain the feed, then yield the figures."""

    def __init__(self, metrics: MoatMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        if self.metrics.drain is not None:
            self.metrics.drain()
        for metric in self.metrics.registry.collect():
            # `_created` timestamps double the series and no panel reads them
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class _ScrapeTime(Collector):
    """Figures read when scraped: latency percentiles, policy versions, guard rollbacks."""

    def __init__(self, metrics: MoatMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        window = Metric(
            "moat_request_latency_window_seconds",
            "Latency percentiles of the latest requests per graph, as `moat stats` computes "
            "them (linear interpolation between closest ranks).",
            "summary",
        )
        for graph, latencies in sorted(metrics._latencies.items()):
            for q, value in metrics.latency_percentiles(graph).items():
                if value is not None:
                    labels = {"graph": graph, "quantile": f"{q / 100:g}"}
                    window.add_sample(window.name, labels, value / 1000)
            total = sum(latencies) / 1000
            window.add_sample(f"{window.name}_sum", {"graph": graph}, total)
            window.add_sample(f"{window.name}_count", {"graph": graph}, len(latencies))
        yield window
        yield from _policy_metrics(metrics._policies)


def _policy_metrics(policies: Mapping[str, PolicySource]) -> Iterator[Metric]:
    version = Metric(
        "moat_policy_active_version", "The active policy version of each graph.", "gauge"
    )
    rollbacks = Metric(
        "moat_guard_rollbacks", "Policy versions this process's guard rolled back.", "counter"
    )
    for graph, source in sorted(policies.items()):
        pin = source.current()
        if pin.name is None:
            continue
        labels = {"graph": graph, "policy": pin.name}
        if pin.version is not None:
            version.add_sample(version.name, labels, float(pin.version))
        rollbacks.add_sample(f"{rollbacks.name}_total", labels, float(source.rollbacks()))
    yield version
    yield rollbacks


METRIC_NAMES = frozenset(
    {
        "moat_requests_total",
        "moat_request_latency_seconds",
        "moat_request_cost_usd",
        "moat_request_latency_window_seconds",
        "moat_llm_calls_total",
        "moat_llm_cost_usd_total",
        "moat_llm_tokens_total",
        "moat_cache_lookups_total",
        "moat_validations_total",
        "moat_speculative_runs_total",
        "moat_speculative_cost_usd_total",
        "moat_speculative_wasted_usd_total",
        "moat_budget_exhaustions_total",
        "moat_node_runs_total",
        "moat_routes_total",
        "moat_policy_active_version",
        "moat_guard_rollbacks_total",
    }
)
"""The metric names moat exports (before the `_bucket`/`_sum`/`_count` suffixes); the
dashboard's queries name only these (and the server's `moat_http_*`)."""
