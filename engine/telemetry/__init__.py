"""Telemetry where teams already look: OpenTelemetry traces and Prometheus metrics.

A `Telemetry` follows a pipeline's records (the same ones the store gets) through a
`RecordFeed` that costs the request path one `deque.append` per record; a thread turns each
finished request into spans (`traces.py`, OTLP/HTTP) and figures (`metrics.py`,
prometheus-client). Importing this package imports neither library: only a `Telemetry`
with traces or metrics on does (the `telemetry` extra).
"""

from __future__ import annotations

from engine.telemetry.feed import Consumer, FinishedRequest, RecordFeed
from engine.telemetry.hub import Telemetry, otel_from_env, require_extra, trace_id_of

__all__ = [
    "Consumer",
    "FinishedRequest",
    "RecordFeed",
    "Telemetry",
    "otel_from_env",
    "require_extra",
    "trace_id_of",
]
