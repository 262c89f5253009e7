"""Benchmark: instructions per request, moat against the same node functions wired by hand.

valgrind's cachegrind counts the instructions a process executes rather than the time it
takes, so the figure is the same on a busy machine as on an idle one (within about 1 %,
from the garbage collector's timing). Each side runs `--small` and then `--large`
requests of the overhead graph of `bench/overhead.py` (nodes that do not sleep, records
into a `MemorySink` drained every 1,000 requests) in a fresh interpreter under valgrind;
the difference of the two counts over the difference in requests is what one request
costs, with start-up and imports cancelled out.

    python -m bench.instructions --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from bench.overhead import DRAIN_EVERY, build_graph, handwritten
from engine.api import Pipeline
from engine.events import MemorySink
from engine.scheduler.runner import Runner

ROOT = Path(__file__).resolve().parents[1]


async def _requests(side: str, n: int, shape: str = "scalar") -> None:
    """What is measured: `n` requests one after another, by moat or by hand.

    `shape` is `scalar` (the graph of `bench/overhead.py`) or `mapping` (that of
    `bench/overhead_real.py`, whose nodes take mappings of templates); `side` is `moat`
    (`Runner.run`), `pipeline` (`Pipeline.run`, mapping only) or `handwritten`.
    """
    if shape == "mapping":
        await _mapping_requests(side, n)
        return
    graph = build_graph(sleep=False)
    sink = MemorySink()
    async with Runner(graph, sink=sink) as runner:
        call = runner.run if side == "moat" else handwritten(graph)
        for i in range(n):
            if i % DRAIN_EVERY == 0:
                sink.items.clear()
            await call({"prompt": "p"})


async def _mapping_requests(side: str, n: int) -> None:
    from bench import overhead_real

    graph = overhead_real.build_graph(sleep=False)
    inputs = list(overhead_real._inputs(n))
    sink = MemorySink(max_records=overhead_real.SINK_RECORDS)
    if side == "handwritten":
        call = overhead_real.handwritten(graph)
        for value in inputs:
            await call(value)
    elif side == "moat":
        async with Runner(graph, sink=sink) as runner:
            for value in inputs:
                await runner.run(value)
    else:
        async with Pipeline(graph, db=None, sink=sink) as pipe:
            run_id = pipe.start_run(None)
            for seq, value in enumerate(inputs):
                await pipe.run(value, run_id=run_id, seq=seq)


def _count(side: str, n: int, shape: str = "scalar") -> int:
    """Instructions valgrind counts for a whole process answering `n` requests."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.instructions",
        "--run",
        side,
        str(n),
        "--shape",
        shape,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_request(side: str, small: int, large: int, shape: str = "scalar") -> float:
    """Instructions per request of `side` (`moat`, `pipeline` or `handwritten`)."""
    return (_count(side, large, shape) - _count(side, small, shape)) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--shape",
        choices=["scalar", "mapping"],
        default="scalar",
        help="the graph: one scalar template per node, or mappings of several",
    )
    parser.add_argument("--run", nargs=2, metavar=("SIDE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        side, n = args.run
        anyio.run(_requests, side, int(n), args.shape)
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench.instructions: valgrind is not installed (apt install valgrind)")
    moat = per_request("moat", args.small, args.large, args.shape)
    hand = per_request("handwritten", args.small, args.large, args.shape)
    result: dict[str, Any] = {
        "shape": args.shape,
        "moat_instructions_per_request": round(moat),
        "handwritten_instructions_per_request": round(hand),
        "instructions_ratio": moat / hand,
    }
    if args.shape == "mapping":
        pipeline = per_request("pipeline", args.small, args.large, args.shape)
        result["pipeline_instructions_per_request"] = round(pipeline)
        result["pipeline_instructions_ratio"] = pipeline / hand
    result["python"] = sys.version.split()[0]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:40} {value:.2f}" if isinstance(value, float) else f"{key:40} {value}")


if __name__ == "__main__":
    main()
