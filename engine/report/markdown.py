"""Renders a `RequestReport` as Markdown (`moat report --format md`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from engine.report.model import (
    CycleCard,
    DecisionRow,
    ExecutionStrategy,
    LlmCallRow,
    RequestReport,
    SpeculativeOutcome,
    Summary,
    TimelineEntry,
)

__all__ = ["fmt_time", "render_markdown", "table"]

_SIMULATED = (
    "> **Simulated models.** LLM calls went to the `sim` provider: latency, cost and outputs "
    "are simulated, not measured on real models."
)
_BAR_WIDTH = 24


def fmt_time(at: float | None) -> str:
    """UTC timestamp to the millisecond, or an em dash."""
    if at is None:
        return "—"
    seconds, millis = divmod(round(at * 1000), 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, float):
        text = f"{value:.1f}"
    elif isinstance(value, list):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table; `None`, empty strings and empty lists show as an em dash."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:.6f}"


def _summary(s: Summary) -> list[str]:
    policy = f"{s.policy_name or '?'} v{s.policy_version}" if s.policy_version else s.policy_name
    route = f"{s.route} ({', '.join(s.route_reasons)})" if s.route_reasons else s.route
    latency = None if s.latency_ms is None else f"{s.latency_ms:.1f} ms"
    run = f"{s.run_id} (seq {s.seq})" if s.seq is not None else s.run_id
    rows = [
        ("Status", s.status),
        ("Latency", latency),
        ("Cost", _money(s.cost_usd)),
        ("Policy", policy),
        ("Route", route),
        ("Tenant", s.tenant),
        ("Run", run),
        ("Started", fmt_time(s.started_at)),
        ("Models", s.models),
        ("Recorded", f"{s.events} events, {s.node_runs} node runs, {s.llm_calls} LLM calls"),
        ("Error", s.error),
    ]
    if s.degraded:
        rows.insert(1, ("Degraded", "; ".join(s.degraded)))
    if s.note:
        rows.insert(1, ("Note", s.note))
    lines = ["## Summary", "", *table(("", ""), rows)]
    if s.simulated:
        lines += ["", _SIMULATED]
    if s.output is not None:
        output = json.dumps(s.output, indent=2, sort_keys=True, default=str)
        lines += ["", "Output:", "", "```json", output, "```"]
    return lines


def _loops(report: RequestReport) -> bool:
    """Whether the request ran more than one loop (or a loop in a loop): then a cycle
    number alone does not say whose cycle it is, and every row names its loop."""
    return len({c.loop for c in report.cycles}) > 1 or any(c.outer_loop for c in report.cycles)


def _where(node: str, cycle: int, loop: str | None, loops: bool) -> str:
    """`node` c2, or `node` c2 of `loop` when the request ran several loops."""
    return f"`{node}` c{cycle}" + (f" of `{loop}`" if loops and loop else "")


def _explain(d: DecisionRow, loops: bool) -> str:
    text = f"{_where(d.stage, d.cycle, d.loop, loops)}: {d.decision or d.event_type}"
    return f"{text} ({', '.join(d.reasons)})" if d.reasons else text


def _speculative(o: SpeculativeOutcome, loops: bool) -> str:
    cost = f" (${o.cost_usd:.6f})" if o.cost_usd else ""
    return f"{_where(o.node, o.cycle, o.loop, loops)}: {o.outcome}{cost}"


def _strategy(s: ExecutionStrategy, loops: bool) -> list[str]:
    def event(d: DecisionRow) -> str:
        return f"{_where(d.stage, d.cycle, d.loop, loops)}: {d.event_type}"

    def convergence(d: DecisionRow) -> str:
        of = f" `{d.loop}`" if loops and d.loop else ""
        return f"c{d.cycle}{of} {d.event_type}: {_explain(d, loops)}"

    items = [
        ("Speculative", [_speculative(o, loops) for o in s.speculative]),
        ("Strategy", [_explain(d, loops) for d in s.strategies]),
        ("Reused", [event(d) for d in s.reused]),
        ("Gates", [_explain(d, loops) for d in s.gates]),
        ("Convergence", [convergence(d) for d in s.convergence]),
        ("Cache", [event(d) for d in s.cache]),
        ("Cancellations", [event(d) for d in s.cancellations]),
    ]
    lines = ["## Execution strategy", ""]
    lines += [
        f"- **{label}**: {'; '.join(values) if values else 'none'}" for label, values in items
    ]
    return lines


def _with_loop(
    headers: Sequence[str], rows: list[tuple[Any, ...]], loops: list[str | None] | None
) -> list[str]:
    """A table with a `loop` column before `cycle` when `loops` is given."""
    if loops is None:
        return table(headers, rows)
    at = list(headers).index("cycle")
    return table(
        [*headers[:at], "loop", *headers[at:]],
        [(*row[:at], loop, *row[at:]) for row, loop in zip(rows, loops, strict=True)],
    )


def _loop_column(
    rows: Sequence[DecisionRow | TimelineEntry | LlmCallRow], loops: bool
) -> list[str | None] | None:
    # a row in a cycle whose loop the records cannot tell shows `?`, at the top level `—`
    return [row.loop or ("?" if row.cycle else None) for row in rows] if loops else None


def _decisions(rows: list[DecisionRow], loops: bool) -> list[str]:
    headers = ("#", "+ms", "cycle", "stage", "component", "event", "decision", "reasons", "ms")
    body = [
        (
            d.sequence,
            d.offset_ms,
            d.cycle,
            d.stage,
            d.component,
            d.event_type,
            d.decision,
            d.reasons,
            d.duration_ms,
        )
        for d in rows
    ]
    shown = _with_loop(headers, body, _loop_column(rows, loops)) if body else ["No events."]
    return ["## Runtime decisions", "", *shown]


def _card(card: CycleCard) -> list[str]:
    where = [f"loop `{card.loop}`"] if card.loop else []
    if card.outer_loop:
        where.append(f"in loop `{card.outer_loop}` cycle {card.outer_cycle}")
    title = f"### Cycle {card.cycle}" + (f" ({', '.join(where)})" if where else "")
    fields = [
        ("Strategy", card.strategy),
        ("Planned", card.planned),
        ("Executed", card.executed),
        ("Skipped", card.skipped),
        ("Cancelled", card.cancelled),
        ("Critic", card.critic),
        ("Simulator", card.simulator),
        ("Convergence", card.convergence),
        ("Next", card.next_action),
    ]
    return [title, "", *(f"- {label}: {_cell(value)}" for label, value in fields), ""]


def _bar(offset: float, duration: float, total: float) -> str:
    if total <= 0:
        return ""
    start = min(_BAR_WIDTH - 1, int(offset / total * _BAR_WIDTH))
    width = max(1, round(duration / total * _BAR_WIDTH))
    width = min(width, _BAR_WIDTH - start)
    return "`" + "·" * start + "█" * width + "·" * (_BAR_WIDTH - start - width) + "`"


def _timeline(report: RequestReport, loops: bool) -> list[str]:
    entries = report.timeline
    total = max([e.offset_ms + e.duration_ms for e in entries] + [report.summary.latency_ms or 0])
    headers = ("node", "type", "cycle", "+ms", "ms", "status", "marks", "")
    body = [
        (
            e.node,
            e.node_type,
            e.cycle,
            e.offset_ms,
            e.duration_ms,
            e.status,
            e.marks,
            _bar(e.offset_ms, e.duration_ms, total),
        )
        for e in entries
    ]
    shown = _with_loop(headers, body, _loop_column(entries, loops)) if body else ["No node runs."]
    return ["## Timeline", "", *shown]


def _llm_calls(report: RequestReport, loops: bool) -> list[str]:
    headers = (
        "node",
        "cycle",
        "model",
        "provider",
        "kind",
        "outcome",
        "cache",
        "status",
        "tokens in/out",
        "cost",
        "ms",
        "+ms",
        "event",
    )
    body = [
        (
            c.node,
            c.cycle,
            c.model,
            c.provider,
            c.kind,
            c.outcome,
            c.cache_status,
            c.status if c.error is None else f"{c.status}: {c.error}",
            f"{c.input_tokens}/{c.output_tokens}",
            _money(c.cost_usd),
            c.latency_ms,
            c.offset_ms,
            c.related_event,
        )
        for c in report.llm_calls
    ]
    column = _loop_column(report.llm_calls, loops)
    return ["## LLM calls", "", *(_with_loop(headers, body, column) if body else ["No LLM calls."])]


def _traces(report: RequestReport) -> list[str]:
    lines = ["## Decision traces", ""]
    shown = [t for t in report.traces if t.stage != "CYCLE_SUMMARY"]
    for trace in shown:
        payload = json.dumps(trace.payload, indent=2, sort_keys=True, default=str)
        lines += [f"### {trace.stage} (cycle {trace.cycle})", "", "```json", payload, "```", ""]
    return lines if shown else [*lines, "None besides the cycle summaries.", ""]


def _raw(report: RequestReport) -> list[str]:
    lines = [json.dumps(e, sort_keys=True, default=str) for e in report.raw_events]
    return [
        "## Raw events",
        "",
        f"<details><summary>{len(lines)} events as stored</summary>",
        "",
        "```json",
        *lines,
        "```",
        "",
        "</details>",
    ]


def render_markdown(report: RequestReport, *, raw: bool = True) -> str:
    """The report as Markdown: summary, strategy, decisions, cycles, timeline, calls, traces.

    Args:
        report: from `request_report`.
        raw: append the raw events (in a collapsed `<details>` block).
    """
    cycles = [line for card in report.cycles for line in _card(card)]
    loops = _loops(report)
    sections = [
        [f"# Request {report.summary.request_id}", ""],
        _summary(report.summary),
        [""],
        _strategy(report.strategy, loops),
        [""],
        _decisions(report.decisions, loops),
        [""],
        ["## Cycles", "", *(cycles or ["No loop cycles.", ""])],
        _timeline(report, loops),
        [""],
        _llm_calls(report, loops),
        [""],
        _traces(report),
    ]
    if raw:
        sections.append(_raw(report))
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"
