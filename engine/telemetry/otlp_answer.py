"""What a collector's answer to an accepted POST says: a redirect, a web page, or spans it
rejected (an OTLP partial success).

The SDK's HTTP client counts every answer from 200 to 399 as a batch exported. Two of
those are not: a redirect (it follows none, so the spans went nowhere: a proxy's login
page, an `http://` URL answered with a move to `https://`), and a web page answered 200
(the endpoint is a web app or a UI's port, not an OTLP receiver; no OTLP receiver answers
`text/html`). Both are failures, said with what to fix. A collector that took the batch
but rejected some of its spans says so in the answer's `partial_success` (the OTLP
specification: a 200 with `rejected_spans` and an `error_message`); those spans are lost
and said once (`export_health`). An answer that does not decode is taken as the 200 it is.

Everything here runs on the sender's thread, never on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Answer", "RecordingTransport", "not_exported", "partial_success"]

_MESSAGE_CHARS = 200
"""How much of a collector's `error_message` is repeated in moat's log."""
_NOT_OTLP_FIX = (
    "nothing takes OTLP at this URL: --otel and OTEL_EXPORTER_OTLP_ENDPOINT take the "
    "collector's base URL (http://HOST:4318, /v1/traces is appended), "
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT the full URL"
)


@dataclass(frozen=True, slots=True)
class Answer:
    """The collector's answer to the last POST: its status, headers and body."""

    status: int | None
    headers: Mapping[str, str]
    body: bytes


class RecordingTransport:
    """The exporter's HTTP transport, keeping the last answer it got (`last`), so an
    accepted POST can be read for what the SDK's client does not look at."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: Answer | None = None

    @classmethod
    def install(cls, client: Any) -> RecordingTransport | None:
        """Wrap the transport of the SDK's HTTP `client` (None: it has none to wrap)."""
        inner = getattr(client, "_transport", None)
        if inner is None or not callable(getattr(inner, "request", None)):
            return None
        client._transport = recording = cls(inner)
        return recording

    @staticmethod
    def verdict_of(
        recording: RecordingTransport | None,
    ) -> tuple[dict[str, str] | None, tuple[int, str] | None]:
        """What the last accepted POST's answer says: why it exported nothing
        (`not_exported`), else the spans the collector rejected (`partial_success`);
        nothing when `recording` is None (no transport to read answers from)."""
        if recording is None or recording.last is None:
            return None, None
        refused = not_exported(recording.last)
        return refused, None if refused else partial_success(recording.last)

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send as the wrapped transport does, keeping the answer."""
        result = self.inner.request(method, url, **kwargs)
        self.last = None
        status = getattr(result, "status_code", None)
        if status is not None and 200 <= status < 400:
            try:
                self.last = Answer(status, result.headers(), result.content())
            except Exception:  # a body that cannot be read is no reason to lose the batch
                self.last = Answer(status, {}, b"")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def not_exported(answer: Answer) -> dict[str, str] | None:
    """Why an answer the SDK counts as success exported nothing (None: it did), as the
    `reason` and `fix` of `export_health.describe`."""
    from http import HTTPStatus

    status = answer.status or 0
    if 300 <= status < 400:
        try:
            phrase = f" {HTTPStatus(status).phrase}"
        except ValueError:
            phrase = ""
        where = answer.headers.get("location", "(nowhere)")
        return {
            "reason": f"HTTP {status}{phrase}, redirected to {where[:_MESSAGE_CHARS]!r}",
            "fix": "the exporter follows no redirect: give the URL the collector itself "
            "takes OTLP at (--otel, OTEL_EXPORTER_OTLP_ENDPOINT)",
        }
    kind = answer.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "text/html":
        reason = f"HTTP {status} with a web page, not an OTLP answer"
        return {"reason": reason, "fix": _NOT_OTLP_FIX}
    return None


def partial_success(answer: Answer) -> tuple[int, str] | None:
    """The spans the collector rejected and its message, when it says it rejected some or
    warns (None: it took the batch whole, or its answer is not OTLP protobuf)."""
    if not answer.body:
        return None
    kind = answer.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/x-protobuf", "application/protobuf", ""):
        return None
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    try:
        partial = ExportTraceServiceResponse.FromString(answer.body).partial_success
    except Exception:  # protobuf's DecodeError: not an OTLP answer, the 200 it is
        return None
    message = " ".join(partial.error_message.split())[:_MESSAGE_CHARS]
    if partial.rejected_spans <= 0 and not message:
        return None
    return max(partial.rejected_spans, 0), message
