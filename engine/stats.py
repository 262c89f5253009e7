"""The figures every part of moat computes the same way: percentiles and failed statuses.

The CLI summary, `moat stats`, the report, the TUI, the regression guard and the bench all
quote p50/p95/p99 and error rates; they take them from here so that they never disagree
about the same run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["FAILED_STATUSES", "percentile"]

FAILED_STATUSES = frozenset({"failed", "deadline_exceeded", "invalid_input"})
"""Request statuses that count as errors (`ok` and `partial` answered; `cancelled`, a
client that hung up before its answer, is neither an answer nor moat's error)."""


def percentile(values: Iterable[float], q: float) -> float | None:
    """The `q`-th percentile (0-100) of `values`, interpolated linearly; None if empty.

    Linear interpolation between the closest ranks is numpy's default, so p50 of
    `[1, 2, 3, 4]` is 2.5 and p95 of one value is that value.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
