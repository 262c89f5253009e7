"""The dashboard: runs with their progress, live metrics, sparklines and active policies."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import DataTable, Label, Sparkline, Static

from tui._format import ms, pct, styled, usd, utc
from tui._live import Metrics, RunSummary, Snapshot
from tui.screens.base import LiveScreen

if TYPE_CHECKING:
    from textual.app import ComposeResult

__all__ = ["DashboardScreen"]

_PROGRESS_CELLS = 10


class DashboardScreen(LiveScreen):
    """Runs, metrics of the selected run (or all runs), sparklines, active policies."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_run", "Select run", show=False),
        Binding("a", "all_runs", "All runs"),
    ]

    def compose_body(self) -> ComposeResult:
        """Banner, runs table, metrics and sparklines, policies line."""
        yield Static(id="banner")
        table: DataTable[str | Text] = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        table.add_columns("run", "graph", "status", "progress", "req/s", "started (UTC)")
        yield table
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
        self.query_one("#metrics", Static).border_title = f"metrics · {scope}"
        self.query_one("#sparks", Vertical).border_title = "over time"
        self._show_metrics(metrics)
        self.query_one("#latency-spark", Sparkline).data = list(metrics.latency_series)
        self.query_one("#throughput-spark", Sparkline).data = list(metrics.throughput_series)
        active = [f"{p.name} v{p.active}" for p in snapshot.policies if p.active is not None]
        text = "active policies: " + (", ".join(active) if active else "none")
        self.query_one("#policies-line", Static).update(Content(text))

    def _show_banner(self, snapshot: Snapshot) -> None:
        banner = self.query_one("#banner", Static)
        parts: list[str | tuple[str, str]] = []
        if snapshot.simulated:
            parts.append((" SIMULATED MODELS ", "bold $text-warning on $warning-muted"))
            parts.append(" sim provider, not real LLMs · ")
        if not snapshot.available or not snapshot.runs:
            parts.append(
                snapshot.message or "no runs in this store yet: start one with `moat run GRAPH`"
            )
        else:
            scope = self.moat.run_id or "all runs"
            parts.append((f"showing {scope}", "$text-muted"))
        banner.update(Content.assemble(*parts))

    def _show_runs(self, runs: tuple[RunSummary, ...]) -> None:
        table = self.query_one("#runs", DataTable)
        keys = [run.id for run in runs]
        if [str(k.value) for k in table.rows] != keys:
            table.clear()
            for run in runs:
                table.add_row(*self._run_cells(run), key=run.id)
            if self.moat.run_id in keys:
                table.move_cursor(row=keys.index(self.moat.run_id))
            return
        for run in runs:
            for column, value in zip(table.columns, self._run_cells(run), strict=True):
                table.update_cell(run.id, column, value)

    def _run_cells(self, run: RunSummary) -> tuple[str | Text, ...]:
        total = run.total or 0
        done = min(run.done, total) if total else run.done
        filled = round(done / total * _PROGRESS_CELLS) if total else 0
        progress = "█" * filled + "░" * (_PROGRESS_CELLS - filled) if total else ""
        marker = "▶ " if run.id == self.moat.run_id else "  "
        return (
            Text(marker + run.id),
            Text(run.graph_name),
            styled(self.app, run.status),
            Text(f"{progress} {run.done}/{total or '?'}"),
            Text("-" if run.throughput is None else f"{run.throughput:.1f}"),
            Text(utc(run.started_at)),
        )

    def _show_metrics(self, m: Metrics) -> None:
        lines = [
            ("requests", f"{m.requests}"),
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
