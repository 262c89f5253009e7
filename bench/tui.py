"""Benchmark: the TUI's store polling against a writer going at full speed.

A separate process writes synthetic requests (the records of `bench/store.py`) through
`StoreWriter` as fast as it can for `--seconds`, in `--repeat` alternating pairs of runs:
alone (the baseline), and while this process polls the same store with the TUI's
`LiveReader` every `--interval` seconds in a worker thread, exactly as `MoatApp` does.
Reports the writer's committed requests per second in both (the slowdown the TUI causes),
how long each poll took and how late it ran against its schedule.

    python bench/tui.py --seconds 10 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.store import _request_records
from engine.store.store import Store
from tui._live import LiveReader, percentile

_BATCH = 50


def _writer(db: str, seconds: float, out: mp.Queue[dict[str, float]]) -> None:
    store = Store.open(db)
    run_id = store.create_run("bench-tui", None, None)
    writer = store.writer()
    start = time.perf_counter()
    seq = 0
    while time.perf_counter() - start < seconds:
        t0 = time.time()
        for _ in range(_BATCH):
            for item in _request_records(run_id, seq, t0):
                writer.record(item)
            seq += 1
    writer.flush()
    done = time.perf_counter()
    writer.close()
    store.finish_run(run_id, "finished")
    store.close()
    out.put({"requests": seq, "seconds": done - start, "requests_per_s": seq / (done - start)})


def _run(db: Path, seconds: float, interval: float | None) -> dict[str, float]:
    Store.open(db).close()
    ctx = mp.get_context("spawn")
    out: mp.Queue[dict[str, float]] = ctx.Queue()
    proc = ctx.Process(target=_writer, args=(str(db), seconds, out))
    polls: list[float] = []
    lateness: list[float] = []
    seen = 0
    stop = threading.Event()

    def poll_loop() -> None:
        nonlocal seen
        reader = LiveReader(db)
        due = time.perf_counter()
        while not stop.is_set():
            lateness.append(max(0.0, time.perf_counter() - due) * 1000)
            began = time.perf_counter()
            snapshot = reader.poll()
            polls.append((time.perf_counter() - began) * 1000)
            seen = len(snapshot.requests)
            due += interval or 0.5
            stop.wait(max(0.0, due - time.perf_counter()))
        reader.close()

    thread = threading.Thread(target=poll_loop) if interval else None
    proc.start()
    if thread is not None:
        thread.start()
    result = out.get()
    proc.join()
    stop.set()
    if thread is not None:
        thread.join()
    figures = dict(result)
    if polls:
        ordered = sorted(polls)
        figures |= {
            "polls": len(polls),
            "poll_ms_median": round(statistics.median(ordered), 2),
            "poll_ms_p95": round(percentile(ordered, 95) or 0.0, 2),
            "poll_ms_max": round(ordered[-1], 2),
            "late_ms_max": round(max(lateness), 2),
            "requests_seen": seen,
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="writer run length")
    parser.add_argument("--interval", type=float, default=0.5, help="poll period (s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeat", type=int, default=3, help="alternating pairs of runs")
    args = parser.parse_args(argv)
    alone_rates, watched_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            alone = _run(Path(tmp) / f"alone-{i}.db", args.seconds, None)
            alone_rates.append(alone["requests_per_s"])
            watched_runs.append(_run(Path(tmp) / f"watched-{i}.db", args.seconds, args.interval))
    alone_rate = statistics.median(alone_rates)
    watched_rate = statistics.median(r["requests_per_s"] for r in watched_runs)
    worst = max(watched_runs, key=lambda r: r["poll_ms_max"])
    summary = {
        "benchmark": "tui.live_polling",
        "seconds": args.seconds,
        "repeat": args.repeat,
        "interval_s": args.interval,
        "writer_requests_per_s_alone": round(alone_rate),
        "writer_requests_per_s_watched": round(watched_rate),
        "writer_slowdown_pct": round((1 - watched_rate / alone_rate) * 100, 1),
        "poll_ms_median": statistics.median(r["poll_ms_median"] for r in watched_runs),
        "poll_ms_p95_worst": max(r["poll_ms_p95"] for r in watched_runs),
        "poll_ms_max": worst["poll_ms_max"],
        "late_ms_max": max(r["late_ms_max"] for r in watched_runs),
        "keeps_up": worst["poll_ms_max"] < args.interval * 1000,
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>30}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
