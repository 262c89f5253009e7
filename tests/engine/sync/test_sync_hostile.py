"""`moat sync-server` under careless and hostile clients: each gets an error in the server's
shape (`{"error": ...}`) that says what is wrong, one client's upload neither corrupts nor
blocks another's, and the server goes on serving."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from engine.sync import encode_batch
from engine.sync.server import SyncServer

pytestmark = pytest.mark.anyio

RUN_COLUMNS = ["id", "graph_name", "graph_hash", "started_at", "status"]


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
