"""Benchmark: sustained records per second through `StoreWriter` into a fresh store.

Builds a synthetic run (per request: 20 orchestration events, 6 node runs, 3 LLM calls,
2 decision traces and the request row), then times feeding every record to
`StoreWriter.record` and waiting for `flush` to commit the lot. Building the records is
not timed: that cost belongs to the engine, not the store.

    python bench/store.py --events 200000 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
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

_EVENT_TYPES = (
    "POLICY_PINNED",
    "ROUTE_SELECTED",
    "CACHE_MISS",
    "STRATEGY_SELECTED",
    "SPECULATIVE_STARTED",
    "LOOP_CYCLE_STARTED",
    "GATE_DECISION",
    "PRINCIPLES_RETRIEVED",
    "CRITIC_DECISION",
    "SIMULATOR_EXECUTED",
)
_NODES = ("route", "cache", "draft", "critic", "simulator", "converge")


def _request_records(run_id: str, seq: int, t0: float) -> list[Record]:
    rid = f"{run_id}-{seq:07d}"
    records: list[Record] = []
    for i in range(20):
        records.append(
            OrchestrationEvent(
                run_id=run_id,
                request_id=rid,
                cycle=1 + i // 10,
                stage=_NODES[i % len(_NODES)],
                component="scheduler",
                event_type=_EVENT_TYPES[i % len(_EVENT_TYPES)],
                sequence=i,
                decision="run",
                started_at=t0 + i * 0.001,
                duration_ms=0.4,
                reason_codes=("threshold_met", "budget_ok"),
                payload={"score": 0.42, "i": i},
            )
        )
    for i, node in enumerate(_NODES):
        records.append(
            NodeRun(
                rid,
                node,
                node,
                1,
                NodeStatus.SUCCEEDED,
                i == 2,
                NodeOutcome.USED,
                t0 + i * 0.01,
                12.5,
                1,
            )
        )
    for i in range(3):
        records.append(
            LlmCall(
                rid,
                "draft",
                1,
                "small",
                "sim",
                CallKind.NORMAL,
                CallOutcome.USED,
                CacheStatus.MISS,
                f"h{seq}-{i}",
                120,
                80,
                0.0001,
                150.0,
                t0 + i * 0.05,
                "ok",
            )
        )
    for stage in ("RISK_ASSESSMENT", "CYCLE_SUMMARY"):
        records.append(DecisionTrace(rid, 1, stage, {"planned": list(_NODES), "score": 0.1}))
    records.append(
        RequestRecord(
            rid,
            run_id,
            seq,
            RequestStatus.OK,
            t0,
            t0 + 0.4,
            400.0,
            0.0003,
            {"answer": "text " * 20},
            tenant="public",
        )
    )
    return records


def run_once(db: Path, total: int) -> dict[str, float]:
    """Write about `total` records into a fresh store at `db`; return the figures."""
    store = Store.open(db)
    run_id = store.create_run("bench", None, None)
    per_request = len(_request_records(run_id, 0, 0.0))
    t0 = time.time()
    records = [
        item
        for seq in range(max(1, total // per_request))
        for item in _request_records(run_id, seq, t0)
    ]
    writer = store.writer()
    start = time.perf_counter()
    for item in records:
        writer.record(item)
    queued = time.perf_counter()
    writer.flush()
    done = time.perf_counter()
    writer.close()
    store.close()
    return {
        "records": len(records),
        "records_per_s": len(records) / (done - start),
        "record_call_us": (queued - start) / len(records) * 1e6,
        "seconds": done - start,
        "records_per_writer_cpu_s": len(records) / writer.stats.cpu_s,
        "transactions": writer.stats.transactions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="records per repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            results.append(run_once(Path(tmp) / f"bench-{i}.db", args.events))
    rates = [r["records_per_s"] for r in results]
    summary = {
        "benchmark": "store.sustained_write",
        "records": results[0]["records"],
        "repeat": args.repeat,
        "records_per_s_median": round(statistics.median(rates)),
        "records_per_s_best": round(max(rates)),
        "records_per_writer_cpu_s_median": round(
            statistics.median(r["records_per_writer_cpu_s"] for r in results)
        ),
        "record_call_us_median": round(statistics.median(r["record_call_us"] for r in results), 3),
        "transactions_median": statistics.median(r["transactions"] for r in results),
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
