"""Listening: the socket `moat serve` binds, and uvicorn serving the app on it.

The socket is bound before uvicorn starts, so a port in use is a clear error before
anything runs and `--port 0` can print the port the system chose. uvicorn handles SIGINT
and SIGTERM: it stops accepting, lets the requests in flight finish within the grace
period, then runs the app's shutdown, which records the server's runs as finished once
their requests are stored.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from types import FrameType

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


def serve_on(server: MoatServer, sock: socket.socket, *, grace_s: float = 30.0) -> bool:
    """Serve `server.app` on `sock` until SIGINT or SIGTERM; False if it never started
    (its graphs could not be opened: the log says why)."""
    config = uvicorn.Config(
        server.app,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=int(grace_s),
        access_log=False,
    )
    runner = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; a SIGTERM is
    # the ordinary way to stop a server, so it ends the process normally (exit 0)
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        runner.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return runner.started


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
