"""The receiving side of deferred sync (`moat sync-server`): batches in, merged into one store.

`POST /v1/sync/batch` takes one compressed batch (`engine.sync.codec`), merges it into the
central store in one transaction (`engine.store.sync_ops.merge_batch`: idempotent, ids
renumbered or qualified per origin) and answers 200 with what it did only once that
transaction has committed, so an acknowledged batch survives a crash of the server. Batches
are decoded and merged one at a time on a worker thread, off the event loop, so at most one
inflated batch is held in memory however many arrive at once. `GET /v1/sync/health` answers
`{"ok": true, "central": ID}`: edges key their watermarks by that id. With a token
(`MOAT_SYNC_TOKEN`), every request must carry it as a bearer token. Needs the `serve`
extra (Starlette, uvicorn).

Every error is `{"error": MESSAGE}` with a status that tells the edge what to do: 4xx
refuses the batch itself (sending it again would not help), 503 means "later" (the central
store's write lock is held by another process, such as `moat prune --vacuum`, for longer
than a write waits), and a 500 is a bug, logged with its traceback while the server goes on
serving. A body is read as it arrives, up to `max_body_bytes` (413 past it, whatever
`Content-Length` said or did not say); once nothing of it has come for `read_idle_s`
(a stalled client, or a `Content-Length` larger than what was sent), the answer is a 408
and the connection closes. A request's head must come whole within `read_idle_s` of when
the connection awaits it (nginx's `client_header_timeout`): uvicorn reads heads with no
timeout, so a client that connected and sent nothing, half a head, or a head a byte at a
time held its connection for as long as it liked. Bytes h11 cannot read as a request are
a 400 in the same JSON shape (uvicorn's is plain text).
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - uvicorn's connections live on the asyncio loop it runs on
import hmac
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from engine.errors import StoreError
from engine.logs import get_logger
from engine.store import schema, sync_ops
from engine.store.schema import connect, describe_error, is_busy, migrate
from engine.sync.client import BATCH_PATH, HEALTH_PATH
from engine.sync.codec import MAX_BATCH_BYTES, SyncPayload, WireError, decode_batch

__all__ = ["GRACE_S", "READ_IDLE_S", "SyncServer", "serve_sync"]

READ_IDLE_S = 60.0
"""Seconds a batch's body may go without a byte arriving (nginx's `client_body_timeout`),
and a request's head may take to come whole (its `client_header_timeout`)."""
GRACE_S = 10
"""Seconds a stop (SIGTERM, Ctrl-C) waits for uploads under way; a body still trickling in
after that is cut off (its edge sends it again, to this server's successor)."""
_RETRY_AFTER_S = 30
_ROUTES = f"POST {BATCH_PATH} and GET {HEALTH_PATH}"
_CLOSE = {"Connection": "close"}
"""For an answer that leaves a body unread: the connection cannot carry another request."""
_log = get_logger("moat.sync")


class _Refused(Exception):
    """A batch answered with `status` and `message`, unmerged."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in the sync server's shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    where = f"{request.method} {request.url.path}"
    return _error(status, f"{where}: {detail}; a `moat sync-server` answers {_ROUTES}", headers)


class SyncServer:
    """The central store behind the sync routes.

    Args:
        db: the central store (created and migrated if needed).
        token: a bearer token every batch must carry (None: no check).
        max_body_bytes: the largest compressed batch read (413 past it).
        read_idle_s: seconds a batch's body may stall before it is answered 408, and a
            request's head may take before its connection is closed.
    """

    def __init__(
        self,
        db: str | Path,
        *,
        token: str | None = None,
        max_body_bytes: int = MAX_BATCH_BYTES,
        read_idle_s: float = READ_IDLE_S,
    ) -> None:
        self.db = Path(db)
        self._token = token
        self.max_body_bytes = max_body_bytes
        self.read_idle_s = read_idle_s
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()
        self.central_id = ""
        """The central store's id (set by `open`); edges key their watermarks by it."""
        self.app = Starlette(
            routes=[
                Route(BATCH_PATH, self._batch, methods=["POST"]),
                Route(HEALTH_PATH, self._health, methods=["GET"]),
            ],
            exception_handlers={HTTPException: _http_error},
        )
        self.app.router.redirect_slashes = False  # an unknown path is a 404, never a redirect

    def open(self) -> None:
        """Open and migrate the central store and its sync tables.

        Raises:
            StoreError: the file cannot be opened, is of a newer schema, or cannot be written
                (another process holds its write lock, say).
        """
        conn = connect(self.db)
        try:
            migrate(conn, self.db)
            self.central_id = sync_ops.ensure_central(conn, self.db)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(
                f"{self.db}: cannot serve this store: {describe_error(exc, self.db)}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        """Close the central store."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _health(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return _error(401, "missing or wrong bearer token")
        return JSONResponse({"ok": True, "central": self.central_id})

    def _authorised(self, request: Request) -> bool:
        if self._token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode())

    async def _batch(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return _error(401, "missing or wrong bearer token")
        conn = self._conn
        if conn is None:
            return _error(503, "the central store is not open")
        try:
            body = await self._body(request)
            async with self._lock:
                payload, result = await anyio.to_thread.run_sync(
                    self._merge, conn, body, request.headers.get("content-encoding", "identity")
                )
        except _Refused as exc:
            return _error(exc.status, exc.message, exc.headers)
        except Exception:  # a bug in moat: logged; the edge learns nothing of the internals
            _log.exception("sync.batch_crashed")
            return _error(500, "the central side failed to merge the batch; its log says why")
        _log.info("sync.batch", origin=payload.origin, table=payload.table, stored=result.stored)
        return JSONResponse(
            {
                "stored": result.stored,
                "updated": result.updated,
                "duplicates": result.duplicates,
                "dropped_columns": result.dropped_columns,
            }
        )

    async def _body(self, request: Request) -> bytes:
        """The request's body, read as it arrives within `max_body_bytes` and `read_idle_s`."""
        limit = self.max_body_bytes
        smaller = "send smaller batches (`moat sync --batch-rows`)"
        declared = request.headers.get("content-length", "")
        if declared.isdecimal() and int(declared) > limit:
            message = f"the batch is {declared} bytes, over the {limit} this side reads; {smaller}"
            raise _Refused(413, message, _CLOSE)
        body = bytearray()
        chunks = request.stream()
        while True:
            with anyio.move_on_after(self.read_idle_s) as idle:
                try:
                    chunk = await anext(chunks, None)
                except ClientDisconnect:
                    raise _Refused(400, "the client left before its batch ended") from None
            if idle.cancelled_caught:
                raise _Refused(
                    408,
                    f"nothing of the batch came for {self.read_idle_s:g}s after {len(body)} "
                    "bytes (a Content-Length larger than the body?); send it again",
                    _CLOSE,
                )
            if chunk is None:
                return bytes(body)
            body += chunk
            if len(body) > limit:
                message = f"the batch is over {limit} bytes, the most this side reads; {smaller}"
                raise _Refused(413, message, _CLOSE)

    def _merge(
        self, conn: sqlite3.Connection, body: bytes, encoding: str
    ) -> tuple[SyncPayload, sync_ops.MergeResult]:
        """Decode and merge one batch (on a worker thread, one at a time)."""
        try:
            payload = decode_batch(body, encoding)
            result = sync_ops.merge_batch(
                conn,
                self.db,
                payload.origin,
                payload.table,
                payload.columns,
                payload.rows,
                time.time(),
            )
        except (WireError, StoreError) as exc:
            raise _Refused(400, str(exc)) from exc
        except sqlite3.IntegrityError as exc:
            raise _Refused(400, f"rows refused: {exc}") from exc
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            _log.warning("sync.store_busy", error=describe_error(exc, self.db))
            raise _Refused(
                503,
                f"the central store is busy: another process has held its write lock for "
                f"over {schema.WRITE_PATIENCE_S:g}s (such as `moat prune --vacuum`); the batch "
                "was not stored: send it again later",
                {"Retry-After": str(_RETRY_AFTER_S)},
            ) from exc
        return payload, result


class _Connection(H11Protocol):
    """uvicorn's h11 connection, with a deadline on every request head it awaits and the
    parser's refusals in the server's JSON shape."""

    read_idle_s = READ_IDLE_S
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if self._head_timer is not None and cycle is not None and not cycle.response_complete:
            self._head_timer.cancel()  # the head is whole: the app reads the body (its own
            self._head_timer = None  # timeout) and answers

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.read_idle_s, self._head_late)

    def _head_late(self) -> None:
        """No whole head in time: nobody to answer (as an idle keep-alive connection)."""
        self._head_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self.transport.is_closing():
            return
        message = (
            "the request is not HTTP/1.1 this server reads: check its request line, its "
            f"headers (16 KiB at most) and its framing; a `moat sync-server` answers {_ROUTES}"
        )
        body = json.dumps({"error": message}).encode()
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


def _connection(read_idle_s: float) -> type[_Connection]:
    """`_Connection` with heads due within `read_idle_s`."""
    return type("SyncConnection", (_Connection,), {"read_idle_s": read_idle_s})


def _config(server: SyncServer) -> uvicorn.Config:
    """How uvicorn serves the sync routes. With `h11`, not the `httptools` parser uvicorn
    picks when it is installed: llhttp hands uvicorn every header however many and long
    (megabytes of them, each kept), where h11 refuses a request line and headers over
    16 KiB with a 400 and closes the connection. Batches are few and large: h11's slower
    parsing costs nothing that shows. The h11 connection is `_Connection`, which bounds
    the time a head may take and answers in the server's shape; no WebSocket (a handshake
    is answered as the HTTP request it also is)."""
    return uvicorn.Config(
        server.app,
        http=_connection(server.read_idle_s),
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACE_S,
    )


def serve_sync(
    server: SyncServer, sock: socket.socket, *, on_ready: Callable[[], None] | None = None
) -> None:
    """Serve `server` on `sock` until SIGINT or SIGTERM (the store is opened first, so a
    store that cannot be opened is an error before anything is served)."""
    server.open()
    runner = uvicorn.Server(_config(server))

    async def main() -> None:
        if on_ready is not None:
            on_ready()
        await runner.serve(sockets=[sock])

    def stopped(signum: int, frame: FrameType | None) -> None:
        """SIGTERM before uvicorn listens for it (the ready line is out, its handlers not
        yet in: it would otherwise be lost), or after its graceful shutdown (nothing left
        to do)."""
        runner.should_exit = True

    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        anyio.run(main)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
