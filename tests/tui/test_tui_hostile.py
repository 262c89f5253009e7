"""The TUI over stores whose text and figures no moat wrote: every screen shows stored text
literally (markup stays text, control characters and escape sequences never reach the
terminal) and says what it cannot show instead of crashing or loading forever."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from textual.widgets import Static

from tests.tui.test_tui import SIZE, make_app, settle, text_of
from tests.tui.test_tui_store import RUN_A, build_store
from tui._format import NOT_A_TIME, printable, utc, utc_short
from tui.screens import RequestDetailScreen

pytestmark = pytest.mark.anyio

HOSTILE = (
    "[bold red]X[/] [/] [link=https://example.invalid]L[/link] [@click=app.quit]q[/] "
    "\x1b[2J\x1b]0;pwned\x07 \x9b31m \u202eRTL\u202c e\u0301 漢字 👩‍💻"
)
"""Rich and Textual markup, an unbalanced close tag, a click action, terminal commands (clear
screen, set title, a C1 CSI), a bidirectional override, combining, wide and joined glyphs."""
REQUEST = f"q-{RUN_A[-4:]}-004"
_TERMINAL_COMMANDS = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
"""What must never reach the terminal: control characters (but line breaks) and the
bidirectional overrides."""


def hostile_store(tmp_path: Path) -> Path:
    """The fixture store with `HOSTILE` in every text column of one run, one request (and
    its rows) and one policy."""
    db = build_store(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE runs SET graph_name = ? WHERE id = ?", (HOSTILE, RUN_A))
    conn.execute(
        "UPDATE requests SET tenant = ?, status = ?, error = ?, policy_name = ? WHERE id = ?",
        (HOSTILE, HOSTILE, HOSTILE + "\n" + "E" * 20_000, HOSTILE, REQUEST),
    )
    conn.execute(
        "UPDATE orchestration_events SET stage = ?, component = ?, decision = ?, "
        "reason_codes_json = ?, payload_json = ? WHERE request_id = ?",
        (HOSTILE, HOSTILE, HOSTILE, json.dumps([HOSTILE]), json.dumps({"x": HOSTILE}), REQUEST),
    )
    conn.execute(
        "UPDATE node_runs SET node = ?, node_type = ?, error = ? WHERE request_id = ?",
        (HOSTILE, HOSTILE, HOSTILE, REQUEST),
    )
    conn.execute(
        "UPDATE llm_calls SET model = ?, provider = ?, call_outcome = ? WHERE request_id = ?",
        (HOSTILE, HOSTILE, HOSTILE, REQUEST),
    )
    payload = {"loop": HOSTILE, "planned": [HOSTILE], "next_action": HOSTILE}
    conn.execute(
        "UPDATE decision_traces SET payload_json = ? WHERE request_id = ?",
        (json.dumps(payload), REQUEST),
    )
    conn.execute(
        "INSERT INTO policy_snapshots VALUES (?, 1, 'h', ?, 0, NULL, 'active')",
        (HOSTILE, json.dumps({"name": HOSTILE, HOSTILE: HOSTILE})),
    )
    conn.execute(
        "INSERT INTO policy_activations (name, version, activated_at, reason) VALUES (?, 1, 0, ?)",
        (HOSTILE, HOSTILE),
    )
    conn.close()
    return db


def screen_text(app: object) -> str:
    """What the terminal would be sent for the whole screen, without Textual's own styling."""
    update = app.screen._compositor.render_full_update()  # type: ignore[attr-defined]
    return "\n".join("".join(strip.text for strip in line) for line in update.strips)


def assert_literal(text: str) -> None:
    assert not _TERMINAL_COMMANDS.search(text), repr(_TERMINAL_COMMANDS.search(text))
    assert "[bold red]X[/] [/] [link=https://example" in text
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in text


def test_printable_escapes_what_drives_a_terminal_and_keeps_the_rest() -> None:
    assert printable("a\x1b[31mb\x9bc\x00") == "a\\x1b[31mb\\x9bc\\x00"
    assert printable("\u202eevil") == "\\u202eevil"
    assert printable("[b]漢字 e\u0301 👩‍💻") == "[b]漢字 e\u0301 👩‍💻"
    assert printable("one\ntwo") == "one\\x0atwo"
    assert printable("one\ntwo", lines=True) == "one\ntwo"
    assert printable(None) == "None"


@given(st.text())
def test_printed_text_holds_no_terminal_command_and_names_each_one_it_hides(text: str) -> None:
    shown = printable(text)
    assert not _TERMINAL_COMMANDS.search(shown)
    assert shown == "".join(printable(c) for c in text)
    for c in text:
        if _TERMINAL_COMMANDS.search(c) or c == "\n":
            assert int(printable(c)[2:], 16) == ord(c)
        else:
            assert printable(c) == c


async def test_every_screen_shows_stored_markup_and_escapes_literally(tmp_path: Path) -> None:
    app = make_app(hostile_store(tmp_path))
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        assert_literal(screen_text(app))  # the runs table
        await pilot.press("r")
        await settle(pilot)
        assert_literal(screen_text(app))  # tenant and status of the request
        await app.open_request(REQUEST)
        await settle(pilot)
        summary = text_of(app, "#detail-summary")
        assert_literal(summary)
        assert "E" * 1000 in summary
        for _tab in range(6):  # overview, timeline, decisions, cycles, calls, events
            assert_literal(screen_text(app))
            await pilot.press("]")
            await settle(pilot)
        assert app.is_running
        await pilot.press("escape", "p")
        await settle(pilot)
        assert_literal(screen_text(app))  # its name in the list and the diff's title
        await pilot.press("b")
        await settle(pilot)
        assert_literal(text_of(app, "#confirm-question"))
        await pilot.press("n")
        await settle(pilot)
        assert app.is_running


async def test_a_failed_action_reports_file_names_literally(tmp_path: Path) -> None:
    db = build_store(tmp_path)
    bad = tmp_path / "[b]x[link=example.invalid]\x1b[2J.yaml"
    bad.write_text("name: triage\nrouter: [1, 2\n")
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        app.screen.query_one("#policy-path").value = str(bad)  # type: ignore[attr-defined]
        await pilot.press("a", "y")
        await settle(pilot)
        message = text_of(app, "#policy-message")
        assert "[b]x[link=example.invalid]\\x1b[2J.yaml" in message
        assert "invalid YAML" in message
        toasts = list(app._notifications)  # the toast repeats it, as text
        assert [(t.message, t.markup) for t in toasts] == [(message, False)]


@pytest.mark.parametrize("at", [1e300, -1e300, float("nan"), "yesterday"])
def test_a_timestamp_no_clock_can_show_reads_not_a_time(at: object) -> None:
    assert utc(at) == NOT_A_TIME  # type: ignore[arg-type]
    assert utc_short(at) == NOT_A_TIME  # type: ignore[arg-type]


async def test_timestamps_beyond_any_clock_leave_the_screens_up(tmp_path: Path) -> None:
    db = build_store(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE runs SET started_at = 1e300")
    conn.execute("UPDATE policy_snapshots SET created_at = -1e300")
    conn.execute("UPDATE requests SET started_at = 1e300 WHERE id = ?", (REQUEST,))
    conn.close()
    app = make_app(db)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        assert NOT_A_TIME in screen_text(app)
        await pilot.press("p")
        await settle(pilot)
        assert NOT_A_TIME in screen_text(app)
        await app.open_request(REQUEST)
        await settle(pilot)
        assert REQUEST in text_of(app, "#detail-summary")
        assert app.is_running


async def test_a_request_whose_rows_read_wrong_says_so_instead_of_loading(
    tmp_path: Path,
) -> None:
    db = build_store(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE requests SET started_at = 'noon' WHERE id = ?", (REQUEST,))
    conn.close()
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await app.open_request(REQUEST)
        await settle(pilot)
        assert isinstance(app.screen, RequestDetailScreen)
        summary = str(app.screen.query_one("#detail-summary", Static).render())
        assert "cannot show this request" in summary
        assert "loading" not in summary
        await pilot.press("escape")
        assert app.is_running


async def test_a_stored_policy_body_that_is_no_mapping_is_named_not_diffed(
    tmp_path: Path,
) -> None:
    db = build_store(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE policy_snapshots SET body_json = '-1e308' WHERE version = 1")
    conn.execute(
        "INSERT INTO policy_snapshots VALUES ('triage', 'three', 'h', '{}', 0, NULL, 'inactive')"
    )
    conn.close()
    app = make_app(db)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        versions = app.screen.query_one("#policy-versions").row_count  # type: ignore[attr-defined]
        assert versions == 2  # the version that is no number is left out
        await pilot.press("tab", "down")  # to v1
        await settle(pilot)
        diff = text_of(app, "#policy-diff")
        assert "v1 holds no settings this view can read (its stored body is a float)" in diff
        assert app.is_running


async def test_runs_whose_clocks_disagree_keep_the_dashboard(tmp_path: Path) -> None:
    db = build_store(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE runs SET started_at = started_at + 86400")  # after its requests
    conn.close()
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "reading the store failed" not in text_of(app, "#banner")
        assert "requests    23" in text_of(app, "#metrics")


def test_a_policy_is_not_applied_against_graphs_that_read_no_policy(tmp_path: Path) -> None:
    """Only graphs that read the policy check it, as `moat policy apply` has it: a graph
    with no `policy:` never reads this version, so a value it could not take would only
    show once live."""
    from engine import PolicyError, load_graph
    from tui._policy_ops import apply_policy_file

    db = build_store(tmp_path)
    graph = tmp_path / "plain.yaml"
    graph.write_text(
        "moat: 1\nname: plain\nmodels:\n  small: {provider: sim, profile: small}\n"
        "nodes:\n  answer:\n    type: model\n    with: {model: small, prompt: hi}\n"
        "output:\n  text: answer.text\n"
    )
    with pytest.raises(PolicyError, match="no graph to check policy 'triage' against"):
        apply_policy_file(db, tmp_path / "policy_v3.yaml", [load_graph(graph)])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT max(version) FROM policy_snapshots").fetchone() == (2,)
