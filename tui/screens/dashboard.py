"""The dashboard: runs with their progress, live metrics, sparklines and active policies."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import DataTable, Label, Sparkline, Static

from tui._format import ellipsize, fit_widths, ms, pct, printable, styled, usd, utc, utc_short
from tui._live import Metrics, RunSummary, Snapshot
from tui.screens.base import LiveScreen

if TYPE_CHECKING:
    from textual.app import ComposeResult

__all__ = ["DashboardScreen"]

_PROGRESS_CELLS = 10
_COLUMNS = ("run", "graph", "status", "progress", "req/s", "started (UTC)")
_RUN, _GRAPH, _STARTED = 0, 1, 5
_MIN_WIDTHS = (14, 5, 0, 0, 0, 14)
"""How narrow the columns of `_SHRINK_ORDER` may get (status, progress and req/s are never
cut); the start time switches to `MM-DD HH:MM:SS` below its full width."""
_SHRINK_ORDER = (_STARTED, _RUN, _GRAPH)
"""The columns cut when the screen is too narrow, least important first: the start time
(also in the run id), the run id (cut in the middle, so its unique end stays), the graph."""
_VISIBLE_RUNS = 9
"""Rows the runs table shows before it scrolls (its `max-height` less the header)."""


class DashboardScreen(LiveScreen):
    """Runs, metrics of the selected run (or all runs), sparklines, active policies."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_run", "Select run", show=False),
        Binding("a", "all_runs", "All runs"),
    ]

    def compose_body(self) -> ComposeResult:
        """Banner, runs table, metrics and sparklines, policies line."""
        self._column_widths: list[int] = []
        yield Static(id="banner")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="dash-lower"):
            yield Static(id="metrics")
            with Vertical(id="sparks"):
                yield Label("latency (mean per interval)", classes="spark-label")
                yield Sparkline([], id="latency-spark")
                yield Label("throughput (req/s)", classes="spark-label")
                yield Sparkline([], id="throughput-spark")
        yield Static(id="policies-line")

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Redraw every panel from `snapshot`."""
        self._show_banner(snapshot)
        self._show_runs(snapshot.runs)
        metrics = snapshot.metrics.get(self.moat.run_id) or Metrics()
        scope = self.moat.run_id or "all runs"
        self.query_one("#metrics", Static).border_title = Content(f"metrics · {printable(scope)}")
        self.query_one("#sparks", Vertical).border_title = "over time"
        self._show_metrics(metrics)
        self.query_one("#latency-spark", Sparkline).data = list(metrics.latency_series)
        self.query_one("#throughput-spark", Sparkline).data = list(metrics.throughput_series)
        active = [f"{p.name} v{p.active}" for p in snapshot.policies if p.active is not None]
        text = "active policies: " + printable(", ".join(active) if active else "none")
        self.query_one("#policies-line", Static).update(Content(text))

    def _show_banner(self, snapshot: Snapshot) -> None:
        banner = self.query_one("#banner", Static)
        parts: list[str | tuple[str, str]] = []
        if snapshot.simulated:
            parts.append((" SIMULATED MODELS ", "bold $text-warning on $warning-muted"))
            parts.append(" sim provider, not real LLMs · ")
        if not snapshot.available or not snapshot.runs:
            parts.append(
                printable(snapshot.message)
                or "no runs in this store yet: start one with `moat run GRAPH`"
            )
        else:
            if self.moat.focus_note:
                parts.append((f"{printable(self.moat.focus_note)} · ", "$text-warning"))
            scope = printable(self.moat.run_id or "all runs")
            parts.append((f"showing {scope}", "$text-muted"))
        banner.update(Content.assemble(*parts))

    def on_resize(self) -> None:
        """Fit the runs table to the new width."""
        self._show_runs(self.moat.snapshot.runs)

    def _show_runs(self, runs: tuple[RunSummary, ...]) -> None:
        table = self.query_one("#runs", DataTable)
        keys = [run.id for run in runs]
        cells = [self._run_texts(run) for run in runs]
        widths = self._widths(cells, len(runs))
        if [str(k.value) for k in table.rows] != keys or widths != self._column_widths:
            self._rebuild_runs(table, runs, cells, widths)
            return
        for run, texts in zip(runs, cells, strict=True):
            values = self._run_cells(run, texts, widths)
            for column, value in zip(table.columns, values, strict=True):
                table.update_cell(run.id, column, value)

    def _rebuild_runs(
        self,
        table: DataTable[str | Text],
        runs: tuple[RunSummary, ...],
        cells: list[tuple[str, ...]],
        widths: list[int],
    ) -> None:
        """Lay the table out again: new columns widths, or runs added or gone."""
        keys = [run.id for run in runs]
        rows, row = table.ordered_rows, table.cursor_row
        before = str(rows[row].key.value) if 0 <= row < len(rows) else None
        table.clear(columns=True)
        self._column_widths = widths
        for label, width in zip(_COLUMNS, widths, strict=True):
            table.add_column(ellipsize(label, width), width=width)
        for run, texts in zip(runs, cells, strict=True):
            table.add_row(*self._run_cells(run, texts, widths), key=run.id)
        # keep the row the user is on; else show the selected run
        focus = before if before in keys else self.moat.run_id
        if focus in keys:
            table.move_cursor(row=keys.index(focus))

    def _widths(self, cells: list[tuple[str, ...]], rows: int) -> list[int]:
        """Column widths for this screen: status and progress whole, the rest shrinks."""
        natural = [
            max([len(label), *(len(texts[i]) for texts in cells)])
            for i, label in enumerate(_COLUMNS)
        ]
        # each column has one cell of padding on either side; a scrollbar when rows overflow
        scrollbar = 2 if rows > _VISIBLE_RUNS else 0
        available = self.size.width - 2 * len(_COLUMNS) - scrollbar
        minimum = [min(n, m) for n, m in zip(natural, _MIN_WIDTHS, strict=True)]
        return fit_widths(natural, minimum, _SHRINK_ORDER, available)

    def _run_texts(self, run: RunSummary) -> tuple[str, ...]:
        """The full text of each cell of a run's row."""
        total = run.total or 0
        done = min(run.done, total) if total else run.done
        filled = round(done / total * _PROGRESS_CELLS) if total else 0
        progress = "█" * filled + "░" * (_PROGRESS_CELLS - filled) if total else ""
        marker = "▶ " if run.id == self.moat.run_id else "  "
        return (
            marker + printable(run.id),
            printable(run.graph_name),
            printable(run.status),
            f"{progress} {run.done}/{total or '?'}",
            "-" if run.throughput is None else f"{run.throughput:.1f}",
            utc(run.started_at),
        )

    def _run_cells(
        self, run: RunSummary, texts: tuple[str, ...], widths: list[int]
    ) -> tuple[str | Text, ...]:
        """A run's row, each cell cut to its column with an ellipsis where it must be."""
        run_id, graph, status, progress, rate, started = texts
        if len(started) > widths[_STARTED]:
            started = utc_short(run.started_at)
        return (
            Text(ellipsize(run_id, widths[_RUN], middle=True)),
            Text(ellipsize(graph, widths[_GRAPH])),
            styled(self.app, status),
            Text(progress),
            Text(rate),
            Text(ellipsize(started, widths[_STARTED])),
        )

    def _show_metrics(self, m: Metrics) -> None:
        lines = [
            ("requests", f"{m.requests}" + ("" if m.complete else "  (reading figures…)")),
            ("latency p50", ms(m.p50_ms)),
            ("latency p95", ms(m.p95_ms)),
            ("latency p99", ms(m.p99_ms)),
            ("cost/case", usd(m.cost_per_case)),
            ("cache hits", pct(m.cache_hit_rate)),
            ("validation", pct(m.validation_success)),
            ("spec used", str(m.spec_used)),
            ("spec wasted", f"{m.spec_discarded} discarded, {m.spec_cancelled} cancelled"),
        ]
        parts: list[str | tuple[str, str]] = []
        for label, value in lines:
            parts += [(f"{label:<12}", "bold"), value, "\n"]
        errors = f"{m.errors} requests, {m.node_failures} node failures"
        parts += [("errors".ljust(12), "bold"), (errors, "$text-error" if m.errors else "")]
        self.query_one("#metrics", Static).update(Content.assemble(*parts))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter (or a click) on a run focuses every view on it."""
        if event.row_key.value is not None:
            self.moat.select_run(str(event.row_key.value))

    def action_all_runs(self) -> None:
        """Show every run together."""
        self.moat.select_run(None)

    def action_select_run(self) -> None:
        """Select the highlighted run."""
        self.query_one("#runs", DataTable).action_select_cursor()
