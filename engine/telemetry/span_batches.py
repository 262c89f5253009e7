"""Encoded spans queued per request and posted in batches by a thread of their own.

It does for bytes what the SDK's `BatchSpanProcessor` does for span objects, under the
same standard variables: a batch leaves when `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans
(2,048) are waiting or `OTEL_BSP_SCHEDULE_DELAY` ms (5,000) have passed; past
`OTEL_BSP_MAX_QUEUE_SIZE` waiting spans (8,192) a request's spans are dropped (counted and
logged) rather than holding memory while a collector is down. A batch is one
`ExportTraceServiceRequest`: the resource's and scope's bytes, once, around the spans.

The two sizes default to four times the SDK's (512 and 2,048): a POST costs the exporter's
HTTP client about 350 µs of CPU whatever its size (a 1 KB and a 200 KB body cost nearly
the same; 800 KB costs 1.4x 200 KB), so under load, when batches leave full, a quarter
as many POSTs carry the same spans. A batch of 2,048 flagship spans is about 1 MB, well
under a collector's default request limit; the queue holds about 4 MB at most.

Where a batch goes is a `BatchSink`: moat's OTLP/HTTP exporter takes the bytes as they
are (`WireSpanExporter.export_encoded`); any other `SpanExporter` (a console exporter, an
in-memory one in tests) gets them decoded back into `ReadableSpan`s (`SdkSink`), so every
exporter sees the same spans.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from engine.logs import get_logger
from engine.telemetry.export_health import ExportHealth
from engine.telemetry.otlp_wire import envelope_parts

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["BatchSink", "SdkSink", "SpanBatches", "bsp_setting"]

_log = get_logger("moat.telemetry")

_DEFAULTS = {
    "OTEL_BSP_SCHEDULE_DELAY": 5_000,
    "OTEL_BSP_MAX_QUEUE_SIZE": 8_192,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 2_048,
    "OTEL_BSP_EXPORT_TIMEOUT": 30_000,
}


def bsp_setting(name: str, environ: Mapping[str, str] = os.environ) -> int:
    """A positive `OTEL_BSP_*` setting, else its default (as the SDK reads them)."""
    raw = environ.get(name, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else _DEFAULTS[name]


_REFUSED = {"reason": "the exporter did not accept the batch", "fix": "see its logs"}


class BatchSink(Protocol):
    """Where a batch goes: a serialised `ExportTraceServiceRequest`. A sink that can say
    why a batch was refused has a `failure()` method too, returning the `reason` and the
    `fix` (`export_health.describe`); one that can say which spans of an accepted batch the
    collector rejected has a `rejected` attribute, their count and its message (None:
    none)."""

    def export_encoded(self, data: bytes) -> bool:
        """Send `data`; whether it was accepted."""

    def shutdown(self) -> None:
        """Stop: no more sends, no more retries."""


class SdkSink:
    """A `BatchSink` for any `SpanExporter`: decodes the batch into `ReadableSpan`s."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export_encoded(self, data: bytes) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult

        from engine.telemetry.otlp_decode import readable_spans

        return self.exporter.export(readable_spans(data)) == SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.exporter.shutdown()


class SpanBatches:
    """Queues encoded spans and posts them in batches from a daemon thread.

    Args:
        sink: where batches go.
        resource: the `Resource` every span shares (`OTEL_SERVICE_NAME`, ...).
        scope: the instrumentation scope every span shares.
        environ: where the `OTEL_BSP_*` settings are read.
        endpoint: where the sink posts, if it does (said when exports fail).
    """

    def __init__(
        self,
        sink: BatchSink,
        resource: Resource,
        scope: InstrumentationScope,
        environ: Mapping[str, str] = os.environ,
        *,
        endpoint: str | None = None,
    ) -> None:
        self.sink = sink
        self.resource = resource
        self.scope = scope
        self.delay_s = bsp_setting("OTEL_BSP_SCHEDULE_DELAY", environ) / 1000
        self.max_queue = bsp_setting("OTEL_BSP_MAX_QUEUE_SIZE", environ)
        self.max_batch = bsp_setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", environ)
        self.dropped = 0
        """Spans dropped because the queue was full."""
        self.failed = 0
        """Batches the sink did not accept (or raised on)."""
        self.offered = 0
        """Spans `add`ed, dropped ones included."""
        self.health = ExportHealth(endpoint)
        self._chunks: list[tuple[bytes, int]] = []
        self._queued = 0
        self._busy = False
        self._flushing = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="moat-spans", daemon=True)
        self._thread.start()

    def add(self, spans: bytes, count: int) -> None:
        """Queue one request's `count` encoded spans (dropped if the queue is full)."""
        with self._cond:
            self.offered += count
            if self._queued + count > self.max_queue:
                if not self.dropped:
                    _log.warning(
                        "telemetry.spans_dropped",
                        variable="OTEL_BSP_MAX_QUEUE_SIZE",
                        value=self.max_queue,
                        effect="the span queue is full: new requests' spans are dropped",
                        fix="raise OTEL_BSP_MAX_QUEUE_SIZE, or sample fewer traces",
                    )
                self.dropped += count
                return
            self._chunks.append((spans, count))
            self._queued += count
            if self._queued >= self.max_batch:
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._queued < self.max_batch and not (self._flushing or self._stopping):
                    self._cond.wait(self.delay_s)
                if not self._chunks:
                    self._flushing = False
                    self._cond.notify_all()
                    if self._stopping:
                        return
                    continue
                batch, count = self._take()
                self._busy = True
            try:
                self._send(batch, count)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _take(self) -> tuple[list[bytes], int]:
        """Whole requests' spans, up to `max_batch` spans (at least one request), and how
        many spans that is."""
        taken, count = 0, 0
        for _, n in self._chunks:
            if taken and count + n > self.max_batch:
                break
            taken += 1
            count += n
        parts = [spans for spans, _ in self._chunks[:taken]]
        del self._chunks[:taken]
        self._queued -= count
        return parts, count

    def _send(self, spans: list[bytes], count: int) -> None:
        """Post the batch of `spans` (`count` of them), written with its envelope in one
        join (a batch is about 1 MB: each copy of it costs a page fault per 4 KB)."""
        try:
            body = b"".join(envelope_parts(self.resource, self.scope, spans))
            ok = self.sink.export_encoded(body)
        except Exception as exc:  # an exporter's bug must not end the thread
            self.failed += 1
            why = {"reason": f"the exporter raised {exc!r}", "fix": "report it as a bug"}
            self.health.failed(count, why)
            return
        if ok:
            rejected = getattr(self.sink, "rejected", None)
            if rejected is None:
                self.health.ok(count)
            else:
                self.health.partial(count, *rejected)
            return
        self.failed += 1
        failure = getattr(self.sink, "failure", None)
        self.health.failed(count, failure() if callable(failure) else _REFUSED)

    def flush(self, timeout_s: float) -> bool:
        """Send everything queued now; whether it left within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            while self._chunks or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._flushing = True
                self._cond.wait(left)
        return True

    def shutdown(self, wait_s: float | None = None) -> bool:
        """Send what is queued (the sink decides how long it tries), then stop the thread,
        waiting for it `wait_s` at most (None: as long as it takes); whether it stopped."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(wait_s)
        return not self._thread.is_alive()
