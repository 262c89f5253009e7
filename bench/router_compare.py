"""Compares routers on recorded runs: the threshold router, the learned one, the oracle.

    python -m bench.router_compare [--n 1000] [--seeds 1,2] [--from-record FILE.jsonl]

Each benign request of the bench's own seeds (never the router's training seeds) is
answered by every model once (`bench/router-record.yaml`, as `bench.router_train`
records); a router then picks one model per request from what it can see at request
time, and scores that model's recorded answer at that model's recorded cost:

- `threshold`: the `router` node's complexity rule (`complexity_threshold` 0.45, the
  capable tiers spread above it);
- `learned`: the shipped weights (`weights: builtin`), swept over `min_p_correct`;
- `always-MODEL`: one model for every request;
- `oracle`: the counterfactual frontier: the cheapest model whose recorded answer
  checked out (the cheapest one when none did), and below its quality the cheapest way to
  reach each quality, by buying the right answers that cost least extra first.

For each router it prints quality, cost per request and the oracle's cost at the same
quality (`x oracle`): the "within 1.3x of the oracle at equal quality" comparison, for
routing alone (no review, cache or deliberation).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import _cli
from bench.router_train import MODELS, _checks, record
from nodes._support.features import features
from nodes._support.learned import load_router

__all__ = ["compare", "main", "oracle_cost_at"]

Pick = Callable[[Mapping[str, Any]], str]


def _threshold(row: Mapping[str, Any], threshold: float = 0.45) -> str:
    c = features(row["text"]).complexity
    if c < threshold:
        return MODELS[0]
    span = (1.0 - threshold) / (len(MODELS) - 1)
    return MODELS[min(len(MODELS) - 1, 1 + int((c - threshold) / span))]


def _learned(min_p: float) -> Pick:
    router = load_router("builtin")

    def pick(row: Mapping[str, Any]) -> str:
        chances = router.predict(row["text"])
        return next((m for m in MODELS if chances[m] >= min_p), max(chances, key=chances.get))  # type: ignore[arg-type]

    return pick


def _score(rows: Sequence[Mapping[str, Any]], pick: Pick) -> tuple[float, float]:
    right = cost = 0.0
    for row in rows:
        model = pick(row)
        right += bool(row["ok"][model])
        cost += float(row["costs"][model])
    return 100.0 * right / len(rows), cost / len(rows)


def oracle_cost_at(rows: Sequence[Mapping[str, Any]], quality: float) -> float | None:
    """The least cost per request at which a router that knew every answer reaches
    `quality` (points): start from the cheapest model everywhere, then buy right answers
    in order of extra cost. None when even the oracle cannot reach it."""
    cheapest = MODELS[0]
    base_right = sum(bool(r["ok"][cheapest]) for r in rows)
    cost = sum(float(r["costs"][cheapest]) for r in rows)
    extras = sorted(
        min(float(r["costs"][m]) for m in MODELS if r["ok"][m]) - float(r["costs"][cheapest])
        for r in rows
        if not r["ok"][cheapest] and any(r["ok"][m] for m in MODELS)
    )
    needed = quality / 100.0 * len(rows) - base_right
    for extra in extras:
        if needed <= 0:
            break
        cost += extra
        needed -= 1
    return None if needed > 1e-9 else cost / len(rows)


def compare(raw: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per router: quality, cost per request and the oracle's cost there (none
    when no row is a benign request with every model's answer and cost)."""
    rows = []
    for r in raw:
        ok = {m: _checks(r["answers"].get(m, ""), r["labels"]) for m in MODELS}
        if None not in ok.values() and all(r.get("costs", {}).get(m) is not None for m in MODELS):
            rows.append({**r, "ok": ok})
    if not rows:
        return []
    routers: list[tuple[str, Pick]] = [(f"always-{m}", lambda _r, m=m: m) for m in MODELS]
    routers.append(("threshold", _threshold))
    routers += [(f"learned p>={p}", _learned(p)) for p in (0.5, 0.55, 0.6, 0.65, 0.7)]
    routers.append(("oracle", lambda r: next((m for m in MODELS if r["ok"][m]), MODELS[0])))
    out = []
    for name, pick in routers:
        quality, cost = _score(rows, pick)
        frontier = oracle_cost_at(rows, quality)
        out.append(
            {
                "router": name,
                "quality": round(quality, 2),
                "cost_per_request": round(cost, 7),
                "oracle_cost_at_quality": None if frontier is None else round(frontier, 7),
                "x_oracle": None if not frontier else round(cost / frontier, 3),
                "requests": len(rows),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Record (or read) runs and print the comparison; 0 on success, 2 on bad arguments."""
    p = argparse.ArgumentParser(prog="python -m bench.router_compare", description=__doc__)
    p.add_argument("--n", type=_cli.count, default=1000, help="requests recorded per seed")
    p.add_argument(
        "--seeds", type=_cli.seed_list, default="1,2",
        help="workload seeds (the bench's, not training's)",
    )  # fmt: skip
    p.add_argument("--from-record", type=Path, help="recorded runs (JSONL) instead of recording")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    if args.from_record is not None:
        raw = _cli.read_rows(p, "--from-record", args.from_record, ("text", "labels", "answers"))
    else:
        _cli.total_requests(p, args.n, len(args.seeds))
        raw = []
        for seed in args.seeds:
            print(f"recording {args.n} requests of seed {seed}", file=sys.stderr, flush=True)
            raw += record(args.n, seed)
    result = compare(raw)
    if not result:
        print(
            "python -m bench.router_compare: no benign request with every model's answer "
            "and cost to compare on; record more requests",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("router              quality  cost/request $  oracle at quality $  x oracle")
    for r in result:
        frontier = r["oracle_cost_at_quality"]
        print(
            f"{r['router']:<18}  {r['quality']:>7.2f}  {r['cost_per_request']:>14.7f}  "
            f"{'-' if frontier is None else f'{frontier:.7f}':>19}  {r['x_oracle'] or '-':>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
