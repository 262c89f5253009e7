"""The end-to-end benchmark CLI: runs configurations over one workload in simulated time.

    python -m bench [--n 5000] [--seed 1] [--configs baseline,flagship,...] [--json]
                    [--rate 20] [--concurrency 512] [--workload FILE.jsonl]
                    [--out-dir bench/] [--write-results]

Everything runs in one process on trio with a `MockClock(autojump_threshold=0)`: the
`sim` models' latencies are simulated time, so thousands of requests take seconds to
minutes of wall time. `--json` prints `{config: {cost_per_case, p50_ms, p95_ms, p99_ms,
quality, validation_success, cache_hit_rate, llm_calls_per_case, ...}}`; `--out-dir`
writes `results.json` and `cost_vs_p95.png` there; `--write-results` rewrites the bench
section of `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from trio.testing import MockClock

from bench._notes import NOTES
from bench._png import cost_vs_p95
from bench._report import goal_lines, markdown_section, table, write_section
from bench._run import CONFIGS, RunSettings, run_all
from bench.workload import generate

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=5000, help="requests in the generated workload")
    p.add_argument("--seed", type=int, default=1, help="workload, arrival and sim seed")
    p.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated; of {', '.join(CONFIGS)}"
    )
    p.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals per second")
    p.add_argument("--concurrency", type=int, default=512, help="requests in flight at most")
    p.add_argument("--workload", type=Path, help="a JSONL workload instead of generating one")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--out-dir", type=Path, help="write results.json and cost_vs_p95.png here")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    return p


def _load(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.workload is None:
        return generate(args.n, args.seed)
    lines = args.workload.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _clean(value: Any) -> Any:
    """JSON-safe figures: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _arrivals_note(settings: RunSettings) -> str:
    return (
        f"Arrivals: Poisson, {settings.rate:g} requests per simulated second, at most "
        f"{settings.concurrency} in flight (latency is measured from the request's start; "
        "`queue_wait_p95_ms` shows any wait for a free slot, 0 unless saturated). "
        "Models: the embedded `sim` provider (simulated latency, price and quality)."
    )


def _outputs(args: argparse.Namespace, results: dict[str, Any], meta: dict[str, Any]) -> None:
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "results": results}
        (args.out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
        points = {k: (v["p95_ms"] or math.nan, v["cost_per_case"]) for k, v in results.items()}
        title = f"COST PER CASE VS P95 (SIMULATED, N={meta['n']})"
        cost_vs_p95(points, args.out_dir / "cost_vs_p95.png", title=title)
    if args.write_results:
        write_section(RESULTS_MD, markdown_section(results, meta, NOTES))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 on bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        parser.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    requests = _load(args)
    settings = RunSettings(rate=args.rate, concurrency=args.concurrency, seed=args.seed)

    def progress(name: str, figures: dict[str, Any]) -> None:
        print(f"  {name}: done in {figures['wall_s']:.1f} s wall", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    results = anyio.run(
        run_all,
        [CONFIGS[n] for n in names],
        requests,
        settings,
        progress,
        backend="trio",
        backend_options={"clock": MockClock(autojump_threshold=0)},
    )
    results = _clean(results)
    meta = {
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "n": len(requests),
        "seed": args.seed,
        "arrivals": _arrivals_note(settings),
        "wall_s": time.perf_counter() - t0,
    }
    _outputs(args, results, meta)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(meta["arrivals"])
        print(table(results))
        print("\n".join(goal_lines(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
