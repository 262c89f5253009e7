"""The request detail screen: why one request took the path it took.

It shows the request detail of docs/architecture.md ("The request report").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import DataTable, Static, TabbedContent, TabPane, Tree
from textual.widgets.tree import TreeNode

from engine import (
    CycleCard,
    DecisionRow,
    ExecutionStrategy,
    LlmCallRow,
    TimelineEntry,
)
from tui._detail import GraphLine, RequestDetail, load_detail, mark_letters, node_state
from tui._format import bar, ms, plain, printable, styled, usd, utc
from tui._live import Snapshot
from tui.screens.base import LiveScreen

if TYPE_CHECKING:
    from textual.app import ComposeResult

__all__ = ["RequestDetailScreen"]

_BAR_CELLS = 30
_COLOURS = {"ok": "$text-success", "partial": "$text-warning", "cancelled": "$text-warning"}
"""The colour of a request's status: answered, answered in part, or its client left."""
_TABS = ("overview", "timeline", "decisions", "cycles", "calls", "events")
_MARKS = (
    "S speculative · X cancelled · K skipped · D discarded · R reused · C cached · "
    "F failed · T timed out · r retried"
)


_TAB_KEYS = Binding.Group("Tabs", compact=True)
_NOTHING_YET = "nothing stored yet (still running?)"


class RequestDetailScreen(LiveScreen):
    """Summary, graph with node states, timeline, decisions, cycles, LLM calls, raw events.

    Args:
        request_id: the request to show.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        # one footer entry `[] Tabs` for both, so the footer fits 80 columns
        Binding("left_square_bracket", "tab(-1)", "Prev tab", key_display="[", group=_TAB_KEYS),
        Binding("right_square_bracket", "tab(1)", "Next tab", key_display="]", group=_TAB_KEYS),
    ]

    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id
        self.detail: RequestDetail | None = None

    def compose_body(self) -> ComposeResult:
        """Summary on top, one tab per section below."""
        yield Static(f"request {self.request_id}: loading…", id="detail-summary", markup=False)
        with TabbedContent(id="detail-tabs"):
            with TabPane("Overview", id="overview"), VerticalScroll():
                yield Static(id="strategy")
                yield Tree[str]("graph", id="graph-tree")
            with TabPane("Timeline", id="timeline"):
                yield _table("timeline-table", "node", "cyc", "state", "start", "dur", "", "marks")
                yield Static(_MARKS, id="timeline-legend", markup=False)
            with TabPane("Decisions", id="decisions"):
                yield _table(
                    "decisions-table",
                    "#",
                    "cyc",
                    "stage",
                    "component",
                    "event",
                    "decision",
                    "reasons",
                    "dur",
                )
            with TabPane("Cycles", id="cycles"):
                yield VerticalScroll(id="cycle-cards")
            with TabPane("LLM calls", id="calls"):
                yield _table(
                    "calls-table",
                    "node",
                    "cyc",
                    "model",
                    "provider",
                    "kind",
                    "outcome",
                    "cache",
                    "tokens",
                    "cost",
                    "latency",
                )
            with TabPane("Events", id="events"):
                yield _table(
                    "events-table", "seq", "cyc", "stage", "event", "decision", "status", "payload"
                )

    def on_mount(self) -> None:
        """Start loading the request."""
        self._load()

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Load again while more of the request may come (`RequestDetail.pending`)."""
        if self.detail is not None and self.detail.pending:
            self._load()

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def _load(self) -> None:
        store = self.moat.reader.store
        if store is None:
            return
        detail = load_detail(store, self.request_id, self.moat.registry)
        try:
            self.app.call_from_thread(self._show, detail)
        except RuntimeError:  # the app is shutting down
            return

    def _show(self, detail: RequestDetail) -> None:
        self.detail = detail
        if not self.is_mounted:
            return
        self.query_one("#detail-summary", Static).update(self._summary(detail))
        report = detail.report
        if report is None:
            return
        # with more than one loop, a cycle number alone does not say whose cycle it is:
        # rows of a loop body name their node `loop/node`
        loops = len({c.loop for c in report.cycles}) > 1 or any(c.outer_loop for c in report.cycles)
        self._show_overview(detail, report.strategy, loops)
        self._show_timeline(report.timeline, detail.latency_ms, loops)
        self._show_decisions(report.decisions, loops)
        self._show_cycles(report.cycles)
        self._show_calls(report.llm_calls, loops)
        self._show_events(report.raw_events)

    # -- sections -----------------------------------------------------------------------

    def _summary(self, d: RequestDetail) -> Content:
        if d.report is None:
            why = d.problem or d.waiting or _NOTHING_YET
            return Content(f"request {printable(d.request_id)}: {printable(why)}")
        s = d.report.summary
        colour = _COLOURS.get(s.status, "$text-error")
        policy = printable(f"{s.policy_name or '-'} v{s.policy_version or '-'}")
        first = Content.assemble(
            (f"{printable(d.request_id)} ", "bold"),
            (printable(s.status), colour),
            f"  latency {ms(s.latency_ms)}  cost {usd(s.cost_usd)}  policy {policy}",
        )
        sim = ("  simulated models", "$text-warning") if s.simulated else ""
        second = Content.assemble(
            printable(f"route {s.route or '-'}  tenant {s.tenant or '-'}  run {s.run_id or '-'}  ")
            + f"started {utc(s.started_at)} UTC",
            sim,
        )
        error = f"\nerror: {printable(s.error, lines=True)}" if s.error else ""
        degraded = f"\ndegraded: {printable('; '.join(map(str, s.degraded)))}" if s.degraded else ""
        return Content.assemble(
            first, "\n", second, (degraded, "$text-warning"), (error, "$text-error")
        )

    def _show_overview(self, d: RequestDetail, strategy: ExecutionStrategy, loops: bool) -> None:
        speculative = (
            f"{_in_loop(o.node, o.loop, loops)}:{o.outcome}" for o in strategy.speculative
        )
        lines = (
            ("speculative", ", ".join(speculative)),
            ("strategy", _events(strategy.strategies, loops)),
            ("reused", _events(strategy.reused, loops)),
            ("gates", _events(strategy.gates, loops)),
            ("cache", _events(strategy.cache, loops)),
            ("convergence", _events(strategy.convergence, loops)),
            ("cancelled", _events(strategy.cancellations, loops)),
        )
        parts = [
            p
            for label, text in lines
            for p in ((f"{label:<12}", "bold"), printable(text or "-"), "\n")
        ]
        self.query_one("#strategy", Static).update(Content.assemble(*parts))
        tree = self.query_one("#graph-tree", Tree)
        tree.clear()
        tree.root.set_label(Text(f"graph ({printable(d.graph_source)})"))
        _fill_tree(tree.root, d.graph, self._graph_label)
        tree.root.expand_all()

    def _graph_label(self, line: GraphLine) -> Text:
        label = Text(f"{printable(line.node)} ", style="bold")
        label.append(f"({printable(line.node_type)}) ")
        label.append_text(styled(self.app, line.state))
        if line.duration_ms is not None:
            label.append(f"  {ms(line.duration_ms)}")
        return label

    def _show_timeline(self, rows: Sequence[TimelineEntry], latency: float, loops: bool) -> None:
        table = self.query_one("#timeline-table", DataTable)
        table.clear()
        for row in rows:
            state = node_state(row.status, row.outcome)
            start, cells = bar(row.offset_ms, row.duration_ms, latency, _BAR_CELLS)
            track = Text("·" * start)
            track.append_text(styled(self.app, "█" * cells, state))
            track.append("·" * (_BAR_CELLS - start - cells))
            table.add_row(
                plain(_in_loop(row.node, row.loop, loops)),
                plain(row.cycle),
                styled(self.app, state),
                Text(ms(row.offset_ms), justify="right"),
                Text(ms(row.duration_ms), justify="right"),
                track,
                plain(mark_letters(row.marks)),
            )

    def _show_decisions(self, decisions: Sequence[DecisionRow], loops: bool) -> None:
        table = self.query_one("#decisions-table", DataTable)
        table.clear()
        for d in decisions:
            table.add_row(
                *_texts(
                    d.sequence,
                    d.cycle,
                    _stage(d, loops),
                    d.component,
                    d.event_type,
                    d.decision or "-",
                    ", ".join(map(str, d.reasons)) or "-",
                    ms(d.duration_ms),
                )
            )

    def _show_cycles(self, cycles: Sequence[CycleCard]) -> None:
        cards = self.query_one("#cycle-cards", VerticalScroll)
        cards.remove_children()
        if not cycles:
            cards.mount(Static("no loop cycles in this request", classes="empty"))
            return
        for c in cycles:
            lines = [
                ("planned", ", ".join(c.planned)),
                ("executed", ", ".join(c.executed)),
                ("skipped", ", ".join(c.skipped)),
                ("cancelled", ", ".join(c.cancelled)),
                ("critic", c.critic),
                ("simulator", c.simulator),
                ("convergence", c.convergence),
                ("next", c.next_action),
            ]
            text = "\n".join(f"{label:<12}{printable(value or '-')}" for label, value in lines)
            card = Static(text, classes="cycle-card", markup=False)
            loop = f" · {c.loop}" if c.loop else ""
            if c.outer_loop:
                loop += f" in {c.outer_loop} cycle {c.outer_cycle}"
            card.border_title = Content(printable(f"cycle {c.cycle}{loop}"))
            cards.mount(card)

    def _show_calls(self, calls: Sequence[LlmCallRow], loops: bool) -> None:
        table = self.query_one("#calls-table", DataTable)
        table.clear()
        for c in calls:
            row = _texts(
                _in_loop(c.node, c.loop, loops),
                c.cycle,
                c.model,
                c.provider,
                c.kind,
                c.outcome,
                c.cache_status,
                f"{c.input_tokens}/{c.output_tokens}",
                usd(c.cost_usd),
                ms(c.latency_ms),
            )
            row[5] = styled(self.app, c.outcome, _outcome_state(c.outcome))
            table.add_row(*row)

    def _show_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        table = self.query_one("#events-table", DataTable)
        table.clear()
        for e in events:
            payload = {
                k: e[k] for k in ("inputs", "outputs", "payload", "reason_codes") if e.get(k)
            }
            table.add_row(
                *_texts(
                    e["sequence"],
                    e["cycle"],
                    e["stage"],
                    e["event_type"],
                    e["decision"] or "-",
                    e["status"] or "-",
                    _compact(payload)[:80],
                )
            )

    # -- actions ------------------------------------------------------------------------

    def action_back(self) -> None:
        """Back to the requests view."""
        self.dismiss()

    def action_tab(self, step: int) -> None:
        """Show the previous or next tab."""
        tabs = self.query_one("#detail-tabs", TabbedContent)
        index = _TABS.index(tabs.active) if tabs.active in _TABS else 0
        tabs.active = _TABS[(index + step) % len(_TABS)]


def _table(table_id: str, *columns: str) -> DataTable[Text]:
    table: DataTable[Text] = DataTable(id=table_id, cursor_type="row", zebra_stripes=True)
    table.add_columns(*columns)
    return table


def _texts(*values: object) -> list[Text]:
    return [plain(v) for v in values]


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)


def _in_loop(node: str, loop: str | None, loops: bool) -> str:
    """`loop/node` for a loop body's node when the request ran several loops."""
    return f"{loop}/{node}" if loops and loop else node


def _stage(d: DecisionRow, loops: bool) -> str:
    """An event's stage, `loop/node` for a loop body's node (a loop's own events: its id)."""
    return d.stage if d.stage == d.loop else _in_loop(d.stage, d.loop, loops)


def _events(rows: Sequence[DecisionRow], loops: bool) -> str:
    found = [f"{_stage(r, loops)}={r.decision}" if r.decision else _stage(r, loops) for r in rows]
    return ", ".join(dict.fromkeys(found))


def _outcome_state(outcome: object) -> str:
    return {"used": "succeeded", "cached": "succeeded", "cancelled": "cancelled"}.get(
        str(outcome), "discarded" if outcome == "discarded" else "none"
    )


def _fill_tree(root: TreeNode[str], lines: Iterable[GraphLine], label: Any) -> None:
    last: dict[int, TreeNode[str]] = {-1: root}
    groups: dict[tuple[int, int | None], TreeNode[str]] = {}
    for line in lines:
        parent = last.get(line.depth - 1, root)
        if line.depth > 0 and line.cycle is not None:
            key = (id(parent), line.cycle)
            if key not in groups:
                groups[key] = parent.add(f"cycle {line.cycle}", expand=True)
            parent = groups[key]
        last[line.depth] = parent.add(label(line), data=line.node, expand=True)
    _leaves(root)


def _leaves(node: TreeNode[str]) -> None:
    for child in node.children:
        child.allow_expand = bool(child.children)
        _leaves(child)
