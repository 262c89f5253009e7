"""`moat prune`: the command line of retention, its messages and exit codes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.cli.store import parse_before
from engine.store.store import Store
from tests.support.store_rows import stored_run

DAY = 86_400.0


def test_prune_keep_runs_reports_what_it_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 3, at=time.time() - 2 * DAY)
    new = stored_run(db, 2)

    assert main(["prune", "--keep-runs", "1", "--db", str(db)]) == 0

    out = capsys.readouterr().out
    assert out.startswith("pruned 1 run (3 requests, ")
    assert "space: this prune freed " in out and "(incremental vacuum)" in out
    with Store.open(db, readonly=True) as store:
        assert [run["id"] for run in store.list_runs()] == [new]


def test_prune_dry_run_lists_runs_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    old = stored_run(db, 3, at=time.time() - 10 * DAY)
    stored_run(db, 1)

    code = main(["prune", "--before", "5d", "--db", str(db), "--dry-run", "--format", "json"])

    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True and report["runs"] == [old] and report["requests"] == 3
    with Store.open(db, readonly=True) as store:
        assert len(store.list_runs()) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--before", "2026-13-01"], "'2026-13-01' is not a date; use YYYY-MM-DD"),
        (["--before", "yesterday"], "'yesterday' is not a date"),
        (["--keep-runs", "-1"], "'-1' is not a number of runs"),
        (["--keep-runs", "many"], "'many' is not a number of runs"),
        (["--before", "2999-01-01"], "'2999-01-01' is in the future"),
        (["--before", "2999-01-01T00:00+05:00"], "is in the future"),
        (["--before", "9" * 400 + "d"], "is further back than any date"),
        ([], "one of the arguments --before --keep-runs is required"),
        (["--before", "1d", "--keep-runs", "2"], "not allowed with argument"),
    ],
)
def test_bad_arguments_exit_2_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--db", str(tmp_path / "s.db"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_future_date_prunes_nothing_and_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    run = stored_run(db, 2)
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--before", "2999-01-01", "--db", str(db)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --before" in err and "--keep-runs 0" in err and "Traceback" not in err
    with Store.open(db, readonly=True) as store:
        assert [r["id"] for r in store.list_runs()] == [run]


def test_keep_runs_larger_than_the_store_keeps_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    run = stored_run(db, 2)

    assert main(["prune", "--keep-runs", "9" * 30, "--db", str(db)]) == 0

    assert capsys.readouterr().out.startswith("pruned 0 runs (0 requests, ")
    with Store.open(db, readonly=True) as store:
        assert [r["id"] for r in store.list_runs()] == [run]


def test_a_missing_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "--keep-runs", "1", "--db", str(tmp_path / "none.db")]) == 2
    assert "no such store" in capsys.readouterr().err


def test_dates_are_utc_unless_they_carry_an_offset() -> None:
    assert parse_before("2026-11-30") == 1795996800.0
    assert parse_before("2026-11-30T01:00+01:00") == 1795996800.0
    assert parse_before("2026-11-30T00:00:00Z") == 1795996800.0
    assert abs(parse_before("2d") - (time.time() - 2 * DAY)) < 5
    assert abs(parse_before("90m") - (time.time() - 5400)) < 5


def test_a_prune_that_deletes_nothing_claims_no_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    stored_run(db, 300)

    assert main(["prune", "--keep-runs", "1", "--db", str(db)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pruned 0 runs (0 requests, 0 rows) in ")
    assert re.fullmatch(
        r"space: this prune freed 0\.0 MB; 0\.0 MB handed back to the file system "
        r"\(incremental vacuum\); store ([\d.]+ MB) -> \1",
        lines[1],
    ), lines[1]
