"""Listening: the socket `moat serve` binds, and uvicorn serving the app on it.

The socket is bound and the graphs are opened before uvicorn starts, so a port in use or a
store that cannot be opened is a clear error before anything is served, and `--port 0` can
print the port the system chose. uvicorn handles SIGINT and SIGTERM: it stops accepting and
lets the requests in flight finish within the grace period; then the server records its
runs as finished once their requests are stored.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from collections.abc import Callable
from types import FrameType

import anyio
import uvicorn

from engine.errors import SpecError
from engine.serve.app import MoatServer

__all__ = ["bind", "is_loopback", "serve_on"]


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port`.

    Raises:
        SpecError: the address cannot be listened on (in use, not an address here).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    except OSError as exc:
        raise SpecError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
            "choose another port (0 picks a free one) or address"
        ) from exc


def serve_on(
    server: MoatServer,
    sock: socket.socket,
    *,
    grace_s: float = 30.0,
    on_ready: Callable[[], None] | None = None,
) -> bool:
    """Open the server's graphs, call `on_ready`, then serve `server.app` on `sock` until
    SIGINT or SIGTERM; False if uvicorn never started.

    Raises:
        MoatError: a graph's store or policy could not be opened (nothing was served).
    """
    config = uvicorn.Config(
        server.app,
        lifespan="off",  # the graphs are opened here, so a failure is an error, not a log
        log_level="warning",
        timeout_graceful_shutdown=int(grace_s),
        access_log=False,
    )
    runner = uvicorn.Server(config)

    async def main() -> None:
        async with server:
            if on_ready is not None:
                on_ready()
            await runner.serve(sockets=[sock])

    # uvicorn re-raises the signal that stopped it once it has shut down; a SIGTERM is
    # the ordinary way to stop a server, so it ends the process normally (exit 0)
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        anyio.run(main)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return runner.started


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
