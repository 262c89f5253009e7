"""Runs benchmark configurations over a workload in simulated time.

Every configuration sees the same requests, with the same request ids, seeds and arrival
times, so the `sim` answers line up request by request across configurations. Requests
arrive as a Poisson process at `rate` per simulated second; at most `concurrency` are in
flight (an arrival that finds them all busy waits, and that wait is reported as
`queue_wait_p95_ms`, never folded into request latency). Call `run_all` inside
`anyio.run(..., backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})`
so that simulated latencies cost no wall time, or hand `run_job` to a process pool: every
configuration x seed run has its own event loop, clock, gateway and cache, so on a mock
clock its figures do not depend on what else the machine runs, or in which process.
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
from trio.testing import MockClock

from bench._faults import PROFILES, FaultProfile, apply_faults
from bench._metrics import Collector, Row, percentile
from engine.api import rebind_models
from engine.events import PolicyPin
from engine.graph.loader import load_graph
from engine.graph.spec import ModelSpec
from engine.models import Gateway
from engine.plugin.context import SharedState
from engine.requests import InputValidator, parse_request
from engine.scheduler.runner import Runner

__all__ = [
    "CONFIGS",
    "SINGLES",
    "Config",
    "Job",
    "Outcome",
    "RunSettings",
    "run_all",
    "run_config",
    "run_job",
]  # fmt: skip

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
    sweep: tuple[str, tuple[float, ...]] | None = None
    """The policy threshold its cost-quality curve sweeps (a dotted key) and the values."""


def _ablation(suffix: str, note: str) -> Config:
    return Config(
        f"flagship-{suffix}", FLAGSHIP, f"policies/governed-answer.{suffix}.yaml", note=note
    )


REFUSE_AT = ("risk.refuse_at", (0.5, 0.65, 0.9, 0.97))
"""The sweep of single-model designs: how sure the risk review must be to refuse."""
SINGLE = "bench/single.yaml"
SINGLES = ("single-small", "single-medium", "single-large")
"""The single-model runs the counterfactual oracle is built from, cheapest first."""

CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config(
            "baseline", "graphs/baseline.yaml", sweep=REFUSE_AT,
            note="large model only, risk review and answer in parallel",
        ),
        Config(
            "flagship", FLAGSHIP, sweep=("deliberation.below", (0.5, 0.7, 0.85, 0.95)),
            note="governed-answer, default policy",
        ),
        _ablation("no-speculation", "the answer waits for the risk screen"),
        _ablation("always-parallel", "simulator on every deliberated request"),
        _ablation("no-cache", "semantic cache off"),
        _ablation("no-early-convergence", "cycle 1 never converges early"),
        _ablation("eager-join", "a refusal waits for the speculative answer"),
        _ablation("no-escalation", "the cheap screen refuses alone; answers never escalate"),
        _ablation("threshold-router", "the complexity-threshold router, not the learned one"),
        _ablation("no-second-sample", "a rejected answer is revised after its critique"),
        Config(
            "cascade", "graphs/cascade.yaml",
            sweep=("speculate.accept_threshold", (0.3, 0.45, 0.75, 0.9)),
            note="cache + speculative small/large cascade",
        ),
        *(
            Config(
                name, SINGLE, models={"m": f"sim:{name.removeprefix('single-')}"},
                note=f"{name.removeprefix('single-')} model only, with the flagship's cache",
            )
            for name in SINGLES
        ),
    )
}  # fmt: skip
"""The configurations, by stable name, in report order."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How requests are offered to every configuration, and the models' weather."""

    rate: float = 20.0
    """Mean arrivals per simulated second (Poisson)."""
    concurrency: int = 512
    """Requests in flight at most."""
    seed: int = 1
    """Seed of the arrival times and of the simulated models."""
    faults: FaultProfile = PROFILES["none"]
    """Faults and limits of every `sim` model."""
    models: Mapping[str, str] = field(default_factory=dict)
    """`--model NAME=PROVIDER:MODEL` for every configuration whose graph has NAME (a
    single-model run's model follows the NAME of its size: `single-small` takes `small`)."""


def _policy_pin(
    graph_policy: Mapping[str, Any],
    name: str | None,
    policy_file: str | None,
    override: Mapping[str, float] | None = None,
) -> PolicyPin:
    body: dict[str, Any] = dict(graph_policy)
    if policy_file is not None:
        body = yaml.safe_load((ROOT / policy_file).read_text(encoding="utf-8"))
        name = body.get("name", name)
    for dotted, value in (override or {}).items():
        body = _set(body, dotted.split("."), value)
    return PolicyPin(name, None, body)


def _set(body: Mapping[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """A copy of `body` with `path` set to `value`.

    Raises:
        KeyError: the path does not exist (a sweep of a setting the policy no longer has).
    """
    out = dict(body)
    head, *rest = path
    if head not in out:
        raise KeyError(".".join(path))
    out[head] = _set(out[head], rest, value) if rest else value
    return out


def _arrivals(n: int, settings: RunSettings) -> list[float]:
    """Gaps (seconds) before each request: exponential with mean `1 / rate`."""
    rng = random.Random(f"arrivals:{settings.seed}")
    return [rng.expovariate(settings.rate) for _ in range(n)]


def _models(
    config: Config, graph_models: Mapping[str, ModelSpec], settings: RunSettings
) -> dict[str, ModelSpec]:
    rebind = dict(config.models)
    for name, target in settings.models.items():
        if name in graph_models:
            rebind[name] = target
        elif config.graph == SINGLE and config.name == f"single-{name}":
            rebind["m"] = target
    return apply_faults(rebind_models(graph_models, rebind), settings.faults)


@dataclass(slots=True)
class Outcome:
    """One configuration's run: its figures and, per request seq, its outcome."""

    figures: dict[str, Any]
    rows: dict[int, Row]


async def run_config(
    config: Config,
    requests: Sequence[Mapping[str, Any]],
    settings: RunSettings,
    override: Mapping[str, float] | None = None,
) -> Outcome:
    """Run `requests` through one configuration (its policy changed by `override`)."""
    graph = load_graph(ROOT / config.graph)
    pin = _policy_pin(graph.policy, graph.policy_name, config.policy_file, override)
    validator = InputValidator(graph.input_schema)
    items = [parse_request(r, seq=i, declared=validator.declared) for i, r in enumerate(requests)]
    collector = Collector([item.labels for item in items], pin.body.get("refusal"))
    gateway = Gateway(_models(config, graph.models, settings))
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
    return Outcome(figures, collector.rows)


async def run_all(
    configs: Sequence[Config],
    requests: Sequence[Mapping[str, Any]],
    settings: RunSettings,
    progress: Any = None,
) -> dict[str, Outcome]:
    """Run every configuration in turn; `progress(name, figures)` after each one."""
    results: dict[str, Outcome] = {}
    for config in configs:
        results[config.name] = await run_config(config, requests, settings)
        if progress is not None:
            progress(config.name, results[config.name].figures)
    return results


@dataclass(frozen=True, slots=True)
class Job:
    """One configuration x seed run, or one point of its sweep (`swept`, at `sweep_value`;
    None: the policy's own value): what a worker process is handed."""

    seed: int
    config: Config
    requests: Sequence[Mapping[str, Any]]
    settings: RunSettings
    sweep_value: float | None = None
    swept: bool = False


def run_job(job: Job, simulated: bool = True) -> Outcome | None:
    """Run `job` in an event loop of its own.

    `simulated` runs on a `MockClock`, so the figures are those of `run_config` in any
    process; otherwise in real time. None when a sweep names a setting the policy does not
    have (a threshold the policy no longer uses).
    """
    override = None
    if job.swept and job.sweep_value is not None and job.config.sweep is not None:
        override = {job.config.sweep[0]: job.sweep_value}
    options = {"clock": MockClock(autojump_threshold=0)} if simulated else {}
    try:
        return anyio.run(
            run_config, job.config, job.requests, job.settings, override,
            backend="trio", backend_options=options,
        )  # fmt: skip
    except KeyError:
        if not job.swept:
            raise
        return None
