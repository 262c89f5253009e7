"""`moat sync` and `moat sync-server`: deferred, compressed upload of a store, and its receiver."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

import anyio

from engine.cli import EXIT_INTERRUPTED, file_path, store_file
from engine.cli.sim_server import port_number
from engine.cli.stopping import STOP_SIGNALS
from engine.errors import SpecError, SyncError, printable
from engine.logs import announce

if TYPE_CHECKING:
    from engine.sync import SyncReport

__all__ = ["add_commands"]

TOKEN_ENV = "MOAT_SYNC_TOKEN"
_MISSING = (
    "moat sync-server needs Starlette and uvicorn, which are not installed: "
    "pip install 'moat[serve]'"
)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < number < float("inf"):  # (NaN too: it would wait forever)
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number")
    return number


def _kbps(value: str) -> float:
    number = _positive(value)
    if number < 1:  # below a kilobit a second, one batch takes hours: a typo, not a link
        raise argparse.ArgumentTypeError(
            f"{value!r} is below 1; give the link's kilobits per second"
        )
    return number


def _rows(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 100_000:
        raise argparse.ArgumentTypeError(f"{value!r} must be a whole number from 1 to 100000")
    return int(value)


def add_commands(sub: Any) -> None:
    """Register `moat sync` and `moat sync-server` on the `moat` subparsers."""
    p = sub.add_parser("sync", help="upload what a central store has not acknowledged")
    p.add_argument("--to", required=True, metavar="URL", help="the `moat sync-server` URL")
    p.add_argument(
        "--db", type=file_path, metavar="PATH", help="the store (default: $MOAT_DB or moat.db)"
    )
    p.add_argument(
        "--max-kbps", type=_kbps, metavar="N", help="bandwidth cap in kilobits per second"
    )
    p.add_argument("--batch-rows", type=_rows, default=500, metavar="N", help="rows per batch")
    p.add_argument(
        "--codec", choices=("zstd", "gzip"), default="zstd", help="compression (default zstd)"
    )
    p.add_argument(
        "--patience",
        type=_positive,
        default=600.0,
        metavar="SECONDS",
        help="give up after this long without progress while offline (default 600)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(handler=cmd_sync)

    s = sub.add_parser("sync-server", help="receive `moat sync` uploads into one store")
    s.add_argument(
        "--db",
        type=file_path,
        metavar="PATH",
        help="the central store (default: $MOAT_DB or moat.db)",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument(
        "--port", type=port_number, default=8477, help="TCP port (0: any free port, printed)"
    )
    s.set_defaults(handler=cmd_sync_server)


def _check_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is no port
    except ValueError as exc:
        problem: str | None = str(exc)
    else:
        problem = _url_problem(url, parts, port)
    if problem is not None:
        shown = url if "@" not in url else "(a URL with credentials)"  # never echo a password
        raise SpecError(
            f"--to {shown}: {problem}; give the sync server's address, e.g. http://central:8477"
        )
    return url


def _url_problem(url: str, parts: SplitResult, port: int | None) -> str | None:
    """Why `moat sync` could never reach `url`, split as `parts` (None: it can be tried).
    Each of these would otherwise be retried as an outage until `--patience` ran out."""
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return "not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not used (the token is MOAT_SYNC_TOKEN)"
    odd = "\\" if ":" in host else "%\\"  # an IPv6 address may name its zone after a `%`
    if any(c.isspace() or not c.isprintable() or c in odd for c in host):
        return f"the host {host!r} is not a host name or address"
    if port == 0:
        return "port 0 is no port to connect to"
    if "?" in url or "#" in url:
        return "a query or fragment is not used (the routes are appended to the path)"
    return None


def cmd_sync(args: argparse.Namespace) -> int:
    """Upload, then print what was sent."""
    from engine.sync import EdgeSync

    url = _check_url(args.to)
    last: list[SyncReport] = []

    def progress(report: SyncReport) -> None:
        last[:] = [report]
        if not args.quiet and sys.stderr.isatty():
            print(f"\rsync: {report.total_rows} rows, {report.sent_bytes} B", end="", **_err)

    sync = EdgeSync(
        store_file(args.db),
        url,
        max_kbps=args.max_kbps,
        batch_rows=args.batch_rows,
        codec=args.codec,
        patience_s=args.patience,
        token=os.environ.get(TOKEN_ENV) or None,
        progress=progress,
    )
    stopped: list[str] = []
    try:
        report = anyio.run(_until_stopped, sync.run, stopped)
    except SyncError as exc:  # the upload ran and stopped: not a usage error
        print(f"moat: {printable(str(exc))}", file=sys.stderr)
        return 1
    if report is None:
        return _stopped(stopped[0], url, last)
    tables = ", ".join(f"{name} {n}" for name, n in report.rows.items() if n) or "nothing new"
    print(
        f"moat sync: {report.total_rows} rows to {url} ({tables}); "
        f"{report.raw_bytes} B as {report.sent_bytes} B {report.codec} "
        f"(x{report.ratio:.1f}) in {report.batches} batches, {report.seconds:.1f}s, "
        f"{report.retries} retries; origin {report.origin}{_held_back(report)}"
    )
    return 0


def _held_back(report: SyncReport) -> str:
    """What the summary adds about rows of requests that were not whole (not sent)."""
    notes = []
    if report.waiting:
        notes.append(
            f"rows of requests still being answered wait for the next sync "
            f"({', '.join(report.waiting)})"
        )
    if report.skipped:
        notes.append(
            f"{report.skipped} rows of requests a stopped run left unanswered are not sent "
            "(`moat run --resume RUN_ID` answers them again, then they go)"
        )
    return "".join(f"; {note}" for note in notes)


async def _until_stopped(
    upload: Callable[[], Awaitable[SyncReport]], stopped: list[str]
) -> SyncReport | None:
    """`upload()`, or None once a stop signal (Ctrl-C, SIGTERM, SIGHUP) cancelled it, its
    name put in `stopped`. A batch being recorded as acknowledged finishes first (the
    edge store's transaction runs on a worker thread), so nothing is half-recorded."""
    result: list[SyncReport] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async for signum in signals:
                    stopped.append(signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        async def run() -> None:
            try:
                result.append(await upload())
            except Exception as exc:  # raised below as it is, not inside an exception group
                failure.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(run)
    if result:  # (done before the signal could stop it)
        return result[0]
    if failure:
        raise failure[0]
    return None


def _stopped(name: str, url: str, last: list[SyncReport]) -> int:
    sent = f" after {last[0].total_rows} rows" if last else ""
    print(
        f"moat: sync stopped by {name}{sent}; what the central side acknowledged is kept: "
        f"rerun `moat sync --to {url}` to resume",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


_err: dict[str, Any] = {"file": sys.stderr, "flush": True}


def cmd_sync_server(args: argparse.Namespace) -> int:
    """Receive uploads until interrupted."""
    try:
        from engine.sync.server import SyncServer, serve_sync
    except ImportError:
        print(f"moat: {_MISSING}", file=sys.stderr)
        return 2
    path = store_file(args.db)
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SpecError(
            f"--host {args.host}: without ${TOKEN_ENV} any caller could write into {path}; "
            f"set {TOKEN_ENV} on both sides, or listen on 127.0.0.1"
        )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family, backlog=128)
    except OSError as exc:
        raise SpecError(
            f"--host {args.host} --port {args.port}: cannot listen there "
            f"({exc.strerror or exc}); choose another port (0 picks a free one)"
        ) from exc
    host, port = sock.getsockname()[:2]
    server = SyncServer(path, token=token)

    def ready() -> None:  # printed once the store is open: scripts wait for this line
        announce(f"http://{host}:{port}", f"moat sync-server: merging into {path} (Ctrl-C stops)")

    serve_sync(server, sock, on_ready=ready)
    return 0
