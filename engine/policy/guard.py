"""The regression guard's arithmetic: its settings, observed windows and the verdict.

Everything here is pure: the `PolicyManager` feeds it observations and baseline samples
and acts on the verdict (rolling back, marking the version `bad`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from engine.stats import percentile

__all__ = [
    "GuardSettings",
    "GuardVerdict",
    "Observation",
    "judge",
    "p95",
]


class GuardSettings(BaseModel):
    """A policy's `guard:` section: how a new version must compare with the one before.

    Thresholds left out are not checked. Strict: `window: yes` is refused rather than read
    as a window of one request, and a quoted number as a mistake.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    window: int = Field(default=50, ge=1)
    """Requests observed on the new version before it is judged (and on the old one to
    compare against)."""
    max_p95_ratio: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Largest allowed p95 latency of the new version divided by the old one's (finite:
    a ratio that is not checked is left out)."""
    max_cost_ratio: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Largest allowed mean cost per case of the new version divided by the old one's."""
    min_validation_success: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    """Smallest allowed share of requests of the new version whose output validated."""


class Observation(NamedTuple):
    """What one finished request cost, as the runner reported it to `observe`."""

    latency_ms: float
    cost_usd: float
    validation_ok: bool | None


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """The outcome of judging one version against the one before it.

    Attributes:
        version: the judged version.
        baseline_version: the version it was compared with.
        ok: False when a threshold was broken.
        reasons: one phrase per broken threshold, e.g. `cost ratio 2.4 > 1.3`.
        figures: the numbers behind the verdict (for the `POLICY_ROLLED_BACK` payload).
        unchecked: one phrase per threshold the window could not judge, e.g. `p95 and cost
            ratios not checked: baseline v1 has 3 samples, 25 needed`.
        codes: a reason code per phrase of `unchecked` (`baseline_too_few_samples`,
            `nothing_validated`), in the same order.
    """

    version: int
    baseline_version: int | None
    ok: bool
    reasons: tuple[str, ...] = ()
    figures: Mapping[str, Any] = field(default_factory=dict)
    unchecked: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The activation reason recorded when the guard rolls back: `guard: ...`."""
        return "guard: " + ("; ".join(self.reasons) or "passed")

    @property
    def kept_because(self) -> str:
        """Why a version the guard keeps stays: every threshold held, or which ones the
        window could not judge (what `moat policy history` readers need to tell apart)."""
        if not self.unchecked:
            return "guard: passed"
        return "guard: passed what it could judge; " + "; ".join(self.unchecked)


def p95(values: Sequence[float]) -> float:
    """The 95th percentile as every other figure of moat computes it (0.0 for no values)."""
    found = percentile(values, 95)
    return 0.0 if found is None else found


def _ratio(new: float, old: float) -> float:
    if old > 0:
        return new / old
    return 1.0 if new <= 0 else math.inf


def _num(value: float) -> str:
    return f"{value:.3g}"


def _rounded(value: float | None) -> float | None:
    """A figure for the `POLICY_ROLLED_BACK` payload, which is strict JSON: an unbounded
    ratio (a baseline that cost nothing, or took no time) is recorded as null, and its
    reason says `inf`."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


def judge(
    settings: GuardSettings,
    version: int,
    new: Sequence[Observation],
    baseline_version: int | None,
    old: Sequence[tuple[float, float]],
) -> GuardVerdict:
    """Compare a new version's window with the baseline's.

    Args:
        settings: the new version's guard.
        version: the new version.
        new: its last `window` observations.
        baseline_version: the version compared with.
        old: `(latency_ms, cost_usd)` samples of the baseline; ratios are only checked when
            there are at least half a window of them.

    Returns:
        The verdict with every figure, whether or not a threshold broke.
    """
    reasons: list[str] = []
    figures: dict[str, Any] = {
        "version": version,
        "baseline_version": baseline_version,
        "window": settings.window,
        "samples_new": len(new),
        "samples_old": len(old),
        "thresholds": settings.model_dump(exclude_none=True),
    }
    unchecked: list[tuple[str, str]] = []
    p95_new = p95([o.latency_ms for o in new])
    cost_new = sum(o.cost_usd for o in new) / len(new) if new else 0.0
    figures.update(p95_new_ms=_rounded(p95_new), cost_new_usd=_rounded(cost_new))
    needed = max(1, settings.window // 2)
    limits = (("p95", settings.max_p95_ratio), ("cost", settings.max_cost_ratio))
    ratios = [what for what, limit in limits if limit is not None]
    if len(old) < needed and ratios:  # too few to compare: say so, not a silent pass
        unchecked.append(
            (
                "baseline_too_few_samples",
                f"{' and '.join(ratios)} ratio{'s' if len(ratios) > 1 else ''} not checked: "
                f"baseline v{baseline_version} has {len(old)} sample"
                f"{'' if len(old) == 1 else 's'}, {needed} needed",
            )
        )
    if len(old) >= needed:
        p95_old = p95([latency for latency, _ in old])
        cost_old = sum(cost for _, cost in old) / len(old)
        p95_ratio = _ratio(p95_new, p95_old)
        cost_ratio = _ratio(cost_new, cost_old)
        figures.update(
            p95_old_ms=_rounded(p95_old),
            cost_old_usd=_rounded(cost_old),
            p95_ratio=_rounded(p95_ratio),
            cost_ratio=_rounded(cost_ratio),
        )
        if settings.max_p95_ratio is not None and p95_ratio > settings.max_p95_ratio:
            reasons.append(
                f"p95 ratio {_num(p95_ratio)} > {_num(settings.max_p95_ratio)}"
                + (" (the baseline's p95 was 0 ms)" if p95_old <= 0 else "")
            )
        if settings.max_cost_ratio is not None and cost_ratio > settings.max_cost_ratio:
            reasons.append(
                f"cost ratio {_num(cost_ratio)} > {_num(settings.max_cost_ratio)}"
                + (" (the baseline cost nothing)" if cost_old <= 0 else "")
            )
    judged = [o.validation_ok for o in new if o.validation_ok is not None]
    if judged:
        success = sum(judged) / len(judged)
        figures["validation_success"] = _rounded(success)
        minimum = settings.min_validation_success
        if minimum is not None and success < minimum:
            reasons.append(f"validation success {_num(success)} < {_num(minimum)}")
    elif settings.min_validation_success is not None:
        unchecked.append(
            (
                "nothing_validated",
                f"validation success not checked: none of the {len(new)} requests of "
                f"v{version} validated an output",
            )
        )
    return GuardVerdict(
        version,
        baseline_version,
        not reasons,
        tuple(reasons),
        figures,
        unchecked=tuple(phrase for _, phrase in unchecked),
        codes=tuple(code for code, _ in unchecked),
    )
