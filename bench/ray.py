"""Benchmark: what Ray workers buy a batch, and what they cost it (simulated models).

Two figures, on a local Ray instance (`num_cpus` = this machine's CPUs), the driver storing
every record in a fresh SQLite store as `moat run --ray` does:

- speedup: the flagship graph with its simulated models answering instantly (the engine's
  own CPU is all the work), 2 workers against 1, requests per second of the batch (worker
  start-up excluded, reported apart). Goal: >= 1.6x on 2 cores.
- overhead: the flagship with its simulated models slowed to a 200 ms median call, 1,000
  requests, a local `Pipeline` against 1 Ray worker at the same concurrency. Ray's added
  time per request = (wall_ray - wall_local) / requests; the latency each request would
  have gained to explain it = that * concurrency. Goal: <= 1 ms. Beside it, Ray's added
  CPU per request: the CPU of the driver, the worker and Ray's processes, less the local
  run's (the same work in one process), which the machine's load does not move.

The two set-ups alternate in every repeat, so a load spike from other processes hits both.
Each run also reports the CPU it took per request, from /proc: the driver's (`D`), the
workers' (`W`) and Ray's own processes' (raylet, GCS: `S`). On a machine others load, the
measured speedup says more about them than about moat; the CPU figures do not depend on
the load, and bound the speedup an idle 2-core machine gives: 1 worker runs at most at
1 / W (the driver and Ray have the other core), 2 workers at 2 / (W + D + S), so the
ratio is at most 2 W / (W + D + S).

    python bench/ray.py --requests 3000 --slow-requests 1000 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the `ray` package: drop the folder (`python -m bench.ray` needs nothing of the kind).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
sys.path.insert(0, str(Path(__file__).parent.parent))  # the checkout, for `bench._procs`

import anyio  # noqa: E402

from bench._procs import descendants  # noqa: E402
from engine.api import Pipeline  # noqa: E402
from engine.requests import BatchItem  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SLOW_MEDIAN_MS = 200.0


def scaled_graph(dest: Path, time_scale: float, name: str) -> Path:
    """The flagship graph with every simulated model's latency scaled by `time_scale`."""
    text = (ROOT / "graphs" / "governed-answer.yaml").read_text()
    text = re.sub(
        r"\{provider: sim, profile: (\w+)\}",
        rf"{{provider: sim, profile: \1, time_scale: {time_scale}}}",
        text,
    )
    text = text.replace("policy: ../policies/", f"policy: {ROOT / 'policies'}/")
    path = dest / name
    path.write_text(text)
    return path


def batch(n: int, offset: int = 0) -> list[BatchItem]:
    topics = ["invoices", "passwords", "exports", "refunds", "shipping", "accounts", "reports"]
    return [
        BatchItem(
            i,
            {
                "prompt": f"How do I manage {topics[i % 7]} for team {i + offset}?",
                "tenant": f"t{i % 5}",
            },
        )
        for i in range(n)
    ]


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each of this process's threads by name (Python's name where the
    thread is Python's, e.g. `moat-store-writer`, `MainThread`; else the OS's, e.g. Ray's
    `worker.io`), threads of one name summed (Linux /proc)."""
    named = {str(t.native_id): t.name.split(" (")[0] for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        name = named.get(tid, head.partition("(")[2]).rstrip("_0123456789 ")
        fields = rest.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, 0 if it is gone (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _timed(pipe: Pipeline, items: list[BatchItem], concurrency: int) -> dict[str, float]:
    workers = list(getattr(pipe, "worker_pids", []))
    others = [pid for pid in descendants(os.getpid()) if pid not in workers]
    w0 = sum(_cpu_s(pid) for pid in workers)
    s0 = sum(_cpu_s(pid) for pid in others)
    threads0 = _thread_cpu_s()
    t0, c0 = time.perf_counter(), time.process_time()
    summary = await pipe.run_batch(items, concurrency=concurrency)
    await anyio.to_thread.run_sync(pipe.flush)
    wall = time.perf_counter() - t0
    driver = time.process_time() - c0
    threads1 = _thread_cpu_s()
    assert summary.done == len(items), summary
    n = len(items)
    return {
        "wall_s": wall,
        "rate": n / wall,
        "driver_cpu_s": driver,
        "driver_ms": driver / n * 1000,
        "worker_ms": (sum(_cpu_s(pid) for pid in workers) - w0) / n * 1000,
        "ray_ms": (sum(_cpu_s(pid) for pid in others) - s0) / n * 1000,
        **{
            f"driver_ms:{name}": (spent - threads0.get(name, 0.0)) / n * 1000
            for name, spent in threads1.items()
        },
    }


async def ray_run(
    graph: Path, db: Path, items: list[BatchItem], workers: int, concurrency: int
) -> dict[str, float]:
    from engine.cluster import ClusterPipeline

    t0 = time.perf_counter()
    async with ClusterPipeline(graph, db=db, workers=workers, concurrency=concurrency) as pipe:
        startup = time.perf_counter() - t0
        figures = await _timed(pipe, items, concurrency)
    return {**figures, "startup_s": startup}


async def local_run(
    graph: Path, db: Path, items: list[BatchItem], concurrency: int
) -> dict[str, float]:
    async with Pipeline(graph, db=db) as pipe:
        return await _timed(pipe, items, concurrency)


def median_call_ms(graph: Path, tmp: Path) -> float:
    """The median simulated model-call latency of the flagship at `time_scale: 1`."""
    import sqlite3

    db = tmp / "calibrate.db"
    anyio.run(local_run, graph, db, batch(60, 10_000), 32)
    with sqlite3.connect(db) as conn:
        rows = [r[0] for r in conn.execute("SELECT latency_ms FROM llm_calls WHERE latency_ms>0")]
    return statistics.median(rows)


def speedup(tmp: Path, n: int, repeat: int) -> dict[str, Any]:
    graph = scaled_graph(tmp, 0, "instant.yaml")
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for i in range(repeat):
        for workers in (1, 2) if i % 2 == 0 else (2, 1):
            db = tmp / f"speed-{i}-{workers}.db"
            runs[workers].append(anyio.run(ray_run, graph, db, batch(n), workers, 32))
    ratios = [b["rate"] / a["rate"] for a, b in zip(runs[1], runs[2], strict=True)]
    two = runs[2]
    w, d, r = (
        statistics.median(x[key] for x in two) for key in ("worker_ms", "driver_ms", "ray_ms")
    )
    return {
        "requests": n,
        "rate_1_worker": [round(r["rate"]) for r in runs[1]],
        "rate_2_workers": [round(r["rate"]) for r in runs[2]],
        "ratios": [round(r, 2) for r in ratios],
        "ratio_median": round(statistics.median(ratios), 2),
        "driver_cpu_s_2_workers": [round(r["driver_cpu_s"], 1) for r in runs[2]],
        "cpu_ms_per_request_2_workers": {
            "driver": [round(x["driver_ms"], 2) for x in two],
            "workers": [round(x["worker_ms"], 2) for x in two],
            "ray": [round(x["ray_ms"], 2) for x in two],
        },
        "driver_threads_ms_2_workers": _by_thread(two),
        "idle_bound_ratio": round(min(2.0, 2 * w / (w + d + r)), 2),
        "startup_s": [round(r["startup_s"], 1) for r in runs[1] + runs[2]],
        "goal": ">= 1.6",
    }


def _by_thread(runs: list[dict[str, float]]) -> dict[str, float]:
    """The driver's CPU per request by thread, the median over `runs`, the larger ones."""
    names = {key for run in runs for key in run if key.startswith("driver_ms:")}
    medians = {
        name.partition(":")[2]: round(statistics.median(run.get(name, 0.0) for run in runs), 3)
        for name in names
    }
    return dict(sorted(((k, v) for k, v in medians.items() if v >= 0.005), key=lambda kv: -kv[1]))


def overhead(tmp: Path, n: int, repeat: int, concurrency: int) -> dict[str, Any]:
    unit = scaled_graph(tmp, 1.0, "unit.yaml")
    scale = SLOW_MEDIAN_MS / median_call_ms(unit, tmp)
    graph = scaled_graph(tmp, round(scale, 4), "slow.yaml")
    local: list[dict[str, float]] = []
    remote: list[dict[str, float]] = []
    for i in range(repeat):
        order = ("local", "ray") if i % 2 == 0 else ("ray", "local")
        for kind in order:
            db = tmp / f"slow-{i}-{kind}.db"
            if kind == "local":
                local.append(anyio.run(local_run, graph, db, batch(n), concurrency))
            else:
                remote.append(anyio.run(ray_run, graph, db, batch(n), 1, concurrency))
    added = [(r["wall_s"] - lo["wall_s"]) / n * 1000 for lo, r in zip(local, remote, strict=True)]
    cpu = [
        r["driver_ms"] + r["worker_ms"] + r["ray_ms"] - lo["driver_ms"]
        for lo, r in zip(local, remote, strict=True)
    ]
    return {
        "requests": n,
        "concurrency": concurrency,
        "time_scale": round(scale, 4),
        "wall_local_s": [round(r["wall_s"], 2) for r in local],
        "wall_ray_s": [round(r["wall_s"], 2) for r in remote],
        "added_ms_per_request": [round(a, 3) for a in added],
        "added_ms_per_request_median": round(statistics.median(added), 3),
        "as_latency_ms_per_request_median": round(statistics.median(added) * concurrency, 1),
        "cpu_ms_per_request_local": [round(r["driver_ms"], 2) for r in local],
        "added_cpu_ms_per_request": [round(c, 2) for c in cpu],
        "added_cpu_ms_per_request_median": round(statistics.median(cpu), 2),
        "goal": "<= 1 ms",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--slow-requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["speedup", "overhead"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    summary: dict[str, Any] = {"benchmark": "ray", "cpus": os.cpu_count(), "simulated": True}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "speedup"):
            summary["speedup"] = speedup(Path(tmp), args.requests, args.repeat)
        if args.only in (None, "overhead"):
            summary["overhead"] = overhead(
                Path(tmp), args.slow_requests, args.repeat, args.concurrency
            )
    ray.shutdown()
    json.dump(summary, sys.stdout, indent=None if args.json else 2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
