"""Benchmark: how much a real run slows down when it records into the store.

Runs the same batch of requests through the flagship graph twice per repeat, once with the
SQLite store (`db=...`) and once with an in-memory sink, alternating, on simulated models
whose latency is scaled to zero so the figure is the engine's own cost. Goal: under 10 %.

    python bench/store_run.py --requests 5000 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from engine import MemorySink
from engine.api import Pipeline
from engine.requests import BatchItem

ROOT = Path(__file__).resolve().parent.parent


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


def batch(n: int) -> list[BatchItem]:
    topics = ["invoices", "passwords", "exports", "refunds", "shipping", "accounts", "reports"]
    return [
        BatchItem(
            i, {"prompt": f"How do I manage {topics[i % 7]} for team {i}?", "tenant": f"t{i % 5}"}
        )
        for i in range(n)
    ]


async def one_run(graph: Path, db: Path | None, n: int) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    async with Pipeline(graph, db=db, sink=MemorySink() if db is None else None) as pipe:
        run_id = pipe.start_run(n)
        await pipe.run_batch(batch(n), run_id=run_id, total=n, concurrency=32)
        await anyio.to_thread.run_sync(pipe.flush)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    store: list[dict[str, float]] = []
    memory: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        graph = instant_graph(Path(tmp))
        for i in range(args.repeat):
            memory.append(anyio.run(one_run, graph, None, args.requests))
            store.append(anyio.run(one_run, graph, Path(tmp) / f"run-{i}.db", args.requests))
    store_wall = statistics.median(r["wall_s"] for r in store)
    memory_wall = statistics.median(r["wall_s"] for r in memory)
    summary: dict[str, Any] = {
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
    print(
        json.dumps(summary) if args.json else "\n".join(f"{k:>22}: {v}" for k, v in summary.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
