"""`moat serve --rotate-run PERIOD`: a long-lived server answers into a new run per graph
every period and finishes the one before once its last request is answered, so `moat
prune` can delete old requests while the server goes on."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.cli import main
from engine.serve import MoatServer
from engine.store.store import Store
from tests.engine.serve.test_serve import echo_graph, rows, settled
from tests.engine.serve.test_serve_workers import _ask as _ask_workers
from tests.support.fast_graphs import fast_copy
from tests.support.loop_probe import heartbeats_during, write_lock_held
from tests.support.serve_client import client
from tests.support.serve_process import serving


async def _ask(server: MoatServer, n: int, model: str = "echo") -> list[str]:
    ids = []
    async with client(server) as oai:
        for i in range(n):
            raw = await oai.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": f"question {i}"}]
            )
            ids.append(raw.headers["x-moat-request-id"])
    return ids


def _runs(db: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        query = "SELECT id, status, requests_done, config_json FROM runs ORDER BY rowid"
        return [dict(row) for row in conn.execute(query)]


@pytest.mark.anyio
async def test_a_rotation_moves_new_requests_to_a_new_run_and_finishes_the_one_before(
    tmp_path: Path,
) -> None:
    db = tmp_path / "moat.db"
    async with MoatServer([echo_graph(tmp_path)], db=db) as server:
        first = server.graphs["echo"].run_id
        before = await _ask(server, 3)
        runs = await server.rotate()
        after = await _ask(server, 2)
        await settled(server, "echo")
        second = runs["echo"]
        assert second != first and server.graphs["echo"].run_id == second
        stored = _runs(db)
        assert [(r["id"], r["status"], r["requests_done"]) for r in stored] == [
            (first, "finished", 3),
            (second, "running", 0),
        ]
        assert json.loads(stored[1]["config_json"])["follows"] == first
    assert before == [f"{first}-{seq:06d}" for seq in range(3)]
    assert after == [f"{second}-{seq:06d}" for seq in range(2)]  # numbered from 0 again
    by_run = rows(db, "SELECT run_id, COUNT(*) AS n FROM requests GROUP BY run_id")
    assert {r["run_id"]: r["n"] for r in by_run} == {first: 3, second: 2}
    assert [(r["status"], r["requests_done"]) for r in _runs(db)] == [
        ("finished", 3),
        ("finished", 2),  # the server's exit finishes the run it was in
    ]


@pytest.mark.anyio
async def test_a_request_in_flight_keeps_its_run_open_until_it_is_answered(
    tmp_path: Path,
) -> None:
    db = tmp_path / "moat.db"
    graph = fast_copy("baseline", tmp_path, time_scale=0.3)  # answers take a while
    async with MoatServer([graph], db=db) as server:
        first = server.graphs["baseline"].run_id
        answered: list[str] = []
        rotated: list[float] = []

        async def slow() -> None:
            answered.extend(await _ask(server, 1, "baseline"))
            answered.append(str(time.monotonic()))

        async def rotate() -> None:
            await server.rotate()
            rotated.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            while not server.graphs["baseline"].inflight.get(first):
                await anyio.sleep(0.005)
            tg.start_soon(rotate)
        request_id, at = answered
        assert request_id.startswith(first)
        assert rotated[0] >= float(at) - 0.05  # the rotation waited for it
        oldest = _runs(db)[0]
        assert (oldest["id"], oldest["status"], oldest["requests_done"]) == (first, "finished", 1)


@pytest.mark.anyio
async def test_a_server_rotates_every_period_and_prune_deletes_its_old_runs_meanwhile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "moat.db"
    async with MoatServer([echo_graph(tmp_path)], db=db, rotate_s=0.3) as server:
        for _ in range(4):
            await _ask(server, 2)
            await anyio.sleep(0.2)
        await settled(server, "echo")
        current = server.graphs["echo"].run_id
        runs = _runs(db)
        assert len(runs) >= 3
        assert {r["status"] for r in runs if r["id"] != current} == {"finished"}
        assert main(["prune", "--db", str(db), "--keep-runs", "1"]) == 0
        capsys.readouterr()
        assert [r["id"] for r in _runs(db)] == [current]
        await _ask(server, 1)  # the server goes on
    stored = rows(db, "SELECT DISTINCT run_id FROM requests")
    assert {r["run_id"] for r in stored} <= {r["id"] for r in _runs(db)}


@pytest.mark.parametrize(
    ("value", "says"),
    [("0s", "not a period"), ("1w", "not a period"), ("soon", "such as 1d, 12h, 30m or 90s")],
)
def test_a_rotation_period_that_is_not_one_says_how_to_write_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, says: str
) -> None:
    graph = str(echo_graph(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main(["serve", graph, "--port", "0", "--rotate-run", value])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_rotation_on_ray_is_refused_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = str(echo_graph(tmp_path))
    assert main(["serve", graph, "--port", "0", "--rotate-run", "1d", "--ray"]) == 2
    assert "drop --rotate-run" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT")
@pytest.mark.slow  # ~7 s: three rotations
def test_workers_follow_their_parent_into_each_new_run(tmp_path: Path) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "moat.db"
    ids: list[str] = []
    args = (str(graph), "--db", str(db), "--workers", "2", "--rotate-run", "2s")
    with serving(*args) as (_, base_url):
        deadline = time.monotonic() + 60
        while len({rid.rsplit("-", 1)[0] for rid in ids}) < 3:  # three runs answered
            assert time.monotonic() < deadline, ids
            ids += _ask_workers(base_url, "baseline", 1)
            time.sleep(0.1)
    assert len(set(ids)) == len(ids)
    with Store.open(db, readonly=True) as store:
        runs = store.query("SELECT id, status, requests_done FROM runs")
        stored = store.query("SELECT id, run_id FROM requests WHERE status = 'ok'")
    assert {r["status"] for r in runs} == {"finished"}
    assert {r["id"] for r in stored} == set(ids)
    per_run = {r["id"]: r["requests_done"] for r in runs}
    for run_id in {r["run_id"] for r in stored}:
        assert per_run[run_id] == sum(1 for r in stored if r["run_id"] == run_id)


@pytest.mark.anyio
async def test_a_rotation_waits_for_the_store_s_write_lock_off_the_event_loop(
    tmp_path: Path,
) -> None:
    """The new runs' rows and the old ones' end are written in worker threads: while
    another process holds the store's write lock, the server goes on answering."""
    db = tmp_path / "moat.db"
    async with MoatServer([echo_graph(tmp_path)], db=db) as server:
        first = server.graphs["echo"].run_id
        await _ask(server, 2)
        with write_lock_held(db, 0.3):
            ticks = await heartbeats_during(server.rotate)
        await settled(server, "echo")
        second = server.graphs["echo"].run_id
    assert ticks >= 20  # 1 ms heartbeats through 0.3 s (a blocked loop ticks once at most)
    assert [(r["id"], r["status"], r["requests_done"]) for r in _runs(db)] == [
        (first, "finished", 2),
        (second, "finished", 0),
    ]
