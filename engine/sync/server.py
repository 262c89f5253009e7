"""The receiving side of deferred sync (`moat sync-server`): batches in, merged into one store.

`POST /v1/sync/batch` takes one compressed batch (`engine.sync.codec`), merges it into the
central store in one transaction (`engine.store.sync_ops.merge_batch`: idempotent, ids
renumbered or qualified per origin) and answers 200 with what it did only once that
transaction has committed, so an acknowledged batch survives a crash of the server. Merges
run one at a time on a worker thread, off the event loop. `GET /v1/sync/health` answers
`{"ok": true, "central": ID}`: edges key their watermarks by that id. With a token
(`MOAT_SYNC_TOKEN`), every request must carry it as a bearer token. Needs the `serve`
extra (Starlette, uvicorn).
"""

from __future__ import annotations

import hmac
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
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.errors import StoreError
from engine.logs import get_logger
from engine.store import sync_ops
from engine.store.schema import connect, migrate
from engine.sync.client import BATCH_PATH, HEALTH_PATH
from engine.sync.codec import MAX_BATCH_BYTES, WireError, decode_batch

__all__ = ["SyncServer", "serve_sync"]

_log = get_logger("moat.sync")


class SyncServer:
    """The central store behind the sync routes.

    Args:
        db: the central store (created and migrated if needed).
        token: a bearer token every batch must carry (None: no check).
    """

    def __init__(self, db: str | Path, *, token: str | None = None) -> None:
        self.db = Path(db)
        self._token = token
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()
        self.central_id = ""
        """The central store's id (set by `open`); edges key their watermarks by it."""
        self.app = Starlette(
            routes=[
                Route(BATCH_PATH, self._batch, methods=["POST"]),
                Route(HEALTH_PATH, self._health, methods=["GET"]),
            ]
        )

    def open(self) -> None:
        """Open and migrate the central store and its sync tables.

        Raises:
            StoreError: the file cannot be opened or is of a newer schema.
        """
        conn = connect(self.db)
        try:
            migrate(conn, self.db)
            self.central_id = sync_ops.ensure_central(conn, self.db)
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
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return JSONResponse({"ok": True, "central": self.central_id})

    def _authorised(self, request: Request) -> bool:
        if self._token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode())

    async def _batch(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BATCH_BYTES:
            return JSONResponse({"error": "batch too large"}, status_code=413)
        body = await request.body()
        try:
            payload = decode_batch(body, request.headers.get("content-encoding", "identity"))
        except WireError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        conn = self._conn
        if conn is None:
            return JSONResponse({"error": "the central store is not open"}, status_code=503)
        async with self._lock:
            try:
                result = await anyio.to_thread.run_sync(
                    sync_ops.merge_batch,
                    conn,
                    self.db,
                    payload.origin,
                    payload.table,
                    payload.columns,
                    payload.rows,
                    time.time(),
                )
            except StoreError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except sqlite3.IntegrityError as exc:
                return JSONResponse({"error": f"rows refused: {exc}"}, status_code=400)
        _log.info("sync.batch", origin=payload.origin, table=payload.table, stored=result.stored)
        return JSONResponse(
            {
                "stored": result.stored,
                "updated": result.updated,
                "duplicates": result.duplicates,
                "dropped_columns": result.dropped_columns,
            }
        )


def serve_sync(
    server: SyncServer, sock: socket.socket, *, on_ready: Callable[[], None] | None = None
) -> None:
    """Serve `server` on `sock` until SIGINT or SIGTERM (the store is opened first, so a
    store that cannot be opened is an error before anything is served)."""
    server.open()
    config = uvicorn.Config(server.app, lifespan="off", log_level="warning", access_log=False)
    runner = uvicorn.Server(config)

    async def main() -> None:
        if on_ready is not None:
            on_ready()
        await runner.serve(sockets=[sock])

    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        anyio.run(main)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
