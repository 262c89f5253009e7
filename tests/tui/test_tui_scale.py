"""The TUI on a store larger than it keeps: the newest requests at once, older ones a page
at a time, figures over every request from SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from engine.store.reads import RequestPage
from engine.store.retention import prune
from engine.store.store import Store
from tests.support.store_rows import stored_run
from tui import MoatApp
from tui._detail import load_detail
from tui._live import WINDOW, LiveReader

pytestmark = pytest.mark.anyio

TOTAL = 2 * WINDOW + 100
"""The kept window, one page of older requests (a page is a window), and a part page."""


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scale") / "s.db"
    stored_run(path, TOTAL)
    return path


def test_a_poll_keeps_the_newest_window_and_counts_every_request(db: Path) -> None:
    reader = LiveReader(db)
    try:
        snapshot = reader.poll()
        (run,) = snapshot.runs
        assert len(snapshot.requests) == WINDOW
        assert snapshot.requests[-1].seq == TOTAL - 1
        assert snapshot.requests[0].seq == TOTAL - WINDOW
        assert snapshot.metrics[None].requests == TOTAL
        assert snapshot.metrics[run.id].requests == TOTAL
        assert snapshot.metrics[None].complete
        assert snapshot.metrics[run.id].cache_hit_rate == 0.0  # every request missed
        assert snapshot.requests[-1].route == "small" and snapshot.requests[-1].cycles == 1
        older = reader.page(RequestPage(), snapshot.requests[0].row_id, WINDOW)
        assert [r.seq for r in older[:2]] == [TOTAL - WINDOW - 1, TOTAL - WINDOW - 2]
        assert reader.poll().requests == snapshot.requests  # nothing new: nothing re-read
    finally:
        reader.close()


async def _requests_table(app: MoatApp, pilot: Any) -> DataTable[Any]:
    """The requests screen's table, once the app has read the store."""
    await app.action_show("requests")
    while not app.snapshot.available:
        await pilot.pause(0.01)
    await pilot.pause()
    return app.screen.query_one("#requests", DataTable)


async def test_the_requests_view_reads_older_pages_on_o(db: Path) -> None:
    app = MoatApp(db, refresh_s=0)
    async with app.run_test(size=(120, 40)) as pilot:
        table = await _requests_table(app, pilot)
        assert table.row_count == WINDOW
        scope = str(app.screen.query_one("#requests-scope", Static).render())
        assert f"{WINDOW} of {TOTAL} requests shown" in scope and "o older" in scope
        await pilot.press("o")
        assert table.row_count == 2 * WINDOW
        await pilot.press("o")
        assert table.row_count == TOTAL
        scope = str(app.screen.query_one("#requests-scope", Static).render())
        assert f"{TOTAL} of {TOTAL} requests shown" in scope and "o older" not in scope
        with Store.open(db, readonly=True) as store:
            first = store.query("SELECT id FROM requests ORDER BY rowid LIMIT 1")[0]["id"]
        assert str(next(iter(table.rows)).value) == first  # the oldest on top


async def test_runs_pruned_meanwhile_leave_the_views_and_the_figures(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    old = stored_run(db, 40, at=1_700_000_000.0)
    new = stored_run(db, 10, at=1_700_100_000.0)
    app = MoatApp(db, refresh_s=0)
    async with app.run_test(size=(120, 40)) as pilot:
        table = await _requests_table(app, pilot)
        assert table.row_count == 50 and app.snapshot.metrics[None].requests == 50

        assert prune(db, keep_runs=1).runs == [old]
        app.refresh_now()
        await app.workers.wait_for_complete()
        await pilot.pause()

        assert [run.id for run in app.snapshot.runs] == [new]
        assert {row.run_id for row in app.snapshot.requests} == {new}
        assert app.snapshot.metrics[None].requests == 10
        assert table.row_count == 10
        assert all(str(key.value).startswith(new) for key in table.rows)


async def test_a_focused_run_pruned_meanwhile_is_said_gone_not_shown_idle(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    old = stored_run(db, 4, at=1_700_000_000.0)
    new = stored_run(db, 2, at=1_700_100_000.0)
    app = MoatApp(db, run_id=old, refresh_s=0)
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.snapshot.available:
            await pilot.pause(0.01)
        await pilot.pause()
        assert app.snapshot.metrics[old].requests == 4

        assert prune(db, keep_runs=1).runs == [old]
        app.refresh_now()
        await app.workers.wait_for_complete()
        await pilot.pause()

        gone = f"run {old} no longer exists: it was pruned (`moat prune`)"
        assert (app.run_id, app.reader.focus, app.focus_note) == (None, None, gone)
        banner = str(app.screen.query_one("#banner", Static).render())
        assert f"{gone} · showing all runs" in banner
        assert app.snapshot.metrics[None].requests == 2
        app.refresh_now()  # later polls no longer ask for it
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.snapshot.focus_gone is None and app.run_id is None
        await app.action_show("requests")
        await pilot.pause()
        scope = str(app.screen.query_one("#requests-scope", Static).render())
        assert scope.startswith(f"{gone}  ·  all runs: 2 of 2 requests shown")
        app.select_run(new)
        assert app.focus_note == ""


def test_a_focused_run_the_store_never_held_is_said_so(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 1)
    reader = LiveReader(db)
    reader.focus = "r-20240101-000000-0000"
    try:
        snapshot = reader.poll()
    finally:
        reader.close()
    assert snapshot.focus_gone == "r-20240101-000000-0000"
    assert snapshot.focus_note == (
        "run r-20240101-000000-0000 is not in this store (pruned, or never run here)"
    )


def test_the_detail_of_a_pruned_request_says_so_and_stops_asking(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    old = stored_run(db, 2, at=1_700_000_000.0)
    stored_run(db, 1, at=1_700_100_000.0)
    prune(db, keep_runs=1)
    with Store.open(db) as store:
        running = store.create_run("g", "hash", 3)  # this process's: running
        gone = load_detail(store, f"{old}-000001")
        waiting = load_detail(store, f"{running}-000002")
    assert gone.problem.startswith(f"no request '{old}-000001'. No run '{old}' either: it was")
    assert not gone.pending
    assert waiting.waiting.startswith(f"request '{running}-000002' is not answered yet")
    assert waiting.pending and not waiting.problem
