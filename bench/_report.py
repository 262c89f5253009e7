"""Judges the benchmark goals and renders the figures as text, Markdown and a RESULTS.md section.

`goals()` judges the flagship's goals against the baseline, the eager-join ablation and the
counterfactual oracle: a goal is met when the whole 95 % interval of the difference is on
the right side of its target, not met when the whole interval is on the wrong side, and
unresolved when it straddles the target. `write_section()` replaces only the
text between `<!-- bench:begin -->` and `<!-- bench:end -->` in RESULTS.md; the rest of the
file belongs to others.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "Goal", "goals", "markdown_section", "table", "write_section"]

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
Figures = Mapping[str, Mapping[str, Any]]

_COLUMNS = (
    ("config", "configuration", None),
    ("cost_per_case", "cost/case $", "{:.6f}"),
    ("vs_baseline.cost_per_case", "cost x baseline [95% CI]", None),
    ("p50_ms", "p50 ms", "{:.0f}"),
    ("p95_ms", "p95 ms", "{:.0f}"),
    ("vs_baseline.p95_ms", "p95 x baseline [95% CI]", None),
    ("quality", "quality", "{:.1f}"),
    ("vs_baseline.quality", "quality - baseline [95% CI]", None),
    ("answer_accuracy", "benign acc", "{:.3f}"),
    ("vs_baseline.answer_accuracy", "benign acc - baseline", None),
    ("refusal_recall", "refusal recall", "{:.3f}"),
    ("vs_baseline.refusal_recall", "recall - baseline", None),
    ("false_refusal_rate", "false refusals", "{:.3f}"),
    ("vs_baseline.false_refusal_rate", "false ref. - baseline", None),
    ("validation_success", "valid", "{:.3f}"),
    ("cache_hit_rate", "cache hits", "{:.3f}"),
    ("llm_calls_per_case", "calls/case", "{:.2f}"),
    ("refuse_p50_ms", "refuse p50 ms", "{:.0f}"),
)
"""Shares are fractions in the figure columns and points (of 100) in the differences."""


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal, its measured figure and whether it was met (None: not evaluated or the
    interval straddles the target)."""

    name: str
    target: str
    measured: str
    met: bool | None


def _get(figures: Figures, config: str, key: str) -> float | None:
    value = figures.get(config, {}).get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _interval(figures: Figures, config: str, against: str, key: str) -> Mapping[str, Any] | None:
    found = figures.get(config, {}).get(against, {}).get(key)
    return found if isinstance(found, Mapping) else None


def _judge(ci: Mapping[str, Any], limit: float, at_most: bool) -> bool | None:
    """Met when the whole interval is on the right side, not met when all of it is on the
    wrong side, unresolved (None) when it straddles the limit."""
    low, high = ci["low"], ci["high"]
    if at_most:
        return True if high <= limit else False if low > limit else None
    return True if low >= limit else False if high < limit else None


def _ci_goal(
    figures: Figures, name: str, against: str, key: str, limit: float, at_most: bool
) -> Goal:
    ref = against.removeprefix("vs_")
    ci = _interval(figures, "flagship", against, key)
    sign = "<=" if at_most else ">="
    unit = "x" if key in ("cost_per_case", "p95_ms") else " pts"
    target = f"{sign} {limit:g}{unit} {ref}" if unit == "x" else f"{sign} {ref} {limit:+g} pts"
    if ci is None:
        return Goal(name, target, f"not evaluated (run flagship and {ref})", None)
    measured = _text(ci)
    return Goal(name, target, measured, _judge(ci, limit, at_most))


def _text(ci: Mapping[str, Any]) -> str:
    if ci["ratio"]:
        return f"{ci['value']:.3f}x [{ci['low']:.3f}, {ci['high']:.3f}]"
    return f"{ci['value']:+.1f} [{ci['low']:+.1f}, {ci['high']:+.1f}]"


def _ratio_goal(figures: Figures, name: str, other: str, key: str, limit: float) -> Goal:
    x, y = _get(figures, "flagship", key), _get(figures, other, key)
    if x is None or not y:
        return Goal(name, f"<= {limit}x {other}", f"not evaluated (run flagship and {other})", None)
    r = x / y
    return Goal(name, f"<= {limit}x {other}", f"{r:.3f}x ({x:.5g} vs {y:.5g})", r <= limit)


def goals(figures: Figures) -> list[Goal]:
    """The flagship's goals, judged on `figures` with their intervals where they have one."""
    vs = "vs_baseline"
    return [
        _ci_goal(figures, "cost per case", vs, "cost_per_case", 0.35, True),
        _ci_goal(figures, "p95 latency", vs, "p95_ms", 0.6, True),
        _ci_goal(figures, "quality vs baseline", vs, "quality", -0.5, False),
        _ci_goal(figures, "benign accuracy vs baseline", vs, "answer_accuracy", -0.5, False),
        _ci_goal(figures, "refusal recall vs baseline", vs, "refusal_recall", -0.5, False),
        _ci_goal(figures, "false refusals vs baseline", vs, "false_refusal_rate", 0.5, True),
        _ratio_goal(figures, "refuse-path p50", "flagship-eager-join", "refuse_p50_ms", 0.3),
        _ci_goal(figures, "cost vs oracle", "vs_oracle", "cost_per_case", 1.3, True),
        _ci_goal(figures, "quality vs oracle", "vs_oracle", "quality", -0.5, False),
    ]


def _cell(row: Mapping[str, Any], key: str, fmt: str | None) -> str:
    if "." in key:
        group, metric = key.split(".", 1)
        ci = row.get(group, {}).get(metric)
        return _text(ci) if isinstance(ci, Mapping) else "-"
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
    if goal.met is None:
        return "not evaluated" if goal.measured.startswith("not evaluated") else "unresolved"
    return "met" if goal.met else "NOT met"


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


def sweep_lines(figures: Figures) -> list[str]:
    """The cost-quality curves as a Markdown table: one row per swept value."""
    lines = [
        "| configuration | threshold | value | cost/case $ | quality |",
        "|---|---|---|---|---|",
    ]
    for name, row in figures.items():
        for point in row.get("sweep") or ():
            value = "policy" if point["value"] is None else f"{point['value']:g}"
            lines.append(
                f"| {name} | `{point['key']}` | {value} | "
                f"{point['cost_per_case']:.6f} | {point['quality']:.1f} |"
            )
    return lines if len(lines) > 2 else []


def markdown_section(figures: Figures, meta: Mapping[str, Any], notes: str = "") -> str:
    """The RESULTS.md section body (without the markers)."""
    kind = "simulated models" if meta.get("simulated", True) else "real endpoints"
    seeds = ", ".join(str(s) for s in meta["seeds"])
    parts = [
        f"## End-to-end benchmark ({kind}, {date.today().isoformat()})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {machine()}. Wall time {meta['wall_s']:.0f} s with "
        f"{meta.get('workers', 1)} worker process(es), CPU time {meta['cpu_s']:.0f} s, "
        "workers included (the machine is shared; CPU time is what the run itself used).",
        "",
        f"Workload: {meta['n']} requests per seed, seeds {seeds} (`python -m bench.workload "
        f"--n {meta['n']} --seed S`), mix {meta['mix']}. Arrivals: {meta['arrivals']}. "
        f"Models: {meta['faults']}.",
        "",
        "Shares are fractions in the figure columns; differences against the baseline are in "
        "points (of 100) or ratios, with paired-bootstrap 95 % intervals over requests.",
        "",
        table(figures, markdown=True),
        "",
        "### Goals (flagship = governed-answer with its default policy)",
        "",
        *goal_lines(figures, markdown=True),
    ]
    sweep = sweep_lines(figures)
    if sweep:
        parts += [
            "",
            "### Cost-quality curves (first seed; `cost_quality.png`)",
            "",
            *sweep,
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
