"""Synthetic but complete store records for the store's own tests: one request's events,
node runs, LLM calls, decision traces and request row, written through `StoreWriter`."""

from __future__ import annotations

import time
from pathlib import Path

from engine.events import (
    CacheStatus,
    CallKind,
    CallOutcome,
    DecisionTrace,
    LlmCall,
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    Record,
    RequestRecord,
    RequestStatus,
)
from engine.store.store import Store

TABLES = ("requests", "orchestration_events", "node_runs", "llm_calls", "decision_traces")


def request_records(
    run_id: str, seq: int, at: float, *, finished: bool = True, tenant: str = "acme"
) -> list[Record]:
    """A request's records (4 events, 2 node runs, 1 call, 1 trace, then its row unless
    `finished` is False: a crashed request's leftovers)."""
    rid = f"{run_id}-{seq:06d}"
    out: list[Record] = [
        OrchestrationEvent(run_id, rid, 0, "request", "scheduler", "POLICY_PINNED", 0, "1"),
        OrchestrationEvent(run_id, rid, 0, "route", "router", "ROUTE_SELECTED", 1, "small"),
        OrchestrationEvent(run_id, rid, 0, "cached", "cache", "CACHE_MISS", 2, "miss"),
        OrchestrationEvent(run_id, rid, 1, "loop", "scheduler", "LOOP_CYCLE_STARTED", 3),
        NodeRun(rid, "route", "router", 0, NodeStatus.SUCCEEDED, False, NodeOutcome.USED, at, 1, 1),
        NodeRun(rid, "draft", "model", 0, NodeStatus.SUCCEEDED, True, NodeOutcome.USED, at, 9, 1),
        LlmCall(
            rid,
            "draft",
            0,
            "small",
            "sim",
            CallKind.SPECULATIVE,
            CallOutcome.USED,
            CacheStatus.MISS,
            f"h{seq}",
            12,
            30,
            0.001,
            9.0,
            at,
            "ok",
        ),
        DecisionTrace(rid, 1, "CYCLE_SUMMARY", {"cycle": 1, "until": True}),
    ]
    if finished:
        out.append(
            RequestRecord(
                rid,
                run_id,
                seq,
                RequestStatus.OK,
                at,
                at + 0.01,
                10.0,
                0.001,
                {"answer": f"answer {seq}"},
                tenant=tenant,
            )
        )
    return out


def stored_run(
    db: Path,
    requests: int,
    *,
    at: float | None = None,
    finish: bool = True,
    crashed: int = 0,
) -> str:
    """A run of `requests` stored requests (plus `crashed` leftovers and a run-level
    event), started at `at`; finished unless `finish` is False. Returns its id."""
    at = time.time() if at is None else at
    with Store.open(db) as store:
        run_id = store.create_run("g", "hash", requests)
        with store.writer() as writer:
            writer.record(
                OrchestrationEvent(run_id, "", 0, "policy", "policy", "POLICY_ACTIVATED", 0, "1")
            )
            for seq in range(requests + crashed):
                for item in request_records(run_id, seq, at + seq, finished=seq < requests):
                    writer.record(item)
        if finish:
            store.finish_run(run_id, "finished", at=at + requests + crashed)
        with store._tx() as conn:  # backdate the run for `--before`
            conn.execute("UPDATE runs SET started_at = ? WHERE id = ?", (at, run_id))
    return run_id


def count_rows(db: Path, run_id: str) -> dict[str, int]:
    """Rows of every run-owned table that belong to `run_id` (by run id or request id)."""
    with Store.open(db, readonly=True) as store:
        out = {"runs": len(store.query("SELECT 1 FROM runs WHERE id = ?", (run_id,)))}
        like = (f"{run_id}-%",)
        for table in TABLES:
            column = "id" if table == "requests" else "request_id"
            rows = store.query(f"SELECT COUNT(*) AS n FROM {table} WHERE {column} LIKE ?", like)
            out[table] = int(rows[0]["n"])
        run_level = store.query(
            "SELECT COUNT(*) AS n FROM orchestration_events WHERE run_id = ? AND request_id = ''",
            (run_id,),
        )
        out["run_events"] = int(run_level[0]["n"])
    return out
