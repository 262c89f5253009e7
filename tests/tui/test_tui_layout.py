"""The TUI fits a standard 80x24 terminal: whole run rows, and a footer that shows `q Quit`."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from textual.pilot import Pilot
from textual.widgets import DataTable
from textual.widgets._footer import FooterKey

from tests.tui.test_tui import make_app, settle
from tests.tui.test_tui_store import RUN_A, RUN_B, build_store
from tui import MoatApp
from tui._format import ellipsize, fit_widths

pytestmark = pytest.mark.anyio

LONG_GRAPH = "governed-answer-with-a-very-long-descriptive-name"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return build_store(tmp_path)


def _set_run(db: Path, run_id: str, **columns: object) -> None:
    """Change a run's row, as the writer of a live run does."""
    conn = sqlite3.connect(db, isolation_level=None)
    assignments = ", ".join(f"{name} = ?" for name in columns)
    conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*columns.values(), run_id))
    conn.close()


def _run_lines(app: MoatApp) -> dict[str, str]:
    """The runs table as drawn: the text of each run's row on screen, by run id."""
    table = app.screen.query_one("#runs", DataTable)
    rows = table.ordered_rows
    return {str(row.key.value): table.render_line(y + 1).text for y, row in enumerate(rows)}


async def _refresh(app: MoatApp, pilot: Pilot[None]) -> None:
    app.refresh_now()
    await settle(pilot)


async def test_a_live_run_row_keeps_its_status_and_progress_whole_as_it_grows(db: Path) -> None:
    app = make_app(db, run_id=RUN_B)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "running" in _run_lines(app)[RUN_B] and "3/10" in _run_lines(app)[RUN_B]
        _set_run(db, RUN_B, requests_total=1000, requests_done=240)
        await _refresh(app, pilot)
        assert "240/1000" in _run_lines(app)[RUN_B]
        _set_run(db, RUN_B, status="interrupted", requests_done=1000, finished_at=1.0)
        await _refresh(app, pilot)
        line = _run_lines(app)[RUN_B]
        assert "interrupted" in line and "1000/1000" in line
        assert "20/20" in _run_lines(app)[RUN_A]


@pytest.mark.parametrize(("width", "whole_name"), [(80, False), (100, False), (132, True)])
async def test_runs_fit_the_screen_cutting_the_graph_name_not_the_status(
    db: Path, width: int, whole_name: bool
) -> None:
    _set_run(db, RUN_A, graph_name=LONG_GRAPH)
    app = make_app(db)
    async with app.run_test(size=(width, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#runs", DataTable)
        assert table.virtual_size.width <= table.size.width  # nothing hidden to the right
        lines = _run_lines(app)
        assert "finished" in lines[RUN_A] and "20/20" in lines[RUN_A]
        assert "running" in lines[RUN_B] and "3/10" in lines[RUN_B]
        assert "governed-a" in lines[RUN_A]
        # the long name is cut with an ellipsis where it does not fit
        assert (LONG_GRAPH in lines[RUN_A]) is whole_name
        assert ("…" in lines[RUN_A]) is not whole_name
        assert RUN_B[-4:] in lines[RUN_B] and RUN_A[-4:] in lines[RUN_A]  # ids stay told apart


async def test_a_narrower_terminal_lays_the_runs_out_again(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=(132, 24)) as pilot:
        await settle(pilot)
        assert RUN_A in _run_lines(app)[RUN_A]  # whole id at full width
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        table = app.screen.query_one("#runs", DataTable)
        assert table.virtual_size.width <= table.size.width
        assert "finished" in _run_lines(app)[RUN_A]


async def _footer_keys(app: MoatApp) -> list[tuple[str, int, int]]:
    """The footer's keys once it has laid them out: Textual recomposes the footer from a
    message after a screen changes, so a loaded machine may show it half-built first."""
    keys: list[tuple[str, int, int]] = []
    for _ in range(200):
        found = sorted((k.key, k.region.x, k.region.right) for k in app.screen.query(FooterKey))
        if found and found == keys and any(key == "q" for key, _, _ in found):
            return found
        keys = found
        await anyio.sleep(0.01)
    return keys


async def test_the_footer_shows_q_quit_and_every_key_whole_at_80x24(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for step in ("dashboard", "r", "p", "detail"):
            if step == "detail":
                await app.open_request("q-a1b2-005")
            elif step != "dashboard":
                await pilot.press(step)
            await settle(pilot)
            keys = await _footer_keys(app)
            assert "q" in [key for key, _, _ in keys], step
            spans = sorted((x, right) for _, x, right in keys)
            assert all(right <= 80 for _, right in spans), (step, keys)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), (step, keys)


async def test_the_palette_key_comes_back_where_there_is_room(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        assert "ctrl+p" in [key for key, _, _ in await _footer_keys(app)]
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert "ctrl+p" not in [key for key, _, _ in await _footer_keys(app)]


@given(
    natural=st.lists(st.integers(0, 60), min_size=1, max_size=8),
    data=st.data(),
    available=st.integers(0, 300),
)
def test_fitted_widths_cut_only_shrinkable_columns_and_fit_when_they_can(
    natural: list[int], data: st.DataObject, available: int
) -> None:
    n = len(natural)
    minimum = data.draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    order = data.draw(st.permutations(range(n)).map(lambda p: p[: data.draw(st.integers(0, n))]))
    widths = fit_widths(natural, minimum, order, available)
    for i in range(n):
        if i not in order:
            assert widths[i] == natural[i]
        assert min(natural[i], minimum[i]) <= widths[i] <= natural[i]
    floor = sum(min(natural[i], minimum[i]) if i in order else natural[i] for i in range(n))
    assert sum(widths) <= max(available, floor)


@given(text=st.text(max_size=40), width=st.integers(0, 50), middle=st.booleans())
def test_ellipsized_text_fits_and_keeps_what_it_can(text: str, width: int, middle: bool) -> None:
    cut = ellipsize(text, width, middle=middle)
    assert len(cut) <= max(width, 0) or cut == text
    if len(text) <= width:
        assert cut == text
    elif width >= 2:
        assert "…" in cut and cut.startswith(text[: max(1, (width - 1) // 2)])
        if middle:
            assert cut.endswith(text[-((width - 1) // 2) :]) or (width - 1) // 2 == 0


def test_a_screen_can_be_made_before_any_app_runs() -> None:
    from tui.screens import DashboardScreen, PoliciesScreen, RequestDetailScreen, RequestsScreen

    for screen in (DashboardScreen(), RequestsScreen(), PoliciesScreen(), RequestDetailScreen("x")):
        assert not screen.is_mounted
