"""The uploading side of deferred sync (`moat sync --to URL`).

It walks the tables of `engine.store.sync_ops.SYNC_TABLES` parents first, reads what the
target has not acknowledged, compresses each batch, waits for the bandwidth cap's token
bucket, posts the batch and, once the central side answers that it is stored, advances the
table's watermark in the edge store. A crash, a kill or a lost link between a post and its
acknowledgement only means the batch is sent again, which the central merge ignores; so a
rerun resumes where the last acknowledged batch ended and nothing is lost or doubled.

While the central side is unreachable (connection refused, timeouts, 5xx, 429) the client
retries with exponential backoff and full jitter; it gives up only after `patience_s`
without progress, keeping everything acknowledged so far. A 4xx other than 429 means the
central side refuses the batch itself; retrying would not help, so it stops at once.

Only the edge store is read: what the policy kept as hashes is sent as hashes, and nothing
is re-read from the requests' files or anywhere else.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2 as httpx

from engine.errors import SpecError, StoreError, SyncError, printable
from engine.logs import get_logger
from engine.store import sync_ops
from engine.store.schema import check_version, connect
from engine.sync.bucket import TokenBucket
from engine.sync.codec import codec_name, encode_batch

__all__ = ["BATCH_PATH", "HEALTH_PATH", "EdgeSync", "SyncReport"]

BATCH_PATH = "/v1/sync/batch"
HEALTH_PATH = "/v1/sync/health"
HTTP_OVERHEAD = 300
"""Bytes a batch costs on the wire beyond its body (request line, headers, the answer)."""
MAX_ANSWER_BYTES = 1 << 20
"""The most of an answer's body read (inflated): a `moat sync-server` answers in a few
hundred bytes, and a peer that streams without end must not fill the edge's memory."""
_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 30.0
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_log = get_logger("moat.sync")


@dataclass(slots=True)
class SyncReport:
    """What one `moat sync` did."""

    origin: str = ""
    """The edge store's origin id."""
    central: str = ""
    """The central store's id (watermarks are kept per central store)."""
    codec: str = ""
    """The compression used (`zstd` or `gzip`)."""
    rows: dict[str, int] = field(default_factory=dict)
    """Rows acknowledged per table."""
    batches: int = 0
    raw_bytes: int = 0
    """JSON bytes before compression."""
    sent_bytes: int = 0
    """Bytes on the wire (compressed bodies)."""
    retries: int = 0
    skipped: int = 0
    """Rows of requests cut short (an interrupted or crashed run), never sent: `moat run
    --resume` deletes them and answers those requests again."""
    waiting: list[str] = field(default_factory=list)
    """Tables with rows of requests still being answered: they go with a later sync."""
    throttled_s: float = 0.0
    """Seconds spent waiting for the bandwidth cap."""
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        """Rows acknowledged in all tables."""
        return sum(self.rows.values())

    @property
    def ratio(self) -> float:
        """Compression ratio (raw / sent; 1.0 when nothing was sent)."""
        return self.raw_bytes / self.sent_bytes if self.sent_bytes else 1.0


Progress = Callable[[SyncReport], None]


class EdgeSync:
    """Uploads one edge store to one central `moat sync-server`.

    Args:
        db: the edge store.
        url: the central side's base URL (`http://central:8477`).
        max_kbps: bandwidth cap in kilobits per second (None: unlimited).
        batch_rows: rows per batch.
        codec: `zstd` (gzip when `zstandard` is missing) or `gzip`.
        patience_s: give up after this long without an acknowledged batch.
        backoff_s: the first retry's pause ceiling and the largest (doubling between).
        token: a bearer token the central side requires (`MOAT_SYNC_TOKEN`).
        transport: an httpx transport (tests pass an in-process app).
        progress: called after every acknowledged batch.
    """

    def __init__(
        self,
        db: str | Path,
        url: str,
        *,
        max_kbps: float | None = None,
        batch_rows: int = 500,
        codec: str = "zstd",
        patience_s: float = 600.0,
        backoff_s: tuple[float, float] = (_BACKOFF_BASE_S, _BACKOFF_CAP_S),
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.db = Path(db)
        self.url = url.rstrip("/")
        self.bucket = TokenBucket.from_kbps(max_kbps) if max_kbps else None
        self.batch_rows = batch_rows
        self.codec = codec_name(codec)
        self.patience_s = patience_s
        self.backoff_s = backoff_s
        self._headers = {"Content-Type": "application/json", "Content-Encoding": self.codec}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._transport = transport
        self._progress = progress
        self._rng = random.Random()
        self._target = ""

    async def run(self) -> SyncReport:
        """Upload everything the central side has not acknowledged.

        Raises:
            StoreError: the edge store cannot be opened.
            SyncError: the central side refused a batch, or stayed unreachable for
                `patience_s` (what was acknowledged before stays acknowledged).
        """
        conn = connect(self.db, existing=True)
        started = time.monotonic()
        try:
            check_version(conn, self.db)
            report = SyncReport(codec=self.codec)
            report.origin = await anyio.to_thread.run_sync(sync_ops.origin_id, conn, self.db)
            async with httpx.AsyncClient(transport=self._transport, timeout=60.0) as client:
                report.central = self._target = await self._central_id(client, report)
                own = await anyio.to_thread.run_sync(sync_ops.central_id_of, conn)
                if own == report.central:  # it would wait on its own write lock forever
                    raise SpecError(
                        f"{self.db}: {self.url} serves this very store; sync an edge's "
                        "store to a central one (--db names the edge's)"
                    )
                for spec in sync_ops.SYNC_TABLES:
                    await self._table(client, conn, spec, report)
        finally:
            conn.close()
        report.seconds = time.monotonic() - started
        return report

    async def _table(
        self,
        client: httpx.AsyncClient,
        conn: sqlite3.Connection,
        spec: sync_ops.SyncTable,
        report: SyncReport,
    ) -> None:
        report.rows.setdefault(spec.name, 0)
        while True:
            batch = await anyio.to_thread.run_sync(self._read, conn, spec)
            if batch.held and spec.name not in report.waiting:
                report.waiting.append(spec.name)
            if not batch.acks_anything:
                return
            if batch.rows:
                body, raw = encode_batch(
                    report.origin, spec.name, batch.columns, batch.rows, self.codec
                )
                await self._post(client, body, spec.name, report)
                report.batches += 1
                report.raw_bytes += raw
                report.sent_bytes += len(body)
            try:
                await anyio.to_thread.run_sync(sync_ops.ack, conn, self.db, self._target, batch)
            except StoreError as exc:  # the upload ran: a failure of it, not of the command line
                raise SyncError(str(exc)) from exc
            report.rows[spec.name] += len(batch.rows)
            report.skipped += batch.skipped
            if self._progress is not None:
                self._progress(report)
            if batch.held:
                return

    def _read(self, conn: sqlite3.Connection, spec: sync_ops.SyncTable) -> sync_ops.Batch:
        if spec.mutable:
            acked = sync_ops.acked_digests(conn, self._target, spec.name)
            return sync_ops.read_changed(conn, spec.name, acked, self.batch_rows)
        after = sync_ops.watermark(conn, self._target, spec.name)
        upto = sync_ops.watermark(conn, self._target, "requests") if spec.per_request else None
        return sync_ops.read_appended(conn, spec.name, after, self.batch_rows, upto)

    async def _central_id(self, client: httpx.AsyncClient, report: SyncReport) -> str:
        """The central store's id, asked until the central side answers."""
        found: list[str] = []

        async def ask() -> str | None:
            try:
                response = await self._fetch(client, "GET", HEALTH_PATH)
            except _UNANSWERED as exc:
                return _transport_problem(exc)
            if response.status_code != 200:
                return self._status_problem(response, "the health check")
            central = _json(response).get("central")
            if not isinstance(central, str) or not central.isalnum():
                raise SyncError(
                    f"{self.url}{HEALTH_PATH}: not a `moat sync-server` (it answered "
                    f"{_shown(response)}); give --to the URL `moat sync-server` printed"
                )
            found.append(central)
            return None

        await self._until_done(ask, report)
        return found[0]

    async def _post(
        self, client: httpx.AsyncClient, body: bytes, table: str, report: SyncReport
    ) -> None:
        """Post one batch until it is acknowledged."""

        async def send() -> str | None:
            if self.bucket is not None:  # every attempt goes out within the cap, resent too
                report.throttled_s += await self.bucket.take(len(body) + HTTP_OVERHEAD)
            try:
                response = await self._fetch(client, "POST", BATCH_PATH, body)
            except _UNANSWERED as exc:
                return _transport_problem(exc)
            if response.status_code != 200:
                return self._status_problem(response, f"a batch of `{table}`")
            stored = _json(response).get("stored")
            if type(stored) is not int or stored < 0:  # a proxy's page, say
                raise SyncError(
                    f"{self.url}{BATCH_PATH}: a batch of `{table}` was answered "
                    f"{_shown(response)}, not with what a `moat sync-server` stored; nothing "
                    "more is marked as sent: check that --to reaches the sync server itself"
                )
            return None

        await self._until_done(send, report)

    async def _fetch(
        self, client: httpx.AsyncClient, method: str, path: str, body: bytes | None = None
    ) -> httpx.Response:
        """The answer to one request, its body read up to `MAX_ANSWER_BYTES` (the rest is
        left unread and the connection closed)."""
        async with client.stream(
            method, self.url + path, content=body, headers=self._headers
        ) as response:
            read = bytearray()
            async for chunk in response.aiter_bytes():
                read += chunk
                if len(read) > MAX_ANSWER_BYTES:
                    del read[MAX_ANSWER_BYTES:]
                    break
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in _BODY_FRAMING
        ]
        return httpx.Response(
            response.status_code, headers=headers, content=bytes(read), request=response.request
        )

    async def _until_done(
        self, attempt: Callable[[], Awaitable[str | None]], report: SyncReport
    ) -> None:
        """Run `attempt` until it returns None (done), sleeping with exponential backoff and
        full jitter after each problem it returns, for at most `patience_s`."""
        give_up_at = time.monotonic() + self.patience_s
        tries = 0
        while True:
            # one request waits no longer than the patience left (a hung server included)
            with anyio.move_on_after(max(0.0, give_up_at - time.monotonic())) as waited:
                problem = await attempt()
            if waited.cancelled_caught:  # (the patience is spent: given up below)
                problem = "no answer in time"
            if problem is None:
                return
            base, cap = self.backoff_s
            delay = self._rng.uniform(0, min(cap, base * 2**tries))
            if time.monotonic() + delay >= give_up_at:
                raise SyncError(
                    f"{self.url}: unreachable for {self.patience_s:g}s ({problem}); what was "
                    f"acknowledged is kept: rerun `moat sync --to {self.url}` to resume"
                )
            _log.info("sync.retry", problem=problem, attempt=tries + 1, delay_s=round(delay, 2))
            report.retries += 1
            tries += 1
            await anyio.sleep(delay)

    def _status_problem(self, response: httpx.Response, what: str) -> str:
        """Why a non-200 answer should be retried.

        Raises:
            SyncError: the central side refuses (a 4xx other than 408, 425, 429).
        """
        if response.status_code in _RETRY_STATUS:
            return _shown(response)
        if response.is_redirect:
            raise SyncError(
                f"{self.url}: {what} was redirected (HTTP {response.status_code}) to "
                f"{response.headers.get('location', '(nowhere)')!r}; moat sync follows no "
                "redirect: give --to the sync server's own URL"
            )
        raise SyncError(f"{self.url}: the central side refused {what} ({_shown(response)})")


_UNANSWERED = (httpx.TransportError, httpx.DecodingError)
"""No answer, or one that cannot be read (a body that is not the encoding it claims):
the batch may or may not be stored, so it is sent again."""
_BODY_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})
"""Headers of the body as it came, which the body as read no longer has."""


def _transport_problem(exc: Exception) -> str:
    text = printable(str(exc)[:300])
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _json(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object ({} for any other answer)."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return {}
    try:
        found = response.json()
    except ValueError:  # not JSON, or not UTF-8
        return {}
    return found if isinstance(found, dict) else {}


def _shown(response: httpx.Response) -> str:
    """`HTTP 503: the server's reason` (its `error`, else the start of its text)."""
    error = _json(response).get("error")
    detail = error if isinstance(error, str) else " ".join(response.text.split())
    detail = printable(detail[:300]) or "(no body)"  # (it may hold terminal escapes)
    return f"HTTP {response.status_code}: {detail}"
