"""`moat runs`, `moat stats` and `moat report` given careless arguments and odd stores: one
line naming the argument or the file and the fix, exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.cli import main, printable
from engine.logs import configure_logging
from engine.store.schema import MIGRATIONS, connect, migrate, user_version
from tests.support.fast_graphs import ROOT
from tests.support.store_rows import stored_run


@pytest.mark.parametrize("limit", ["0", "-5", "many", "1.5"])
def test_runs_limit_must_be_a_positive_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 1)
    with pytest.raises(SystemExit) as exc:
        main(["runs", "--db", str(db), "--limit", limit])
    assert exc.value.code == 2
    assert f"argument --limit: {limit!r} is not a number of runs (1 or more)" in (
        capsys.readouterr().err
    )


def test_runs_limit_larger_than_the_store_lists_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    runs = [stored_run(db, 1, at=1_700_000_000.0 + i) for i in range(2)]

    assert main(["runs", "--db", str(db), "--limit", "9" * 30]) == 0

    out = capsys.readouterr().out
    assert all(run in out for run in runs)


@pytest.mark.parametrize("command", [["runs"], ["stats"], ["report", "r-1-000000"]])
def test_readers_of_an_older_store_say_which_command_converts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    db = tmp_path / "s.db"
    conn = connect(db)
    migrate(conn, db, MIGRATIONS[:2])
    conn.close()

    assert main([*command, "--db", str(db)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "schema version 2 is older than this moat" in err
    assert "`moat run` or `moat prune`" in err
    check = sqlite3.connect(db)
    try:
        assert user_version(check) == 2  # a reader never converts it
    finally:
        check.close()


def test_prune_converting_an_older_store_says_so_in_words_not_a_json_log_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    conn = connect(db)
    migrate(conn, db, MIGRATIONS[:2])
    conn.close()

    assert main(["prune", "--keep-runs", "5", "--db", str(db)]) == 0

    err = capsys.readouterr().err
    assert err == (
        f"moat: note: {db}: converting the store from schema version 2 to "
        f"{len(MIGRATIONS)} in place, once (about 20 minutes per million requests; other "
        "commands on it wait until it is done)\n"
    )


@pytest.fixture
def logging_restored() -> Iterator[None]:
    yield
    configure_logging(level="warning")  # as tests/conftest.py has it, not the test's file


@pytest.mark.usefixtures("logging_restored")
def test_a_log_file_gets_the_conversion_as_json_and_stderr_the_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, log = tmp_path / "s.db", tmp_path / "moat.log"
    conn = connect(db)
    migrate(conn, db, MIGRATIONS[:2])
    conn.close()
    monkeypatch.setenv("MOAT_LOG", str(log))

    assert main(["prune", "--keep-runs", "5", "--db", str(db)]) == 0

    assert capsys.readouterr().err.startswith(f"moat: note: {db}: converting the store")
    (line,) = log.read_text().splitlines()
    assert json.loads(line)["event"] == "store.migrating"


def _side_files_refused(tmp_path: Path) -> Path:
    db = tmp_path / "s.db"
    stored_run(db, 1)
    # What a read-only folder or file system does: SQLite cannot create `s.db-shm`.
    Path(f"{db}-shm").unlink(missing_ok=True)
    Path(f"{db}-shm").symlink_to(tmp_path / "missing" / "s.db-shm")
    return db


def test_a_store_whose_folder_refuses_its_side_files_is_not_written_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _side_files_refused(tmp_path)
    assert main(["prune", "--keep-runs", "1", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a moat store" not in err
    assert f"{db}: cannot open the store (SQLite said: unable to open database file)" in err
    assert "check the permissions of the file and its folder" in err


@pytest.mark.parametrize("command", [["runs"], ["stats"]])
def test_a_store_whose_folder_refuses_its_side_files_is_still_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    db = _side_files_refused(tmp_path)  # (no WAL left beside it: the file is the store)
    assert main([*command, "--db", str(db)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out


def _tables(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "command", [["runs"], ["stats"], ["prune", "--keep-runs", "1"], ["prune", "--before", "1d"]]
)
def test_another_programs_database_is_refused_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()

    assert main([*command, "--db", str(db)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{db}: not a moat store" in err and "users" in err and "--db" in err
    assert _tables(db) == ["users"]


_EVERY_STORE_COMMAND = [
    ["runs"],
    ["stats"],
    ["report", "r-1"],
    ["prune", "--keep-runs", "1"],
    ["prune", "--before", "1d", "--dry-run"],
    ["sync", "--to", "http://127.0.0.1:9"],  # refused before it calls anyone
]


@pytest.mark.parametrize("command", _EVERY_STORE_COMMAND)
def test_an_empty_file_is_no_store_and_is_left_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    db = tmp_path / "empty.db"
    db.touch()

    assert main([*command, "--db", str(db)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err
    assert f"{db}: not a moat store yet: it is empty" in err and "`moat run GRAPH`" in err
    assert [f.name for f in tmp_path.iterdir()] == ["empty.db"]
    assert db.stat().st_size == 0


@pytest.mark.parametrize("command", _EVERY_STORE_COMMAND)
def test_a_file_that_is_no_database_is_refused_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    db = tmp_path / "notes.db"
    db.write_text("shopping: milk, eggs\n")

    assert main([*command, "--db", str(db)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{db}: not a moat store (SQLite said: file is not a database); give moat the " \
        "file a run wrote with --db PATH (or $MOAT_DB), or a new path for a new store" in err
    assert [f.name for f in tmp_path.iterdir()] == ["notes.db"]
    assert db.read_text() == "shopping: milk, eggs\n"


@pytest.mark.parametrize("command", [["runs"], ["prune", "--keep-runs", "0"]])
def test_a_damaged_store_is_named_damaged_with_the_check_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 20)
    content = bytearray(db.read_bytes())
    page = int.from_bytes(content[16:18], "big")
    content[page:] = b"\xff" * (len(content) - page)  # every page but the schema's
    db.write_bytes(bytes(content))

    assert main([*command, "--db", str(db)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err
    assert f"the store file is damaged; `sqlite3 {db} 'PRAGMA integrity_check'` says where" in err
    assert db.read_bytes() == bytes(content)


@pytest.mark.parametrize("command", [["runs"], ["report", "r-1"], ["prune", "--keep-runs", "1"]])
def test_a_folder_given_as_the_store_is_named_as_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert main([*command, "--db", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: is a folder, not a store; give the store file with --db PATH" in err


@pytest.mark.parametrize(
    "command",
    [
        *_EVERY_STORE_COMMAND,
        ["policy", "list"],
        ["run", str(ROOT / "graphs" / "baseline.yaml"), "--prompt", "hi"],
    ],
)
def test_a_named_pipe_given_as_the_store_is_refused_without_waiting_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    fifo = tmp_path / "moat.db"
    os.mkfifo(fifo)

    # opening a pipe for reading blocks until a writer comes: the command would hang
    assert main([*command, "--db", str(fifo)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err
    assert f"{fifo}: is not a regular file (a named pipe, device or socket)" in err
    assert "give the store file with --db PATH" in err


@pytest.mark.parametrize(
    ("command", "echoed"),
    [
        (["report", "r-\x1b]0;owned\x07-1"], "no request 'r-\\x1b]0;owned\\x07-1'"),
        (["stats", "r-\x1b[2J\r-1"], "no run 'r-\\x1b[2J\\r-1'"),
    ],
)
def test_an_id_with_control_characters_is_echoed_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], echoed: str
) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 1)

    assert main([*command, "--db", str(db)]) == 2

    # raw, the id would retitle or clear the operator's terminal
    err = capsys.readouterr().err
    assert echoed in err
    assert "\x1b" not in err and "\x07" not in err and "\r" not in err


@given(st.text())
def test_printable_escapes_every_control_character_and_keeps_the_rest(text: str) -> None:
    shown = printable(text)
    assert all(ch.isprintable() or ch in "\n\t" for ch in shown)
    if all(ch.isprintable() or ch in "\n\t" for ch in text):
        assert shown == text


_DAMAGES = {
    # what a damaged page or a hand edit leaves -> the column named, the commands that read it
    "UPDATE requests SET output_json = '{\"answer\": '": ("output_json", {"report"}),
    "UPDATE event_rows SET payload = x'00ff'": ("payload_json", {"report"}),  # no zstd frame
    "UPDATE event_rows SET reasons = '5'": ("reason_codes_json", {"report"}),  # not a list
    "UPDATE trace_rows SET payload = '[1]'": ("payload_json", {"report"}),  # not an object
    "UPDATE runs SET config_json = 'null}'": ("config_json", {"runs", "stats"}),
}


@pytest.mark.parametrize("damage", list(_DAMAGES))
@pytest.mark.parametrize("command", [["report", "{rid}"], ["stats"], ["runs"]])
def test_a_damaged_stored_value_is_shown_empty_and_named_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, command: list[str]
) -> None:
    db = tmp_path / "s.db"
    run = stored_run(db, 2)
    conn = sqlite3.connect(db)
    conn.execute(damage)
    conn.commit()
    conn.close()

    argv = [word.format(rid=f"{run}-000001") for word in command]
    assert main([*argv, "--db", str(db)]) == 0

    out, err = capsys.readouterr()
    assert run in out  # everything else is still shown
    column, readers = _DAMAGES[damage]
    if command[0] not in readers:
        assert err == ""
        return
    assert err.count("\n") == 1
    assert f"moat: note: {db}: stored values that do not read back were shown as empty" in err
    assert f"{column} of row" in err and "PRAGMA integrity_check" in err


def test_a_graph_name_with_escape_sequences_is_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A graph's name is printed by `moat check`, `moat runs` and `moat stats`: raw, an
    escape sequence in it would recolour or clear the operator's terminal."""
    graph = tmp_path / "g.yaml"
    graph.write_text('moat: 1\nname: "ev\\e[2Jil"\nnodes: {}\noutput: {a: 1}\n', encoding="utf-8")
    db = str(tmp_path / "moat.db")
    for args in (
        ["check", str(graph)],
        ["run", str(graph), "--prompt", "hi", "--db", db],
        ["runs", "--db", db],
        ["stats", "--db", db],
    ):
        assert main(args) == 0, args
        out, err = capsys.readouterr()
        assert "\x1b" not in out + err and "ev\\x1b[2Jil" in out + err, (args, out, err)


def test_reason_codes_that_are_not_text_are_shown_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A foreign or hand-edited row may hold numbers among its reason codes: the report
    joined them as text and stopped with an internal error."""
    db = tmp_path / "s.db"
    run = stored_run(db, 2)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE event_rows SET reasons = '[\"a\", 5]'")
    assert main(["report", f"{run}-000001", "--db", str(db)]) == 0
    assert "a, 5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE requests SET latency_ms = 'abc' WHERE seq = 1",
        "UPDATE requests SET cost_usd = 'abc' WHERE seq = 1",
        "UPDATE requests SET started_at = 'abc' WHERE seq = 1",
        "UPDATE requests SET finished_at = x'00' WHERE seq = 1",
        "UPDATE runs SET started_at = 'abc'",
    ],
)
@pytest.mark.parametrize("command", [["report", "{rid}"], ["stats"], ["runs"]])
def test_text_where_a_number_was_stored_is_named_never_an_internal_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, command: list[str]
) -> None:
    """A hand edit or another program's row put text in a column moat writes numbers to:
    the viewers stopped with an internal error (a float of text, a format of None)."""
    db = tmp_path / "s.db"
    run = stored_run(db, 2)
    with sqlite3.connect(db) as conn:
        conn.execute(damage)
    code = main([*(word.format(rid=f"{run}-000001") for word in command), "--db", str(db)])
    err = capsys.readouterr().err
    assert "internal error" not in err
    if code == 0:  # shown, the value empty, and said
        assert err == "" or "stored values that do not read back were shown as empty" in err
    else:  # a figure needed the value: the damage is named, with the way to check the file
        assert code == 2 and "cannot show this: stored values do not read back" in err
        assert "PRAGMA integrity_check" in err
