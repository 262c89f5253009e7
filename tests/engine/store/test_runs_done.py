"""`moat runs` counts a run's stored requests, not only the last heartbeat's figure: a run
whose process died (or whose heartbeat has not come yet) shows what it has."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.api import Pipeline
from engine.store.store import Store
from tests.engine.test_pipeline_misuse import GRAPH

pytestmark = pytest.mark.anyio


async def test_a_run_lists_every_committed_request_before_any_heartbeat(tmp_path: Path) -> None:
    graph = tmp_path / "g.yaml"
    graph.write_text(GRAPH)
    db = tmp_path / "s.db"
    async with Pipeline(graph, db=db) as pipe:
        run_id = pipe.start_run(5)
        for seq in range(3):
            await pipe.run({}, run_id=run_id, seq=seq)
        await pipe.settle()
        pipe.flush()
        with sqlite3.connect(db) as conn:  # what the heartbeat wrote: nothing yet
            assert conn.execute("SELECT requests_done FROM runs").fetchone() == (0,)
        with Store.open(db, readonly=True) as store:
            (listed,) = store.list_runs()
    assert listed["id"] == run_id and listed["requests_done"] == 3
    assert listed["requests_total"] == 5 and listed["status"] == "running"
