"""Listening: the socket a server binds, and uvicorn serving an ASGI app on it.

`moat serve` and `moat sim-server` share this. The socket is bound (and, for `moat serve`,
the graphs are opened) before uvicorn starts, so a port in use or a store that cannot be
opened is a clear error before anything is served, and `--port 0` can print the port the
system chose. uvicorn handles SIGINT and SIGTERM: it stops accepting and lets the requests
in flight finish within the grace period; then `moat serve` records its runs as finished
once their requests are stored.

Connections are accepted by moat, not by the event loop's server: uvloop (libuv) accepts
one connection per turn of the loop, and a turn of a loaded server takes milliseconds, so
a burst of 1,000 connections waited up to tens of seconds in the kernel's accept queue
while the connections already accepted were served (bench/RESULTS.md, "moat serve under
load"). `_Acceptor` takes every pending connection each time the socket is readable.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - uvicorn's transports live on the asyncio loop it runs on
import errno
import ipaddress
import math
import signal
import socket
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from types import FrameType
from typing import Any

import anyio
import uvicorn

from engine.collector import settled_heap
from engine.errors import SpecError
from engine.serve.protocol import READ_IDLE_S, protocol_class

__all__ = ["BACKLOG", "bind", "bind_workers", "config", "is_loopback", "run_app", "server"]

_SWITCH_S = 0.0005
"""The interpreter's thread switch interval while serving: 0.5 ms rather than 5. The
event loop shares the GIL with the store writer's thread, which gives the GIL up at every
SQLite call of a commit (a dozen or more) and must then win it back from a loop that is
busy with a burst of requests: at 5 ms a wait, a commit that needs 1 ms of CPU took up
to tens of milliseconds, and every answer waiting for it with it (bench/RESULTS.md, "moat
serve under load": the commit phase's p50 halved at 0.5 ms and its transactions' p90
wall time more than halved; the price is 8-10 % more CPU per request at full load, from
more GIL hand-offs and smaller group commits)."""
_ACCEPT_BURST = 512
"""Connections accepted per readiness of the listening socket (the rest on the next turn),
so a connection storm cannot hold the loop away from requests for long."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_workers(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one `host:port` (SO_REUSEPORT), one per worker process:
    the kernel spreads new connections evenly over them, where one shared socket would
    let whichever process wakes first take a whole burst.

    Raises:
        SpecError: as `bind`.
    """
    first = bind(host, port, reuse_port=True)
    socks = [first]
    try:
        for _ in range(count - 1):
            socks.append(bind(host, first.getsockname()[1], reuse_port=True))
    except SpecError:
        for sock in socks:
            sock.close()
        raise
    return socks


BACKLOG = 2048
"""Connections the kernel holds for a listening socket until the server accepts them."""


def bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: any free port); with `listen=False`
    only bound, so that with `reuse_port` the kernel hands it no connection until its
    server calls `listen` (a worker started again, once its graphs are checked).

    Raises:
        SpecError: the address cannot be listened on (in use, needs privileges, not an
            address here); the message says how to pick another.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly (socket.create_server leaves it 0): asyncio turns Nagle's
    # algorithm off only on connections of a socket that says it is TCP, and with Nagle
    # on, a response's body waits for the ACK of its headers, which the client delays by
    # 40 ms: every request would take 40 ms more
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
        if listen:
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise SpecError(_listen_failure(host, port, exc)) from None
    return sock


def _listen_failure(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is in use (another server?). Stop what "
            "holds it, or pick another port: --port N, or --port 0 for any free port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need privileges). "
            "Use a port above 1023, or --port 0 for any free port"
        )
    reason = exc.strerror or str(exc)
    return f"cannot listen on {where}: {reason}. Check --host (a local address such as 127.0.0.1)"


def config(app: Any, *, grace_s: float) -> uvicorn.Config:
    """How uvicorn serves a moat app: no lifespan (the caller opens what the app needs, so
    a failure is an error rather than a log line), no access log, no logging set up (the
    CLI configures logging), no WebSocket (uvicorn's plain-text refusal of a handshake
    becomes the route's own answer), and `grace_s` for requests in flight at shutdown."""
    return uvicorn.Config(
        app,
        interface="asgi3",  # moat apps are ASGI 3 (a bound method is not detected as one)
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        ws="none",  # no WebSocket routes: a handshake is answered as HTTP, in OpenAI's shape
        proxy_headers=False,  # moat reads neither the client's address nor the scheme
        timeout_graceful_shutdown=math.ceil(grace_s) + (_CUT_OFF_S if _cuts_off(app) else 0),
    )


_CUT_OFF_S = 5
"""Once the grace period is over, how long an app that cuts its requests off (`moat
serve`: `MoatServer.cut_off`) has to answer them and record them, before uvicorn cancels
what is left under the app (a bare 500 and a traceback for each)."""


def _cuts_off(app: Any) -> bool:
    return callable(getattr(app, "cut_off", None))


def server(app: Any, *, grace_s: float, read_idle_s: float = READ_IDLE_S) -> uvicorn.Server:
    """A uvicorn server for `app` that reads requests within moat's bounds of size and
    time (`engine.serve.protocol`) and sends each response as soon as it is complete.
    Serve with `await it.serve(sockets=[sock])`; set `should_exit` to stop it."""
    return _Server(config(app, grace_s=grace_s), read_idle_s=read_idle_s, grace_s=grace_s)


def run_app(
    app: Any,
    sock: socket.socket,
    *,
    grace_s: float = 30.0,
    context: AbstractAsyncContextManager[Any] | None = None,
    on_ready: Callable[[], None] | None = None,
    stopped: Callable[[], bool] | None = None,
) -> bool:
    """Enter `context`, call `on_ready`, then serve `app` on `sock` until SIGINT or
    SIGTERM; False if uvicorn never started. Blocks; call it from the main thread.
    `stopped`: True if a SIGTERM came before this was called (the caller noted it); the
    server then stops as soon as it has started, as on a SIGTERM now.

    Raises:
        MoatError: entering `context` failed (nothing was served).
    """
    runner = server(app, grace_s=grace_s)

    async def main() -> None:
        async with context if context is not None else nullcontext():
            # what is alive once the graphs are open lives as long as the server: out of
            # the collector's sight, every collection skips it (~10 % of the CPU per
            # request in an A/B, bench/RESULTS.md); the app imported its providers' modules
            with settled_heap():
                sys.setswitchinterval(_SWITCH_S)
                if on_ready is not None:
                    on_ready()
                await runner.serve(sockets=[sock])

    def stop(signum: int, frame: FrameType | None) -> None:
        """SIGTERM outside uvicorn's own handlers: before it serves (the graphs are still
        opening, or the address was just printed), it stops the server before it starts;
        after, it is the signal uvicorn re-raises once it has shut down (nothing to do).
        Either way a SIGTERM, the ordinary way to stop a server, ends it with exit 0."""
        runner.should_exit = True

    previous = signal.signal(signal.SIGTERM, stop)
    if stopped is not None and stopped():
        runner.should_exit = True
    switch = sys.getswitchinterval()
    try:
        anyio.run(main, backend_options={"use_uvloop": _has_uvloop()})
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.setswitchinterval(switch)
    return runner.started


def _has_uvloop() -> bool:
    """uvloop (the `serve` extra installs it where it builds) runs the event loop in C;
    without it the standard asyncio loop serves the same, slower."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class _Acceptor:
    """Accepts every pending connection of a listening socket when it is readable, and
    hands each to uvicorn's protocol; `close` (what uvicorn calls on its servers at
    shutdown) stops accepting."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Callable[[], Any]
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._tasks: set[asyncio.Task[Any]] = set()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, a reset before accept: try next turn
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())

    async def wait_closed(self) -> None:
        return None


class _Coalesced:
    """A connection's transport whose writes in one turn of the event loop leave as one.

    uvicorn writes a response's status line and headers when the app starts the response
    and its body when the app sends it: two `send` calls, two TCP segments and two
    wake-ups of the client for a response the app produced at once. Here the first write
    of a turn is held until the end of the turn (`call_soon`), and what else the turn
    writes joins it: one `send` per response, the client woken once. A response that is
    complete leaves at once (`flush`, from the protocol's `on_response_complete`) rather
    than at the end of the turn: under load a turn of the loop runs every ready request's
    step, milliseconds that the answer would wait for nothing. Streamed chunks sent in
    later turns still leave as they come. Everything else is the transport's own.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self._pending:
            self._pending.append(data)
            return
        self._pending = [data]
        self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is held now (the response is complete: nothing else of it will come
        this turn, and waiting for the turn's end would only delay it)."""
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # what was written before `close` still leaves, as it would have
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Server(uvicorn.Server):
    """uvicorn's server with moat's `_Acceptor` on the sockets instead of the loop's own
    server (the same protocol, connection tracking and graceful shutdown), requests read
    within bounds of size and time (`engine.serve.protocol`; `read_idle_s`: seconds a
    request may stall), each connection's writes coalesced (`_Coalesced`) and sent as
    soon as its response is complete."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        read_idle_s: float = READ_IDLE_S,
        grace_s: float | None = None,
    ) -> None:
        super().__init__(config)
        self.read_idle_s = read_idle_s
        self.grace_s = grace_s
        """The grace period of a shutdown (default: what `config` leaves before the
        cut-off's own `_CUT_OFF_S`)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown; when the grace period is over, an app that can cuts its
        requests still in flight off itself (answered and recorded), before uvicorn's
        own deadline (`_CUT_OFF_S` later) cancels what is left."""
        app: Any = self.config.app
        deadline = self.config.timeout_graceful_shutdown
        if not _cuts_off(app) or deadline is None:  # (None: uvicorn waits for ever)
            await super().shutdown(sockets=sockets)
            return
        grace = self.grace_s if self.grace_s is not None else max(0, deadline - _CUT_OFF_S)

        async def at_grace_end() -> None:
            await asyncio.sleep(grace)
            app.cut_off(f"its grace period of {grace:g} s for shutting down ran out")

        timer = asyncio.get_running_loop().create_task(at_grace_end())
        try:
            await super().shutdown(sockets=sockets)
        finally:
            timer.cancel()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        loop = asyncio.get_running_loop()
        config = self.config
        base = protocol_class(
            config.http_protocol_class,
            read_idle_s=self.read_idle_s,
            on_refused=getattr(config.app, "count_refused", None),
        )

        class Protocol(base):  # type: ignore[misc,valid-type]
            def connection_made(self, transport: asyncio.Transport) -> None:
                super().connection_made(_Coalesced(transport, loop))

            def on_response_complete(self) -> None:
                self.transport.flush()
                super().on_response_complete()

        def protocol() -> Any:
            return Protocol(
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        self.servers = [_Acceptor(loop, sock, protocol) for sock in sockets or []]  # type: ignore[misc]
