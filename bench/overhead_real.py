"""Benchmark: moat's cost over hand-written anyio on a graph shaped like real ones.

`bench/overhead.py` gives every node one scalar template. Real graphs give each node a
mapping with several `{{ }}` templates, and users call `Pipeline.run` and
`Pipeline.run_batch`, which also check the request and count the run. Here the same
7-node reference graph,

    router -> cache -> { draft (speculative) || critic -> simulator } -> converge -> validate

has nodes taking a mapping `with:` of two or three templates each, and is measured through
`Runner.run`, `Pipeline.run` and `Pipeline.run_batch` (db=None, records into a bounded
in-memory sink), against the same node coroutines wired by hand with anyio, their configs
built without validation. Figures:

- CPU microseconds per request, one at a time: hand-written, `Runner.run`, `Pipeline.run`
  (medians of alternating rounds, and the median of each round's own ratio);
- requests per second with 100 in flight through `Pipeline.run_batch`, and by hand; then
  the same with the collector settled as `moat run` settles it (`engine.collector`);
- 1,000 requests started at once with sleeping nodes (2/1/20/10/15/1/1 ms): wall time and
  peak traced memory through `Pipeline.run` in 1,000 tasks and by hand in 1,000 tasks, and
  the wall time through `Pipeline.run_batch(concurrency=1000)`.

    python bench/overhead_real.py --json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from engine import Node, NodeContext
from engine.api import Pipeline
from engine.collector import settled_heap
from engine.events import MemorySink
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph_text
from engine.plugin.registry import Registry
from engine.requests import BatchItem
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
SINK_RECORDS = 10_000
"""The in-memory sink keeps this many of the latest records (a store writer drains them)."""


class Stage(Node):
    """Sleeps `ms` (if any) and passes `value` on, with a note and a tag about it."""

    type_name = "stage"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ms: float = 0
        value: Any = None
        note: str = ""
        tag: Any = None

    class Output(BaseModel):
        value: Any = None
        note: str = ""

    async def run(self, config: Config, ctx: NodeContext | None) -> Output:
        if config.ms:
            await anyio.sleep(config.ms / 1000)
        return self.Output(value=config.value, note=config.note)


GRAPH = """
moat: 1
name: overhead-real
input:
  type: object
  required: [prompt]
  properties: {prompt: {type: string}, tenant: {type: string, default: public}}
nodes:
  router:
    type: stage
    with: {ms: ROUTER, value: "{{ input.prompt }}", note: "route for {{ input.tenant }}",
           tag: "{{ input.tenant }}"}
  cache:
    type: stage
    with: {ms: CACHE, value: "{{ router.value }}", note: "{{ router.note }}",
           tag: "{{ len(router.value) }}"}
  draft:
    type: stage
    speculative: true
    with: {ms: DRAFT, value: "{{ cache.value }}", note: "draft of {{ cache.note }}"}
  critic:
    type: stage
    with: {ms: CRITIC, value: "{{ cache.value }}", note: "{{ cache.note }}",
           tag: "{{ len(cache.value) }}"}
  simulator:
    type: stage
    with: {ms: SIMULATOR, value: "{{ critic.value }}", note: "harm of {{ critic.note }}"}
  converge:
    type: stage
    with: {ms: CONVERGE, value: "{{ draft.value if simulator.value else none }}",
           note: "{{ simulator.note }}", tag: "{{ len(critic.note) }}"}
  validate:
    type: stage
    with: {ms: VALIDATE, value: "{{ converge.value }}", note: "{{ converge.note }}"}
output:
  answer: validate.value
"""


def build_graph(sleep: bool) -> Graph:
    """The reference graph, with the nodes sleeping their `SLEEPS_MS` or not at all."""
    text = GRAPH.replace("name: overhead-real", f"name: overhead-real{'-sleep' if sleep else ''}")
    for node, ms in SLEEPS_MS.items():
        text = text.replace(node.upper(), str(ms if sleep else 0))
    return load_graph_text(text, "overhead-real.yaml", registry=Registry([Stage]))


def handwritten(graph: Graph) -> Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]:
    """The same node instances and templates' values, wired by hand with anyio.

    Configs are built with `model_construct` (no validation) from the same values the
    templates compute, so only the scheduler's own work is left out.
    """
    nodes = {node_id: node.impl for node_id, node in graph.nodes.items()}
    sleeps = graph.name.endswith("-sleep")
    ms = {node_id: float(SLEEPS_MS[node_id]) if sleeps else 0.0 for node_id in nodes}
    make = Stage.Config.model_construct

    async def step(node_id: str, value: Any, note: str, tag: Any = None) -> Stage.Output:
        impl = nodes[node_id]
        assert isinstance(impl, Stage)
        return await impl.run(make(ms=ms[node_id], value=value, note=note, tag=tag), None)

    async def request(input: Mapping[str, Any]) -> dict[str, Any]:
        tenant = input.get("tenant", "public")
        router = await step("router", input["prompt"], f"route for {tenant}", tenant)
        cache = await step("cache", router.value, router.note, len(router.value))
        drafted: list[Stage.Output] = []

        async def draft() -> None:
            drafted.append(await step("draft", cache.value, f"draft of {cache.note}"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(draft)
            critic = await step("critic", cache.value, cache.note, len(cache.value))
            simulator = await step("simulator", critic.value, f"harm of {critic.note}")
        value = drafted[0].value if simulator.value else None
        converge = await step("converge", value, simulator.note, len(critic.note))
        validate = await step("validate", converge.value, converge.note)
        return {"answer": validate.value}

    return request


def _inputs(n: int, start: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(start, start + n):
        yield {"prompt": f"question {i}", "tenant": f"t{i % 7}"}


async def per_request_us(n: int, rounds: int) -> dict[str, float]:
    """CPU microseconds per request, one at a time: by hand, `Runner.run`, `Pipeline.run`.

    CPU time (`process_time`), not wall time, so other processes on a shared machine do
    not blur the comparison. The three alternate in rounds of `n` requests, and each
    ratio is the median of the rounds' own ratios.
    """
    graph = build_graph(sleep=False)
    manual = handwritten(graph)
    hand: list[float] = []
    runner_us: list[float] = []
    pipe_us: list[float] = []
    sink = MemorySink(max_records=SINK_RECORDS)
    async with (
        Runner(graph, sink=MemorySink(max_records=SINK_RECORDS)) as runner,
        Pipeline(graph, db=None, sink=sink) as pipe,
    ):
        run_id = pipe.start_run(None)
        for value in _inputs(300):  # warm up
            await manual(value)
            await runner.run(value)
            await pipe.run(value, run_id=run_id)
        for r in range(rounds):
            inputs = list(_inputs(n, r * n))
            gc.collect()
            start = time.process_time()
            for value in inputs:
                await manual(value)
            hand.append((time.process_time() - start) / n * 1e6)
            gc.collect()
            start = time.process_time()
            for value in inputs:
                await runner.run(value)
            runner_us.append((time.process_time() - start) / n * 1e6)
            gc.collect()
            start = time.process_time()
            for value in inputs:  # (each takes the run's next seq)
                await pipe.run(value, run_id=run_id)
            pipe_us.append((time.process_time() - start) / n * 1e6)
    return {
        "handwritten_us_per_request": statistics.median(hand),
        "runner_us_per_request": statistics.median(runner_us),
        "pipeline_us_per_request": statistics.median(pipe_us),
        "runner_over_handwritten": statistics.median(
            m / h for m, h in zip(runner_us, hand, strict=True)
        ),
        "pipeline_over_handwritten": statistics.median(
            m / h for m, h in zip(pipe_us, hand, strict=True)
        ),
    }


async def _drive(
    call: Callable[[Mapping[str, Any]], Awaitable[Any]], total: int, limit: int
) -> float:
    """Seconds to answer `total` requests by hand with at most `limit` in flight."""
    inputs = _inputs(total)

    async def worker() -> None:
        for value in inputs:  # one shared iterator: the workers take turns
            await call(value)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(limit):
            tg.start_soon(worker)
    return time.perf_counter() - start


async def _batch(pipe: Pipeline, total: int, limit: int) -> float:
    """Seconds for `Pipeline.run_batch` to answer `total` requests, `limit` in flight."""
    items = (BatchItem(i, value) for i, value in enumerate(_inputs(total)))
    start = time.perf_counter()
    await pipe.run_batch(items, total=total, concurrency=limit)
    return time.perf_counter() - start


async def throughput(
    total: int, limit: int, rounds: int, *, settled: bool = False
) -> dict[str, float]:
    """Requests per second with `limit` in flight: `Pipeline.run_batch` and by hand.

    Medians of alternating rounds; the ratio is the median of each round's own. With
    `settled`, both run inside `settled_heap`, the collector as `moat run` sets it (the
    keys then end in `_settled`).
    """
    graph = build_graph(sleep=False)
    manual = handwritten(graph)
    moat_rps: list[float] = []
    hand_rps: list[float] = []
    async with Pipeline(graph, db=None, sink=MemorySink(max_records=SINK_RECORDS)) as pipe:
        await _batch(pipe, 500, limit)  # warm up
        with settled_heap() if settled else contextlib.nullcontext():
            for _ in range(rounds):
                gc.collect()
                moat_rps.append(total / await _batch(pipe, total, limit))
                gc.collect()
                hand_rps.append(total / await _drive(manual, total, limit))
    tail = "_settled" if settled else ""
    return {
        f"pipeline_batch_rps_{limit}_concurrent{tail}": statistics.median(moat_rps),
        f"handwritten_rps_{limit}_concurrent{tail}": statistics.median(hand_rps),
        f"batch_rps_over_handwritten{tail}": statistics.median(
            m / h for m, h in zip(moat_rps, hand_rps, strict=True)
        ),
    }


async def _traced(run: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    """(wall seconds, peak extra traced MiB) of `run`."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    wall = await run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return wall, (peak - before) / 2**20


async def sleeping_batch(n: int, rounds: int) -> dict[str, float]:
    """`n` requests started at once, nodes sleeping: wall and peak extra memory.

    `n` tasks each calling `Pipeline.run` (records into a bounded sink) against `n` tasks
    each running the hand-written version, so both have all `n` in flight; and the same
    requests through `Pipeline.run_batch(concurrency=n)`, which starts them one per turn
    of the event loop. Wall times are taken without tracing (medians of alternating
    rounds); memory in one traced round of each.
    """
    graph = build_graph(sleep=True)
    manual = handwritten(graph)
    moat_s: list[float] = []
    batch_s: list[float] = []
    hand_s: list[float] = []
    async with Pipeline(graph, db=None, sink=MemorySink(max_records=SINK_RECORDS)) as pipe:
        run_id = pipe.start_run(None)

        async def moat(value: Mapping[str, Any]) -> Any:
            return await pipe.run(value, run_id=run_id)

        await _drive(moat, 200, 200)  # warm up
        await _drive(manual, 200, 200)
        for _ in range(rounds):
            gc.collect()
            moat_s.append(await _drive(moat, n, n))
            gc.collect()
            hand_s.append(await _drive(manual, n, n))
            gc.collect()
            batch_s.append(await _batch(pipe, n, n))
        _, moat_mib = await _traced(lambda: _drive(moat, n, n))
        _, hand_mib = await _traced(lambda: _drive(manual, n, n))
    return {
        f"pipeline_wall_s_{n}_sleeping": statistics.median(moat_s),
        f"pipeline_batch_wall_s_{n}_sleeping": statistics.median(batch_s),
        f"handwritten_wall_s_{n}_sleeping": statistics.median(hand_s),
        "sleeping_wall_over_handwritten": statistics.median(
            m / h for m, h in zip(moat_s, hand_s, strict=True)
        ),
        "sleeping_batch_wall_over_handwritten": statistics.median(
            m / h for m, h in zip(batch_s, hand_s, strict=True)
        ),
        f"pipeline_peak_mib_{n}_sleeping": moat_mib,
        f"handwritten_peak_mib_{n}_sleeping": hand_mib,
        "pipeline_extra_mib_over_handwritten": moat_mib - hand_mib,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = await per_request_us(args.requests // args.rounds, args.rounds)
    result |= await throughput(args.requests, 100, 3)
    result |= await throughput(args.requests, 100, 3, settled=True)
    result |= await sleeping_batch(args.in_flight, 3)
    result["backend"] = args.backend
    result["python"] = sys.version.split()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per figure")
    parser.add_argument("--in-flight", type=int, default=1000, help="sleeping requests at once")
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
