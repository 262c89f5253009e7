"""The requests view: a live table of finished requests with filters and a search box.

It shows the newest requests the reader keeps (`WINDOW`) and, a page at a time, older ones
read from the store (`o` for older, keyset pagination): a run of a million requests opens
as fast as one of ten. A scope or filter that leaves fewer than a page of the kept rows
reads its first page from the store at once; the route filter applies to rows read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.content import Content
from textual.message import Message
from textual.widgets import Checkbox, DataTable, Input, Select, Static

from engine.store.reads import RequestPage
from tui._format import ms, plain, printable, styled, usd
from tui._live import WINDOW, Metrics, RequestRow, Snapshot
from tui.screens.base import LiveScreen

if TYPE_CHECKING:
    from textual.app import ComposeResult

__all__ = ["RequestFilter", "RequestsScreen"]

_COLUMNS = ("request", "tenant", "status", "latency", "cost", "route", "cycles", "policy")
_PAGE = WINDOW
"""Older requests read per page: as many as the reader keeps."""


class RequestTable(DataTable[str | Text]):
    """The requests table. It tells its screen when it first has a size.

    Textual delivers a table's first `Resize` after its first paint, and a resize redraws
    every cell: rows added before it are drawn twice. The screen fills the table on
    `Sized` instead, which took a tenth to a fifth of a second off opening the view.
    """

    class Sized(Message):
        """The table has its first size: it can be filled."""

    sized = False

    def on_resize(self) -> None:
        """Announce the first size."""
        if not self.sized:
            self.sized = True
            self.post_message(self.Sized())


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """What the requests table shows: every set criterion must hold."""

    search: str = ""
    """Substring of the request id or tenant (case-insensitive)."""
    status: str | None = None
    route: str | None = None
    tenant: str | None = None
    slow_ms: float | None = None
    """Only requests slower than this (the p95 latency when "slow" is ticked)."""
    costly_usd: float | None = None
    """Only requests costlier than this (the p95 cost when "expensive" is ticked)."""

    def matches(self, row: RequestRow) -> bool:
        """Whether `row` passes every criterion."""
        needle = self.search.strip().lower()
        return (
            (not needle or needle in row.id.lower() or needle in row.tenant.lower())
            and (self.status is None or row.status == self.status)
            and (self.route is None or row.route == self.route)
            and (self.tenant is None or row.tenant == self.tenant)
            and (self.slow_ms is None or row.latency_ms > self.slow_ms)
            and (self.costly_usd is None or row.cost_usd > self.costly_usd)
        )


class RequestsScreen(LiveScreen):
    """Finished requests of the selected run (or all runs), newest at the bottom."""

    AUTO_FOCUS = "#requests"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open"),
        Binding("escape", "clear", "Clear filters"),
        Binding("o", "older", "Older", show=False),  # the scope line says so
    ]

    def __init__(self) -> None:
        super().__init__()
        self._shown_scope: object = object()
        self._shown: set[str] = set()
        self._options: dict[str, tuple[str, ...]] = {}
        self._filter = RequestFilter()
        self._older: list[RequestRow] = []
        """Requests read page by page, older than the kept ones, newest first."""
        self._exhausted = False
        self._pruned = 0
        """`Snapshot.pruned` when the table was built: a new value rebuilds it."""

    def compose_body(self) -> ComposeResult:
        """Scope line, search and filters, the table."""
        yield Static(id="requests-scope")
        with Horizontal(classes="filter-row"):
            yield Input(placeholder="/ search id or tenant", id="search", compact=True)
            yield Checkbox("slow", id="slow", compact=True)
            yield Checkbox("expensive", id="expensive", compact=True)
        with Horizontal(classes="filter-row"):
            for name in ("status", "route", "tenant"):
                yield Select[str]([], prompt=f"{name}: any", id=f"filter-{name}", compact=True)
        table = RequestTable(id="requests", cursor_type="row", zebra_stripes=True)
        for column in _COLUMNS:
            table.add_column(column, key=column)
        yield table

    def focus_search(self) -> None:
        """Put the cursor in the search box."""
        self.query_one("#search", Input).focus()

    def focus_filters(self) -> None:
        """Focus the first filter (status)."""
        self.query_one("#filter-status", Select).focus()

    # -- data ---------------------------------------------------------------------------

    def _scoped(self, snapshot: Snapshot) -> list[RequestRow]:
        run_id = self.moat.run_id
        kept = [r for r in snapshot.requests if run_id is None or r.run_id == run_id]
        known = {r.id for r in kept}
        return [r for r in reversed(self._older) if r.id not in known] + kept

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Append new requests; rebuild when the scope changed."""
        if not self.query_one("#requests", RequestTable).sized:
            self._update_options(self._scoped(snapshot))  # a filter may be set before
            return  # the rows are drawn on `RequestTable.Sized`
        if self._shown_scope != self.moat.run_id or self._pruned != snapshot.pruned:
            self._shown_scope = self.moat.run_id
            self._pruned = snapshot.pruned
            self._older, self._exhausted = [], False
            self._rebuild()
        else:
            rows = self._scoped(snapshot)
            self._update_options(rows)
            self._append(rows, snapshot.changed)
        self._show_scope_line()

    def _page(self, snapshot: Snapshot) -> RequestPage:
        f = self._filter
        return RequestPage(
            run_id=self.moat.run_id,
            status=f.status,
            tenant=f.tenant,
            search=f.search,
            slow_ms=f.slow_ms,
            costly_usd=f.costly_usd,
        )

    def _load_older(self) -> int:
        """Read the next page of older matching requests; how many came."""
        if self._exhausted:
            return 0
        snapshot = self.moat.snapshot
        oldest = [r.row_id for r in self._scoped(snapshot) if r.row_id]
        before = min(oldest) if oldest else None
        rows = self.moat.reader.page(self._page(snapshot), before, _PAGE)
        self._exhausted = len(rows) < _PAGE
        self._older.extend(rows)
        return len(rows)

    def _metrics(self) -> Metrics:
        return self.moat.snapshot.metrics.get(self.moat.run_id) or Metrics()

    def _current_filter(self) -> RequestFilter:
        def selected(name: str) -> str | None:
            value = self.query_one(f"#filter-{name}", Select).value
            return value if isinstance(value, str) else None

        metrics = self._metrics()
        return RequestFilter(
            search=self.query_one("#search", Input).value,
            status=selected("status"),
            route=selected("route"),
            tenant=selected("tenant"),
            slow_ms=metrics.p95_ms if self.query_one("#slow", Checkbox).value else None,
            costly_usd=metrics.cost_p95 if self.query_one("#expensive", Checkbox).value else None,
        )

    def _rebuild(self) -> None:
        table = self.query_one("#requests", DataTable)
        table.clear()
        self._shown.clear()
        self._filter = self._current_filter()
        rows = self._scoped(self.moat.snapshot)
        if sum(1 for r in rows if self._filter.matches(r)) < _PAGE and self.moat.snapshot.available:
            self._load_older()
            rows = self._scoped(self.moat.snapshot)
        self._update_options(rows)
        self._append(rows, frozenset())

    def _append(self, rows: Sequence[RequestRow], changed: frozenset[str]) -> None:
        table = self.query_one("#requests", DataTable)
        for row in rows:
            if row.id in self._shown:
                if row.id in changed:
                    table.update_cell(row.id, "route", plain(row.route or None))
                    table.update_cell(row.id, "cycles", plain(row.cycles))
                continue
            if self._filter.matches(row):
                table.add_row(*self._cells(row), key=row.id)
                self._shown.add(row.id)

    def _cells(self, row: RequestRow) -> tuple[Text, ...]:
        return (
            plain(row.id),
            plain(row.tenant or None),
            styled(self.app, row.status),
            Text(ms(row.latency_ms), justify="right"),
            Text(usd(row.cost_usd), justify="right"),
            plain(row.route or None),
            plain(row.cycles, justify="right"),
            plain(None if row.policy_version is None else f"v{row.policy_version}"),
        )

    def _update_options(self, rows: Sequence[RequestRow]) -> None:
        found = {
            "status": tuple(sorted({r.status for r in rows})),
            "route": tuple(sorted({r.route for r in rows if r.route})),
            "tenant": tuple(sorted({r.tenant for r in rows if r.tenant})),
        }
        for name, values in found.items():
            if self._options.get(name) == values:
                continue
            self._options[name] = values
            select = self.query_one(f"#filter-{name}", Select)
            current = select.value
            with select.prevent(Select.Changed):
                select.set_options((plain(v), v) for v in values)
                if isinstance(current, str) and current in values:
                    select.value = current

    def _show_scope_line(self) -> None:
        scope = self.moat.run_id or "all runs"
        shown = len(self._shown)
        runs = self.moat.snapshot.runs
        total = (
            sum(r.done for r in runs)
            if self.moat.run_id is None
            else next((r.done for r in runs if r.id == self.moat.run_id), 0)
        )
        total = max(total, self._metrics().requests, shown)
        older = "" if self._exhausted or shown >= total else ", o older"
        note = f"{self.moat.focus_note}  ·  " if self.moat.focus_note else ""
        self.query_one("#requests-scope", Static).update(
            Content(
                f"{printable(note + scope)}: {shown} of {total} requests shown  ·  enter "
                f"opens, / searches, f filters{older}"
            )
        )

    # -- events -------------------------------------------------------------------------

    def on_request_table_sized(self, event: RequestTable.Sized) -> None:
        """The table has its size: fill it."""
        self.show_snapshot(self.moat.snapshot)

    def on_input_changed(self, event: Input.Changed) -> None:
        """Search as you type."""
        self._refilter()

    def on_select_changed(self, event: Select.Changed) -> None:
        """A filter changed."""
        self._refilter()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        """Slow or expensive toggled."""
        self._refilter()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the search box moves to the table."""
        self.query_one("#requests", DataTable).focus()

    def _refilter(self) -> None:
        self._older, self._exhausted = [], False
        self._rebuild()
        self._show_scope_line()

    def action_older(self) -> None:
        """Read the next page of older requests of this scope and filter."""
        if self._load_older():
            self._rebuild_keeping_pages()
        self._show_scope_line()

    def _rebuild_keeping_pages(self) -> None:
        table = self.query_one("#requests", DataTable)
        table.clear()
        self._shown.clear()
        rows = self._scoped(self.moat.snapshot)
        self._update_options(rows)
        self._append(rows, frozenset())

    def set_filter(self, **values: str | bool | None) -> None:
        """Set filters programmatically: `status`, `route`, `tenant`, `slow`, `expensive`,
        `search` (used by the command palette)."""
        with self.prevent(Input.Changed, Select.Changed, Checkbox.Changed):
            for name, value in values.items():
                if name in ("slow", "expensive"):
                    self.query_one(f"#{name}", Checkbox).value = bool(value)
                elif name == "search":
                    self.query_one("#search", Input).value = str(value or "")
                else:
                    known = self._options.get(name, ())
                    select = self.query_one(f"#filter-{name}", Select)
                    ok = isinstance(value, str) and value in known
                    select.value = value if ok else Select.NULL
        self._refilter()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter (or a click) on a row opens the request."""
        if event.row_key.value is not None:
            await self.moat.open_request(str(event.row_key.value))

    async def action_open(self) -> None:
        """Open the highlighted request."""
        table = self.query_one("#requests", DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
            if key.value is not None:
                await self.moat.open_request(str(key.value))

    def action_clear(self) -> None:
        """Clear the search and every filter."""
        self.set_filter(
            search="", status=None, route=None, tenant=None, slow=False, expensive=False
        )
        self.query_one("#requests", DataTable).focus()
