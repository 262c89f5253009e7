"""`moat sync-server` under careless and hostile clients: each gets an error in the server's
shape (`{"error": ...}`) that says what is wrong, one client's upload neither corrupts nor
blocks another's, and the server goes on serving."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx2
import pytest
import zstandard

from engine.errors import StoreError
from engine.store import schema
from engine.sync import EdgeSync, encode_batch
from engine.sync.server import GRACE_S, SyncServer
from tests.support.edge_stores import SyncServerProcess, counts, edge_store, listening

pytestmark = pytest.mark.anyio

RUN_COLUMNS = ["id", "graph_name", "graph_hash", "started_at", "status"]
BATCH = b'{"v":1,"origin":"ab","table":"%s","columns":%s,"rows":[%s]}'
POST = b"POST /v1/sync/batch HTTP/1.1\r\nHost: c\r\n"


@pytest.fixture(scope="module")
def one_edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return edge_store(tmp_path_factory.mktemp("edge"), "edge")


def zstd(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(raw)


def run_row(run_id: object, graph: str) -> list[object]:
    return [run_id, graph, "h", 1.0, "succeeded"]


async def post(web: httpx2.AsyncClient, origin: str, table: str, cols: list[str], rows: Any) -> Any:
    body, _ = encode_batch(origin, table, cols, rows)
    return await web.post("/v1/sync/batch", content=body, headers={"Content-Encoding": "zstd"})


@pytest.fixture
def central(tmp_path: Path) -> Iterator[SyncServer]:
    server = SyncServer(tmp_path / "central.db")
    server.open()
    try:
        yield server
    finally:
        server.close()


def web(server: SyncServer) -> httpx2.AsyncClient:
    transport = httpx2.ASGITransport(app=server.app)
    return httpx2.AsyncClient(transport=transport, base_url="http://central.test")


def exchange(url: str, *parts: bytes, pause_s: float = 0.0) -> bytes:
    """Send `parts` on one connection (`pause_s` between them, stopping once the server
    closes it) and read what it answers until it closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as conn:
        try:
            for part in parts:
                conn.sendall(part)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed before the rest: what it said is still there
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (BATCH % (b"runs", b'["id"]', b'[{"a": 1}]'), "a JSON object"),
        (BATCH % (b"runs", b'["id"]', b'["\\ud800"]'), "a lone surrogate"),
        (b"[" * 50_000 + b"]" * 50_000, "nests too deeply"),
        (BATCH % (b"node_runs", b'["status"]', b'["x"]'), "the rows lack id"),
        (BATCH % (b"node_runs", b'["id"]', b"[1]"), "no column of this store's but `id`"),
    ],
    ids=["object", "surrogate", "deep", "no-key", "only-key"],
)
async def test_a_batch_no_store_can_hold_is_a_400_and_the_server_goes_on(
    one_edge: Path, tmp_path: Path, raw: bytes, message: str
) -> None:
    """Each of these was a plain-text 500, which `moat sync` retries for its whole patience."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    with listening(SyncServer(tmp_path / "central.db")) as url:
        async with httpx2.AsyncClient(base_url=url) as web:
            bad = await web.post(
                "/v1/sync/batch", content=zstd(raw), headers={"Content-Encoding": "zstd"}
            )
        report = await EdgeSync(db, url).run()
    assert bad.status_code == 400
    assert message in bad.json()["error"]
    assert report.total_rows == sum(counts(db).values())


async def test_an_unknown_path_or_method_is_answered_in_the_servers_shape(
    central: SyncServer,
) -> None:
    async with web(central) as client:
        missing = await client.post("/v1/sync/batches", content=b"")
        wrong = await client.get("/v1/sync/batch")
        slash = await client.get("/v1/sync/health/")
    assert (missing.status_code, wrong.status_code, slash.status_code) == (404, 405, 404)
    assert missing.json()["error"] == (
        "POST /v1/sync/batches: Not Found; a `moat sync-server` answers POST /v1/sync/batch "
        "and GET /v1/sync/health"
    )
    assert wrong.json()["error"].startswith("GET /v1/sync/batch: Method Not Allowed; ")


async def test_a_key_another_origin_sent_qualified_does_not_lock_this_origin_out(
    central: SyncServer,
) -> None:
    """Origin B names a run as A's clash would be renamed (`run1@aaaa`; a central store
    syncing on to another one sends such ids): A's clash then takes the next free name,
    rather than a 400 on every upload of A from then on."""
    async with web(central) as client:
        await post(client, "cccc", "runs", RUN_COLUMNS, [run_row("run1", "C's")])
        await post(client, "bbbb", "runs", RUN_COLUMNS, [run_row("run1@aaaa", "B's")])
        clash = await post(client, "aaaa", "runs", RUN_COLUMNS, [run_row("run1", "A's")])
        again = await post(client, "aaaa", "runs", RUN_COLUMNS, [run_row("run1", "A's")])
    assert clash.status_code == again.status_code == 200
    assert (clash.json()["stored"], again.json()["updated"]) == (1, 1)
    with sqlite3.connect(central.db) as conn:
        runs = dict(conn.execute("SELECT id, graph_name FROM runs"))
    assert runs == {"run1": "C's", "run1@aaaa": "B's", "run1@aaaa.2": "A's"}


@pytest.mark.parametrize("key", [5, ""], ids=["integer", "empty"])
async def test_a_key_that_is_not_a_string_is_refused_not_shared_between_origins(
    central: SyncServer, key: object
) -> None:
    """Such a key is not qualified per origin: B's row overwrote A's."""
    async with web(central) as client:
        first = await post(client, "aaaa", "runs", RUN_COLUMNS, [run_row(key, "A's")])
        second = await post(client, "bbbb", "runs", RUN_COLUMNS, [run_row(key, "B's")])
    assert first.status_code == second.status_code == 400
    assert f"rows[0]: `id` is {key!r}; it must be a non-empty string" in second.json()["error"]
    with sqlite3.connect(central.db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


async def test_a_reference_that_is_not_a_string_is_refused(central: SyncServer) -> None:
    """An integer `request_id` is not qualified per origin either: it would join this
    origin's node runs to the request another origin stored as `5`."""
    cols = ["id", "request_id", "node", "node_type", "cycle", "status", "speculative"]
    cols += ["outcome", "started_at", "duration_ms", "attempts", "error"]
    row = [1, 5, "n", "model", 0, "succeeded", 0, "used", 1.0, 2.0, 1, None]
    async with web(central) as client:
        answer = await post(client, "aaaa", "node_runs", cols, [row])
    assert answer.status_code == 400
    assert "`request_id` is 5; it must be a string or null" in answer.json()["error"]


async def test_a_body_over_the_limit_is_a_413_before_it_has_all_come(tmp_path: Path) -> None:
    """Chunked, with no Content-Length: the server read until the end, however far."""
    head = POST + b"Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (32 << 10, b"x" * (32 << 10))
    with listening(SyncServer(tmp_path / "central.db", max_body_bytes=64 << 10)) as url:
        # three chunks and no last one: only a server that stops at the limit answers
        answer = await anyio.to_thread.run_sync(exchange, url, head, chunk, chunk, chunk)
        declared = await anyio.to_thread.run_sync(
            exchange, url, POST + b"Content-Length: 1000000\r\n\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"error":"the batch is over 65536 bytes, the most this side reads; send sm' in answer
    assert declared.startswith(b"HTTP/1.1 413 ")
    assert b'"error":"the batch is 1000000 bytes, over the 65536 this side reads; send' in declared


async def test_a_head_of_megabytes_of_headers_is_refused_before_it_ends(tmp_path: Path) -> None:
    """uvicorn's httptools parser took any number of headers of any length, each kept."""
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 90) for i in range(50_000))
    head = b"GET /v1/sync/health HTTP/1.1\r\nHost: c\r\n" + fields + b"\r\n"
    parts = [head[i : i + (64 << 10)] for i in range(0, len(head), 64 << 10)]
    with listening(SyncServer(tmp_path / "central.db")) as url:
        answer = await anyio.to_thread.run_sync(exchange, url, *parts)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"].startswith(
        "the request is not HTTP/1.1 this server reads"
    )


@pytest.mark.parametrize(
    "raw",
    [b"hello\r\n\r\n", b"GET / HTTP/1.1\r\nHost c\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00"],
    ids=["not HTTP", "a header without a colon", "TLS"],
)
async def test_what_the_parser_refuses_is_answered_in_the_servers_shape(
    tmp_path: Path, raw: bytes
) -> None:
    """h11's refusals were plain text, where every other error is `{"error": ...}`."""
    with listening(SyncServer(tmp_path / "central.db")) as url:
        answer = await anyio.to_thread.run_sync(exchange, url, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert b"connection: close" in head.lower()
    message = json.loads(body)["error"]
    assert "GET /v1/sync/health" in message  # what this server does answer


@pytest.mark.parametrize(
    ("parts", "pause_s"),
    [
        ([], 0.0),
        ([b"POST /v1/sync/ba"], 0.0),
        ([bytes([c]) for c in POST], 0.2),  # a byte at a time, never a whole head in time
        ([b"GET /v1/sync/health HTTP/1.1\r\nHost: c\r\n\r\n"], 0.0),  # then nothing more
    ],
    ids=["silent", "half a head", "trickled head", "idle after an answer"],
)
async def test_a_connection_that_never_sends_a_whole_request_is_closed_and_others_go_on(
    one_edge: Path, tmp_path: Path, parts: list[bytes], pause_s: float
) -> None:
    """uvicorn reads a request head without a timeout: a client that connected and sent
    nothing, or half a head, or a head a byte at a time, held its connection for ever."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    with listening(SyncServer(tmp_path / "central.db", read_idle_s=1.0)) as url:
        result: list[bytes] = []
        started = time.monotonic()
        held = threading.Thread(
            target=lambda: result.append(exchange(url, *parts, pause_s=pause_s))
        )
        held.start()
        report = await EdgeSync(db, url).run()  # while that one waits
        await anyio.to_thread.run_sync(held.join, 15)
        closed_after = time.monotonic() - started
    assert not held.is_alive()
    assert report.total_rows == sum(counts(db).values())
    assert closed_after < 8
    (answer,) = result
    assert answer.count(b"HTTP/1.1 ") <= 1  # nothing but the answer it asked for


async def test_a_body_that_stops_coming_is_a_408_and_others_go_on(
    one_edge: Path, tmp_path: Path
) -> None:
    """A Content-Length larger than the body (or a client gone quiet) held the request,
    and its connection, for as long as the client kept the connection open."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    lying = POST + b"Content-Length: 100\r\n\r\n{}"
    with listening(SyncServer(tmp_path / "central.db", read_idle_s=1.0)) as url:
        result: list[bytes] = []
        started = time.monotonic()
        stalled = threading.Thread(target=lambda: result.append(exchange(url, lying)))
        stalled.start()
        report = await EdgeSync(db, url).run()  # while that one waits
        await anyio.to_thread.run_sync(stalled.join, 15)
    assert report.total_rows == sum(counts(db).values())
    (answer,) = result
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"nothing of the batch came for 1s after 2 bytes" in answer
    assert time.monotonic() - started < 10


async def test_a_store_another_process_holds_is_a_503_and_the_edge_resends_later(
    one_edge: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`moat prune --vacuum` on the central store, say: the merge waited out its patience
    and failed with a plain-text 500."""
    monkeypatch.setattr(schema, "WRITE_PATIENCE_S", 0.2)
    monkeypatch.setattr(schema, "_BUSY_TIMEOUT_MS", 20)
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    central_db = tmp_path / "central.db"
    with listening(SyncServer(central_db)) as url:
        holder = sqlite3.connect(central_db, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        async with httpx2.AsyncClient(base_url=url) as client:
            busy = await post(client, "aaaa", "runs", RUN_COLUMNS, [run_row("r", "g")])
        threading.Timer(1.0, holder.execute, ("ROLLBACK",)).start()
        report = await EdgeSync(db, url, backoff_s=(0.1, 0.3), patience_s=30).run()
    holder.close()
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "30"
    assert busy.json()["error"].startswith("the central store is busy: another process has held")
    assert report.retries >= 1
    assert counts(central_db) == counts(db)


def test_a_store_another_process_holds_at_start_is_an_error_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was `moat: internal error: OperationalError: database is locked`."""
    monkeypatch.setattr(schema, "WRITE_PATIENCE_S", 0.2)
    monkeypatch.setattr(schema, "_BUSY_TIMEOUT_MS", 20)
    db = tmp_path / "central.db"
    made = SyncServer(db)
    made.open()
    made.close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # `moat prune --vacuum`, say
    try:
        with pytest.raises(StoreError, match="cannot serve this store: database is locked: ano"):
            SyncServer(db).open()
    finally:
        holder.close()


def test_a_stop_as_soon_as_the_server_is_ready_stops_it(tmp_path: Path) -> None:
    """Between the ready line and uvicorn's own handlers, SIGTERM met a handler that did
    nothing: the server went on serving."""
    server = SyncServerProcess(tmp_path / "central.db")
    server.proc.terminate()
    try:
        assert server.proc.wait(timeout=8) == 0
    finally:
        server.stop()


@pytest.mark.slow  # the grace period
def test_a_body_trickling_in_does_not_keep_the_server_from_stopping(tmp_path: Path) -> None:
    """A byte a second never stalls for `READ_IDLE_S`: uvicorn waited for the request to
    end, so SIGTERM left the server running for as long as the client liked."""
    server = SyncServerProcess(tmp_path / "central.db")
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as conn:
        conn.sendall(POST + b"Content-Length: 100000\r\n\r\n{")
        time.sleep(0.5)  # the request under way
        started = time.monotonic()
        server.proc.terminate()
        while server.proc.poll() is None and time.monotonic() - started < GRACE_S + 20:
            with contextlib.suppress(OSError):
                conn.sendall(b" ")
            time.sleep(0.5)
    stopped = server.proc.poll() is not None
    server.stop()
    assert stopped
    assert time.monotonic() - started < GRACE_S + 10
