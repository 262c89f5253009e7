"""`/metrics`: the server's figures in the Prometheus text format, with prometheus-client.

The figures are `engine.telemetry`'s, counted from the same records the store gets, so
`/metrics`, `moat run --metrics-port` and `moat stats` agree on what happened; the server
adds the HTTP responses it sent and the requests in flight. The same `Telemetry` builds the
OpenTelemetry spans when `moat serve --otel` asks for them.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge

from engine.api import Pipeline
from engine.telemetry import Telemetry

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format `Metrics.render` writes."""


class Metrics:
    """The server's telemetry: every graph's figures and spans, plus HTTP responses.

    Args:
        telemetry: the metrics (on) and traces (`--otel`) of the served pipelines.
    """

    def __init__(self, telemetry: Telemetry | None = None) -> None:
        self.telemetry = telemetry or Telemetry(metrics=True, server=True)
        metrics = self.telemetry.metrics
        assert metrics is not None, "the server's Telemetry must count metrics"
        self.metrics = metrics
        self._responses = Counter(
            "moat_http_responses_total",
            "HTTP responses of the chat endpoint, and of requests the HTTP layer refused "
            "before any route (431, 408, 400, 503), by code.",
            ("code",),
            registry=metrics.registry,
        )
        self._in_flight = Gauge(
            "moat_requests_in_flight", "Requests being answered now.", registry=metrics.registry
        )

    def attach(self, pipe: Pipeline) -> None:
        """Count (and trace) `pipe`'s records."""
        self.telemetry.attach(pipe)

    def continue_trace(self, request_id: str, headers: Mapping[str, str]) -> None:
        """Continue the caller's W3C trace (`traceparent`) in request `request_id`'s spans."""
        self.telemetry.continue_trace(request_id, headers)

    def response(self, code: int) -> None:
        """Count one HTTP response of the chat endpoint (or one the HTTP layer sent)."""
        self._responses.labels(str(code)).inc()

    def render(self, in_flight: int) -> bytes:
        """Every figure, the records so far counted first; blocking (run it in a thread)."""
        self._in_flight.set(in_flight)
        self.metrics.scrapes += 1
        return self.metrics.exposition()
