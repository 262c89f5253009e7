"""`moat sync` into an in-process sync server: what arrives, exactly once, from several edges."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.errors import SyncError
from engine.store.sync_ops import SYNC_TABLES
from engine.sync import EdgeSync
from engine.sync.server import SyncServer
from tests.support.edge_stores import counts, edge_store, fingerprint, integrity, run_into

pytestmark = pytest.mark.anyio

URL = "http://central.test"


@asynccontextmanager
async def central(db: Path, token: str | None = None) -> AsyncIterator[SyncServer]:
    server = SyncServer(db, token=token)
    server.open()
    try:
        yield server
    finally:
        server.close()


def edge(db: Path, server: SyncServer, **kwargs: object) -> EdgeSync:
    transport = httpx2.ASGITransport(app=server.app)
    return EdgeSync(db, URL, transport=transport, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def one_edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return edge_store(tmp_path_factory.mktemp("edge"), "edge")


async def test_a_store_arrives_whole_and_a_second_sync_sends_nothing(
    one_edge: Path, tmp_path: Path
) -> None:
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    async with central(tmp_path / "central.db") as server:
        first = await edge(db, server, batch_rows=37).run()
        second = await edge(db, server, batch_rows=37).run()
    assert first.rows == counts(db)
    assert second.total_rows == 0
    assert counts(tmp_path / "central.db") == counts(db)
    for table in SYNC_TABLES:
        skip = ("id",) if table.key == "int" else ()
        assert fingerprint(tmp_path / "central.db", table.name, skip) == fingerprint(
            db, table.name, skip
        ), table.name
    assert first.ratio > 2, "zstd shrinks the JSON of these rows"
    assert integrity(tmp_path / "central.db") == integrity(db) == "ok"


async def test_a_batch_sent_twice_is_stored_once(one_edge: Path, tmp_path: Path) -> None:
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    async with central(tmp_path / "central.db") as server:
        await edge(db, server).run()
        with sqlite3.connect(db) as conn:  # as if every acknowledgement had been lost
            conn.execute("DELETE FROM meta WHERE key LIKE 'sync.watermark.%'")
            conn.execute("DELETE FROM meta WHERE key LIKE 'sync.digests.%'")
        again = await edge(db, server).run()
    assert again.total_rows == sum(counts(db).values())
    assert counts(tmp_path / "central.db") == counts(db)


async def test_two_edges_with_clashing_ids_merge_into_one_store(
    one_edge: Path, tmp_path: Path
) -> None:
    """The second box's store is a byte copy of the first's (same run and request ids,
    same policy name): everything arrives, nothing overwrites, references follow."""
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    shutil.copy(one_edge, first)
    shutil.copy(one_edge, second)
    central_db = tmp_path / "central.db"
    async with central(central_db) as server:
        a = await edge(first, server).run()
        b = await edge(second, server).run()
    assert a.origin != b.origin
    merged = counts(central_db)
    assert merged == {name: 2 * n for name, n in counts(first).items()}
    with sqlite3.connect(central_db) as conn:
        runs = sorted(r[0] for r in conn.execute("SELECT id FROM runs"))
        (run_id,) = {r[0] for r in sqlite3.connect(first).execute("SELECT id FROM runs")}
        assert runs == [run_id, f"{run_id}@{b.origin}"]
        policies = {r[0] for r in conn.execute("SELECT name FROM policy_snapshots")}
        assert policies == {"governed-answer", f"governed-answer@{b.origin}"}
        # every event, node run and call points at a request of its own run
        for table in ("orchestration_events", "node_runs", "llm_calls", "decision_traces"):
            orphans = conn.execute(
                f"SELECT COUNT(*) FROM {table} t WHERE t.request_id != '' AND NOT EXISTS "
                "(SELECT 1 FROM requests r WHERE r.id = t.request_id)"
            ).fetchone()[0]
            assert orphans == 0, table
        mismatched = conn.execute(
            "SELECT COUNT(*) FROM orchestration_events e JOIN requests r "
            "ON r.id = e.request_id WHERE e.run_id != r.run_id"
        ).fetchone()[0]
        assert mismatched == 0
        per_run = dict(conn.execute("SELECT run_id, COUNT(*) FROM requests GROUP BY run_id"))
        assert per_run == {run_id: 10, f"{run_id}@{b.origin}": 10}
    assert integrity(central_db) == "ok"


async def test_text_the_policy_keeps_as_hashes_never_leaves(one_edge: Path, tmp_path: Path) -> None:
    db = tmp_path / "edge.db"  # the shipped policy keeps prompts and answers as hashes
    shutil.copy(one_edge, db)
    async with central(tmp_path / "central.db") as server:
        await edge(db, server).run()
    raw = (tmp_path / "central.db").read_bytes()
    for wal in tmp_path.glob("central.db-wal"):
        raw += wal.read_bytes()
    assert b"jane.doe@example.com" not in raw
    assert b"palindrome" not in raw
    with sqlite3.connect(tmp_path / "central.db") as conn:
        texts = conn.execute(
            "SELECT COUNT(*) FROM llm_calls WHERE prompt_text IS NOT NULL "
            "OR response_text IS NOT NULL"
        ).fetchone()[0]
        assert texts == 0
        assert conn.execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0] == 0


async def test_a_column_the_central_store_lacks_is_dropped_and_named(
    one_edge: Path, tmp_path: Path
) -> None:
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    with sqlite3.connect(db) as conn:  # an edge on a newer schema: one more column
        (body,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'view' AND name = 'decision_traces'"
        ).fetchone()
        select = body.split(" AS ", 1)[1]
        conn.execute("DROP VIEW decision_traces")
        conn.execute(
            "CREATE VIEW decision_traces AS "
            f"SELECT v.*, x'00ff10' AS compact_blob FROM ({select}) v"
        )
    async with central(tmp_path / "central.db") as server:
        report = await edge(db, server).run()
    assert report.rows["decision_traces"] == counts(db)["decision_traces"]
    with sqlite3.connect(tmp_path / "central.db") as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(decision_traces)")]
    assert "compact_blob" not in columns


async def test_a_wrong_token_is_refused_with_a_message(one_edge: Path, tmp_path: Path) -> None:
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    async with central(tmp_path / "central.db", token="s3cret") as server:
        with pytest.raises(SyncError, match=r"refused the health check \(HTTP 401"):
            await edge(db, server, token="wrong").run()
        report = await edge(db, server, token="s3cret").run()
    assert report.total_rows == sum(counts(db).values())


async def test_an_unreachable_central_side_gives_up_after_its_patience(
    one_edge: Path, tmp_path: Path
) -> None:
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    closed = EdgeSync(db, "http://127.0.0.1:9", patience_s=0.5)
    with pytest.raises(SyncError, match=r"unreachable for 0\.5s .*rerun `moat sync --to"):
        await closed.run()


def test_what_a_box_records_after_pruning_what_it_synced_still_arrives(
    one_edge: Path, tmp_path: Path
) -> None:
    """A prune of the newest runs hands their rowids back: SQLite numbers a new row one past
    the largest rowid left, not ever used. The next run's rows took the numbers the
    watermark had passed (never read), and the central side, which knew those ids from
    this origin, would have skipped them as sent twice."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    graph, requests = one_edge.with_name("governed-answer.yaml"), one_edge.with_name("edge.jsonl")
    server = SyncServer(tmp_path / "central.db")
    server.open()
    try:
        first = anyio.run(edge(db, server).run)
        assert main(["prune", "--keep-runs", "0", "--db", str(db)]) == 0  # all of it synced
        run_into(db, graph, requests)  # (`moat run` wants the main thread)
        new = counts(db)
        second = anyio.run(edge(db, server).run)
        third = anyio.run(edge(db, server).run)
    finally:
        server.close()
    assert second.rows["requests"] == new["requests"] == 10
    merged = counts(tmp_path / "central.db")
    for table in ("runs", "requests", "node_runs", "llm_calls", "decision_traces"):
        assert merged[table] == first.rows[table] + new[table], table
    assert third.total_rows == 0


class _LosesAnswers(httpx2.AsyncBaseTransport):
    """The central side merges every batch, but the answers of some never come back (a
    connection cut after the commit): the edge sends those batches again."""

    def __init__(self, app: object, lost: list[bool]) -> None:
        self.inner = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
        self.lost = iter(lost)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/batch") and next(self.lost, False):
            await response.aread()
            raise httpx2.ReadError("the connection was cut before the answer")
        return response


def _rows(db: Path) -> dict[str, object]:
    """Every synced table's rows, integer ids aside (the central side renumbers them)."""
    return {t.name: fingerprint(db, t.name, ("id",) if t.key == "int" else ()) for t in SYNC_TABLES}


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lost=st.lists(st.booleans(), max_size=40),
    batch_rows=st.integers(min_value=60, max_value=400),
    together=st.booleans(),
)
def test_lost_answers_and_concurrent_uploads_leave_the_central_store_as_one_clean_sync(
    one_edge: Path,
    tmp_path_factory: pytest.TempPathFactory,
    lost: list[bool],
    batch_rows: int,
    together: bool,
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    db = tmp / "edge.db"
    shutil.copy(one_edge, db)

    async def sync_all() -> None:
        async with central(tmp / "central.db") as server:

            def lossy() -> EdgeSync:
                transport = _LosesAnswers(server.app, lost)
                return EdgeSync(
                    db, URL, transport=transport, batch_rows=batch_rows, backoff_s=(0.0, 0.0)
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(lossy().run)
                if together:  # the same store uploaded twice at once (cron overlapping)
                    tg.start_soon(lossy().run)
            assert (await edge(db, server).run()).total_rows == 0  # all was acknowledged

    anyio.run(sync_all)
    assert counts(tmp / "central.db") == counts(db)
    assert _rows(tmp / "central.db") == _rows(db)
    assert integrity(tmp / "central.db") == "ok"


async def test_the_central_store_notes_when_it_first_and_last_heard_from_each_edge(
    one_edge: Path, tmp_path: Path
) -> None:
    """`sync_origins.first_seen` and `last_seen` held the index of a batch's last row (the
    merge loop reused the name of the batch's arrival time), not a time."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    before = time.time()
    async with central(tmp_path / "central.db") as server:
        report = await edge(db, server, batch_rows=37).run()
    after = time.time()
    with sqlite3.connect(tmp_path / "central.db") as conn:
        (row,) = conn.execute("SELECT * FROM sync_origins").fetchall()
    origin, first_seen, last_seen, batches, stored = row
    assert origin == report.origin
    assert before <= first_seen <= last_seen <= after
    assert (batches, stored) == (report.batches, report.total_rows)


class _StopsAt(httpx2.AsyncBaseTransport):
    """Stops the sync (cancels `scope`) at its `at`-th batch: before the central side has
    it, or after it was merged and before the answer is read (`merged`)."""

    def __init__(self, app: object, scope: anyio.CancelScope, at: int, merged: bool) -> None:
        self.inner = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
        self.scope, self.at, self.merged, self.posts = scope, at, merged, 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/batch"):
            self.posts += 1
            if self.posts == self.at:
                if self.merged:
                    await (await self.inner.handle_async_request(request)).aread()
                self.scope.cancel()
                await anyio.lowlevel.checkpoint()
        return await self.inner.handle_async_request(request)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stops=st.lists(st.tuples(st.integers(1, 12), st.booleans()), max_size=5),
    batch_rows=st.integers(min_value=40, max_value=300),
)
def test_a_sync_stopped_anywhere_any_number_of_times_stores_each_row_once(
    one_edge: Path,
    tmp_path_factory: pytest.TempPathFactory,
    stops: list[tuple[int, bool]],
    batch_rows: int,
) -> None:
    """Ctrl-C (or a kill) at any batch, before or after the central side merged it, as
    often as it comes: the next run resumes, and the central store ends with every row of
    the edge once."""
    tmp = tmp_path_factory.mktemp("stops")
    db = tmp / "edge.db"
    shutil.copy(one_edge, db)

    async def sync_all() -> None:
        async with central(tmp / "central.db") as server:
            for at, merged in stops:
                with anyio.CancelScope() as scope:
                    transport = _StopsAt(server.app, scope, at, merged)
                    await EdgeSync(db, URL, transport=transport, batch_rows=batch_rows).run()
            await edge(db, server, batch_rows=batch_rows).run()
            assert (await edge(db, server).run()).total_rows == 0

    anyio.run(sync_all)
    assert counts(tmp / "central.db") == counts(db)
    assert _rows(tmp / "central.db") == _rows(db)
    assert integrity(tmp / "central.db") == "ok"
