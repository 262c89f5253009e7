"""`moat sync` while `moat run` writes the store, and after a run was cut short: only whole
requests reach the central store, and a request answered again by `--resume` is there once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
from pathlib import Path

import anyio
import httpx2
import pytest

from engine.cli import main
from engine.store.sync_ops import SYNC_TABLES
from engine.sync import EdgeSync, SyncReport
from engine.sync.server import SyncServer
from tests.support.edge_stores import counts, edge_store, fingerprint, integrity

URL = "http://central.test"
PER_REQUEST = [t.name for t in SYNC_TABLES if t.per_request]


@pytest.fixture(scope="module")
def one_edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return edge_store(tmp_path_factory.mktemp("edge"), "edge")


def sync(db: Path, server: SyncServer) -> SyncReport:
    transport = httpx2.ASGITransport(app=server.app)
    return anyio.run(EdgeSync(db, URL, transport=transport, batch_rows=50).run)


def rows_of(db: Path, request_id: str) -> dict[str, int]:
    """How many rows of each per-request table `request_id` has."""
    with sqlite3.connect(db) as conn:
        return {
            table: conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE request_id = ?", (request_id,)
            ).fetchone()[0]
            for table in PER_REQUEST
        }


def take_requests_row(db: Path, seq: int) -> tuple[str, list[object]]:
    """Delete the `requests` row of the run's request `seq`, as if it were still being
    answered (or had been cut short): its node runs, calls and events are stored, its
    `requests` row, written last, is not. Returns its id and the row."""
    with sqlite3.connect(db) as conn:
        row = list(conn.execute("SELECT * FROM requests WHERE seq = ?", (seq,)).fetchone())
        conn.execute("DELETE FROM requests WHERE seq = ?", (seq,))
    return str(row[0]), row


def set_run(db: Path, status: str, *, owned: bool) -> str:
    """Set the run's status; `owned`: this (live) process writes it."""
    with sqlite3.connect(db) as conn:
        run_id, config = conn.execute("SELECT id, config_json FROM runs").fetchone()
        config = json.loads(config)
        if owned:
            config["owner"] = {"pid": os.getpid(), "host": socket.gethostname()}
        conn.execute(
            "UPDATE runs SET status = ?, config_json = ? WHERE id = ?",
            (status, json.dumps(config), run_id),
        )
    return str(run_id)


def synced_rows(db: Path) -> dict[str, object]:
    return {t.name: fingerprint(db, t.name, ("id",) if t.key == "int" else ()) for t in SYNC_TABLES}


def test_rows_of_a_request_still_being_answered_wait_until_it_is_stored(
    one_edge: Path, tmp_path: Path
) -> None:
    """A sync during a run read the node runs and events of requests in flight (the writer
    commits a request's `requests` row last, after its other rows): the central store held
    half requests, and for good if the run was then cut short."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    set_run(db, "running", owned=True)
    request_id, row = take_requests_row(db, 3)
    assert sum(rows_of(db, request_id).values()) > 0
    central_db = tmp_path / "central.db"
    server = SyncServer(central_db)
    server.open()
    try:
        first = sync(db, server)
        assert sum(rows_of(central_db, request_id).values()) == 0  # none of it, yet
        assert first.waiting and set(first.waiting) <= set(PER_REQUEST)
        with sqlite3.connect(db) as conn:  # the request finishes, then its run
            conn.execute(f"INSERT INTO requests VALUES ({', '.join('?' * len(row))})", row)
        set_run(db, "finished", owned=False)
        second = sync(db, server)
        third = sync(db, server)
    finally:
        server.close()
    assert second.waiting == [] and third.total_rows == 0
    assert rows_of(central_db, request_id) == rows_of(db, request_id)
    assert counts(central_db) == counts(db)
    assert synced_rows(central_db) == synced_rows(db)
    assert integrity(central_db) == "ok"


def test_a_request_cut_short_is_not_sent_and_once_resumed_arrives_once(
    one_edge: Path, tmp_path: Path
) -> None:
    """Ctrl-C on `moat run`, a sync, `moat run --resume`, a sync: the central store kept
    the interrupted attempt's rows of a request beside those of its rerun."""
    db = tmp_path / "edge.db"
    shutil.copy(one_edge, db)
    run_id = set_run(db, "interrupted", owned=False)
    request_id, _ = take_requests_row(db, 3)
    cut = sum(rows_of(db, request_id).values())
    central_db = tmp_path / "central.db"
    server = SyncServer(central_db)
    server.open()
    try:
        first = sync(db, server)
        assert first.skipped == cut and first.waiting == []
        assert sum(rows_of(central_db, request_id).values()) == 0
        graph = one_edge.with_name("governed-answer.yaml")
        requests = one_edge.with_name("edge.jsonl")
        resume = ["run", str(graph), "--input", str(requests), "--db", str(db), "--resume", run_id]
        assert main([*resume, "--out", os.devnull]) == 0
        second = sync(db, server)
    finally:
        server.close()
    assert second.skipped == 0
    assert rows_of(central_db, request_id) == rows_of(db, request_id)
    assert counts(central_db) == counts(db)
    assert synced_rows(central_db) == synced_rows(db)
    assert integrity(central_db) == "ok"
