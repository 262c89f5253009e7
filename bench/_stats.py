"""Pools a configuration's requests over seeds, builds the oracle, and bootstraps differences.

Every configuration runs on the same requests (per seed: the same workload, ids, arrival
times and simulated-model seeds), so a difference against the baseline is measured request
by request. `intervals` resamples requests with replacement, within each seed, and applies
the same resample to both configurations (a paired bootstrap): the 2.5th and 97.5th
percentiles of the resampled difference are its 95 % interval (Efron and Tibshirani 1993,
the percentile method). Requests, not seeds, are the resampled unit: each seed's workload
is a fresh draw of requests, and a request's outcome shares nothing with another's beyond
what the configurations do to both.

The counterfactual oracle (`oracle_rows`) is built from the single-model runs (each with
the flagship's cache): per request, the cheapest model whose run answered it right (a
harmful request: refused it), with that run's cost and latency; when no model got it
right, the cheapest model's run. No router can do better with these models at this cost,
so it marks the frontier.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench._metrics import Row, percentile

__all__ = ["Interval", "Runs", "intervals", "oracle_rows", "pooled"]

Runs = Sequence[Mapping[int, Row]]
"""One configuration's rows, one mapping (seq -> row) per seed, seeds in the same order."""
BOOTSTRAP = 400
"""Resamples per interval: enough for stable 95 % percentile bounds (Efron and Tibshirani
suggest at least a few hundred for percentile intervals)."""


@dataclass(frozen=True, slots=True)
class Interval:
    """A difference against a reference, with its paired-bootstrap 95 % interval."""

    value: float
    low: float
    high: float
    ratio: bool
    """True: `other / reference`; False: `other - reference` (in points for shares)."""

    def text(self) -> str:
        """`0.412x [0.398, 0.427]` or `-1.3 [-2.1, -0.4]`."""
        if self.ratio:
            return f"{self.value:.3f}x [{self.low:.3f}, {self.high:.3f}]"
        return f"{self.value:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def _rows(runs: Runs) -> list[Row]:
    return [row for run in runs for _, row in sorted(run.items())]


def pooled(runs: Runs) -> dict[str, float | None]:
    """The headline figures over every request of every seed."""
    rows = _rows(runs)
    n = max(1, len(rows))
    benign = [r.scored for r in rows if not r.scored.harmful]
    harmful = [r.scored for r in rows if r.scored.harmful]
    valid = [r.valid for r in rows if r.valid is not None]
    latency = [r.latency_ms for r in rows]
    return {
        "requests": len(rows),
        "cost_per_case": sum(r.cost_usd for r in rows) / n,
        "p50_ms": percentile(latency, 50),
        "p95_ms": percentile(latency, 95),
        "p99_ms": percentile(latency, 99),
        "quality": 100.0 * sum(r.scored.correct for r in rows) / n,
        "answer_accuracy": _share([s.correct for s in benign]),
        "refusal_recall": _share([s.refused for s in harmful]),
        "false_refusal_rate": _share([s.refused for s in benign]),
        "validation_success": _share(valid),
    }


def _share(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def oracle_rows(singles: Sequence[Runs]) -> list[dict[int, Row]]:
    """Per seed, per request: the cheapest single-model run that got it right (`singles`
    cheapest model first), else the cheapest one's."""
    out: list[dict[int, Row]] = []
    for per_seed in zip(*singles, strict=True):
        chosen: dict[int, Row] = {}
        for seq in set.intersection(*(set(run) for run in per_seed)):
            rows = [run[seq] for run in per_seed]
            chosen[seq] = next((r for r in rows if r.scored.correct), rows[0])
        out.append(chosen)
    return out


Metric = tuple[str, bool, Callable[[Sequence[Row]], float | None]]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _metrics() -> list[Metric]:
    def cost(rows: Sequence[Row]) -> float | None:
        return _mean([r.cost_usd for r in rows])

    def p95(rows: Sequence[Row]) -> float | None:
        found = percentile([r.latency_ms for r in rows], 95)
        return None if math.isnan(found) else found

    def quality(rows: Sequence[Row]) -> float | None:
        return _pts([r.scored.correct for r in rows])

    def benign_acc(rows: Sequence[Row]) -> float | None:
        return _pts([r.scored.correct for r in rows if not r.scored.harmful])

    def recall(rows: Sequence[Row]) -> float | None:
        return _pts([r.scored.refused for r in rows if r.scored.harmful])

    def false_refusals(rows: Sequence[Row]) -> float | None:
        return _pts([r.scored.refused for r in rows if not r.scored.harmful])

    def validity(rows: Sequence[Row]) -> float | None:
        return _pts([bool(r.valid) for r in rows if r.valid is not None])

    return [
        ("cost_per_case", True, cost),
        ("p95_ms", True, p95),
        ("quality", False, quality),
        ("answer_accuracy", False, benign_acc),
        ("refusal_recall", False, recall),
        ("false_refusal_rate", False, false_refusals),
        ("validation_success", False, validity),
    ]


def _pts(values: Sequence[bool]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def _compare(ratio: bool, a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if ratio:
        return a / b if b else None
    return a - b


def intervals(
    reference: Runs, other: Runs, *, resamples: int = BOOTSTRAP, seed: int = 0
) -> dict[str, Interval]:
    """Paired-bootstrap 95 % intervals of `other` against `reference`: ratios of cost and
    p95, differences (points) of quality, benign accuracy, refusal recall, false refusals
    and validity. A metric neither side has (no harmful request, no validation) is left out."""
    pairs: list[list[tuple[Row, Row]]] = []
    for ref, oth in zip(reference, other, strict=True):
        pairs.append([(ref[seq], oth[seq]) for seq in sorted(set(ref) & set(oth))])
    flat = [pair for stratum in pairs for pair in stratum]
    rng = random.Random(f"bootstrap:{seed}")
    metrics = _metrics()
    samples: dict[str, list[float]] = {name: [] for name, _, _ in metrics}
    for _ in range(resamples):
        drawn = [p for stratum in pairs for p in rng.choices(stratum, k=len(stratum))]
        refs, oths = [a for a, _ in drawn], [b for _, b in drawn]
        for name, ratio, f in metrics:
            value = _compare(ratio, f(oths), f(refs))
            if value is not None:
                samples[name].append(value)
    found: dict[str, Interval] = {}
    for name, ratio, f in metrics:
        point = _compare(ratio, f([b for _, b in flat]), f([a for a, _ in flat]))
        values = sorted(samples[name])
        if point is None or len(values) < resamples // 2:
            continue
        low = values[int(0.025 * (len(values) - 1))]
        high = values[math.ceil(0.975 * (len(values) - 1))]
        found[name] = Interval(point, low, high, ratio)
    return found
