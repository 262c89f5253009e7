"""Benchmark: what the scheduler costs over the same node functions wired by hand with anyio.

The reference graph has seven trivial nodes:

    router -> cache -> { draft (speculative) || critic -> simulator } -> converge -> validate

run once by moat (events on, into a `MemorySink`) and once by a hand-written coroutine
calling the same node instances with anyio task groups, in the same process. Figures:

- microseconds per request, nodes that do not sleep, one request at a time (the sink is
  drained every 1,000 requests, as the store's writer would);
- requests per second with 100 requests in flight;
- wall time per request when the nodes sleep 2/1/20/10/15/1/1 ms (the ideal critical
  path, router + cache + critic + simulator + converge + validate, is 30 ms);
- extra memory (tracemalloc) with 1,000 sleeping requests in flight.

    python bench/overhead.py --json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from engine import Node, NodeContext
from engine.events import MemorySink, Record
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph_text
from engine.plugin.registry import Registry
from engine.scheduler.runner import Runner

SLEEPS_MS = {
    "router": 2,
    "cache": 1,
    "draft": 20,
    "critic": 10,
    "simulator": 15,
    "converge": 1,
    "validate": 1,
}
IDEAL_MS = 30.0
DRAIN_EVERY = 1000
"""The `MemorySink` is emptied every this many requests, as a store writer would drain it."""


class Step(Node):
    """Sleeps `ms` (if any) and passes `value` on."""

    type_name = "step"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ms: float = 0
        value: Any = None

    class Output(BaseModel):
        value: Any = None

    async def run(self, config: Config, ctx: NodeContext | None) -> Output:
        if config.ms:
            await anyio.sleep(config.ms / 1000)
        return self.Output(value=config.value)


GRAPH = """
moat: 1
name: overhead
nodes:
  router: {type: step, with: {ms: ROUTER, value: "{{ input.prompt }}"}}
  cache: {type: step, with: {ms: CACHE, value: "{{ router.value }}"}}
  draft: {type: step, speculative: true, with: {ms: DRAFT, value: "{{ cache.value }}"}}
  critic: {type: step, with: {ms: CRITIC, value: "{{ cache.value }}"}}
  simulator: {type: step, with: {ms: SIMULATOR, value: "{{ critic.value }}"}}
  converge:
    type: step
    with: {ms: CONVERGE, value: "{{ draft.value if simulator.value else none }}"}
  validate: {type: step, with: {ms: VALIDATE, value: "{{ converge.value }}"}}
output:
  answer: validate.value
"""


def build_graph(sleep: bool) -> Graph:
    """The reference graph, with the nodes sleeping their `SLEEPS_MS` or not at all."""
    text = GRAPH.replace("name: overhead", "name: overhead-sleep" if sleep else "name: overhead")
    for node, ms in SLEEPS_MS.items():
        text = text.replace(node.upper(), str(ms if sleep else 0))
    return load_graph_text(text, "overhead.yaml", registry=Registry([Step]))


def handwritten(graph: Graph) -> Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]:
    """The same node instances and configs, wired by hand with anyio."""
    nodes = {node_id: node.impl for node_id, node in graph.nodes.items()}
    sleeps = graph.name.endswith("-sleep")
    ms = {node_id: SLEEPS_MS[node_id] if sleeps else 0 for node_id in nodes}

    async def step(node_id: str, value: Any) -> Any:
        impl = nodes[node_id]
        assert isinstance(impl, Step)
        output = await impl.run(Step.Config(ms=ms[node_id], value=value), None)
        return output.value

    async def request(input: Mapping[str, Any]) -> dict[str, Any]:
        routed = await step("router", input["prompt"])
        cached = await step("cache", routed)
        drafted: list[Any] = []

        async def draft() -> None:
            drafted.append(await step("draft", cached))

        async with anyio.create_task_group() as tg:
            tg.start_soon(draft)
            simulated = await step("simulator", await step("critic", cached))
        converged = await step("converge", drafted[0] if simulated else None)
        return {"answer": await step("validate", converged)}

    return request


class _DropSink:
    def record(self, item: Record) -> None:
        pass


async def per_request_us(graph: Graph, n: int, rounds: int) -> dict[str, float]:
    """CPU microseconds per request, one at a time, moat and hand-written, and their ratio.

    CPU time (`process_time`), not wall time, so other processes on a shared machine do
    not blur the comparison; with one request at a time and no I/O the two agree. The
    two alternate in rounds of `n` requests, and the ratio is the median of each round's
    own ratio: the speed of a shared machine drifts between rounds, not within one.
    """
    manual = handwritten(graph)
    sink = MemorySink()
    moat_us: list[float] = []
    hand_us: list[float] = []
    async with Runner(graph, sink=sink) as runner:
        for _ in range(200):  # warm up
            await runner.run({"prompt": "p"})
            await manual({"prompt": "p"})
        for _ in range(rounds):
            sink.items.clear()
            gc.collect()
            start = time.process_time()
            for i in range(n):
                if i % DRAIN_EVERY == 0:
                    sink.items.clear()  # a store writer drains records as they come
                await runner.run({"prompt": "p"})
            moat_us.append((time.process_time() - start) / n * 1e6)
            gc.collect()
            start = time.process_time()
            for _ in range(n):
                await manual({"prompt": "p"})
            hand_us.append((time.process_time() - start) / n * 1e6)
    return {
        "moat_us_per_request": statistics.median(moat_us),
        "handwritten_us_per_request": statistics.median(hand_us),
        "overhead_ratio": statistics.median(m / h for m, h in zip(moat_us, hand_us, strict=True)),
    }


async def throughput(graph: Graph, total: int, concurrency: int) -> tuple[float, float]:
    """Requests per second with `concurrency` requests in flight: (moat, hand-written).

    Medians of three alternating rounds of `total` requests each.
    """
    manual = handwritten(graph)
    sink = MemorySink()

    async def drive(call: Callable[[Mapping[str, Any]], Awaitable[Any]]) -> float:
        remaining = [total]

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                if remaining[0] % DRAIN_EVERY == 0:
                    sink.items.clear()  # a store writer drains records as they come
                await call({"prompt": "p"})

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        return total / (time.perf_counter() - start)

    moat_rps: list[float] = []
    hand_rps: list[float] = []
    async with Runner(graph, sink=sink) as runner:
        await drive(runner.run)  # warm up
        for _ in range(3):
            sink.items.clear()
            moat_rps.append(await drive(runner.run))
            hand_rps.append(await drive(manual))
    return statistics.median(moat_rps), statistics.median(hand_rps)


async def sleeping_latency(graph: Graph, n: int) -> dict[str, float]:
    """Wall time per request when nodes sleep (ideal 30 ms), moat and hand-written."""
    manual = handwritten(graph)
    moat_ms: list[float] = []
    hand_ms: list[float] = []
    async with Runner(graph, sink=MemorySink()) as runner:
        for _ in range(n):
            start = time.perf_counter()
            await runner.run({"prompt": "p"})
            moat_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            await manual({"prompt": "p"})
            hand_ms.append((time.perf_counter() - start) * 1000)
    return {
        "sleep_ideal_ms": IDEAL_MS,
        "moat_sleep_ms_mean": statistics.fmean(moat_ms),
        "moat_sleep_ms_p50": statistics.median(moat_ms),
        "handwritten_sleep_ms_mean": statistics.fmean(hand_ms),
        "moat_sleep_over_ideal_pct": (statistics.fmean(moat_ms) / IDEAL_MS - 1) * 100,
        "moat_sleep_over_handwritten_pct": (
            statistics.fmean(moat_ms) / statistics.fmean(hand_ms) - 1
        )
        * 100,
    }


async def _traced_in_flight(call: Callable[[Mapping[str, Any]], Awaitable[Any]], n: int) -> float:
    """MiB traced while `n` requests started at once by `call` are in flight."""
    await call({"prompt": "warm"})
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    peak = 0
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(call, {"prompt": f"p{i}"})
        await anyio.sleep(0.008)  # every request has started and is waiting somewhere
        peak = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (peak - before) / 2**20


async def memory_in_flight(graph: Graph, n: int) -> dict[str, float]:
    """Extra traced memory with `n` sleeping requests in flight.

    moat with its records dropped and kept, and the hand-written version: its figure is
    the floor this harness itself costs (a task per request started by a task group).
    """
    figures: dict[str, float] = {}
    for label, sink in (("dropped", _DropSink()), ("kept", MemorySink())):
        async with Runner(graph, sink=sink) as runner:
            figures[f"memory_mib_{n}_in_flight_records_{label}"] = await _traced_in_flight(
                runner.run, n
            )
    figures[f"handwritten_memory_mib_{n}_in_flight"] = await _traced_in_flight(
        handwritten(graph), n
    )
    return figures


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    fast = build_graph(sleep=False)
    slow = build_graph(sleep=True)
    result: dict[str, Any] = await per_request_us(fast, args.requests // 5, args.rounds)
    moat_rps, hand_rps = await throughput(fast, args.requests, 100)
    result |= {
        "moat_rps_100_concurrent": moat_rps,
        "handwritten_rps_100_concurrent": hand_rps,
    }
    result.update(await sleeping_latency(slow, args.sleep_requests))
    result.update(await memory_in_flight(slow, args.in_flight))
    result["backend"] = args.backend
    result["python"] = sys.version.split()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per figure")
    parser.add_argument("--sleep-requests", type=int, default=30)
    parser.add_argument(
        "--in-flight", type=int, default=1000, help="requests in flight for the memory figure"
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    result = anyio.run(main_async, args, backend=args.backend)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:45} {value:.2f}" if isinstance(value, float) else f"{key:45} {value}")


if __name__ == "__main__":
    main()
