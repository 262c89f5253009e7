"""`moat sim-server` over HTTP: the sim service as a Starlette app on uvicorn.

The stack is `moat serve`'s (Starlette routes the request, uvicorn speaks HTTP/1.1 with
keep-alive and chunked or `Content-Length` bodies); what a request gets back is decided by
`engine.models.server.SimService`, which knows no protocol. This module only carries bytes
and headers between the two, counts requests, and notices a client that hangs up while its
answer is being prepared: the answer's work is cancelled and the drop is counted in
`SimServer.dropped_connections` (and sets `SimServer.connection_dropped`), which is how the
tests see that moat's `openai` provider really aborts a cancelled call.

In-process (`serve`, `SimServer.serve`), uvicorn runs in a thread of its own with its own
asyncio loop, so a caller on any anyio backend (trio included) can start one from a task
group; `moat sim-server` runs it on the main thread (`run_server`).
"""

from __future__ import annotations

import contextlib
import socket
import threading

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from engine.logs import announce
from engine.models.server import SIMULATED_HEADERS, SimReply, SimService, error_reply
from engine.models.sim import SIM_PROFILES
from engine.serve.disconnect import until_disconnect
from engine.serve.listen import bind, run_app, server

__all__ = ["Flag", "SimServer", "run_server", "serve"]

_POLL_S = 0.005
MAX_BODY_BYTES = 32 << 20
"""Most bytes of a request body (a long chat is a few MB of JSON); more is a 413."""
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Flag:
    """A flag set on the server's thread and awaited from any event loop or backend."""

    def __init__(self) -> None:
        self._flag = threading.Event()

    def set(self) -> None:
        self._flag.set()

    def is_set(self) -> bool:
        return self._flag.is_set()

    async def wait(self) -> None:
        """Return once the flag is set (polls: the setter is on another loop or thread)."""
        while not self._flag.is_set():
            await anyio.sleep(_POLL_S)


class SimServer:
    """An OpenAI-compatible HTTP server answering with the `sim` provider.

    Args:
        time_scale: multiplies the simulated latencies (0 answers at once).
        slow_s: how long a `slow` fault makes the answer take, in seconds.
        latency_s: a fixed latency for every chat completion instead of the simulated one.
        service: what answers (default: a `SimService` with these settings).
        max_body_bytes: a request body over this many bytes is refused with a 413 as soon
            as it is (never held whole).

    Attributes:
        app: the ASGI app.
        host: the bound address, once serving.
        port: the bound port, once serving (useful with port 0).
        requests: HTTP requests received.
        dropped_connections: clients that hung up while their answer was being prepared.
        request_started: set once the first request has been read.
        connection_dropped: set once a client hangs up mid-answer.
    """

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        slow_s: float = 30.0,
        latency_s: float | None = None,
        service: SimService | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.service = service or SimService(
            time_scale=time_scale, slow_s=slow_s, latency_s=latency_s
        )
        self.host = ""
        self.port = 0
        self.requests = 0
        self.dropped_connections = 0
        self.request_started = Flag()
        self.connection_dropped = Flag()
        # every method reaches the service, which answers 404 and 405 itself, in its words
        route = Route("/{path:path}", self._endpoint, methods=_METHODS)
        self.app = Starlette(routes=[route])

    @property
    def time_scale(self) -> float:
        """The service's latency multiplier; it may be changed while serving."""
        return self.service.time_scale

    @time_scale.setter
    def time_scale(self, value: float) -> None:
        self.service.time_scale = value

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server (`http://HOST:PORT/v1`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def _endpoint(self, request: Request) -> Response:
        self.requests += 1
        try:
            body = await _read_body(request, self.max_body_bytes)
        except ClientDisconnect:  # gone before its request was whole: nothing to answer
            return Response(status_code=499)
        if body is None:
            return _reply(_too_large(self.max_body_bytes))
        self.request_started.set()
        work = self.service.answer(request.method, request.url.path, request.headers, body)
        reply = await until_disconnect(request, work)
        if reply is None:
            self.dropped_connections += 1
            self.connection_dropped.set()
            return Response(status_code=499)  # nobody reads it: the client is gone
        return _reply(reply)

    # -- serving --------------------------------------------------------------------------

    def listen(self, host: str, port: int) -> socket.socket:
        """Bind `host:port` (port 0: any free port) and note the bound address.

        Raises:
            SpecError: the port is in use, needs privileges, or the host is not local;
                the message says how to pick another.
        """
        sock = bind(host, port)
        self.host = host
        self.port = int(sock.getsockname()[1])
        return sock

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[SimServer] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `host:port` until cancelled; reports `self` through `task_status`
        once the socket listens (connections wait in its backlog until uvicorn is up).

        Raises:
            SpecError: the address cannot be listened on (see `listen`).
        """
        sock = self.listen(host, port)
        task_status.started(self)
        await self.serve_on(sock)

    async def serve_on(self, sock: socket.socket) -> None:
        """Serve on a socket from `listen`, in a thread of its own, until cancelled; then
        stop uvicorn (requests still in flight get a second) and close the socket.

        Requests are read within the bounds `moat sim-server` and `moat serve` read them
        in (`engine.serve.protocol`: heads, stalls), so a test or benchmark that points a
        hostile client at it meets the same server.
        """
        runner = server(self.app, grace_s=1)
        finished = threading.Event()

        def run() -> None:
            try:
                runner.run(sockets=[sock])
            finally:
                finished.set()

        try:
            await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        finally:
            runner.should_exit = True
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait)
            sock.close()


def _reply(reply: SimReply) -> Response:
    return Response(reply.body, reply.status, headers={**SIMULATED_HEADERS, **reply.headers})


def _too_large(limit: int) -> SimReply:
    """The 413 of a body over `limit` bytes; the connection closes, so the rest of the
    body is not read."""
    message = f"the request body is over {limit} bytes, the most this sim-server reads"
    kind = "invalid_request_error"
    return error_reply(413, message, kind, {"connection": "close"}, code="request_too_large")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body in any framing (`Content-Length` or chunked); None as soon as it is over
    `limit` bytes.

    Raises:
        ClientDisconnect: the client went away before its body was whole.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    time_scale: float = 1.0,
    slow_s: float = 30.0,
    task_status: anyio.abc.TaskStatus[SimServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the sim models on `host:port` until cancelled.

    Use it from a task group: `server = await tg.start(serve, "127.0.0.1", 0)` returns the
    running `SimServer` (its `port`, `base_url` and counters).
    """
    server = SimServer(time_scale=time_scale, slow_s=slow_s)
    await server.serve(host, port, task_status=task_status)


def run_server(
    port: int,
    host: str = "127.0.0.1",
    *,
    time_scale: float = 1.0,
    latency_s: float | None = None,
) -> bool:
    """Blocking entry point of `moat sim-server`: serve until Ctrl-C or SIGTERM.

    Prints the address it serves at (with the port chosen when `port` is 0) on stdout,
    so scripts can read it. False if uvicorn never started.

    Raises:
        SpecError: the address cannot be listened on (the port is in use, ...).
    """
    server = SimServer(time_scale=time_scale, latency_s=latency_s)
    sock = server.listen(host, port)

    def ready() -> None:
        announce(
            server.base_url,
            f"moat sim-server: SIMULATED OpenAI-compatible models at {server.base_url} "
            f"({', '.join(f'sim-{p}' for p in SIM_PROFILES)}); Ctrl-C to stop",
        )

    with sock, contextlib.suppress(KeyboardInterrupt):
        return run_app(server.app, sock, grace_s=5, on_ready=ready)
    return True
