"""Properties of graphs nobody wrote by hand: random valid graphs of the built-in nodes on
`sim` models (`tests/support/graph_strategies.py`) load, run and leave a consistent store.

On each generated graph: `moat check` accepts it; a few requests through `Pipeline` (on a
store of its own) end `ok`, `partial` or a documented failure, never an internal error;
each node ran at most once per request and cycle, and none that nothing could demand;
every request has one `requests` row whose cost is the sum of its LLM calls, and events
whose `sequence` increases; outputs have exactly the graph's keys; and the same requests
on a fresh store with the same seed give the same outputs (on trio when the order of
concurrent calls cannot matter, the first time on asyncio).
"""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api import Pipeline
from engine.graph.loader import check_text, load_graph_text
from tests.support.graph_strategies import PROMPTS, GenGraph, graphs

RUN_ID = "r-generated"
NODE_STATUSES = {"succeeded", "failed", "skipped", "cancelled", "timed_out"}
NODE_OUTCOMES = {"used", "discarded", "cancelled", "none"}
CALL_OUTCOMES = {"used", "discarded", "skipped", "cancelled", "cached", "none"}
# What a request may end with: the documented statuses, and for `failed` the documented
# causes (a cost budget, a node's own failure) rather than an engine error.
STATUSES = {"ok", "partial", "failed", "deadline_exceeded"}
INTERNAL = ("internal", "Traceback", "AssertionError", "TypeError", "KeyError", "AttributeError")

requests_st = st.lists(
    st.tuples(st.sampled_from(PROMPTS), st.booleans()), min_size=1, max_size=3
).map(lambda items: [{"prompt": p, "flag": f} for p, f in items])


@dataclass(frozen=True)
class Answer:
    """What a request ended with, from `Pipeline.run` or a batch's record."""

    request_id: str
    status: str
    output: Mapping[str, Any] | None
    error: str | None


async def _answer(g: GenGraph, db: Path, items: list[dict[str, Any]]) -> list[Answer]:
    """The requests one after the other, under one run id (the sim is seeded by the
    request id, so a second store answers the same requests under the same ids)."""
    graph = load_graph_text(g.text, str(db.with_suffix(".yaml")))
    async with Pipeline(graph, db=db, seed=7) as pipe:
        results = [await pipe.run(item, run_id=RUN_ID, seq=s) for s, item in enumerate(items)]
    return [Answer(r.request_id, str(r.status), r.output, r.error) for r in results]


async def _batch(g: GenGraph, db: Path, items: list[dict[str, Any]]) -> list[Answer]:
    """The requests as one concurrent batch."""
    graph = load_graph_text(g.text, str(db.with_suffix(".yaml")))
    records: list[Any] = []
    async with Pipeline(graph, db=db, seed=7) as pipe:
        await pipe.run_batch(items, run_id=RUN_ID, concurrency=len(items), on_record=records.append)
    records.sort(key=lambda r: r.seq)
    return [Answer(r.id, str(r.status), r.output, r.error) for r in records]


def _rows(db: Path, sql: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql).fetchall()


def _check_store(g: GenGraph, db: Path, results: list[Answer]) -> None:
    ids = {r.request_id for r in results}
    requests = _rows(db, "SELECT id, status, cost_usd, output_json FROM requests")
    assert sorted(r["id"] for r in requests) == sorted(ids)  # exactly one row each
    by_id = {r["id"]: r for r in requests}
    for result in results:
        row = by_id[result.request_id]
        assert row["status"] == result.status
        stored = None if row["output_json"] is None else json.loads(row["output_json"])
        assert stored == result.output

    may_run = g.may_run()
    counts: dict[tuple[str, str, int], int] = {}
    for row in _rows(db, "SELECT request_id, node, cycle, status, outcome FROM node_runs"):
        key = (row["request_id"], row["node"], row["cycle"])
        counts[key] = counts.get(key, 0) + 1
        assert row["status"] in NODE_STATUSES
        assert row["outcome"] in NODE_OUTCOMES
        assert row["node"] in may_run, f"{row['node']} ran though nothing could demand it"
    repeated = {key: n for key, n in counts.items() if n > 1}
    assert not repeated, f"nodes run more than once per request and cycle: {repeated}"

    calls: dict[str, float] = {}
    for row in _rows(db, "SELECT request_id, cost_usd FROM llm_calls"):
        calls[row["request_id"]] = calls.get(row["request_id"], 0.0) + row["cost_usd"]
    for rid, row in by_id.items():
        assert math.isclose(row["cost_usd"] or 0.0, calls.get(rid, 0.0), abs_tol=1e-12), (
            f"{rid}: requests.cost_usd {row['cost_usd']} != sum of llm_calls {calls.get(rid)}"
        )

    ran = {
        (row["request_id"], row["node"], row["cycle"]): row
        for row in _rows(
            db, "SELECT request_id, node, node_type, cycle, status, speculative FROM node_runs"
        )
    }
    for call in _rows(db, "SELECT * FROM llm_calls"):
        key = (call["request_id"], call["node"], call["cycle"])
        assert key in ran, f"an LLM call of {key} without its node run"
        run = ran[key]
        assert run["status"] != "skipped", f"a skipped node made a call: {key}"
        # a speculative run's calls are speculative; a `speculate` node also bets calls
        # of its own (its draft, verdict and a raced target)
        if run["speculative"] or run["node_type"] != "speculate":
            assert (call["call_kind"] == "speculative") == bool(run["speculative"]), key
        if call["call_outcome"] == "discarded" and not run["speculative"]:
            assert call["call_kind"] == "speculative" and run["node_type"] == "speculate", key
        assert call["call_outcome"] in CALL_OUTCOMES
        if call["status"] == "cancelled":
            assert call["call_outcome"] == "cancelled", key

    sequences: dict[str, list[int]] = {}
    for row in _rows(db, "SELECT request_id, sequence FROM orchestration_events ORDER BY id"):
        sequences.setdefault(row["request_id"], []).append(row["sequence"])
    for rid, seqs in sequences.items():
        assert seqs == sorted(set(seqs)), f"{rid}: event sequence numbers {seqs}"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(g=graphs(), items=requests_st, batch=st.booleans())
def test_generated_graphs_check_run_and_record_consistently(
    g: GenGraph, items: list[dict[str, Any]], batch: bool
) -> None:
    check_generated(g, items, batch)


def check_generated(g: GenGraph, items: list[dict[str, Any]], batch: bool) -> None:
    """Every property of the module docstring, on one graph and its requests (answered one
    after the other, or as one concurrent batch)."""
    report = check_text(g.text, "generated.yaml")
    assert not report.errors, [str(e) for e in report.errors]
    answer = _batch if batch else _answer
    with tempfile.TemporaryDirectory() as tmp:
        first = anyio.run(answer, g, Path(tmp) / "a.db", items)
        backend = "asyncio" if g.order_bound else "trio"
        again = anyio.run(answer, g, Path(tmp) / "b.db", items, backend=backend)
        for result in first:
            assert result.status in STATUSES, (result.status, result.error)
            if result.error:
                assert not any(word in result.error for word in INTERNAL), result.error
            if result.status == "ok":
                assert result.output is not None and set(result.output) == set(g.outputs)
            elif result.output is not None:
                assert set(result.output) <= set(g.outputs)
        _check_store(g, Path(tmp) / "a.db", first)
        _check_store(g, Path(tmp) / "b.db", again)
        # The same requests give the same answers, unless they depend on how fast the
        # machine is, or on the order concurrent requests took turns with a shared state.
        # (Error texts may differ: what a budget error says is left depends on which of
        # a request's concurrent calls settled first, and the backends order them apart.)
        if not g.wall_clock and not (batch and g.shared_state):
            assert [(r.status, r.output) for r in again] == [(r.status, r.output) for r in first]
