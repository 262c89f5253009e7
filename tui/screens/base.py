"""The base of every screen that shows live store data."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen
from textual.widgets import Footer, Header

from tui._live import Snapshot

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from tui.app import MoatApp

__all__ = ["PALETTE_KEY_MIN_WIDTH", "LiveScreen"]

PALETTE_KEY_MIN_WIDTH = 100
"""Below this many columns the footer leaves out `^p palette` (ctrl+p still opens it), so
the screens' own keys and `q Quit` are never hidden under it."""


class LiveScreen(Screen[None]):
    """A screen redrawn from each new `Snapshot` while it is on display.

    Subclasses compose their body in `compose_body` and draw data in `show_snapshot`.
    """

    def __init__(self) -> None:
        super().__init__()
        # A new screen's widgets are styled as they mount. Textual would also restyle the
        # whole app, every screen, on the first switch to it (its `refresh_css`, a tenth of
        # a second here); the count it compares says this screen is already current.
        try:
            count = getattr(self.app, "_css_update_count", None)
        except RuntimeError:  # made outside a running app: nothing to be current with
            count = None
        if count is not None:
            self._css_update_count = count

    @property
    def moat(self) -> MoatApp:
        """The running `MoatApp`."""
        return cast("MoatApp", self.app)

    def compose(self) -> ComposeResult:
        """Header, the screen's body, footer."""
        yield Header()
        yield from self.compose_body()
        # as wide as the app is now (a later resize recomposes it only if that changes)
        wide = self.app.size.width >= PALETTE_KEY_MIN_WIDTH
        yield Footer(compact=True, show_command_palette=wide)

    def compose_body(self) -> ComposeResult:
        """The widgets between header and footer."""
        return iter(())

    def on_resize(self) -> None:
        """Show the command palette key in the footer only where every key fits beside it."""
        footer = self.query_one(Footer)
        show = self.size.width >= PALETTE_KEY_MIN_WIDTH
        if footer.show_command_palette != show:
            footer.show_command_palette = show
            footer.refresh(recompose=True)

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Draw `snapshot` (called on every poll while the screen is on display)."""

    def on_screen_resume(self) -> None:
        """Catch up with the latest snapshot when the screen comes back on display."""
        self.show_snapshot(self.moat.snapshot)
