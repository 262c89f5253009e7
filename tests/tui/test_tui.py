"""The TUI, driven headless through `App.run_test()` and `Pilot` on a fixed store."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Checkbox, DataTable, Input, Select, Static, TabbedContent, Tree

from engine.cli import main
from engine.store.schema import MIGRATIONS, connect, migrate
from engine.store.store import Store
from tests.tui.test_tui_store import RUN_A, RUN_B, add_request, build_store, registry
from tui import MoatApp
from tui.cli import add_commands
from tui.commands import MoatCommands
from tui.screens import (
    ConfirmScreen,
    DashboardScreen,
    PoliciesScreen,
    RequestDetailScreen,
    RequestsScreen,
)

pytestmark = pytest.mark.anyio

SIZE = (80, 24)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return build_store(tmp_path)


def make_app(db: Path, run_id: str | None = None) -> MoatApp:
    return MoatApp(db, run_id=run_id, refresh_s=0, registry=registry())


async def settle(pilot: Pilot[None]) -> None:
    """Let pending polls and loads finish and their results render."""
    await pilot.pause()
    while any(not worker.is_finished for worker in pilot.app.workers):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def text_of(app: MoatApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def request_ids(app: MoatApp) -> list[str]:
    table = app.screen.query_one("#requests", DataTable)
    return [str(key.value) for key in table.rows]


async def test_dashboard_shows_runs_metrics_and_the_simulated_label(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
        runs = app.screen.query_one("#runs", DataTable)
        assert [str(k.value) for k in runs.rows] == [RUN_B, RUN_A]
        assert "20/20" in str(runs.get_row(RUN_A)[3])
        metrics = text_of(app, "#metrics")
        assert "requests    23" in metrics
        assert "latency p95 1.11s" in metrics
        assert "3 requests, 2 node failures" in metrics
        assert "SIMULATED MODELS" in text_of(app, "#banner")
        assert "triage v2" in text_of(app, "#policies-line")


async def test_selecting_a_run_scopes_metrics_and_requests(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter")
        assert app.run_id == RUN_A
        assert "requests    20" in text_of(app, "#metrics")
        await pilot.press("r")
        await settle(pilot)
        assert len(request_ids(app)) == 20
        await pilot.press("d", "a")
        assert app.run_id is None
        assert "requests    23" in text_of(app, "#metrics")


async def test_empty_store_and_missing_store_show_empty_state(tmp_path: Path) -> None:
    Store.open(tmp_path / "empty.db").close()
    for name, expected in (("empty.db", "no runs in this store yet"), ("none.db", "no store")):
        app = make_app(tmp_path / name)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert expected in text_of(app, "#banner")
            await pilot.press("r")
            await settle(pilot)
            assert request_ids(app) == []


async def test_a_file_that_is_no_usable_store_says_why_instead_of_waiting(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database\n")
    old = tmp_path / "old.db"
    conn = connect(old)
    migrate(conn, old, MIGRATIONS[:2])
    conn.close()
    conn = sqlite3.connect(tmp_path / "app.db")
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    for name, expected in (
        ("notes.db", "notes.db: not a moat store"),
        ("app.db", "app.db: not a moat store: it holds another program's tables (users)"),
        ("old.db", "old.db: store schema version 2 is older than this moat"),
    ):
        app = make_app(tmp_path / name)
        async with app.run_test(size=(200, 24)) as pilot:
            await settle(pilot)
            banner = text_of(app, "#banner")
            assert expected in banner and "waiting" not in banner


async def test_requests_table_shows_status_route_cycles_and_policy(db: Path) -> None:
    app = make_app(db, run_id=RUN_A)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, RequestsScreen)
        table = app.screen.query_one("#requests", DataTable)
        row = [str(cell) for cell in table.get_row("q-a1b2-004")]
        assert row == ["q-a1b2-004", "globex", "failed", "780ms", "$0.0006", "small", "2", "v2"]


async def test_status_route_and_tenant_filters(db: Path) -> None:
    app = make_app(db, run_id=RUN_A)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await settle(pilot)
        for name, value, expected in (
            ("status", "failed", ["q-a1b2-004", "q-a1b2-015"]),
            ("route", "large", [f"q-a1b2-{i:03d}" for i in range(0, 20, 3)]),
            ("tenant", "initech", [f"q-a1b2-{i:03d}" for i in range(2, 20, 3)]),
        ):
            app.screen.query_one(f"#filter-{name}", Select).value = value
            await settle(pilot)
            assert request_ids(app) == expected
            await pilot.press("escape")
            assert len(request_ids(app)) == 20


async def test_f_focuses_the_status_filter_and_keys_choose_a_status(db: Path) -> None:
    app = make_app(db, run_id=RUN_A)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f")
        await settle(pilot)
        select = app.screen.query_one("#filter-status", Select)
        assert select.has_focus
        await pilot.press("enter", "down", "down", "enter")
        await settle(pilot)
        assert select.value == "failed"
        assert request_ids(app) == ["q-a1b2-004", "q-a1b2-015"]


async def test_slow_and_expensive_keep_requests_above_p95(db: Path) -> None:
    app = make_app(db, run_id=RUN_A)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await settle(pilot)
        await pilot.click("#slow")
        await settle(pilot)
        assert app.screen.query_one("#slow", Checkbox).value
        assert request_ids(app) == ["q-a1b2-008"]
        await pilot.click("#slow")
        await pilot.click("#expensive")
        await settle(pilot)
        assert request_ids(app) == []


async def test_search_matches_id_or_tenant_and_keys_stay_in_the_box(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        assert app.screen.query_one("#search", Input).has_focus
        await pilot.press(*"q-c3d4")
        await settle(pilot)
        assert app.is_running
        assert request_ids(app) == ["q-c3d4-000", "q-c3d4-001", "q-c3d4-002"]
        app.screen.query_one("#search", Input).value = "GLOBEX"
        await settle(pilot)
        assert len(request_ids(app)) == 8
        await pilot.press("enter")
        assert app.screen.query_one("#requests", DataTable).has_focus


async def test_enter_opens_the_request_and_escape_goes_back(db: Path) -> None:
    app = make_app(db, run_id=RUN_A)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await settle(pilot)
        await pilot.press("down", "enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RequestDetailScreen)
        assert screen.request_id == "q-a1b2-001"
        summary = text_of(app, "#detail-summary")
        assert "q-a1b2-001 ok" in summary
        assert "route small" in summary
        await pilot.press("escape")
        assert isinstance(app.screen, RequestsScreen)


async def test_detail_draws_the_graph_with_node_states_and_cycle_cards(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await app.open_request("q-a1b2-005")
        await settle(pilot)
        tree = app.screen.query_one("#graph-tree", Tree)
        labels = [str(node.label) for node in _walk(tree.root)]
        assert labels[0] == "graph (triage, triage.yaml)"
        assert "draft (draft) succeeded  90ms" in labels
        assert labels.count("critic (score) succeeded  70ms") == 3
        assert [label for label in labels if label.startswith("cycle")] == [
            "cycle 1",
            "cycle 2",
            "cycle 3",
        ]
        assert "revise (draft) skipped  0ms" in labels
        assert "gates       revise=run, revise=skip" in text_of(app, "#strategy")
        cards = list(app.screen.query(".cycle-card").results(Static))
        assert [card.border_title for card in cards] == [
            "cycle 1 · refine",
            "cycle 2 · refine",
            "cycle 3 · refine",
        ]
        assert "critic      proceed" in str(cards[2].render())
        assert "skipped     revise" in str(cards[2].render())


async def test_detail_without_the_graph_file_lists_node_runs(db: Path, tmp_path: Path) -> None:
    (tmp_path / "triage.yaml").unlink()
    app = MoatApp(db, refresh_s=0, registry=registry())
    async with app.run_test(size=SIZE) as pilot:
        await app.open_request("q-a1b2-003")
        await settle(pilot)
        tree = app.screen.query_one("#graph-tree", Tree)
        labels = [str(node.label) for node in _walk(tree.root)]
        assert labels[0] == "graph (from node runs)"
        assert labels[1] == "route (classify) succeeded  8ms"


async def test_detail_tabs_show_timeline_decisions_cycles_calls_and_events(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await app.open_request("q-a1b2-002")
        await settle(pilot)
        tabs = app.screen.query_one("#detail-tabs", TabbedContent)
        await pilot.press("right_square_bracket")
        assert tabs.active == "timeline"
        timeline = app.screen.query_one("#timeline-table", DataTable)
        draft = [str(c) for c in timeline.get_row_at(2)]
        assert draft[0] == "draft" and draft[2] == "discarded" and draft[-1] == "SDC"
        decisions = app.screen.query_one("#decisions-table", DataTable)
        events = [str(decisions.get_row_at(i)[4]) for i in range(decisions.row_count)]
        assert events[:3] == ["POLICY_PINNED", "ROUTE_SELECTED", "CACHE_HIT"]
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert tabs.active == "cycles"
        assert "no loop cycles" in str(app.screen.query_one(".empty", Static).render())
        calls = app.screen.query_one("#calls-table", DataTable)
        assert [str(c) for c in calls.get_row_at(0)][:7] == [
            "draft",
            "0",
            "small",
            "sim",
            "speculative",
            "discarded",
            "hit",
        ]
        await pilot.press("left_square_bracket")
        assert tabs.active == "decisions"
        raw = app.screen.query_one("#events-table", DataTable)
        assert raw.row_count == decisions.row_count


async def test_live_refresh_appends_new_requests(db: Path) -> None:
    app = make_app(db, run_id=RUN_B)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await settle(pilot)
        assert len(request_ids(app)) == 3
        new_id = add_request(db, 3)
        app.refresh_now()
        await settle(pilot)
        assert request_ids(app)[-1] == new_id
        assert app.snapshot.metrics[RUN_B].requests == 4


async def test_apply_a_policy_file_after_confirmation_and_report_bad_ones(
    db: Path, tmp_path: Path
) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await settle(pilot)
        assert isinstance(app.screen, PoliciesScreen)
        path_box = app.screen.query_one("#policy-path", Input)
        path_box.value = str(tmp_path / "missing.yaml")
        await pilot.press("a", "y")
        await settle(pilot)
        assert "not applied" in text_of(app, "#policy-message")
        path_box.value = str(tmp_path / "policy_v3.yaml")
        await pilot.click("#policy-apply")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await settle(pilot)
        assert _active(db) == 2
        await pilot.press("a")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert _active(db) == 3
        assert "version 3 stored and active (was 2)" in text_of(app, "#policy-message")
        versions = app.screen.query_one("#policy-versions", DataTable)
        assert [str(k.value) for k in versions.rows] == ["3", "2", "1"]


async def test_a_policy_no_shown_run_s_graph_reads_is_not_applied_unchecked(
    db: Path, tmp_path: Path
) -> None:
    """As `moat policy apply` refuses it: with no graph to check against, a value the
    graph cannot take would only show as failed requests once live."""
    with sqlite3.connect(db) as conn:  # runs whose graph is not recorded
        conn.execute("UPDATE runs SET config_json = '{}'")
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await settle(pilot)
        app.screen.query_one("#policy-path", Input).value = str(tmp_path / "policy_v3.yaml")
        await pilot.press("a", "y")
        await settle(pilot)
        said = text_of(app, "#policy-message")
        assert "not applied" in said and "no graph to check policy 'triage' against" in said
    assert _active(db) == 2


async def test_diff_against_the_active_version_and_roll_back(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await settle(pilot)
        app.screen.query_one("#policy-versions", DataTable).focus()
        await pilot.press("down")
        diff = text_of(app, "#policy-diff")
        assert "triage: v1 against the active v2" in diff
        assert "~ router.threshold: 0.4 -> 0.5" in diff
        await pilot.press("up")
        await pilot.click("#policy-rollback")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, ConfirmScreen)
        assert "to the previously active version" in dialog.question
        await pilot.click("#confirm-yes")
        await settle(pilot)
        assert _active(db) == 1
        assert "version 1 active again (version 2 rolled back)" in text_of(app, "#policy-message")


async def test_command_palette_lists_every_action_and_runs_one(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        provider = MoatCommands(app.screen)
        names = [hit.text async for hit in provider.discover()]
        for name in ("Show dashboard", "Show requests", "Show policies", "Search requests"):
            assert name in names
        assert {"Apply policy file", "Roll back policy", "Quit"} <= set(names)
        found = [hit.text async for hit in provider.search("open q-a1b2-007")]
        assert "Open request q-a1b2-007" in found
        await pilot.press("ctrl+p")
        await pilot.press(*"failed requests")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, RequestsScreen)
        assert request_ids(app) == ["q-a1b2-004", "q-a1b2-015"]


async def test_quit_with_q(db: Path) -> None:
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q")
        assert not app.is_running


def test_cli_registers_moat_tui() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["tui", "--db", "x.db"])
    assert args.db == "x.db"
    assert args.handler.__name__ == "cmd_tui"


def test_moat_tui_on_an_unknown_run_lists_the_runs_and_exits_2(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tui", "--db", str(db), "--run", "r-nope"]) == 2
    err = capsys.readouterr().err
    assert f"no run 'r-nope'. Latest runs: {RUN_B}, {RUN_A}. List them with `moat runs`" in err


def _walk(node: object) -> list[object]:
    out = [node]
    for child in getattr(node, "children", ()):
        out += _walk(child)
    return out


def _active(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT version FROM policy_activations WHERE name = 'triage' ORDER BY id DESC"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])
