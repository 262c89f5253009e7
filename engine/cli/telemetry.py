"""The telemetry flags of `moat run` and `moat serve`: `--otel`, `--metrics-port`, ...

Flags are checked before anything runs (a missing extra, a busy port or an `OTEL_*`
variable that can never work exits 2 with the fix; one moat does not follow is warned
about once); `engine.telemetry` is imported only when one of them asks for it.
"""

from __future__ import annotations

import argparse
import errno
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import anyio

from engine.errors import SpecError

if TYPE_CHECKING:
    from engine.api import Pipeline
    from engine.telemetry import Telemetry

__all__ = ["TelemetryOptions", "add_arguments", "attached", "options", "telemetry_for"]

_OTEL_HELP = (
    "export OpenTelemetry traces over OTLP/HTTP to ENDPOINT (a collector's base URL), or "
    "as the OTEL_EXPORTER_OTLP_* variables say (default http://localhost:4318); "
    "OTEL_TRACES_EXPORTER=otlp turns this on too"
)
_TENANT_HELP = (
    "label metrics by tenant as well; off by default because tenants come from requests "
    "and an unbounded label set can exhaust Prometheus"
)


def add_arguments(parser: Any, *, batch: bool) -> None:
    """Add the telemetry flags (`batch`: `moat run`'s `--metrics-port` and linger too)."""
    parser.add_argument("--otel", nargs="?", const="", metavar="ENDPOINT", help=_OTEL_HELP)
    if batch:
        parser.add_argument(
            "--metrics-port",
            metavar="[HOST:]PORT",
            help="serve Prometheus metrics at http://HOST:PORT/metrics while the batch runs "
            "(HOST defaults to 127.0.0.1; 0.0.0.0 to be scraped from elsewhere)",
        )
        parser.add_argument(
            "--metrics-linger",
            type=float,
            metavar="S",
            help="after the batch, keep --metrics-port's /metrics up until scraped once more, "
            "at most S seconds",
        )
    parser.add_argument("--metrics-tenant", action="store_true", help=_TENANT_HELP)


@dataclass(frozen=True, slots=True)
class TelemetryOptions:
    """What the telemetry flags asked for, checked."""

    traces: bool
    endpoint: str | None
    metrics_host: str | None
    metrics_port: int | None
    linger_s: float
    tenant: bool


def options(args: argparse.Namespace) -> TelemetryOptions:
    """Check the telemetry flags (before anything runs).

    Raises:
        SpecError: a bad address or linger, the extra a flag needs is missing, or an
            `OTEL_*` variable tracing reads can never work.
    """
    from engine.telemetry import otel_from_env, require_extra
    from engine.telemetry.otel_env import check_traces, warn_unused

    otel = getattr(args, "otel", None)
    if otel and not otel.startswith(("http://", "https://")):
        raise SpecError(
            f"--otel {otel}: not a collector URL; give its base URL (http://HOST:4318), or "
            "put --otel after the graph when the variables OTEL_EXPORTER_OTLP_* say where"
        )
    traces = otel is not None or otel_from_env()
    if traces:
        require_extra("traces", "--otel")
        check_traces(otel or None)
    warn_unused(otel=otel is not None)
    host, port = _address(getattr(args, "metrics_port", None))
    _check_needs_port(args, port)
    if port is not None:
        require_extra("metrics", "--metrics-port")
        _check_free(host or "127.0.0.1", port)
    given = getattr(args, "metrics_linger", None)
    linger = 0.0 if given is None else float(given)
    if not 0 <= linger <= 3600:
        raise SpecError(f"--metrics-linger {linger:g}: give 0 to 3600 seconds")
    return TelemetryOptions(
        traces, otel or None, host, port, linger, bool(getattr(args, "metrics_tenant", False))
    )


def _check_needs_port(args: argparse.Namespace, port: int | None) -> None:
    """`moat run`'s metrics flags are about the `--metrics-port` endpoint: without it
    they would be ignored, so they are refused (`moat serve` always has `/metrics`)."""
    if port is not None or not hasattr(args, "metrics_port"):
        return
    linger = getattr(args, "metrics_linger", None)
    if linger is not None:
        raise SpecError(
            f"--metrics-linger {linger:g}: it keeps the /metrics of --metrics-port up after "
            "the batch, and no --metrics-port was given; add --metrics-port [HOST:]PORT, or "
            "drop --metrics-linger"
        )
    if getattr(args, "metrics_tenant", False):
        raise SpecError(
            "--metrics-tenant: it labels the metrics of --metrics-port by tenant, and no "
            "--metrics-port was given; add --metrics-port [HOST:]PORT, or drop "
            "--metrics-tenant"
        )


def _address(value: str | None) -> tuple[str | None, int | None]:
    if value is None:
        return None, None
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SpecError(
            f"--metrics-port {value}: give a port from 1 to 65535, optionally after a host "
            "(9464, 0.0.0.0:9464)"
        )
    return host or "127.0.0.1", int(port_text)


def telemetry_for(opts: TelemetryOptions, *, server: bool = False) -> Telemetry | None:
    """The `Telemetry` the options ask for (None when they ask for nothing)."""
    if not opts.traces and opts.metrics_port is None and not server:
        return None
    from engine.telemetry import Telemetry

    return Telemetry(
        traces=opts.traces,
        endpoint=opts.endpoint,
        metrics=opts.metrics_port is not None or server,
        tenant=opts.tenant,
        server=server,
    )


@asynccontextmanager
async def attached(opts: TelemetryOptions | None, pipe: Pipeline) -> AsyncIterator[None]:
    """Follow `pipe` with the telemetry `opts` asks for while the block runs, serving
    `/metrics` on `--metrics-port`; on exit the last spans are flushed and, with
    `--metrics-linger`, the endpoint waits for a final scrape.

    Raises:
        SpecError: the metrics port cannot be listened on (nothing has run yet).
    """
    telemetry = None if opts is None else telemetry_for(opts)
    if telemetry is None:
        yield
        return
    assert opts is not None
    server = _listen(telemetry, opts) if telemetry.metrics is not None else None
    telemetry.attach(pipe)
    telemetry.start()
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(telemetry.close)
            if server is not None:
                await _linger(telemetry, opts.linger_s)
                server.shutdown()
                server.server_close()


def _listen(telemetry: Telemetry, opts: TelemetryOptions) -> ThreadingHTTPServer:
    """Serve `/metrics` from a daemon thread; a scrape counts once its answer is sent."""
    from prometheus_client.exposition import MetricsHandler

    found = telemetry.metrics
    assert found is not None and opts.metrics_port is not None
    metrics = found

    class Handler(MetricsHandler):
        registry = metrics.exposed

        def do_GET(self) -> None:
            super().do_GET()
            self.wfile.flush()
            metrics.scrapes += 1

    host = opts.metrics_host or "127.0.0.1"
    server_class = _Server6 if ":" in host else ThreadingHTTPServer
    try:
        server = server_class((host, opts.metrics_port), Handler)
    except OSError as exc:
        raise _cannot_listen(host, opts.metrics_port, exc) from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="moat-metrics", daemon=True).start()
    return server


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _check_free(host: str, port: int) -> None:
    """Refuse a `--metrics-port` that cannot be listened on while the arguments are read,
    before a cluster starts (`--ray`) or a store is created; binding it for the batch
    (`_listen`) still says so if the port is taken meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind((host, port))
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from exc


def _cannot_listen(host: str, port: int, exc: OSError) -> SpecError:
    fix = "pick a free port"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        fix = "give a host name or address of this machine (127.0.0.1, 0.0.0.0)"
    return SpecError(f"--metrics-port {host}:{port}: cannot listen ({exc.strerror or exc}); {fix}")


async def _linger(telemetry: Telemetry, seconds: float) -> None:
    """Wait until `/metrics` is scraped once after the batch, at most `seconds`."""
    assert telemetry.metrics is not None
    seen = telemetry.metrics.scrapes
    deadline = time.monotonic() + seconds
    while telemetry.metrics.scrapes == seen and time.monotonic() < deadline:
        await anyio.sleep(0.05)
