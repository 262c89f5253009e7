"""The end-to-end benchmark CLI: every configuration over the same workloads, several seeds.

    python -m bench [--n 1000] [--seeds 3] [--seed 1] [--configs baseline,flagship,...]
                    [--mix kind=share,...] [--faults default|none|heavy|key=value,...]
                    [--model NAME=PROVIDER:MODEL ...] [--json] [--no-sweep]
                    [--rate 20] [--concurrency 512] [--workload FILE.jsonl]
                    [--out-dir bench/] [--write-results]

With `sim` models every configuration x seed run (and every swept value) runs on trio with
a `MockClock(autojump_threshold=0)`: latencies are simulated time, so thousands of requests
take seconds of wall time, and the figures do not depend on the machine's load. The runs go
to `--jobs` worker processes (default: one per core, at most 2); the figures are the same
for any number. With `--model small=openai:gpt-4.1-nano` (any model a
configuration's graph names; `single-small` follows `small`), the same workload goes to
the real endpoint in real time and the same checkers judge the answers.

Each configuration runs once per seed (seeds `seed`, `seed+1`, ...: a fresh workload,
arrival times and model draws each); the figures pool every request of every seed, and
every difference against the baseline carries a paired-bootstrap 95 % interval
(`bench._stats`). When the three single-model runs are among the configurations, the
counterfactual `oracle` is added. Swept configurations also run at each value of their
threshold, and at the policy's own value (`value: null`), on the first half of the first
seed's requests (`--sweep-n`; `--no-sweep` skips it): the cost-quality curves.

`--json` prints `{config: {cost_per_case, p50_ms, p95_ms, p99_ms, quality, answer_accuracy,
refusal_recall, false_refusal_rate, validation_success, cache_hit_rate, llm_calls_per_case,
..., vs_baseline: {metric: {value, low, high, ratio}}, sweep: [{value, cost_per_case,
quality}]}}`; `--out-dir` writes `results.json` and `cost_quality.png` there;
`--write-results` rewrites the bench section of `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import _cli
from bench._faults import FaultProfile, parse_faults
from bench._notes import NOTES
from bench._png import cost_vs_quality
from bench._report import goal_lines, markdown_section, table, write_section
from bench._run import CONFIGS, ROOT, SINGLE, SINGLES, Config, Job, Outcome, RunSettings, run_job
from bench._run import _models as _rebound
from bench._stats import intervals, oracle_rows, pooled
from bench.workload import generate, parse_mix
from engine.errors import SpecError
from engine.graph.loader import load_graph
from engine.requests import InputValidator, read_jsonl

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
SIMULATED_NOTE = (
    "SIMULATED: every model here is the embedded `sim` provider; the figures describe the "
    "simulated models, not real ones"
)
_SUMMED = ("speculative_used", "speculative_discarded", "speculative_cancelled")
_AVERAGED = (
    "cache_hit_rate", "llm_calls_per_case", "refuse_p50_ms", "refused_all_p50_ms",
    "queue_wait_p95_ms", "speculative_cost_per_case", "speculative_wasted_cost_per_case",
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=_cli.count, default=1000, help="requests per seed")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds (workloads)")
    p.add_argument("--seed", type=_cli.seed, default=1, help="the first seed (0 or more)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    p.add_argument("--mix", default="", help="kind=share,... (bench.workload kinds)")
    p.add_argument("--faults", default="default", help="none, default, heavy or key=value,...")
    p.add_argument(
        "--model", action="append", default=[], metavar="NAME=PROVIDER:MODEL",
        help="rebind a logical model in every configuration that has it (repeatable)",
    )  # fmt: skip
    p.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals per second")
    p.add_argument("--concurrency", type=int, default=512, help="requests in flight at most")
    p.add_argument("--workload", type=Path, help="a JSONL workload (the same for every seed)")
    p.add_argument("--no-sweep", action="store_true", help="skip the threshold sweeps")
    p.add_argument(
        "--sweep-n", type=int, help="requests of the first seed each swept value runs (n/2)"
    )
    p.add_argument(
        "--jobs", type=int, help="worker processes of a simulated run (default: cores, at most 2)"
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--out-dir", type=Path, help="write results.json and cost_quality.png here")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    return p


def _default_jobs() -> int:
    """Worker processes of a simulated run: one per core, at most two. On a mock clock the
    figures do not depend on how many (the tests pin it), only the wall time does."""
    return max(1, min(2, os.cpu_count() or 1))


def _cpu_s() -> float:
    """CPU seconds of this process and of its worker processes that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def _clean(value: Any) -> Any:
    """JSON-safe figures: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _models(parser: argparse.ArgumentParser, given: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for item in given:
        name, sep, target = item.partition("=")
        if not sep or ":" not in target or target.split(":", 1)[0] not in ("sim", "openai"):
            parser.error(
                f"--model {item}: expected NAME=PROVIDER:MODEL, e.g. small=openai:gpt-4.1-nano"
            )
        models[name.strip()] = target.strip()
    return models


def _workload(args: argparse.Namespace, seed: int, weights: dict[str, float]) -> list[Any]:
    if args.workload is None:
        return generate(args.n, seed, weights)
    return list(args.workload_requests)


def _read_workload(path: Path, configs: list[Config]) -> list[dict[str, Any]]:
    """The requests of a `--workload` file, each line checked as `moat run` checks it and
    against the input schema of every chosen configuration's graph.

    Raises:
        ValueError: the file cannot be read, is empty, or a line is not a valid request
            (the message names the file and line).
    """
    if path.is_dir():
        raise ValueError(f"--workload {path}: is a directory; give a JSONL file")
    validators = {c.graph: InputValidator(load_graph(ROOT / c.graph).input_schema) for c in configs}
    declared = frozenset().union(*(v.declared for v in validators.values()))
    try:
        items = list(read_jsonl(path, declared=declared))
    except OSError as exc:
        raise ValueError(f"--workload {path}: {exc.strerror or exc}") from None
    if not items:
        raise ValueError(f"--workload {path}: no requests (one JSON object per line)")
    for item in items:
        error = item.error
        for validator in validators.values():
            error = error or validator.validate(item)[1]
        if error is not None:
            where = f"{path}:{item.line}"
            raise ValueError(error if error.startswith(where) else f"{where}: {error}")
    return [
        {**(item.input or {}), **item.meta, **({"_labels": item.labels} if item.labels else {})}
        for item in items
    ]


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.n < 1 or args.seeds < 1:
        parser.error("--n and --seeds must be at least 1")
    if args.workload is None:  # (a workload file is read once, whatever --n says)
        _cli.total_requests(parser, args.n, args.seeds)
    if not args.rate > 0:  # NaN fails this too
        parser.error(f"--rate must be a number of arrivals per second above 0, got {args.rate}")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {args.concurrency}")
    for flag, value in (("--jobs", args.jobs), ("--sweep-n", args.sweep_n)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")


def _check_models(
    parser: argparse.ArgumentParser, configs: list[Config], models: dict[str, str]
) -> None:
    """Every `--model` rebinding is usable by at least one chosen configuration, and by
    every one that has the model, before anything runs."""
    used: set[str] = set()
    known: set[str] = set()
    for config in configs:
        graph_models = load_graph(ROOT / config.graph).models
        known |= set(graph_models)
        if config.graph == SINGLE:
            known.add(config.name.removeprefix("single-"))
        settings = RunSettings(models=models)
        try:
            _rebound(config, graph_models, settings)
        except SpecError as exc:
            parser.error(f"{exc} (configuration {config.name})")
        used |= {n for n in models if n in graph_models or config.name == f"single-{n}"}
    for name in models:
        if name not in used:
            parser.error(
                f"--model {name}={models[name]}: no chosen configuration has a model {name!r}; "
                f"models: {', '.join(sorted(known))}"
            )


def _jobs(
    args: argparse.Namespace,
    configs: list[Config],
    weights: dict[str, float],
    faults: FaultProfile,
    models: dict[str, str],
) -> list[Job]:
    jobs: list[Job] = []
    for k in range(args.seeds):
        seed = args.seed + k
        settings = RunSettings(args.rate, args.concurrency, seed, faults, models)
        requests = _workload(args, seed, weights)
        jobs += [Job(seed, config, requests, settings) for config in configs]
        if k == 0 and not args.no_sweep:
            subset = requests[: args.sweep_n or max(1, len(requests) // 2)]
            for config in configs:
                if config.sweep is not None:
                    for value in (None, *config.sweep[1]):  # None: the policy's own value
                        jobs.append(Job(seed, config, subset, settings, value, swept=True))
    return jobs


def _report_progress(job: Job, outcome: Outcome | None) -> None:
    if job.swept:
        return
    assert outcome is not None
    wall = outcome.figures["wall_s"]
    print(f"  seed {job.seed} {job.config.name}: {wall:.1f} s wall", file=sys.stderr)


def _bench(
    jobs: list[Job], simulated: bool, workers: int
) -> tuple[list[dict[str, Outcome]], dict[str, list[dict[str, float]]]]:
    """Every job, `workers` at a time in worker processes (in this one when 1), gathered
    in plan order: the figures are the same whichever order they finish in."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    if workers <= 1:
        for i, job in enumerate(jobs):
            outcomes[i] = run_job(job, simulated)
            _report_progress(job, outcomes[i])
    else:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            futures = {pool.submit(run_job, job, simulated): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                i = futures[future]
                outcomes[i] = future.result()
                _report_progress(jobs[i], outcomes[i])
    runs: dict[int, dict[str, Outcome]] = {}
    sweeps: dict[str, list[dict[str, float]]] = {}
    skipped: set[str] = set()
    for job, outcome in zip(jobs, outcomes, strict=True):
        name = job.config.name
        if not job.swept:
            assert outcome is not None
            runs.setdefault(job.seed, {})[name] = outcome
        elif outcome is None:
            skipped.add(name)
        else:
            figures = pooled([outcome.rows])
            sweeps.setdefault(name, []).append({
                "key": job.config.sweep[0] if job.config.sweep else "",
                "value": job.sweep_value, "cost_per_case": figures["cost_per_case"],
                "quality": figures["quality"], "requests": len(job.requests),
            })  # fmt: skip
    for name in skipped:
        sweeps.pop(name, None)
        print(f"  {name}: the policy lacks a swept setting; no sweep", file=sys.stderr)
    for name, points in sweeps.items():
        print(f"  {name}: swept {points[0]['key']} over {len(points) - 1} values", file=sys.stderr)
    return list(runs.values()), sweeps


def _figures(
    runs: list[dict[str, Outcome]], sweeps: dict[str, list[dict[str, float]]]
) -> dict[str, dict[str, Any]]:
    names = list(runs[0])
    per_config = {name: [run[name].rows for run in runs] for name in names}
    if all(name in per_config for name in SINGLES):
        per_config["oracle"] = oracle_rows([per_config[name] for name in SINGLES])
    results: dict[str, dict[str, Any]] = {}
    for name, rows in per_config.items():
        figures: dict[str, Any] = dict(pooled(rows))
        outcomes = [run[name] for run in runs] if name in runs[0] else []
        for key in _AVERAGED:
            values = [
                o.figures[key] for o in outcomes if isinstance(o.figures.get(key), float | int)
            ]
            values = [v for v in values if math.isfinite(v)]
            figures[key] = sum(values) / len(values) if values else None
        for key in _SUMMED:
            figures[key] = sum(o.figures.get(key, 0) for o in outcomes)
        statuses: dict[str, int] = {}
        for o in outcomes:
            for status, count in o.figures.get("statuses", {}).items():
                statuses[status] = statuses.get(status, 0) + count
        figures["statuses"] = statuses
        figures["seeds"] = len(rows)
        if name != "baseline" and "baseline" in per_config:
            found = intervals(per_config["baseline"], rows)
            figures["vs_baseline"] = {k: asdict(v) for k, v in found.items()}
        if name == "flagship" and "oracle" in per_config:
            found = intervals(per_config["oracle"], rows)
            figures["vs_oracle"] = {k: asdict(v) for k, v in found.items()}
        if name in sweeps:
            figures["sweep"] = sweeps[name]
        results[name] = figures
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 on bad arguments, 1 when a file it was asked to
    write could not be (the figures are printed all the same)."""
    parser = _parser()
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        parser.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    _check_numbers(parser, args)
    configs = [CONFIGS[n] for n in names]
    try:
        weights, faults = parse_mix(args.mix), parse_faults(args.faults)
        if args.workload is not None:
            args.workload_requests = _read_workload(args.workload, configs)
    except ValueError as exc:
        parser.error(str(exc))
    models = _models(parser, args.model)
    _check_models(parser, configs, models)
    if args.out_dir is not None:  # before the runs, so a bad directory loses no work
        try:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--out-dir {args.out_dir}: {exc.strerror or exc}")
    simulated = all(target.startswith("sim:") for target in models.values())
    # real endpoints run one configuration at a time: concurrent runs would share their
    # rate limits and network and so distort each other's latencies
    workers = max(1, args.jobs if args.jobs is not None else _default_jobs()) if simulated else 1
    t0, cpu0 = time.perf_counter(), _cpu_s()
    jobs = _jobs(args, configs, weights, faults, models)
    runs, sweeps = _bench(jobs, simulated, workers)
    results = _clean(_figures(runs, sweeps))
    meta = {
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "n": args.n,
        "seeds": [args.seed + k for k in range(args.seeds)],
        "mix": args.mix or "default",
        "faults": faults.describe(),
        "models": models,
        "simulated": simulated,
        "arrivals": (
            f"Poisson, {args.rate:g} requests per second, at most {args.concurrency} in flight"
        ),
        "wall_s": time.perf_counter() - t0,
        "cpu_s": _cpu_s() - cpu0,
        "workers": workers,
    }
    for figures in results.values():
        figures["simulated"] = simulated
    if simulated:  # (stderr beside --json, whose stdout stays the figures alone)
        print(SIMULATED_NOTE, file=sys.stderr if args.json else sys.stdout)
    # the figures are shown before any file is written: a file that cannot be written
    # (a disk full, a directory removed during the run) loses none of them
    if args.json:
        print(json.dumps(results, indent=2), flush=True)
    else:
        print(f"{meta['faults']}; arrivals {meta['arrivals']}; seeds {meta['seeds']}")
        print(table(results))
        print("\n".join(goal_lines(results)), flush=True)
    return _write(args, results, meta, simulated)


def _write(
    args: argparse.Namespace, results: dict[str, Any], meta: dict[str, Any], simulated: bool
) -> int:
    """Write results.json, the PNG and the RESULTS.md section as asked: 0, or 1 after
    saying on stderr which could not be written (each is tried whatever the others did)."""
    failed = 0
    writes: list[tuple[str, Any]] = []
    if args.out_dir is not None:
        payload = {"meta": meta, "results": results}
        text = json.dumps(payload, indent=2) + "\n"
        out = args.out_dir
        writes.append((str(out / "results.json"), lambda: (out / "results.json").write_text(text)))
        writes.append((
            str(out / "cost_quality.png"),
            lambda: cost_vs_quality(results, out / "cost_quality.png", simulated=simulated),
        ))  # fmt: skip
    if args.write_results:
        body = markdown_section(results, meta, NOTES)
        writes.append((str(RESULTS_MD), lambda: write_section(RESULTS_MD, body)))
    for where, write in writes:
        try:
            write()
        except OSError as exc:
            failed = 1
            print(
                f"python -m bench: could not write {where}: {exc.strerror or exc} "
                "(the figures are printed above)",
                file=sys.stderr,
            )
    if failed:  # every figure and the run's metadata, where a file can still be written
        fd, kept = tempfile.mkstemp(prefix="bench-results-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"python -m bench: the figures and their metadata are in {kept}", file=sys.stderr)
    return failed
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
