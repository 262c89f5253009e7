"""Benchmark: what recording into the store costs a real run, in time and in bytes.

Runs the flagship graph on simulated models whose latency is scaled to zero (so the figure
is the engine's own cost), on distinct prompts from the benchmark workload (no repeats, so
no cache hit shortens a request) spread over seven tenants, each run started and finished
the way `moat run` does.

Two measurements:

- slowdown (default): the same batch with the SQLite store (`db=...`) and with an
  in-memory sink, alternating; goal under 10 %;
- `--bytes`: one stored run, then the store's bytes per request, by table (pages, indexes
  included, from SQLite's `dbstat`) and by column (the stored values' lengths); goal at
  most 5 KB per request at the default `store_text`.

    python bench/store_run.py --requests 5000 --repeat 3 --json
    python bench/store_run.py --bytes --requests 5000 --json
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.workload import iter_requests  # noqa: E402
from engine import MemorySink  # noqa: E402
from engine.api import Pipeline  # noqa: E402
from engine.requests import BatchItem  # noqa: E402
from engine.store.compact import COMPACT_TABLES  # noqa: E402

TENANTS = 7
"""How many tenants the requests are spread over."""
_RECORD_TABLES = (
    "requests",
    "orchestration_events",
    "node_runs",
    "llm_calls",
    "decision_traces",
    "request_keys",
    "strings",
)
"""What records cost. The per-request contract tables are views (schema 3): their bytes
are their compact tables' (`engine.store.compact.COMPACT_TABLES`), indexes included;
`request_keys` and `strings` are what the compact rows' integers point into."""


def instant_graph(dest: Path) -> Path:
    """The flagship graph with every simulated model answering instantly."""
    text = (ROOT / "graphs" / "governed-answer.yaml").read_text()
    text = re.sub(
        r"\{provider: sim, profile: (\w+)\}", r"{provider: sim, profile: \1, time_scale: 0}", text
    )
    text = text.replace("policy: ../policies/", f"policy: {ROOT / 'policies'}/")
    path = dest / "governed-answer.yaml"
    path.write_text(text)
    return path


def batch(n: int, seed: int = 1) -> list[BatchItem]:
    """`n` requests with distinct prompts (the workload's first occurrences, labels kept
    for the simulator), over `TENANTS` tenants."""
    items: list[BatchItem] = []
    seen: set[str] = set()
    for request in iter_requests(4 * n + 100, seed):
        labels = request.get("_labels") or {}
        if "repeat_of" in labels or request["prompt"] in seen:
            continue
        seen.add(request["prompt"])
        tenant = f"t{len(items) % TENANTS}"
        items.append(BatchItem(len(items), {"prompt": request["prompt"], "tenant": tenant}, labels))
        if len(items) == n:
            return items
    raise SystemExit(f"the workload has fewer than {n} distinct prompts for seed {seed}")


async def one_run(graph: Path, db: Path | None, items: list[BatchItem]) -> dict[str, float]:
    """Answer `items` in one run (started and finished like `moat run`); wall and CPU s."""
    t0, c0 = time.perf_counter(), time.process_time()
    async with Pipeline(graph, db=db, sink=MemorySink() if db is None else None) as pipe:
        summary = pipe.start_batch(len(items))
        await pipe.run_batch(items, batch=summary, concurrency=32)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def store_bytes(db: Path) -> dict[str, Any]:
    """Bytes per stored request: by table (pages of the table and its indexes) and by
    column (the sum of the stored values' lengths, integers and reals counted as 8)."""
    conn = sqlite3.connect(db)
    try:
        requests = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] or 1
        pages = dict(
            conn.execute(
                "SELECT COALESCE(m.tbl_name, d.name), SUM(d.pgsize) FROM dbstat d "
                "LEFT JOIN sqlite_schema m ON m.name = d.name GROUP BY 1"
            ).fetchall()
        )
        physical = {t: COMPACT_TABLES.get(t, t) for t in _RECORD_TABLES}
        tables = {t: round(pages.get(p, 0) / requests) for t, p in physical.items() if p in pages}
        columns: dict[str, dict[str, float]] = {}
        for table in tables:
            names = [row[1] for row in conn.execute(f"PRAGMA table_info({physical[table]})")]
            sums = ", ".join(
                f"SUM(CASE typeof({c}) WHEN 'integer' THEN 8 WHEN 'real' THEN 8 "
                f"WHEN 'null' THEN 0 ELSE length(CAST({c} AS BLOB)) END)"
                for c in names
            )
            values = conn.execute(f"SELECT {sums} FROM {physical[table]}").fetchone()
            columns[table] = {
                c: round((v or 0) / requests, 1) for c, v in zip(names, values, strict=True)
            }
        rows = {
            t: round(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] / requests, 2)
            for t in tables
        }
        file_bytes = db.stat().st_size
    finally:
        conn.close()
    return {
        "requests": requests,
        "file_bytes_per_request": round(file_bytes / requests),
        "table_bytes_per_request": tables,
        "record_bytes_per_request": sum(tables.values()),
        "rows_per_request": rows,
        "column_bytes_per_request": columns,
    }


def slowdown(args: argparse.Namespace) -> dict[str, Any]:
    store: list[dict[str, float]] = []
    memory: list[dict[str, float]] = []
    items = batch(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        graph = instant_graph(Path(tmp))
        for i in range(args.repeat):
            memory.append(anyio.run(one_run, graph, None, items))
            store.append(anyio.run(one_run, graph, Path(tmp) / f"run-{i}.db", items))
    store_wall = statistics.median(r["wall_s"] for r in store)
    memory_wall = statistics.median(r["wall_s"] for r in memory)
    return {
        "benchmark": "store.run_slowdown",
        "requests": args.requests,
        "repeat": args.repeat,
        "store_wall_s_median": round(store_wall, 2),
        "memory_wall_s_median": round(memory_wall, 2),
        "slowdown_wall": round(store_wall / memory_wall - 1, 3),
        "store_cpu_s_median": round(statistics.median(r["cpu_s"] for r in store), 2),
        "memory_cpu_s_median": round(statistics.median(r["cpu_s"] for r in memory), 2),
        "python": sys.version.split()[0],
    }


def bytes_per_request(args: argparse.Namespace) -> dict[str, Any]:
    items = batch(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        graph = instant_graph(Path(tmp))
        db = Path(args.keep) if args.keep else Path(tmp) / "run.db"
        figures = anyio.run(one_run, graph, db, items)
        summary = {"benchmark": "store.bytes_per_request", **store_bytes(db)}
    summary["cpu_ms_per_request"] = round(figures["cpu_s"] / args.requests * 1000, 2)
    summary["python"] = sys.version.split()[0]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bytes", action="store_true", help="measure bytes per request")
    parser.add_argument("--keep", metavar="DB", help="with --bytes: write the store here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    summary = bytes_per_request(args) if args.bytes else slowdown(args)
    print(
        json.dumps(summary) if args.json else "\n".join(f"{k:>26}: {v}" for k, v in summary.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
