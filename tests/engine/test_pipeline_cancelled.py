"""A request its caller cancels: recorded `cancelled` when the caller asks (a server's
client that hung up), else unrecorded (an interrupted batch, answered again on resume)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from engine.api import Pipeline
from engine.report.stats import run_stats
from engine.stats import FAILED_STATUSES
from engine.store.store import Store
from tests.support.fast_graphs import one_model_graph

pytestmark = pytest.mark.anyio

GRAPH = one_model_graph("slow", 5.0)


async def _cancel_mid_call(pipe: Pipeline, run_id: str, *, record: bool) -> None:
    with anyio.move_on_after(0.2) as scope:  # the model call takes seconds
        await pipe.run({"prompt": "hi"}, run_id=run_id, seq=0, record_cancelled=record)
    assert scope.cancelled_caught
    await pipe.settle()
    pipe.flush()


async def test_a_cancelled_request_is_recorded_cancelled_after_its_cancelled_calls(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    (tmp_path / "slow.yaml").write_text(GRAPH)
    async with Pipeline(tmp_path / "slow.yaml", db=db) as pipe:
        run_id = pipe.start_run(1)
        await _cancel_mid_call(pipe, run_id, record=True)
        await pipe.finish_run(run_id)
    with sqlite3.connect(db) as conn:
        (request,) = conn.execute("select id, status, output_json, error from requests").fetchall()
        calls = conn.execute("select request_id, status from llm_calls").fetchall()
    assert request[1] == "cancelled" and request[2] is None and "cancelled" in request[3]
    assert calls == [(request[0], "cancelled")]
    with Store.open(db, readonly=True) as store:
        stats = run_stats(store, run_id)
        (node,) = store.node_runs(request[0])
    assert stats.by_status == {"cancelled": 1}
    assert stats.failed == [] and "cancelled" not in FAILED_STATUSES
    assert node["status"] == "cancelled"


async def test_without_asking_a_cancelled_request_leaves_no_record(tmp_path: Path) -> None:
    (tmp_path / "slow.yaml").write_text(GRAPH)
    async with Pipeline(tmp_path / "slow.yaml", db=None) as pipe:
        run_id = pipe.start_run(1)
        await _cancel_mid_call(pipe, run_id, record=False)
        assert pipe.memory.requests() == []
        assert [c.status for c in pipe.memory.llm_calls()] == ["cancelled"]
