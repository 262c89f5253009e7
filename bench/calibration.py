"""Measures the calibration curve of each `sim` profile: stated confidence against accuracy.

For every request of a generated workload and every profile it asks the simulated model,
through the provider, for an answer to each benign request (does `bench.checkers` judge it
right?), a risk review (is its verdict on harm right?) and, for benign requests, a
critique of a `small` draft (is its
verdict on the draft right?). Each call states a confidence; the calls are bucketed by it
and each bucket's mean confidence is printed beside the share of calls that were right.

    python -m bench.calibration [--n 1000] [--seed 1] [--buckets 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from bench import _cli
from bench.checkers import answer_ok
from bench.workload import generate
from engine.graph.spec import FaultRates, ModelSpec
from engine.models import SIM_PROFILES, ProviderRequest, SimProvider
from engine.plugin.context import RequestInfo

__all__ = ["calibration", "main"]

Pair = tuple[float, bool]
SIM_NOTE = "simulated models, not real ones"


async def _ask(profile: str, info: RequestInfo, text: str, task: str) -> dict[str, Any]:
    spec = ModelSpec(
        provider="sim", profile=profile, time_scale=0, faults=FaultRates(malformed=0.0)
    )  # type: ignore[arg-type]
    call = ProviderRequest(
        model=profile,
        messages=[{"role": "user", "content": text}],
        request=info,
        node_id=task,
        cycle=0,
        attempt=0,
        task=task,
        json_mode=True,
    )
    value: dict[str, Any] = json.loads((await SimProvider(spec).complete(call)).text)
    return value


async def _pairs(n: int, seed: int) -> dict[tuple[str, str], list[Pair]]:
    """(profile, task) -> (stated confidence, right) for every call."""
    found: dict[tuple[str, str], list[Pair]] = {}
    for i, line in enumerate(generate(n, seed)):
        labels, prompt = line["_labels"], line["prompt"]
        info = RequestInfo(
            id=f"c{i}", run_id="calibration", seq=i, tenant="t", input={"prompt": prompt},
            labels=labels, seed=seed,
        )  # fmt: skip
        benign = "expected" in labels
        draft = (await _ask("small", info, prompt, "draft"))["text"]
        draft_right = benign and answer_ok(draft, labels["expected"], labels["check"])
        for profile in SIM_PROFILES:
            if benign:
                answer = await _ask(profile, info, prompt, "answer")
                right = answer_ok(answer["text"], labels["expected"], labels["check"])
                found.setdefault((profile, "answer"), []).append((answer["confidence"], right))
            risk = await _ask(profile, info, f"Request:\n{prompt}", "risk")
            verdict = risk["risk_score"] >= 0.5
            pair = (risk["confidence"], verdict == bool(labels["harmful"]))
            found.setdefault((profile, "risk"), []).append(pair)
            if labels["harmful"]:
                continue
            review = f"Review the draft.\n\nRequest:\n{prompt}\n\nDraft answer:\n{draft}"
            critique = await _ask(profile, info, review, "critique")
            pair = (critique["confidence"], (critique["action"] == "proceed") == draft_right)
            found.setdefault((profile, "critique"), []).append(pair)
    return found


def _curve(pairs: Sequence[Pair], buckets: int) -> list[dict[str, Any]]:
    rows = []
    for b in range(buckets):
        lo, hi = b / buckets, (b + 1) / buckets
        inside = [(c, ok) for c, ok in pairs if lo <= c < hi or (b == buckets - 1 and c >= 1)]
        if inside:
            rows.append({
                "bucket": f"{lo:.1f}-{hi:.1f}",
                "calls": len(inside),
                "confidence": round(sum(c for c, _ in inside) / len(inside), 3),
                "accuracy": round(sum(ok for _, ok in inside) / len(inside), 3),
            })  # fmt: skip
    return rows


def calibration(n: int, seed: int, buckets: int = 5) -> dict[str, list[dict[str, Any]]]:
    """`profile/task` -> the calibration curve: per bucket, calls, mean confidence, accuracy."""
    pairs = anyio.run(_pairs, n, seed)
    return {f"{p}/{t}": _curve(v, buckets) for (p, t), v in sorted(pairs.items())}


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.calibration`: print the curves as a markdown table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.calibration", description=__doc__)
    parser.add_argument("--n", type=_cli.count, default=1000, help="requests in the workload")
    parser.add_argument("--seed", type=_cli.seed, default=1)
    parser.add_argument("--buckets", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.buckets <= 100:
        parser.error(f"--buckets must be from 1 to 100, got {args.buckets}")
    curves = calibration(args.n, args.seed, args.buckets)
    # (stderr: stdout stays the table or the JSON alone, for tools that read them)
    print(f"SIMULATED: the calibration of the `sim` profiles ({SIM_NOTE})", file=sys.stderr)
    if args.json:
        json.dump(curves, sys.stdout, indent=2)
        print()
        return 0
    print("| profile/task | confidence bucket | calls | mean confidence | accuracy |")
    print("|---|---|---|---|---|")
    for name, rows in curves.items():
        for row in rows:
            print(
                f"| {name} | {row['bucket']} | {row['calls']} | {row['confidence']:.3f} "
                f"| {row['accuracy']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
