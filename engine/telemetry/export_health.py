"""Span export failures said in moat's log: once an outage with the reason, then counts.

The OTLP exporter's own lines (one per retry, one per failed batch, in its own words) go
nowhere (`QUIET`, a logger with no output); instead each batch is reported here, from the
sender's thread, in moat's log format:

- `telemetry.export_failed`: the first failure of an outage, with the endpoint, the
  reason in a few words (`describe`: an HTTP status, a refused connection, a certificate
  that does not verify, no answer) and what to check;
- `telemetry.export_failing`: at most one a minute while the outage lasts, counting the
  batches and spans lost since the last line;
- `telemetry.export_recovered`: when a batch gets through again, with what was lost;
- `telemetry.spans_rejected`: the first batch a collector took but rejected spans of (an
  OTLP partial success), with its message; later ones are only counted
  (`telemetry.collector_warning`: the first message of one that rejected none);
- `telemetry.spans_not_exported`: at close, what never left (failed, dropped from a full
  queue, or still waiting when the close timeout ran out).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from engine.logs import get_logger
from engine.telemetry.otel_env import mask_url

__all__ = ["QUIET", "ExportHealth", "describe"]

_log = get_logger("moat.telemetry")

QUIET = logging.getLogger("moat.telemetry.otlp_client")
"""Where the OTLP exporter's own lines go: nowhere, unless a handler is added to debug."""
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False

_STATUS_FIXES = {
    401: "the collector refused the credentials: check OTEL_EXPORTER_OTLP_HEADERS",
    403: "the collector refused the credentials: check OTEL_EXPORTER_OTLP_HEADERS",
    404: "nothing takes OTLP at this URL: --otel and OTEL_EXPORTER_OTLP_ENDPOINT take the "
    "collector's base URL (/v1/traces is appended), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT the "
    "full URL",
    413: "the collector takes smaller requests: lower OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
}


def describe(status: int | None, error: BaseException | None) -> dict[str, str]:
    """A failed POST in a few words (`reason`) and what to check (`fix`), from its HTTP
    `status` or the `error` it raised (neither: its retries were cut short)."""
    if status is not None:
        phrase = _phrase(status)
        if status in _STATUS_FIXES:
            fix = _STATUS_FIXES[status]
        elif status == 429 or status >= 500:
            fix = "the collector is failing or overloaded (batches are retried); see its logs"
        else:
            fix = "the collector refused the batch; see its logs"
        return {"reason": f"HTTP {status} {phrase}".strip(), "fix": fix}
    if error is None:
        return {"reason": "still retrying when tracing stopped", "fix": _REACHABLE}
    return _describe_error(error)


_REACHABLE = "is an OTLP/HTTP collector listening there (usually port 4318) and reachable?"
_QUEUE_FIX = "raise OTEL_BSP_MAX_QUEUE_SIZE, or sample fewer traces (OTEL_TRACES_SAMPLER)"


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _describe_error(error: BaseException) -> dict[str, str]:
    from requests import exceptions

    text = str(error)
    if isinstance(error, exceptions.SSLError):
        found = re.search(r"\[SSL: \w+\] (.+?)(?: \(_ssl\.c|['\"]\)|$)", text)
        return {
            "reason": f"TLS: {(found.group(1) if found else text[:200]).strip()}",
            "fix": "if a CA of your own signed the collector's certificate, name its bundle "
            "in OTEL_EXPORTER_OTLP_CERTIFICATE (REQUESTS_CA_BUNDLE wins where set); a "
            "collector without TLS needs an http:// URL",
        }
    if isinstance(error, exceptions.Timeout):
        return {"reason": "no answer in time (OTEL_EXPORTER_OTLP_TIMEOUT)", "fix": _REACHABLE}
    if isinstance(error, exceptions.ProxyError):
        return {"reason": f"proxy: {text[:200]}", "fix": "check HTTPS_PROXY, HTTP_PROXY, NO_PROXY"}
    if isinstance(error, exceptions.ConnectionError):
        if "BadStatusLine" in text or "RemoteDisconnected" in text:
            return {"reason": "the answer was not HTTP", "fix": _REACHABLE}
        found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)|Error\(-?\d+, '([^']+)'\)", text)
        reason = (found.group(1) or found.group(2)).strip() if found else "cannot connect"
        return {"reason": reason[:1].lower() + reason[1:], "fix": _REACHABLE}
    return {"reason": f"{type(error).__name__}: {text[:200]}", "fix": _REACHABLE}


class ExportHealth:
    """Reports failed and successful batches, rate-limited (see the module's docstring).

    Args:
        endpoint: where spans are posted, if known (said with each line, password masked).
        every_s: during an outage, the least time between two lines.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = {} if endpoint is None else {"endpoint": mask_url(endpoint)}
        self.every_s = every_s
        self.clock = clock
        self.exported = 0
        """Spans the sink accepted."""
        self.last: dict[str, str] | None = None
        """The latest failure's `reason` and `fix`."""
        self._lock = threading.Lock()
        self._failing = False
        self._since = (0, 0)  # batches and spans lost since the last line
        self._outage = (0, 0)  # ... since the outage began
        self._said_at = 0.0
        self._unsaid = 0  # spans lost that no line has counted yet
        self._closing = False
        self._rejected_said = False
        self._warned = False

    def ok(self, spans: int) -> None:
        """A batch of `spans` got through."""
        with self._lock:
            self.exported += spans
            if not self._failing:
                return
            self._failing = False
            batches, lost = self._outage
        _log.warning(
            "telemetry.export_recovered", batches_failed=batches, spans_lost=lost, **self.where
        )

    def partial(self, spans: int, rejected: int, message: str) -> None:
        """A batch of `spans` got through, but the collector rejected `rejected` of them
        (or only warned, with none rejected), saying `message`."""
        rejected = min(rejected, spans)
        self.ok(spans - rejected)
        why = {
            "reason": f"the collector rejected spans: {message or '(it gave no reason)'}",
            "fix": "see the collector's logs and limits (attribute sizes, rate limits, span age)",
        }
        with self._lock:
            if rejected:
                self.last = why
                first, self._rejected_said = not self._rejected_said, True
                if not first:
                    self._unsaid += rejected
            else:
                first, self._warned = not self._warned, True
        if not first:
            return
        if rejected:
            _log.warning("telemetry.spans_rejected", spans=rejected, of=spans, **self.where, **why)
        else:
            _log.warning("telemetry.collector_warning", message=message, **self.where)

    def failed(self, spans: int, why: dict[str, str]) -> None:
        """A batch of `spans` was not accepted, for the reason `why` gives."""
        with self._lock:
            self.last = why
            first = not self._failing
            if first:
                self._failing, self._since, self._outage = True, (0, 0), (0, 0)
            self._since = (self._since[0] + 1, self._since[1] + spans)
            self._outage = (self._outage[0] + 1, self._outage[1] + spans)
            self._unsaid += spans
            now = self.clock()
            if self._closing or not (first or now - self._said_at >= self.every_s):
                return
            self._said_at, (batches, lost), self._since = now, self._since, (0, 0)
            self._unsaid = 0
        if first:
            _log.warning("telemetry.export_failed", spans_lost=lost, **self.where, **why)
        else:
            _log.warning(
                "telemetry.export_failing",
                batches_failed=batches,
                spans_lost=lost,
                **self.where,
                **why,
            )

    def closing(self) -> None:
        """From now on failures are only counted: `closed` says what was lost."""
        with self._lock:
            self._closing = True

    def closed(self, offered: int, dropped: int, *, timed_out_s: float | None) -> None:
        """Say what of the `offered` spans never left, unless the lines before said it all
        (`dropped`: spans a full queue refused; `timed_out_s`: the close gave up after that
        long with a batch still being sent)."""
        lost = offered - self.exported
        if lost <= 0 or not (self._unsaid or dropped or timed_out_s is not None):
            return
        why = self.last or {"reason": "the span queue was full", "fix": _QUEUE_FIX}
        if timed_out_s is not None:
            reason = f"no answer within {timed_out_s:g} s (OTEL_BSP_EXPORT_TIMEOUT)"
            why = {"reason": reason, "fix": _REACHABLE}
        counts = {"spans": lost, "of": offered} | ({"dropped": dropped} if dropped else {})
        _log.warning("telemetry.spans_not_exported", **counts, **self.where, **why)
