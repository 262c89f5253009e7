"""SVG snapshots of every TUI screen on the fixed store (pytest-textual-snapshot).

Update the baselines after an intended change with `pytest tests/tui/test_tui_snapshots.py
--snapshot-update`, and look at the new SVGs before committing them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.tui.test_tui_store import RUN_A, RUN_B, build_store, registry
from tui import MoatApp

Compare = Callable[..., bool]


@pytest.fixture
def app(tmp_path: Path) -> MoatApp:
    return MoatApp(build_store(tmp_path), refresh_s=0, registry=registry())


async def _settle(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    while any(not worker.is_finished for worker in pilot.app.workers):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def _then(*keys: str, request: str | None = None) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _settle(pilot)
        app = pilot.app
        assert isinstance(app, MoatApp)
        if request is not None:
            await app.open_request(request)
            await _settle(pilot)
        for key in keys:
            await pilot.press(key)
            await _settle(pilot)

    return run_before


def test_dashboard(snap_compare: Compare, app: MoatApp) -> None:
    assert snap_compare(app, terminal_size=(100, 30), run_before=_then())


def test_dashboard_80x24(snap_compare: Compare, app: MoatApp) -> None:
    assert snap_compare(app, terminal_size=(80, 24), run_before=_then())


def test_run_focus_80x24(snap_compare: Compare, app: MoatApp) -> None:
    """What `moat run --tui` shows: the dashboard focused on the run in progress."""
    app.run_id = RUN_B
    assert snap_compare(app, terminal_size=(80, 24), run_before=_then())


def test_request_detail_80x24(snap_compare: Compare, app: MoatApp) -> None:
    assert snap_compare(app, terminal_size=(80, 24), run_before=_then(request="q-a1b2-005"))


def test_requests(snap_compare: Compare, app: MoatApp) -> None:
    app.run_id = RUN_A
    assert snap_compare(app, terminal_size=(100, 30), run_before=_then("r", "down", "down"))


def test_request_detail_overview(snap_compare: Compare, app: MoatApp) -> None:
    assert snap_compare(app, terminal_size=(100, 30), run_before=_then(request="q-a1b2-005"))


def test_request_detail_timeline(snap_compare: Compare, app: MoatApp) -> None:
    run_before = _then("right_square_bracket", request="q-a1b2-005")
    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_policies(snap_compare: Compare, app: MoatApp) -> None:
    assert snap_compare(app, terminal_size=(100, 30), run_before=_then("p", "tab", "down"))


def test_rollback_confirmation(snap_compare: Compare, app: MoatApp) -> None:
    assert snap_compare(app, terminal_size=(100, 30), run_before=_then("p", "b"))
