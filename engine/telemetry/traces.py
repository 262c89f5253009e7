"""OpenTelemetry traces built from finished requests, after the fact, off the request path.

Each request becomes one trace: a root span for the request, a child span per node run,
under it a span per LLM call (GenAI semantic conventions) and per cache lookup, and the
node's orchestration decisions as span events with their reason codes (`wire_spans` says
what each span holds). The spans are written in the feed's thread straight from the
records to OTLP protobuf bytes, with no span object in between, and queued per request for
a thread that posts them in batches (`span_batches`): at about 20 spans and 34 events per
flagship request, building SDK span objects and encoding them cost ten times as much.

The SDK still decides what is configurable: the sampler (`OTEL_TRACES_SAMPLER`, once per
request; the default, which keeps every trace not continuing a caller's, is not asked for
those), the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), batching
(`OTEL_BSP_*`; unset, batches of 2,048 spans, `span_batches`), `OTEL_SDK_DISABLED` and
the exporter (`OTEL_EXPORTER_OTLP_*`: endpoint, headers, timeout, compression,
certificates, retries), whose HTTP client sends the bytes, with a `requests` session that
read the proxy and CA bundle variables and `~/.netrc` once, when tracing started
(`http_session`), unless a credential provider gives the session.
Any other `SpanExporter` gets the same spans decoded into `ReadableSpan`s.

Text: prompts and answers reach a span only when the record carries them, which the
gateway does only when the policy's `store_text` is `redacted` (then redacted) or `full`;
by default a span holds the prompt's hash alone.

The trace id of a request not continuing a caller's trace is derived from its request id
(`trace_id_of`), so `moat report REQUEST_ID` and the trace viewer name the same request.
A `moat serve` request with a W3C `traceparent` continues the caller's trace instead.

Needs the `telemetry` extra (opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, DEFAULT_ON, Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.logs import get_logger
from engine.telemetry.export_health import QUIET, describe
from engine.telemetry.feed import FinishedRequest
from engine.telemetry.http_session import SettledSession, settled_session
from engine.telemetry.ids import trace_id_of
from engine.telemetry.otel_env import export_timeout_s, sampler, traces_url
from engine.telemetry.otlp_answer import RecordingTransport
from engine.telemetry.span_batches import BatchSink, SdkSink, SpanBatches
from engine.telemetry.wire_spans import RequestSpans

__all__ = ["SpanBuilder", "otlp_exporter"]

_log = get_logger("moat.telemetry")


def otlp_exporter(endpoint: str | None = None) -> SpanExporter:
    """The OTLP/HTTP span exporter: `endpoint` is a collector's base URL (`/v1/traces` is
    appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`); None leaves it, the headers, timeout,
    compression and certificates to the standard `OTEL_EXPORTER_OTLP_*` variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from engine.telemetry.otlp_wire import encode_spans

    class WireSpanExporter(OTLPSpanExporter):
        """The SDK's OTLP/HTTP exporter, taking request bodies already encoded
        (`export_encoded`: what the span builder sends) as well as span objects (encoded
        by `otlp_wire`, 4-5x cheaper than the exporter's protobuf messages, the same
        bytes to a collector). Sending stays the SDK's: endpoint, headers, timeout, gzip,
        certificates, retries with backoff on 429/5xx and connection errors (its
        `_client`, private: an exporter version without it gets span objects instead).
        Its client's log lines (one per retry) are silenced: `failure` says why the last
        batch failed, for moat's log (`export_health`). Its transport keeps each answer
        (`otlp_answer`): a redirect or a web page answered to a POST is a failure, not the
        success the client counts it as, and `rejected` says what spans a collector that
        took the batch rejected, and why."""

        def __init__(self, url: str, session: SettledSession | None) -> None:
            # the timeout variables are milliseconds; the exporter would read seconds
            super().__init__(endpoint=url, session=session, timeout=export_timeout_s())
            self.url = url
            self.session = session
            self.last: _Outcome = (None, None)
            self.refused: dict[str, str] | None = None
            self.rejected: tuple[int, str] | None = None
            self.answers: RecordingTransport | None = None
            if self.wire():
                self._client._logger = QUIET
                self.answers = RecordingTransport.install(self._client)

        def wire(self) -> bool:
            """Whether encoded bodies can be sent as they are."""
            client = getattr(self, "_client", None)
            return client is not None and hasattr(client, "export")

        def export_encoded(self, data: bytes) -> bool:
            if self._shutdown:
                return False
            result = self._client.export(data)
            if not result.success:
                self.last = _outcome((result.status_code, result.error), self.session)
                self.refused = self.rejected = None
                return False
            self.refused, self.rejected = RecordingTransport.verdict_of(self.answers)
            return self.refused is None

        def failure(self) -> dict[str, str]:
            """Why the last batch was not accepted, in a few words, and what to check."""
            return _failure(self.refused, self.last)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if not self.wire() or self._shutdown:
                return super().export(spans)
            try:
                data = encode_spans(spans)
            except Exception:  # a bug here must not lose the batch: the SDK's encoding
                _log.exception("telemetry.otlp_encoding_failed")
                return super().export(spans)
            ok = self.export_encoded(data)
            return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    url = traces_url(endpoint)
    if any(os.environ.get(name) for name in _CREDENTIAL_PROVIDERS):
        return WireSpanExporter(url, None)  # the provider's session, as it is
    return WireSpanExporter(url, settled_session(url))


_Outcome = tuple[int | None, BaseException | None]
"""How a POST ended: its HTTP status, or what it raised."""


def _failure(refused: dict[str, str] | None, last: _Outcome) -> dict[str, str]:
    """Why a batch was not accepted: what its answer said (a redirect, a web page), else
    how its POST ended."""
    return refused if refused is not None else describe(*last)


def _outcome(given: _Outcome, session: SettledSession | None) -> _Outcome:
    """How the last batch's POST ended as the exporter says, else (its retries cut short
    by a shutdown, it says nothing) as the session saw it."""
    if given == (None, None) and session is not None:
        return session.last
    return given


_CREDENTIAL_PROVIDERS = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
)
"""Variables naming a `requests.Session` to export with (a credential provider): then that
session is used as the exporter would use it."""


def _resource() -> Resource:
    """`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, with `service.name` moat unless set."""
    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "moat"}))
    return resource


def _sink(exporter: SpanExporter) -> BatchSink:
    """Bytes as they are for moat's OTLP/HTTP exporter, span objects for any other."""
    wire = getattr(exporter, "wire", None)
    if callable(wire) and wire():
        return exporter  # type: ignore[return-value]
    return SdkSink(exporter)


class SpanBuilder:
    """Turns each finished request into spans; a `Consumer` of the `RecordFeed`.

    Args:
        exporter: where spans go (default: OTLP/HTTP configured by `OTEL_*`).
        model_names: each logical model's provider model (`gen_ai.request.model`), per
            graph: `{"governed-answer": {"small": "sim-small"}}`.
        server: the requests arrive over HTTP (`moat serve`): root spans are SERVER spans.
    """

    def __init__(
        self,
        exporter: SpanExporter | None = None,
        *,
        model_names: Mapping[str, Mapping[str, str]] | None = None,
        server: bool = False,
    ) -> None:
        # the sampler as OTEL_TRACES_SAMPLER says (checked: the SDK's would log and go on
        # with its default); the provider reads OTEL_SDK_DISABLED; no atexit hook
        provider = TracerProvider(resource=_resource(), sampler=sampler(), shutdown_on_exit=False)
        self.sampler = provider.sampler
        self.roots_sampled = self.sampler is DEFAULT_ON or self.sampler is ALWAYS_ON
        """The sampler keeps every trace that continues no caller's (`OTEL_TRACES_SAMPLER`
        unset, `parentbased_always_on` or `always_on`): those need not ask it."""
        self.enabled = not getattr(provider, "_disabled", False)
        self.kind = SpanKind.SERVER if server else SpanKind.INTERNAL
        self.model_names: dict[str, Mapping[str, str]] = dict(model_names or {})
        self.writer = RequestSpans(self.model_names, server=server)
        self.exporter = exporter or otlp_exporter()
        self.batches = SpanBatches(
            _sink(self.exporter),
            provider.resource,
            InstrumentationScope("moat"),
            endpoint=getattr(self.exporter, "url", None),
        )
        self.propagator = TraceContextTextMapPropagator()

    def consume(self, request: FinishedRequest) -> None:
        """Write the request's spans and queue them, if the sampler keeps its trace."""
        if not self.enabled:
            return
        parent = self._parent(request)
        if parent is None and self.roots_sampled:  # what the sampler would say, without it
            spans, count = self.writer.encode(request, trace_id_of(request.record.id))
            self.batches.add(spans, count)
            return
        if parent is not None:
            trace_id, parent_context = (
                parent.trace_id,
                trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            )
        else:
            trace_id, parent_context = trace_id_of(request.record.id), None
        name = f"request {request.graph}"
        verdict = self.sampler.should_sample(parent_context, trace_id, name, self.kind)
        if verdict.decision != Decision.RECORD_AND_SAMPLE:
            return
        state = verdict.trace_state.to_header() if verdict.trace_state else ""
        caller = None if parent is None else (parent.span_id.to_bytes(8, "big"), parent.is_remote)
        spans, count = self.writer.encode(request, trace_id, state, caller)
        self.batches.add(spans, count)

    def _parent(self, request: FinishedRequest) -> SpanContext | None:
        """The caller's span the request continues (a valid `traceparent`), if any."""
        if request.parent is None:
            return None
        context = self.propagator.extract(dict(request.parent))
        found = trace.get_current_span(context).get_span_context()
        return found if found.is_valid else None

    def close(self) -> None:
        """Export what is queued, waiting `OTEL_BSP_EXPORT_TIMEOUT` ms at most (5 s unless
        set: an unreachable collector must not hold a finished run or a stopping server),
        then shut the exporter down, which stops its retries (a POST still waiting for its
        answer is left to the sender's daemon thread). Spans that never left are said once
        (`export_health`)."""
        batches = self.batches
        timeout_s = _flush_ms() / 1000
        if batches.flush(timeout_s):
            batches.shutdown()
            self.exporter.shutdown()
            batches.health.closed(batches.offered, batches.dropped, timed_out_s=None)
            return
        batches.health.closing()
        batches.sink.shutdown()  # a collector that does not answer: stop retrying
        stopped = batches.shutdown(_GRACE_S)
        timed_out = None if stopped else timeout_s
        batches.health.closed(batches.offered, batches.dropped, timed_out_s=timed_out)


_GRACE_S = 0.25
"""How long the sender's thread may take to stop once the exporter is shut down (a batch
whose retries were cut short only has to report why)."""


def _flush_ms() -> int:
    """`OTEL_BSP_EXPORT_TIMEOUT` when set, else 5 s (the SDK's 30 s is long for a CLI)."""
    raw = os.environ.get("OTEL_BSP_EXPORT_TIMEOUT", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else 5_000
