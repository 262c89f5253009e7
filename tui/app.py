"""The moat terminal UI application: modes, key bindings and the live refresh loop.

`MoatApp` polls the store every `refresh_s` seconds in a worker thread (`LiveReader` reads
only rows newer than the last poll) and hands the resulting `Snapshot` to the screen on
display. Three modes, one per top-level view: dashboard (`d`), requests (`r`) and policies
(`p`); the request detail screen is pushed on top of the requests view.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType

from engine import Registry
from tui._format import printable
from tui._live import LiveReader, Snapshot
from tui.commands import MoatCommands
from tui.screens.base import LiveScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.detail import RequestDetailScreen
from tui.screens.policies import PoliciesScreen
from tui.screens.requests import RequestsScreen

__all__ = ["MoatApp", "run_tui"]


class MoatApp(App[None]):
    """The live view of one moat store.

    Args:
        db_path: the store file; it may not exist yet (the app waits for it).
        run_id: the run to focus on; None shows every run.
        refresh_s: seconds between polls of the store, at most 0.5 (0: poll only once,
            and when asked with `refresh_now`).
        registry: node types for drawing graphs (default: the installed ones).
    """

    TITLE = "moat"
    CSS_PATH = "moat.tcss"
    COMMANDS: ClassVar = App.COMMANDS | {MoatCommands}
    MODES: ClassVar = {
        "dashboard": DashboardScreen,
        "requests": RequestsScreen,
        "policies": PoliciesScreen,
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        # first of the app's keys, so the footer shows it even at 80 columns
        Binding("q", "quit", "Quit"),
        Binding("d", "show('dashboard')", "Dashboard"),
        Binding("r", "show('requests')", "Requests"),
        Binding("p", "show('policies')", "Policies"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("f", "filter", "Filter"),
    ]

    def __init__(
        self,
        db_path: str | Path,
        *,
        run_id: str | None = None,
        refresh_s: float = 0.5,
        registry: Registry | None = None,
    ) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.run_id = run_id
        self.refresh_s = min(refresh_s, 0.5) if refresh_s > 0 else 0.0
        self.reader = LiveReader(self.db_path)
        self.reader.focus = run_id
        self.registry = registry
        self.snapshot = Snapshot(message="reading the store…")
        self.sub_title = printable(self.db_path.name)
        self._polling = False
        self._again = False
        self.focus_note = ""
        """Why the views left the run they were focused on (it was pruned), until another
        run is selected."""

    def on_mount(self) -> None:
        """Show the dashboard and start polling."""
        self.switch_mode("dashboard")
        self.refresh_now()
        if self.refresh_s:
            self.set_interval(self.refresh_s, self.refresh_now)

    def on_unmount(self) -> None:
        """Close the store connection."""
        self.reader.close()

    # -- the refresh loop ---------------------------------------------------------------

    def refresh_now(self) -> None:
        """Poll the store now, unless a poll is still running."""
        if self._polling:
            self._again = True
            return
        self._polling = True
        self._again = False
        self._poll()

    @work(thread=True, group="poll", exit_on_error=False)
    def _poll(self) -> None:
        try:
            self.reader.focus = self.run_id
            snapshot = self.reader.poll()
        except Exception as exc:  # a damaged file must not take the UI down
            snapshot = Snapshot(message=f"reading the store failed: {exc}")
        try:
            self.call_from_thread(self._show, snapshot)
        except RuntimeError:  # the app is shutting down
            self._polling = False

    def _show(self, snapshot: Snapshot) -> None:
        self._polling = False
        self.snapshot = snapshot
        if snapshot.focus_gone is not None and snapshot.focus_gone == self.run_id:
            self._lose_focus(snapshot.focus_note)
        if self._again:
            self.refresh_now()
        for screen in self.screen_stack:
            if isinstance(screen, LiveScreen) and screen.is_mounted:
                screen.show_snapshot(snapshot)

    def _lose_focus(self, note: str) -> None:
        """The focused run is gone from the store (pruned by another process): show every
        run rather than the empty figures of a run that looks idle, and say why."""
        self.run_id = None
        self.reader.focus = None
        self.focus_note = note
        self.notify(printable(f"{note}; showing every run"), severity="warning", timeout=10)

    # -- navigation ---------------------------------------------------------------------

    def select_run(self, run_id: str | None) -> None:
        """Focus the views on one run (None: every run) and redraw them."""
        self.run_id = run_id
        self.focus_note = ""
        self.reader.focus = run_id
        if isinstance(self.screen, LiveScreen):
            self.screen.show_snapshot(self.snapshot)
        self.refresh_now()  # its figures, if not read yet

    async def action_show(self, mode: str) -> None:
        """Switch to a top-level view: `dashboard`, `requests` or `policies`."""
        if self.current_mode != mode:
            await self.switch_mode(mode)

    async def action_search(self) -> None:
        """Go to the requests view and focus its search box."""
        await self.action_show("requests")
        screen = self.requests_screen()
        if screen is not None:
            screen.focus_search()

    async def action_filter(self) -> None:
        """Go to the requests view and focus its first filter."""
        await self.action_show("requests")
        screen = self.requests_screen()
        if screen is not None:
            screen.focus_filters()

    def requests_screen(self) -> RequestsScreen | None:
        """The requests view, if it has been shown."""
        try:
            stack = self.get_screen_stack("requests")
        except KeyError:
            return None
        found = [screen for screen in stack if isinstance(screen, RequestsScreen)]
        return found[0] if found else None

    async def open_request(self, request_id: str) -> None:
        """Show the detail screen of one request (from any view)."""
        await self.action_show("requests")
        while isinstance(self.screen, RequestDetailScreen):
            self.pop_screen()
        await self.push_screen(RequestDetailScreen(request_id))


def run_tui(db_path: str | Path, run_id: str | None = None) -> None:
    """Run the TUI in the terminal until the user quits.

    Args:
        db_path: the store file.
        run_id: the run to focus on (as `moat run --tui` does); None shows every run.
    """
    MoatApp(db_path, run_id=run_id).run()


async def run_tui_async(db_path: str | Path, run_id: str | None = None) -> None:
    """Run the TUI inside an already running event loop (`moat run --tui`) until the user quits.

    Args:
        db_path: the store file the run writes.
        run_id: the run to focus on.
    """
    await MoatApp(db_path, run_id=run_id).run_async()
