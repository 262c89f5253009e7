"""The command palette entries of the moat TUI: one per action, plus runs and requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from tui.app import MoatApp

__all__ = ["MoatCommands"]

_MAX_REQUEST_HITS = 20


class MoatCommands(Provider):
    """Navigation, filters, policy actions, and "open request ID" / "select run ID"."""

    @property
    def moat(self) -> MoatApp:
        """The running `MoatApp`."""
        return cast("MoatApp", self.app)

    def _actions(self) -> Iterator[tuple[str, Callable[[], Any], str]]:
        app = self.moat
        yield "Show dashboard", partial(app.run_action, "show('dashboard')"), "runs and metrics"
        yield "Show requests", partial(app.run_action, "show('requests')"), "the request table"
        yield "Show policies", partial(app.run_action, "show('policies')"), "versions and diffs"
        yield "Search requests", partial(app.run_action, "search"), "by request id or tenant"
        yield "Filter requests", partial(app.run_action, "filter"), "by status, route, tenant"
        for name, values in (
            ("failed requests", {"status": "failed"}),
            ("slow requests", {"slow": True}),
            ("expensive requests", {"expensive": True}),
            ("all requests (clear filters)", {}),
        ):
            yield f"Show {name}", partial(self._filter, values), "requests view filter"
        yield "Show all runs", partial(app.select_run, None), "metrics over every run"
        yield "Apply policy file", partial(self._policy, "apply"), "asks for confirmation"
        yield "Roll back policy", partial(self._policy, "rollback"), "asks for confirmation"
        yield "Refresh now", app.refresh_now, "poll the store immediately"
        yield "Quit", partial(app.run_action, "quit"), "leave the TUI"

    def _targets(self) -> Iterator[tuple[str, Callable[[], Any], str]]:
        snapshot = self.moat.snapshot
        for run in snapshot.runs:
            yield f"Select run {run.id}", partial(self.moat.select_run, run.id), run.graph_name
        for request in snapshot.requests[-_MAX_REQUEST_HITS * 50 :]:
            label = f"Open request {request.id}"
            yield label, partial(self.moat.open_request, request.id), request.status

    async def _filter(self, values: dict[str, Any]) -> None:
        await self.moat.action_show("requests")
        screen = self.moat.requests_screen()
        if screen is not None:
            defaults: dict[str, Any] = {
                "search": "",
                "status": None,
                "route": None,
                "tenant": None,
                "slow": False,
                "expensive": False,
            }
            screen.set_filter(**{**defaults, **values})

    async def _policy(self, action: str) -> None:
        await self.moat.action_show("policies")
        await self.moat.run_action(action)

    async def discover(self) -> Hits:
        """Every action, shown before anything is typed."""
        for name, callback, help_text in self._actions():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        """Actions, runs and requests matching `query`."""
        matcher = self.matcher(query)
        found = 0
        for source in (self._actions(), self._targets()):
            for name, callback, help_text in source:
                score = matcher.match(name)
                if score > 0 and found < _MAX_REQUEST_HITS * 2:
                    found += 1
                    yield Hit(score, matcher.highlight(name), callback, text=name, help=help_text)
