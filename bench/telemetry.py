"""Benchmark: what telemetry costs a flagship request (governed-answer, zero-latency sim).

The same batch runs through `Pipeline` with its store, in one process, in alternating
rounds, under four settings:

- `off`: no telemetry (what every run without `--otel`/`--metrics-port` does);
- `metrics`: Prometheus figures counted (`--metrics-port`), nobody scraping;
- `traces`: spans built and exported over OTLP/HTTP (`--otel`) to a receiver in another
  process on loopback, which keeps the connection alive as a collector does, reads them
  and drops them (the JSON counts spans moat dropped itself: a figure holds only at 0);
- `both`;
- `sampled`: traces of one request in ten (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
  `OTEL_TRACES_SAMPLER_ARG=0.1`), the standard way to bound tracing's cost.

The sim answers at once (`time_scale: 0`), so a request costs only moat's own CPU: the
worst case for a relative overhead (a real model call of hundreds of milliseconds makes it
vanish). Figures are CPU seconds of this process per request (`process_time`, so other
processes on a shared machine do not blur them), the telemetry's close (flushing the last
spans) included, and each setting's ratio to `off` is the median of the per-round ratios.
On a shared machine those ratios move by +-15 % from round to round, so the same batch's
records are also replayed through each setting's telemetry alone (`replay`): its CPU per
request over `off`'s is the overhead, measured without the run's own noise.

`--latency` measures what a client sees instead: the sim's latencies scaled to a tenth
(a flagship request then waits about 0.3 s on its models), the same request ids (so the
same simulated latencies) in every batch, no store, `off` against `both`, and the median
over rounds of the ratio of each batch's median request latency (`latency_ms`).

    python bench/telemetry.py --requests 200 --rounds 5 --json
    python bench/telemetry.py --latency --requests 64 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.api import Pipeline  # noqa: E402
from engine.telemetry import Telemetry  # noqa: E402
from tests.support.fast_graphs import fast_copy  # noqa: E402

SETTINGS = ("off", "metrics", "traces", "both", "sampled")
DROPPED: dict[str, int] = {}
"""Spans each setting dropped (a full queue): a figure only holds if this stays zero."""
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
"""The `sampled` setting: traces of one request in ten, by the standard variables."""
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Drop(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector does

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Drop)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def requests(n: int) -> list[dict[str, Any]]:
    """The shipped example requests, repeated, each prompt made unique (no cache hits)."""
    lines = (ROOT / "graphs" / "examples" / "governed-answer.jsonl").read_text().splitlines()
    made = []
    for i in range(n):
        item = json.loads(lines[i % len(lines)])
        item["prompt"] = f"{item['prompt']} (case {i})"
        made.append(item)
    return made


def telemetry(setting: str, endpoint: str) -> Telemetry | None:
    if setting == "off":
        return None
    traces = setting in ("traces", "both", "sampled")
    for name, value in SAMPLED.items():  # read by the tracer provider as it is made
        if setting == "sampled":
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    return Telemetry(
        traces=traces, endpoint=endpoint if traces else None, metrics=setting in ("metrics", "both")
    )


async def batch(graph: Path, db: Path | None, items: list[dict[str, Any]], setting: str,
                endpoint: str, concurrency: int,
                latencies: list[float] | None = None) -> float:  # fmt: skip
    """CPU seconds this process spent answering `items` (telemetry closed and flushed).

    With `latencies`, each request's latency is appended to it, and the requests have the
    same ids (so the same simulated latencies) in every batch.
    """
    tel = telemetry(setting, endpoint)
    async with Pipeline(graph, db=db) as pipe:
        if tel is not None:
            tel.attach(pipe)
            tel.start()
        start = time.process_time()
        if latencies is None:
            await pipe.run_batch(items, concurrency=concurrency)
        else:
            await pipe.run_batch(
                items,
                run_id="latency",
                concurrency=concurrency,
                on_record=lambda r: latencies.append(r.latency_ms),
            )
        await anyio.to_thread.run_sync(pipe.flush)
        if tel is not None:
            await anyio.to_thread.run_sync(tel.close)
            count_dropped(setting, tel)
        return time.process_time() - start


async def measure_latency(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="moat-bench-telemetry-"))
    graph = fast_copy("governed-answer", folder, time_scale=0.1)
    items = requests(args.requests)
    medians: dict[str, list[float]] = {"off": [], "both": []}
    for round_ in range(args.rounds):
        for setting in ("off", "both") if round_ % 2 == 0 else ("both", "off"):
            seen: list[float] = []
            await batch(graph, None, items, setting, endpoint, args.concurrency, seen)
            medians[setting].append(statistics.median(seen))
    ratios = [b / o for b, o in zip(medians["both"], medians["off"], strict=True)]
    return {
        "command": " ".join(["python", "bench/telemetry.py", *sys.argv[1:]]),
        "requests": args.requests,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "simulated": True,
        "median_latency_ms": {s: statistics.median(v) for s, v in medians.items()},
        "ratio_both_to_off": statistics.median(ratios),
        "ratios": ratios,
    }


async def capture(
    graph: Path, db: Path, items: list[dict[str, Any]], concurrency: int
) -> list[Any]:
    """The records of one batch, as a telemetry watcher receives them."""
    records: list[Any] = []
    async with Pipeline(graph, db=db) as pipe:
        pipe.record_watchers.append(records.append)
        await pipe.run_batch(items, concurrency=concurrency)
        await anyio.to_thread.run_sync(pipe.flush)
    return records


def replay(records: list[Any], setting: str, endpoint: str) -> float:
    """CPU seconds to turn `records` into figures and exported spans, alone: what telemetry
    adds to this process, without the noise of the run itself."""
    tel = telemetry(setting, endpoint)
    assert tel is not None
    watch = tel.feed.watcher("governed-answer")
    start = time.process_time()
    for record in records:
        watch(record)
    tel.close()  # drains the feed, builds everything, exports and flushes
    took = time.process_time() - start
    count_dropped(setting, tel)
    return took


def count_dropped(setting: str, tel: Telemetry) -> None:
    dropped = tel.spans.batches.dropped if tel.spans is not None else 0
    DROPPED[setting] = DROPPED.get(setting, 0) + dropped


async def measure(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="moat-bench-telemetry-"))
    graph = fast_copy("governed-answer", folder, time_scale=0)
    items = requests(args.requests)
    per_request: dict[str, list[float]] = {s: [] for s in SETTINGS}
    ratios: dict[str, list[float]] = {s: [] for s in SETTINGS if s != "off"}
    await batch(graph, folder / "warm.db", items[:50], "both", endpoint, args.concurrency)
    for round_ in range(args.rounds):
        took: dict[str, float] = {}
        order = SETTINGS if round_ % 2 == 0 else tuple(reversed(SETTINGS))
        for setting in order:
            db = folder / f"{setting}-{round_}.db"
            took[setting] = await batch(graph, db, items, setting, endpoint, args.concurrency)
            per_request[setting].append(took[setting] / len(items) * 1e6)
        for setting in ratios:
            ratios[setting].append(took[setting] / took["off"])
    records = await capture(graph, folder / "capture.db", items, args.concurrency)
    alone: dict[str, list[float]] = {s: [] for s in SETTINGS if s != "off"}
    for _ in range(args.rounds):
        for setting in alone:
            alone[setting].append(replay(records, setting, endpoint) / len(items) * 1e6)
    off_us = statistics.median(per_request["off"])
    return {
        "command": " ".join(["python", "bench/telemetry.py", *sys.argv[1:]]),
        "requests": args.requests,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "simulated": True,
        "cpu_us_per_request": {s: statistics.median(v) for s, v in per_request.items()},
        "ratio_to_off": {s: statistics.median(v) for s, v in ratios.items()},
        "ratios": ratios,
        "telemetry_alone_cpu_us_per_request": {s: statistics.median(v) for s, v in alone.items()},
        "telemetry_alone_over_off": {s: statistics.median(v) / off_us for s, v in alone.items()},
        "spans_dropped": DROPPED,
        "load_average_1min": [load_before, os.getloadavg()[0]],  # at the start, at the end
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", action="store_true", help="client latency, not CPU")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert receiver.stdout is not None
        endpoint = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"
        result = anyio.run(measure_latency if args.latency else measure, args, endpoint)
    finally:
        receiver.terminate()
        receiver.wait()
    if args.json or args.latency:
        print(json.dumps(result, indent=2))
        return
    print(f"flagship request, zero-latency sim (simulated), {args.requests} requests x "
          f"{args.rounds} rounds, concurrency {args.concurrency}")  # fmt: skip
    for setting, us in result["cpu_us_per_request"].items():
        ratio = result["ratio_to_off"].get(setting, 1.0)
        alone = result["telemetry_alone_cpu_us_per_request"].get(setting, 0.0)
        print(
            f"  {setting:<8} {us:8.0f} us CPU/request  x{ratio:.3f}  "
            f"(telemetry alone {alone:.0f} us)"
        )


if __name__ == "__main__":
    main()
