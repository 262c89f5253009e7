"""The base of every screen that shows live store data."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen
from textual.widgets import Footer, Header

from tui._live import Snapshot

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from tui.app import MoatApp

__all__ = ["LiveScreen"]


class LiveScreen(Screen[None]):
    """A screen redrawn from each new `Snapshot` while it is on display.

    Subclasses compose their body in `compose_body` and draw data in `show_snapshot`.
    """

    @property
    def moat(self) -> MoatApp:
        """The running `MoatApp`."""
        return cast("MoatApp", self.app)

    def compose(self) -> ComposeResult:
        """Header, the screen's body, footer."""
        yield Header()
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        """The widgets between header and footer."""
        return iter(())

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Draw `snapshot` (called on every poll while the screen is on display)."""

    def on_screen_resume(self) -> None:
        """Catch up with the latest snapshot when the screen comes back on display."""
        self.show_snapshot(self.moat.snapshot)
