"""`moat sync` against central sides that misbehave: what it says, and what it keeps to."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx2
import pytest

from engine.errors import SyncError
from engine.store import schema
from engine.store.sync_ops import origin_id
from engine.sync import EdgeSync
from engine.sync.client import HTTP_OVERHEAD, MAX_ANSWER_BYTES
from tests.support.edge_stores import edge_store

pytestmark = pytest.mark.anyio

URL = "http://central.test"
HEALTHY = httpx2.Response(200, json={"ok": True, "central": "c0ffee"})

JSON, HTML = "application/json", "text/html"

Handler = Callable[[httpx2.Request], httpx2.Response]


@pytest.fixture(scope="module")
def one_edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return edge_store(tmp_path_factory.mktemp("edge"), "edge")


def edge(db: Path, handler: Handler, **kwargs: object) -> EdgeSync:
    transport = httpx2.MockTransport(handler)
    return EdgeSync(db, URL, transport=transport, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "answer",
    [
        httpx2.Response(200, json=["central"]),
        httpx2.Response(200, content=b"{not json", headers={"content-type": JSON}),
        httpx2.Response(200, content=b"<html>a portal</html>", headers={"content-type": HTML}),
    ],
    ids=["json-list", "broken-json", "html"],
)
async def test_a_health_answer_of_something_else_says_it_is_no_sync_server(
    one_edge: Path, tmp_path: Path, answer: httpx2.Response
) -> None:
    """A JSON answer that was not an object was an AttributeError, broken JSON a
    JSONDecodeError: `moat: internal error`."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    with pytest.raises(SyncError, match=r"/v1/sync/health: not a `moat sync-server` \(it answ"):
        await edge(db, lambda request: answer).run()


async def test_a_redirect_says_where_it_points(one_edge: Path, tmp_path: Path) -> None:
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    moved = httpx2.Response(301, headers={"location": "https://central.test/v1/sync/health"})
    with pytest.raises(
        SyncError,
        match=r"the health check was redirected \(HTTP 301\) to 'https://central\.test/v1/sync/h"
        r"ealth'; moat sync follows no redirect: give --to the sync server's own URL",
    ):
        await edge(db, lambda request: moved).run()


async def test_giving_up_says_what_the_central_side_said_last(
    one_edge: Path, tmp_path: Path
) -> None:
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)

    def busy(request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET":
            return HEALTHY
        return httpx2.Response(503, json={"error": "the central store is busy: try later"})

    with pytest.raises(
        SyncError, match=r"unreachable for 0\.3s \(HTTP 503: the central store is busy: try later\)"
    ):
        await edge(db, busy, patience_s=0.3, backoff_s=(0.01, 0.05)).run()


async def test_a_batch_sent_again_stays_within_the_bandwidth_cap(
    one_edge: Path, tmp_path: Path
) -> None:
    """Every batch is refused once (503) and sent again: only first sends waited for the
    token bucket, so resent bytes went out on top of the cap."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    sent: list[int] = []

    def once_busy(request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET":
            return HEALTHY
        sent.append(len(request.content) + HTTP_OVERHEAD)
        return httpx2.Response(503 if len(sent) % 2 else 200, json={"stored": 1})

    started = time.monotonic()
    report = await edge(db, once_busy, max_kbps=800, backoff_s=(0.001, 0.001)).run()
    elapsed = time.monotonic() - started
    assert report.retries == report.batches == len(sent) // 2
    rate = 800 * 1000 / 8
    assert sum(sent) / elapsed <= rate * 1.05


async def test_a_batch_answered_200_by_something_else_is_not_marked_as_sent(
    one_edge: Path, tmp_path: Path
) -> None:
    """A proxy answering every POST with its own 200 page: the edge advanced its
    watermarks, and the rows never reached a central store."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)

    def proxy(request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET":
            return HEALTHY
        return httpx2.Response(200, content=b"<html>OK</html>", headers={"content-type": HTML})

    with pytest.raises(
        SyncError, match=r"a batch of `policy_snapshots` was answered HTTP 200: <html>OK</html>, "
    ):
        await edge(db, proxy).run()
    with sqlite3.connect(db) as conn:
        marks = conn.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'sync.%.%'").fetchone()[0]
    assert marks == 0


async def test_an_edge_store_another_process_holds_says_so_and_resends_later(
    one_edge: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`moat prune --vacuum` on the box while cron runs `moat sync`: recording an
    acknowledged batch waited out its patience and ended in `moat: internal error:
    OperationalError: database is locked`. It is a `SyncError` (exit 1, as any upload that
    stopped), not a `StoreError`, which `moat` answers with exit 2, "nothing was run"."""
    monkeypatch.setattr(schema, "WRITE_PATIENCE_S", 0.2)
    monkeypatch.setattr(schema, "_BUSY_TIMEOUT_MS", 20)
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    with sqlite3.connect(db, isolation_level=None) as conn:
        origin_id(conn, db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    posted: list[bytes] = []

    def central(request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET":
            return HEALTHY
        posted.append(request.content)
        return httpx2.Response(200, json={"stored": 1})

    try:
        with pytest.raises(
            SyncError,
            match=r"the central side stored a batch of `policy_snapshots`, but this store could "
            r"not record it: database is locked: another process held the write lock",
        ):
            await edge(db, central).run()
    finally:
        holder.close()
    report = await edge(db, central).run()
    assert report.rows["policy_snapshots"] == 1  # sent again, as nothing recorded it
    assert len(posted) == report.batches + 1


async def test_a_server_that_never_answers_is_given_up_on_after_the_patience(
    one_edge: Path, tmp_path: Path
) -> None:
    """Each request waited up to a minute whatever `--patience` said: `--patience 3`
    against a hung server gave up after a minute, not three seconds."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)

    async def hung(request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET":
            return HEALTHY
        await anyio.sleep(60)
        return HEALTHY

    started = time.monotonic()
    with pytest.raises(SyncError, match=r"unreachable for 0\.3s \(no answer in time\)"):
        await edge(db, hung, patience_s=0.3, backoff_s=(0.01, 0.05)).run()
    assert time.monotonic() - started < 5


async def test_an_answer_that_is_not_the_encoding_it_claims_is_retried_then_named(
    one_edge: Path, tmp_path: Path
) -> None:
    """A proxy's answer saying gzip that is none was `moat: internal error: DecodingError`."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)

    async def not_gzip() -> AsyncIterator[bytes]:
        yield b"abcde"

    def garbled(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=not_gzip(), headers={"content-encoding": "gzip"})

    with pytest.raises(SyncError, match=r"unreachable for 0\.3s \(DecodingError: "):
        await edge(db, garbled, patience_s=0.3, backoff_s=(0.01, 0.05)).run()


async def test_an_answer_without_end_is_read_no_further_than_a_bound(
    one_edge: Path, tmp_path: Path
) -> None:
    """A peer answering 500 with a body that never ends: the edge read all of it into
    memory (900 MB in eight seconds on loopback) for as long as `--patience` lasted."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    served = [0]

    async def endless() -> AsyncIterator[bytes]:
        while True:
            served[0] += 1 << 16
            yield b"x" * (1 << 16)

    def flood(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(500, content=endless())

    with pytest.raises(SyncError, match=r"unreachable for 0\.3s \(HTTP 500: xxxx"):
        await edge(db, flood, patience_s=0.3, backoff_s=(0.01, 0.05)).run()
    tries = served[0] // MAX_ANSWER_BYTES
    assert tries > 0 and served[0] <= tries * (MAX_ANSWER_BYTES + (1 << 16))


@pytest.mark.parametrize("where", ["health", "batch"])
async def test_what_a_peer_answers_cannot_drive_the_terminal(
    where: str, one_edge: Path, tmp_path: Path
) -> None:
    """A peer's answer is quoted in the error: its escape sequences reached the terminal."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    hostile = "\x1b]0;owned\x07\x1b[2J refused"

    def answer(request: httpx2.Request) -> httpx2.Response:
        if where == "batch" and request.method == "GET":
            return HEALTHY
        return httpx2.Response(403, json={"error": hostile})

    with pytest.raises(SyncError) as caught:
        await edge(db, answer).run()
    assert "\x1b" not in str(caught.value) and "\x07" not in str(caught.value)
    assert r"HTTP 403: \x1b]0;owned\x07\x1b[2J refused" in str(caught.value)


@pytest.mark.parametrize("stored", [-1, True, 1.5, "3"])
async def test_an_acknowledgement_that_is_no_count_marks_nothing_sent(
    stored: object, one_edge: Path, tmp_path: Path
) -> None:
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)

    def odd(request: httpx2.Request) -> httpx2.Response:
        return HEALTHY if request.method == "GET" else httpx2.Response(200, json={"stored": stored})

    with pytest.raises(SyncError, match=r"not with what a `moat sync-server` stored"):
        await edge(db, odd).run()
    with sqlite3.connect(db) as conn:
        marks = conn.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'sync.%.%'").fetchone()[0]
    assert marks == 0
