"""Benchmark: the flagship graph's own cost per request, where it goes, and its memory at scale.

The workload is `graphs/governed-answer.yaml` on simulated models, every prompt distinct
(unlike `bench/store_run.py`, which repeats seven, so caches of text features stay warm),
across seven tenants, through `Pipeline.run_batch` at 64 in flight. Figures, all labelled
simulated:

- `cpu`: CPU milliseconds per request with the models answering instantly (`time_scale: 0`),
  store on (the process's CPU, the store's writer thread included) and off, each as is and
  with the collector settled as `moat run` settles it (`*_settled`);
- `profile`: the same run under `cProfile` (CPU clock), its own time summed by part of the
  code: scheduler, expressions, nodes, the sim provider, the gateway, cache embedding and
  LSH, PII regexes, records and events, the store writer, pydantic, anyio/asyncio;
- `latency`: the models at their simulated speed; a request's overhead is its latency minus
  the time at least one of its used model calls was in flight (the union of their
  intervals), so it is the time on the request's critical path when no model was working;
  p50 of that overhead over the model time, and where it falls (before the first call,
  between one call's end and the next one's start, after the last call);
- `instructions`: instructions per request counted by valgrind (records in memory), which
  a busy machine does not blur; the heap settled as `moat run` settles it, so a full
  collection does not decide the count;
- `writer`: the store writer alone: the records of N requests (answered in memory first)
  written through a `StoreWriter`, its thread's CPU a request and a record, and the
  records a request by kind;
- `memory`: max RSS of a fresh process answering N requests with the store on, beside the
  bytes the semantic cache holds at the end (legitimately growing up to its ceilings), so
  the rest can be checked to be flat.

    python bench/flagship.py cpu --requests 5000 --repeat 3
    python bench/flagship.py profile --requests 2000
    python bench/flagship.py latency --requests 300 --concurrency 8
    python bench/flagship.py memory --requests 10000 100000
    python bench/flagship.py instructions --requests 200
    python bench/flagship.py writer --requests 2000
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import gc
import json
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from engine import MemorySink
from engine.api import Pipeline
from engine.collector import settled_heap
from engine.events import LlmCall, RequestRecord
from engine.requests import BatchItem

ROOT = Path(__file__).resolve().parent.parent
TENANTS = tuple(f"tenant-{i}" for i in range(7))
TOPICS = ("invoices", "passwords", "exports", "refunds", "shipping", "accounts", "reports")
CONCURRENCY = 64


def flagship_graph(dest: Path, time_scale: float) -> Path:
    """The flagship graph with its simulated models' latencies scaled by `time_scale`."""
    text = (ROOT / "graphs" / "governed-answer.yaml").read_text()
    text = re.sub(
        r"\{provider: sim, profile: (\w+)\}",
        rf"{{provider: sim, profile: \1, time_scale: {time_scale:g}}}",
        text,
    )
    text = text.replace("policy: ../policies/", f"policy: {ROOT / 'policies'}/")
    path = dest / "governed-answer.yaml"
    path.write_text(text)
    return path


def requests(n: int, start: int = 0) -> Iterator[BatchItem]:
    """`n` distinct requests across seven tenants (numbered from `start`)."""
    for i in range(start, start + n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"How do I manage {topic} for team {i} in region {i * 7919 % 100_003}?"
        yield BatchItem(i, {"prompt": prompt, "tenant": TENANTS[i % len(TENANTS)]})


async def _answer(pipe: Pipeline, n: int, start: int = 0) -> None:
    await pipe.run_batch(requests(n, start), total=n, concurrency=CONCURRENCY)
    await anyio.to_thread.run_sync(pipe.flush)


async def _cpu_once(graph: Path, db: Path | None, n: int, settled: bool = False) -> float:
    sink = None if db is not None else MemorySink(max_records=10_000)
    async with Pipeline(graph, db=db, sink=sink) as pipe:
        await _answer(pipe, 300, 10**7)  # warm up (other prompts)
        gc.collect()
        with settled_heap() if settled else contextlib.nullcontext():
            start = time.process_time()
            await _answer(pipe, n)
            return (time.process_time() - start) / n * 1000


def cpu(n: int, repeat: int) -> dict[str, Any]:
    """CPU ms per request, store on and off, medians of `repeat` alternating runs; each
    also with the collector settled as `moat run` settles it (`engine.collector`: the
    young generation at 20,000 objects, what was alive before the batch frozen), as an
    application that embeds `Pipeline` for batches can too."""
    runs: dict[str, list[float]] = {
        "store": [],
        "memory": [],
        "store_settled": [],
        "memory_settled": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        graph = flagship_graph(Path(tmp), 0)
        for i in range(repeat):
            for settled in (False, True):
                suffix = "_settled" if settled else ""
                db = Path(tmp) / f"cpu-{i}{suffix}.db"
                runs["store" + suffix].append(anyio.run(_cpu_once, graph, db, n, settled))
                runs["memory" + suffix].append(anyio.run(_cpu_once, graph, None, n, settled))
    return {
        "benchmark": "flagship.cpu (simulated models, time_scale 0)",
        "requests": n,
        "repeat": repeat,
        **{f"cpu_ms_per_request_{k}": statistics.median(v) for k, v in runs.items()},
        **{f"runs_{k}": v for k, v in runs.items()},
    }


PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "cache embedding and LSH",
        ("nodes/_support/embed.py", "nodes/_support/lsh.py", "nodes/_support/semcache.py"),
    ),
    ("PII regexes", ("engine/pii.py",)),
    ("sim provider", ("engine/models/sim.py", "engine/models/_sim")),
    ("gateway", ("engine/models/",)),
    ("nodes", ("nodes/",)),
    (
        "records and events",
        (
            "engine/scheduler/request.py",
            "engine/events.py",
            "engine/api.py",
            "engine/_pipeline.py",
        ),
    ),
    ("store writer", ("engine/store/", "sqlite3")),
    ("expressions", ("engine/expr/",)),
    ("scheduler", ("engine/scheduler/",)),
    ("request checks", ("engine/requests.py", "jsonschema", "referencing")),
    ("pydantic", ("pydantic",)),
    ("anyio and asyncio", ("anyio", "asyncio", "selectors", "threading", "queue")),
)


def _own_part(filename: str) -> str | None:
    where = filename.replace("\\", "/")
    for label, needles in PARTS:
        if any(needle in where for needle in needles):
            return label
    return None


def _shares(stats: dict[Any, Any]) -> dict[str, float]:
    """Own time by part; a builtin or standard-library function's time goes to the part
    of whoever called it (`dict.get` in the scheduler is the scheduler's time)."""
    parts: dict[str, float] = {}
    for (filename, _, name), row in stats.items():
        label = _own_part(filename)
        if label is None and filename == "~":
            label = _own_part(name)  # e.g. a method of an asyncio or sqlite3 object
        if label is not None:
            parts[label] = parts.get(label, 0.0) + row[2]
            continue
        callers: dict[Any, Any] = row[4]
        total = sum(c[2] for c in callers.values()) or 1.0
        for (caller_file, _, caller_name), c in callers.items():
            by = _own_part(caller_file) or _own_part(caller_name) or "other (stdlib, builtins)"
            parts[by] = parts.get(by, 0.0) + row[2] * c[2] / total
    return parts


async def _profiled(graph: Path, db: Path, n: int, out: Path) -> float:
    async with Pipeline(graph, db=db) as pipe:
        await _answer(pipe, 300, 10**7)
        gc.collect()
        profile = cProfile.Profile()  # wall clock: a CPU-clock timer inflates small calls
        start = time.process_time()
        profile.enable()
        await _answer(pipe, n)
        profile.disable()
        cpu_ms = (time.process_time() - start) / n * 1000
        profile.dump_stats(out)
        return cpu_ms


def profile(n: int) -> dict[str, Any]:
    """Own CPU time per request by part of the code (cProfile slows everything alike)."""
    with tempfile.TemporaryDirectory() as tmp:
        graph = flagship_graph(Path(tmp), 0)
        out = Path(tmp) / "flagship.prof"
        cpu_ms = anyio.run(_profiled, graph, Path(tmp) / "profile.db", n, out)
        stats = pstats.Stats(str(out))
    parts = _shares(stats.stats)  # type: ignore[attr-defined]
    top = [
        (row[2], f"{Path(filename).name}:{line}({name})")
        for (filename, line, name), row in stats.stats.items()  # type: ignore[attr-defined]
    ]
    total = sum(parts.values())
    shares = {k: round(v / total * 100, 1) for k, v in sorted(parts.items(), key=lambda x: -x[1])}
    return {
        "benchmark": "flagship.profile (simulated models, time_scale 0, under cProfile)",
        "requests": n,
        "profiled_cpu_ms_per_request": round(cpu_ms, 3),
        "share_pct": shares,
        "top_functions_own_ms_per_request": [
            [round(own / n * 1000, 4), where] for own, where in sorted(top, reverse=True)[:25]
        ],
    }


def _union_ms(calls: list[LlmCall]) -> float:
    spans = sorted((c.started_at, c.started_at + c.latency_ms / 1000) for c in calls)
    total = 0.0
    end = float("-inf")
    for lo, hi in spans:
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total * 1000


def _idle_ms(record: RequestRecord, calls: list[LlmCall]) -> tuple[float, float, float]:
    """Where a request's time with no model working goes, in ms: before its first call,
    between calls (one call's end to the next one's start, where none overlaps), and after
    its last call."""
    spans = sorted((c.started_at, c.started_at + c.latency_ms / 1000) for c in calls)
    between = 0.0
    end = spans[0][1]
    for lo, hi in spans[1:]:
        if lo > end:
            between += lo - end
        end = max(end, hi)
    lead = spans[0][0] - record.started_at
    return lead * 1000, between * 1000, record.latency_ms - (end - record.started_at) * 1000


async def _latency(graph: Path, n: int, concurrency: int) -> dict[str, Any]:
    sink = MemorySink()
    async with Pipeline(graph, db=None, sink=sink) as pipe:
        await pipe.run_batch(requests(n), total=n, concurrency=concurrency)
    calls: dict[str, list[LlmCall]] = {}
    done: list[RequestRecord] = []
    for item in sink.items:
        if isinstance(item, LlmCall) and item.call_outcome in ("used", "none", "cached"):
            if item.status == "ok":
                calls.setdefault(item.request_id, []).append(item)
        elif isinstance(item, RequestRecord):
            done.append(item)
    overhead_ms: list[float] = []
    overhead_pct: list[float] = []
    idle: list[tuple[float, float, float]] = []
    for record in done:
        model_ms = _union_ms(calls.get(record.id, []))
        if model_ms <= 0:
            continue  # answered from the cache: no model on its path
        overhead_ms.append(record.latency_ms - model_ms)
        overhead_pct.append((record.latency_ms - model_ms) / model_ms * 100)
        idle.append(_idle_ms(record, calls[record.id]))
    return {
        "benchmark": "flagship.latency (simulated models at their simulated speed)",
        "requests": n,
        "concurrency": concurrency,
        "measured": len(overhead_pct),
        "p50_latency_ms": statistics.median(r.latency_ms for r in done),
        "p50_overhead_ms": statistics.median(overhead_ms),
        "p50_overhead_pct": statistics.median(overhead_pct),
        "p95_overhead_pct": statistics.quantiles(overhead_pct, n=20)[-1],
        # where the overhead is: before the first call, between calls, after the last
        "p50_before_first_call_ms": statistics.median(i[0] for i in idle),
        "p50_between_calls_ms": statistics.median(i[1] for i in idle),
        "max_between_calls_ms": max(i[1] for i in idle),
        "p50_after_last_call_ms": statistics.median(i[2] for i in idle),
    }


def latency(n: int, concurrency: int) -> dict[str, Any]:
    """p50 overhead over the time the request's used model calls were in flight."""
    with tempfile.TemporaryDirectory() as tmp:
        return anyio.run(_latency, flagship_graph(Path(tmp), 1), n, concurrency)


_SHARED_KINDS = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
"""Objects every part of the process shares: never counted as a cache's own."""


def _deep_size(root: object) -> int:
    """Bytes of every object reachable from `root` (each counted once)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SHARED_KINDS):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _allocated_bytes() -> int | None:
    """Bytes the process's objects hold in the allocators: Python's small-object blocks
    plus glibc malloc's chunks in use (mapped ones included; SQLite's heap is in there).
    None where glibc's `mallinfo2` is missing."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as out:
        os.dup2(out.fileno(), 2)  # `_debugmallocstats` writes to the C stderr
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode()
    found = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    if found is None:
        return None
    info = mallinfo2()
    return int(found.group(1).replace(",", "")) + int(info.uordblks) + int(info.hblkhd)


def _drop_store_maps(items: dict[str, Any], keys: list[str]) -> None:
    """Empty the row maps the caches' store persistence keeps to cap the store's cache table
    (one item per stored row, so as many as the caches hold entries: the caches' own bytes,
    held on the store's side), then collect."""
    for key in keys:
        persistence = getattr(items[key], "persistence", None)
        for name in ("_sizes", "_part_bytes"):
            getattr(persistence, name, {}).clear()
    gc.collect()


def _drop(items: dict[str, Any], keys: list[str]) -> None:
    """Let the shared objects under `keys` go (the caches: out of their byte budget, their
    partitions emptied, so nothing else keeps their entries), then collect."""
    for key in keys:
        cache = items.pop(key)
        tenants = getattr(cache, "_tenants", {})
        budget = getattr(cache, "budget", None)
        for part in tenants.values():
            if budget is not None:
                budget.forget(part)
        tenants.clear()
        getattr(cache, "_prepared", {}).clear()
        del cache
    gc.collect()


async def _memory_child(n: int, db: Path, graph: Path) -> dict[str, Any]:
    start = time.process_time()
    async with Pipeline(graph, db=db) as pipe:
        await _answer(pipe, n)
        # The batch's peak, read before anything is measured: the deep sizes below keep a
        # set of every object's id (about 80 bytes an object, over 100 MiB for a full
        # cache), which would otherwise be counted as the batch's.
        max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cpu_s = time.process_time() - start
        writer = pipe._sink
        gc.collect()
        assert pipe._runner is not None
        items: dict[str, Any] = pipe._runner.shared._items
        shared_mib = {key: _deep_size(value) / 2**20 for key, value in items.items()}
        # What the caches hold in the allocators: the bytes in use that go when they go.
        # `sys.getsizeof` (the deep size) leaves out the allocators' rounding of each
        # object to its size class, about a tenth of a cache entry's bytes.
        # The store's row map of the cache's table goes first (its keys are the entries'
        # own strings, so this frees the map alone), then the caches.
        caches = [key for key in items if "cache" in key]
        with_caches = _allocated_bytes()
        _drop_store_maps(items, caches)
        without_maps = _allocated_bytes()
        _drop(items, caches)
        without = _allocated_bytes()
    allocated: dict[str, Any] = {}
    if with_caches is not None and without_maps is not None and without is not None:
        allocated = {
            "cache_allocated_mib": (with_caches - without) / 2**20,
            "cache_store_map_mib": (with_caches - without_maps) / 2**20,
            "rest_allocated_mib": without / 2**20,
        }
    return {
        "requests": n,
        "max_rss_mib": max_rss_mib,
        "max_rss_after_measuring_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cache_mib": sum(mib for key, mib in shared_mib.items() if "cache" in key),
        **allocated,
        "shared_state_mib": shared_mib,
        "writer_peak_backlog": getattr(getattr(writer, "stats", None), "peak_backlog", None),
        "writer_largest_batch": getattr(getattr(writer, "stats", None), "largest_batch", None),
        "cpu_ms_per_request": cpu_s / n * 1000,
    }


def memory(counts: list[int]) -> dict[str, Any]:
    """Max RSS of a fresh process per count, and the semantic cache's bytes at its end.

    The allowance for the last count is the first count's max RSS plus the growth of the
    cache's bytes in the allocators (`cache_allocated_mib`: its entries and indexes, and the
    row map its store persistence keeps to cap the store's cache table, also given alone as
    `cache_store_map_mib`); the growth of its deep size is given beside it."""
    rows = []
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            graph = flagship_graph(Path(tmp), 0)
            out = subprocess.run(
                [sys.executable, __file__, "_memory", str(n), str(Path(tmp) / "m.db"), str(graph)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # a long run's progress
    result: dict[str, Any] = {"benchmark": "flagship.memory (simulated, store on)", "runs": rows}
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        per = 1024 / (last["requests"] - first["requests"])
        for name, key in (("", "cache_allocated_mib"), ("_deep_size", "cache_mib")):
            if key not in first or key not in last:
                continue
            growth = last[key] - first[key]
            beyond = last["max_rss_mib"] - first["max_rss_mib"] - growth
            result[f"allowance_mib{name}"] = first["max_rss_mib"] + growth
            result[f"rss_minus_cache_growth_mib{name}"] = beyond
            result[f"kib_per_request_beyond_cache{name}"] = beyond * per
        if "rest_allocated_mib" in first and "rest_allocated_mib" in last:
            result["rest_allocated_growth_mib"] = (
                last["rest_allocated_mib"] - first["rest_allocated_mib"]
            )
    return result


async def _instructions_child(n: int, graph: Path) -> None:
    async with Pipeline(graph, db=None, sink=MemorySink(max_records=2_000)) as pipe:
        await _answer(pipe, 100, 10**7)  # warm up (other prompts)
        # As `moat run` does: with the startup heap frozen, whether a full collection of it
        # falls among the measured requests no longer moves the count by several per cent.
        with settled_heap(pipe.model_specs.values()):
            if n:
                await _answer(pipe, n)


def _count_instructions(n: int, graph: Path) -> int:
    """Instructions valgrind counts for a whole process answering 100 + `n` requests."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "_instructions",
        str(n),
        str(graph),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def instructions(n: int) -> dict[str, Any]:
    """Instructions per request (records in memory): the same on a busy machine as on an
    idle one, where CPU time is not. Start-up, imports and 100 warm-up requests cancel out."""
    if shutil.which("valgrind") is None:
        sys.exit("bench/flagship.py instructions: valgrind is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        graph = flagship_graph(Path(tmp), 0)
        base = _count_instructions(0, graph)
        total = _count_instructions(n, graph)
    return {
        "benchmark": "flagship.instructions (simulated models, time_scale 0, valgrind)",
        "requests": n,
        "instructions_per_request": round((total - base) / n),
    }


async def _records(graph: Path, n: int) -> list[Any]:
    sink = MemorySink()
    async with Pipeline(graph, db=None, sink=sink) as pipe:
        await _answer(pipe, n)
    return list(sink.items)


def writer(n: int) -> dict[str, Any]:
    """The store writer's thread CPU for the flagship's records: the first fifth of the
    requests' records warm it up (its string codes, its compression dictionary), the rest
    are measured."""
    from engine.store.writer import StoreWriter

    with tempfile.TemporaryDirectory() as tmp:
        records = anyio.run(_records, flagship_graph(Path(tmp), 0), n)
        warm = len(records) // 5
        with StoreWriter(Path(tmp) / "writer.db") as sink:
            for record in records[:warm]:
                sink.record(record)
            sink.flush()
            before = sink.stats.cpu_s
            for record in records[warm:]:
                sink.record(record)
            sink.flush()
            cpu_s = sink.stats.cpu_s - before
    measured = len(records) - warm
    kinds: dict[str, int] = {}
    for record in records:
        kinds[type(record).__name__] = kinds.get(type(record).__name__, 0) + 1
    return {
        "benchmark": "flagship.writer (simulated models, time_scale 0; the writer's thread)",
        "requests": n,
        "writer_cpu_ms_per_request": round(cpu_s / (measured / len(records) * n) * 1000, 3),
        "writer_cpu_us_per_record": round(cpu_s / measured * 1e6, 2),
        "records_per_request": {k: round(v / n, 2) for k, v in sorted(kinds.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what",
        choices=[
            "cpu",
            "profile",
            "latency",
            "memory",
            "instructions",
            "writer",
            "_memory",
            "_instructions",
        ],
    )
    parser.add_argument("--requests", type=int, nargs="+", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="latency: in flight")
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.what == "_memory":
        n, db, graph = int(args.args[0]), Path(args.args[1]), Path(args.args[2])
        print(json.dumps(anyio.run(_memory_child, n, db, graph)))
        return 0
    if args.what == "_instructions":
        anyio.run(_instructions_child, int(args.args[0]), Path(args.args[1]))
        return 0
    defaults = {"memory": [10_000, 100_000], "latency": [300], "instructions": [200]}
    counts = args.requests or defaults.get(args.what, [2000])
    if args.what == "cpu":
        result = cpu(counts[0], args.repeat)
    elif args.what == "profile":
        result = profile(counts[0])
    elif args.what == "latency":
        result = latency(counts[0], args.concurrency)
    elif args.what == "instructions":
        result = instructions(counts[0])
    elif args.what == "writer":
        result = writer(counts[0])
    else:
        result = memory(counts)
    result["python"] = sys.version.split()[0]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
