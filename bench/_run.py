"""Runs benchmark configurations over a workload in simulated time, one after the other.

Every configuration sees the same requests, with the same request ids, seeds and arrival
times, so the `sim` answers line up request by request across configurations. Requests
arrive as a Poisson process at `rate` per simulated second; at most `concurrency` are in
flight (an arrival that finds them all busy waits, and that wait is reported as
`queue_wait_p95_ms`, never folded into request latency). Call `run_all` inside
`anyio.run(..., backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})`
so that simulated latencies cost no wall time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

from bench._metrics import Collector, percentile
from engine.api import rebind_models
from engine.events import PolicyPin
from engine.graph.loader import load_graph
from engine.models import Gateway
from engine.plugin.context import SharedState
from engine.requests import InputValidator, parse_request
from engine.scheduler.runner import Runner

__all__ = ["CONFIGS", "Config", "RunSettings", "run_all", "run_config"]

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = "graphs/governed-answer.yaml"


@dataclass(frozen=True, slots=True)
class Config:
    """One benchmarked configuration: a graph, optionally a policy file and model rebinding."""

    name: str
    graph: str
    policy_file: str | None = None
    models: Mapping[str, str] = field(default_factory=dict)
    note: str = ""


def _ablation(suffix: str, note: str) -> Config:
    return Config(
        f"flagship-{suffix}", FLAGSHIP, f"policies/governed-answer.{suffix}.yaml", note=note
    )


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("baseline", "graphs/baseline.yaml", note="large model, risk review then answer"),
        Config("flagship", FLAGSHIP, note="governed-answer, default policy"),
        _ablation("no-speculation", "the answer waits for the risk screen"),
        _ablation("always-parallel", "simulator on every deliberated request"),
        _ablation("no-cache", "semantic cache off"),
        _ablation("no-early-convergence", "cycle 1 never converges early"),
        _ablation("eager-join", "a refusal waits for the speculative answer"),
        _ablation("no-escalation", "the cheap screen refuses alone; answers never escalate"),
        _ablation("threshold-router", "the complexity-threshold router, not the learned one"),
        Config("cascade", "graphs/cascade.yaml", note="cache + speculative small/large cascade"),
        Config(
            "oracle-router",
            "bench/oracle-router.yaml",
            note="reads the difficulty label: cheapest model with P(correct) >= 0.9",
        ),
    )
}
"""The configurations, by stable name, in report order."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How requests are offered to every configuration."""

    rate: float = 20.0
    """Mean arrivals per simulated second (Poisson)."""
    concurrency: int = 512
    """Requests in flight at most."""
    seed: int = 1
    """Seed of the arrival times and of the simulated models."""


def _policy_pin(
    graph_policy: Mapping[str, Any], name: str | None, policy_file: str | None
) -> PolicyPin:
    if policy_file is None:
        return PolicyPin(name, None, graph_policy)
    body = yaml.safe_load((ROOT / policy_file).read_text(encoding="utf-8"))
    return PolicyPin(body.get("name", name), None, body)


def _arrivals(n: int, settings: RunSettings) -> list[float]:
    """Gaps (seconds) before each request: exponential with mean `1 / rate`."""
    rng = random.Random(f"arrivals:{settings.seed}")
    return [rng.expovariate(settings.rate) for _ in range(n)]


async def run_config(
    config: Config, requests: Sequence[Mapping[str, Any]], settings: RunSettings
) -> dict[str, Any]:
    """Run `requests` through one configuration; return its figures."""
    graph = load_graph(ROOT / config.graph)
    pin = _policy_pin(graph.policy, graph.policy_name, config.policy_file)
    validator = InputValidator(graph.input_schema)
    items = [parse_request(r, seq=i, declared=validator.declared) for i, r in enumerate(requests)]
    collector = Collector([item.labels for item in items], pin.body.get("refusal"))
    gateway = Gateway(rebind_models(graph.models, config.models))
    waits: list[float] = []
    limiter = anyio.Semaphore(max(1, settings.concurrency))
    wall0 = time.perf_counter()
    sim0 = anyio.current_time()
    try:
        async with Runner(
            graph, sink=collector, gateway=gateway, shared=SharedState(), run_id="bench",
            policy=pin, seed=settings.seed,
        ) as runner:  # fmt: skip

            async def answer(seq: int, data: dict[str, Any], arrived: float) -> None:
                try:
                    waits.append((anyio.current_time() - arrived) * 1000)
                    await runner.run(
                        data, request_id=f"bench-{seq:06d}", seq=seq, labels=items[seq].labels
                    )
                finally:
                    limiter.release()

            async with anyio.create_task_group() as tg:
                for item, gap in zip(items, _arrivals(len(items), settings), strict=True):
                    await anyio.sleep(gap)
                    data, error = validator.validate(item)
                    if data is None:
                        raise ValueError(f"request {item.seq} is invalid: {error}")
                    arrived = anyio.current_time()
                    await limiter.acquire()
                    tg.start_soon(answer, item.seq, data, arrived)
    finally:
        await gateway.aclose()
    figures = collector.figures()
    figures["queue_wait_p95_ms"] = percentile(waits, 95)
    figures["simulated_s"] = anyio.current_time() - sim0
    figures["wall_s"] = time.perf_counter() - wall0
    return figures


async def run_all(
    configs: Sequence[Config],
    requests: Sequence[Mapping[str, Any]],
    settings: RunSettings,
    progress: Any = None,
) -> dict[str, dict[str, Any]]:
    """Run every configuration in turn; `progress(name, figures)` after each one."""
    results: dict[str, dict[str, Any]] = {}
    for config in configs:
        results[config.name] = await run_config(config, requests, settings)
        if progress is not None:
            progress(config.name, results[config.name])
    return results
