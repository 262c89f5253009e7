"""`/metrics`: the server's figures in the Prometheus text format, counted from records.

The figures come from the same records the store gets (requests, LLM calls, events), so
`/metrics` and `moat stats` agree on what happened; the HTTP layer adds only the response
codes it sent. The text format is small enough to write here rather than add a dependency.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator

from engine.events import EventType, LlmCall, OrchestrationEvent, Record, RequestRecord

__all__ = ["LATENCY_BUCKETS_S", "Metrics"]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds of the request latency histogram, in seconds."""

_EVENTS: dict[str, str] = {
    "CACHE_HIT": "moat_cache_hits_total",  # the cache node's event, by its recorded name
    EventType.SPECULATIVE_RESULT_USED: "moat_speculative_used_total",
    EventType.SPECULATIVE_RESULT_DISCARDED: "moat_speculative_discarded_total",
    EventType.BRANCH_CANCELLED: "moat_speculative_cancelled_total",
    EventType.BUDGET_DEADLINE_EXCEEDED: "moat_budget_exhausted_total",
    EventType.BUDGET_COST_EXCEEDED: "moat_budget_exhausted_total",
    "VALIDATION_FAILED": "moat_validation_failures_total",  # the validate node's
}
_HELP = {
    "moat_requests_total": "Requests answered, by graph and status.",
    "moat_request_latency_seconds": "Request latency, by graph and status.",
    "moat_cost_usd_total": "Dollars spent on model calls (simulated for sim models).",
    "moat_tokens_total": "Model tokens, by graph and kind (prompt, completion).",
    "moat_cache_hits_total": "Semantic cache hits.",
    "moat_speculative_used_total": "Speculative results used.",
    "moat_speculative_discarded_total": "Speculative results discarded.",
    "moat_speculative_cancelled_total": "Speculative branches cancelled.",
    "moat_budget_exhausted_total": "Deadline or cost budget exhaustions.",
    "moat_validation_failures_total": "Structured outputs that failed validation.",
    "moat_http_responses_total": "HTTP responses of the chat endpoint, by code.",
    "moat_policy_version": "The active policy version of each graph.",
    "moat_requests_in_flight": "Requests being answered now.",
}

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters, sums and a latency histogram, fed by records and HTTP responses."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter[Labels]] = defaultdict(Counter)
        self.sums: dict[str, defaultdict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._buckets: dict[Labels, list[int]] = {}
        self._latency_sum: defaultdict[Labels, float] = defaultdict(float)

    def watcher(self, graph: str) -> Callable[[Record], None]:
        """A `Pipeline.record_watchers` callback counting the records of `graph`."""

        def watch(item: Record) -> None:
            if isinstance(item, RequestRecord):
                self._request(graph, item)
            elif isinstance(item, LlmCall):
                tokens = self.sums["moat_tokens_total"]
                tokens[(("graph", graph), ("kind", "prompt"))] += item.input_tokens
                tokens[(("graph", graph), ("kind", "completion"))] += item.output_tokens
            elif isinstance(item, OrchestrationEvent):
                name = _EVENTS.get(item.event_type)
                if name is not None:
                    self.counters[name][(("graph", graph),)] += 1

        return watch

    def _request(self, graph: str, record: RequestRecord) -> None:
        labels = (("graph", graph), ("status", str(record.status)))
        self.counters["moat_requests_total"][labels] += 1
        self.sums["moat_cost_usd_total"][(("graph", graph),)] += record.cost_usd
        seconds = record.latency_ms / 1000
        buckets = self._buckets.setdefault(labels, [0] * (len(LATENCY_BUCKETS_S) + 1))
        buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self._latency_sum[labels] += seconds

    def response(self, code: int) -> None:
        """Count one HTTP response of the chat endpoint."""
        self.counters["moat_http_responses_total"][(("code", str(code)),)] += 1

    def render(self, gauges: dict[str, dict[Labels, float]]) -> str:
        """The Prometheus text exposition (version 0.0.4) of every figure."""
        return "".join(self._lines(gauges))

    def _lines(self, gauges: dict[str, dict[Labels, float]]) -> Iterator[str]:
        for name, counter in sorted(self.counters.items()):
            yield from _family(name, "counter", counter.items())
        for name, values in sorted(self.sums.items()):
            yield from _family(name, "counter", values.items())
        yield from self._histogram()
        for name, gauge in sorted(gauges.items()):
            yield from _family(name, "gauge", gauge.items())

    def _histogram(self) -> Iterator[str]:
        name = "moat_request_latency_seconds"
        yield f"# HELP {name} {_HELP[name]}\n# TYPE {name} histogram\n"
        for labels, buckets in sorted(self._buckets.items()):
            total = 0
            for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), buckets, strict=True):
                total += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                yield f"{name}_bucket{_labels((*labels, ('le', le)))} {total}\n"
            yield f"{name}_sum{_labels(labels)} {self._latency_sum[labels]!r}\n"
            yield f"{name}_count{_labels(labels)} {total}\n"


def _family(name: str, kind: str, samples: Iterable[tuple[Labels, float]]) -> Iterator[str]:
    yield f"# HELP {name} {_HELP.get(name, name)}\n# TYPE {name} {kind}\n"
    for labels, value in sorted(samples):
        yield f"{name}{_labels(labels)} {_number(value)}\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
