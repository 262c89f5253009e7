"""Judges the benchmark goals and renders the figures as text, Markdown and a RESULTS.md section.

`goals()` evaluates the five goals of the flagship against the baseline, the eager-join
ablation and the oracle router from one run's figures. `write_section()` replaces only the
text between `<!-- bench:begin -->` and `<!-- bench:end -->` in RESULTS.md; the rest of the
file belongs to others.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "Goal", "goals", "markdown_section", "table", "write_section"]

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
Figures = Mapping[str, Mapping[str, Any]]

_COLUMNS = (
    ("config", "configuration", None),
    ("cost_per_case", "cost/case $", "{:.5f}"),
    ("p50_ms", "p50 ms", "{:.0f}"),
    ("p95_ms", "p95 ms", "{:.0f}"),
    ("p99_ms", "p99 ms", "{:.0f}"),
    ("quality", "quality", "{:.1f}"),
    ("answer_accuracy", "answer acc", "{:.3f}"),
    ("refusal_recall", "refusal recall", "{:.3f}"),
    ("false_refusal_rate", "false refusals", "{:.3f}"),
    ("validation_success", "valid", "{:.3f}"),
    ("cache_hit_rate", "cache hits", "{:.3f}"),
    ("llm_calls_per_case", "calls/case", "{:.2f}"),
    ("refuse_p50_ms", "refuse p50 ms", "{:.0f}"),
    ("speculative", "spec used/disc/canc", None),
    ("speculative_wasted_cost_per_case", "spec waste $/case", "{:.6f}"),
)


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal, its measured figure and whether it was met (None: not evaluated)."""

    name: str
    target: str
    measured: str
    met: bool | None


def _get(figures: Figures, config: str, key: str) -> float | None:
    value = figures.get(config, {}).get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _ratio(figures: Figures, a: str, b: str, key: str) -> float | None:
    x, y = _get(figures, a, key), _get(figures, b, key)
    return x / y if x is not None and y else None


def _ratio_goal(figures: Figures, name: str, other: str, key: str, limit: float) -> Goal:
    r = _ratio(figures, "flagship", other, key)
    if r is None:
        return Goal(name, f"<= {limit}x {other}", f"not evaluated (run flagship and {other})", None)
    a, b = _get(figures, "flagship", key), _get(figures, other, key)
    return Goal(name, f"<= {limit}x {other}", f"{r:.3f}x ({a:.5g} vs {b:.5g})", r <= limit)


def goals(figures: Figures) -> list[Goal]:
    """The five goals, judged on `figures` (keyed by configuration name)."""
    out = [
        _ratio_goal(figures, "cost per case", "baseline", "cost_per_case", 0.35),
        _ratio_goal(figures, "p95 latency", "baseline", "p95_ms", 0.6),
        _quality_goal(figures, "baseline", "quality vs baseline"),
    ]
    refuse = _ratio_goal(figures, "refuse-path p50", "flagship-eager-join", "refuse_p50_ms", 0.3)
    out.append(refuse)
    out.append(_oracle_goal(figures))
    return out


def _quality_goal(figures: Figures, other: str, name: str) -> Goal:
    q, b = _get(figures, "flagship", "quality"), _get(figures, other, "quality")
    if q is None or b is None:
        return Goal(name, f">= {other} - 0.5", f"not evaluated (run flagship and {other})", None)
    return Goal(name, f">= {other} - 0.5 pts", f"{q:.1f} vs {b:.1f} ({q - b:+.1f})", q >= b - 0.5)


def _oracle_goal(figures: Figures) -> Goal:
    name, target = "cost vs oracle router", "<= 1.3x oracle-router, quality >= oracle - 0.5"
    r = _ratio(figures, "flagship", "oracle-router", "cost_per_case")
    q, o = _get(figures, "flagship", "quality"), _get(figures, "oracle-router", "quality")
    if r is None or q is None or o is None:
        return Goal(name, target, "not evaluated (run flagship and oracle-router)", None)
    measured = f"{r:.3f}x cost; quality {q:.1f} vs {o:.1f} ({q - o:+.1f})"
    return Goal(name, target, measured, r <= 1.3 and q >= o - 0.5)


def _cell(row: Mapping[str, Any], key: str, fmt: str | None) -> str:
    if key == "speculative":
        parts = ("speculative_used", "speculative_discarded", "speculative_cancelled")
        return "/".join(str(row.get(k, 0)) for k in parts)
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value) if fmt else str(value)


def table(figures: Figures, markdown: bool = False) -> str:
    """The figures as a Markdown table or a plain aligned one."""
    head = [title for _, title, _ in _COLUMNS]
    rows = [
        [name, *(_cell(row, key, fmt) for key, _, fmt in _COLUMNS[1:])]
        for name, row in figures.items()
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    return "\n".join(
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    )


def _verdict(goal: Goal) -> str:
    return {True: "met", False: "NOT met", None: "not evaluated"}[goal.met]


def goal_lines(figures: Figures, markdown: bool = False) -> list[str]:
    """One line per goal: name, target, measured figure, verdict."""
    if markdown:
        lines = ["| goal | target | measured | verdict |", "|---|---|---|---|"]
        return lines + [
            f"| {g.name} | {g.target} | {g.measured} | **{_verdict(g)}** |" for g in goals(figures)
        ]
    return [f"{g.name}: {_verdict(g)} — {g.measured} (target {g.target})" for g in goals(figures)]


def machine() -> str:
    """The machine the run used."""
    return f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"


def markdown_section(figures: Figures, meta: Mapping[str, Any], notes: str = "") -> str:
    """The RESULTS.md section body (without the markers)."""
    parts = [
        "## End-to-end benchmark (simulated models)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {machine()}. Wall time: {meta['wall_s']:.0f} s.",
        "",
        f"Workload: {meta['n']} requests (`python -m bench.workload --n {meta['n']} "
        f"--seed {meta['seed']}`). {meta['arrivals']}",
        "",
        table(figures, markdown=True),
        "",
        "### Goals (flagship = governed-answer with its default policy)",
        "",
        *goal_lines(figures, markdown=True),
    ]
    if notes:
        parts += ["", notes.strip()]
    return "\n".join(parts)


def write_section(path: Path, body: str) -> None:
    """Replace the text between the markers in `path` (creating the file or markers)."""
    block = f"{BEGIN}\n{body.rstrip()}\n{END}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
