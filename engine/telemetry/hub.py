"""`Telemetry`: metrics and traces for the pipelines of one process, wired to their records.

It is the only door to OpenTelemetry and prometheus-client: nothing imports them unless a
`Telemetry` is built with traces or metrics on, so a plain run pays nothing for either.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.errors import SpecError
from engine.events import PolicyPin
from engine.telemetry.feed import Consumer, RecordFeed
from engine.telemetry.ids import trace_id_of

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from engine.api import Pipeline
    from engine.telemetry.metrics import MoatMetrics
    from engine.telemetry.traces import SpanBuilder

__all__ = ["Telemetry", "otel_from_env", "require_extra", "trace_id_of"]

_EXTRA_MODULES = {
    "traces": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
    "metrics": ("prometheus_client",),
}
_NO_PIN = PolicyPin(None, None, {})


def require_extra(what: str, flag: str) -> None:
    """Refuse `flag` with the install command when its extra is missing (exit 2).

    Raises:
        SpecError: a module of `what` (`traces` or `metrics`) is not installed.
    """
    for module in _EXTRA_MODULES[what]:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise SpecError(
                f"{flag}: {what} need the `telemetry` extra ({module} is not installed); "
                "install it with: pip install 'moat[telemetry]'"
            )


def otel_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for OTLP traces without `--otel`:
    `OTEL_TRACES_EXPORTER` names `otlp`, and `OTEL_SDK_DISABLED` is not `true`."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "")
    return "otlp" in {part.strip().lower() for part in exporters.split(",")}


class Telemetry:
    """Metrics and/or traces for the pipelines `attach`ed to it.

    Args:
        traces: build spans (True: OTLP/HTTP per `OTEL_*` or `endpoint`; or a span exporter).
        endpoint: the collector's base URL (`--otel URL`), else `OTEL_EXPORTER_OTLP_*`.
        metrics: count Prometheus metrics.
        tenant: label metrics by tenant (unbounded label set: opt in only for few tenants).
        server: requests arrive over HTTP (`moat serve`): root spans are SERVER spans.
        interval_s: how often the feed's thread turns records into spans and figures.

    Raises:
        SpecError: an extra that is needed is not installed.
    """

    def __init__(
        self,
        *,
        traces: bool | SpanExporter = False,
        endpoint: str | None = None,
        metrics: bool = False,
        tenant: bool = False,
        server: bool = False,
        interval_s: float = 0.25,
    ) -> None:
        self.feed = RecordFeed([], interval_s=interval_s)
        self.metrics: MoatMetrics | None = None
        self.spans: SpanBuilder | None = None
        consumers: list[Consumer] = []
        if metrics:
            require_extra("metrics", "--metrics-port")
            from engine.telemetry.metrics import MoatMetrics

            self.metrics = MoatMetrics(tenant=tenant, drain=self.feed.drain)
            consumers.append(self.metrics)
        if traces is not False:
            require_extra("traces", "--otel")
            from engine.telemetry.traces import SpanBuilder, otlp_exporter

            exporter = otlp_exporter(endpoint) if traces is True else traces
            self.spans = SpanBuilder(exporter, server=server)
            consumers.append(self.spans)
        self.feed.consumers = consumers

    def attach(self, pipe: Pipeline) -> None:
        """Follow `pipe`'s records (before it answers anything) and its policy."""
        name = pipe.graph.name
        pipe.record_watchers.append(self.feed.watcher(name))
        if self.spans is not None:
            self.spans.model_names[name] = {
                logical: _provider_model(spec) for logical, spec in pipe.model_specs.items()
            }
        if self.metrics is not None:
            from engine.telemetry.metrics import PolicySource

            def current() -> PolicyPin:
                return pipe.policy.current() if pipe.policy is not None else _NO_PIN

            def rollbacks() -> int:
                return pipe.policy.guard_rollbacks if pipe.policy is not None else 0

            self.metrics.add_policy(name, PolicySource(current, rollbacks))

    def continue_trace(self, request_id: str, headers: Mapping[str, str]) -> None:
        """Make request `request_id` continue the caller's W3C trace (`traceparent`)."""
        if self.spans is not None:
            self.feed.continue_trace(request_id, headers)

    def start(self) -> None:
        """Start the feed's thread."""
        self.feed.start()

    def close(self) -> None:
        """Turn the last records into spans and figures, and flush the spans."""
        self.feed.close()


def _provider_model(spec: Any) -> str:
    """What `gen_ai.request.model` names: the provider's model, or `sim-PROFILE`."""
    if spec.provider == "sim":
        return f"sim-{spec.profile or 'large'}"
    return str(spec.model or spec.provider)
