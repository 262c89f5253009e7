"""`moat policy` applies, shows, diffs, rolls back and lists history, refusing bad files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine.cli import main
from engine.store.store import Store
from tests.support.fast_graphs import TRIAGE_GRAPH as GRAPH

V1 = """\
name: triage
router:
  threshold: 0.4
risk:
  refuse_above: 0.8
"""
V2 = V1.replace("0.4", "0.5") + "cache:\n  ttl_s: 60\n"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # `main` binds structlog to the current (captured) stderr, closed after the test
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _in_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run from a folder whose graphs/ reads the policy, as `apply` checks against it
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "triage.yaml").write_text(GRAPH)
    monkeypatch.chdir(tmp_path)


def moat(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["policy", *args])
    out, err = capsys.readouterr()
    return code, out, err


def files(tmp_path: Path) -> tuple[Path, Path, str]:
    (tmp_path / "policies").mkdir()
    v1 = tmp_path / "policies" / "triage.yaml"
    v1.write_text(V1)
    v2 = tmp_path / "v2.yaml"
    v2.write_text(V2)
    return v1, v2, str(tmp_path / "moat.db")


def test_apply_show_diff_rollback_and_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2, db = files(tmp_path)
    assert moat(capsys, "apply", str(v1), "--db", db)[:2] == (
        0,
        "policy 'triage': version 1 stored and active (checked against triage)\n",
    )
    code, out, _ = moat(capsys, "apply", str(v2), "--allow-new-keys", "--db", db)
    assert (code, out) == (
        0,
        "policy 'triage': version 2 stored and active (was 1) (checked against triage)\n",
    )

    code, out, _ = moat(capsys, "list", "--db", db)
    assert code == 0
    assert out.splitlines()[1].split() == ["triage", "2", "2", "2", "-"]

    code, out, _ = moat(capsys, "show", "--db", db)
    assert code == 0
    assert out.startswith("# policy triage version 2 (active)\n# parent: 1")
    assert "router:\n  threshold: 0.5\n" in out
    code, out, _ = moat(capsys, "show", "triage", "--version", "1", "--db", db)
    assert "# policy triage version 1 (superseded)" in out

    code, out, _ = moat(capsys, "diff", "triage@1", "triage@2", "--db", db)
    assert (code, out) == (
        0,
        "--- triage@1\n+++ triage@2\n+ cache.ttl_s: 60\n~ router.threshold: 0.4 -> 0.5\n",
    )

    code, out, _ = moat(capsys, "rollback", "--db", db)
    assert (code, out) == (0, "policy 'triage': version 1 active again (version 2 rolled back)\n")
    code, out, _ = moat(capsys, "rollback", "triage", "--to", "2", "--db", db)
    assert code == 0

    code, out, _ = moat(capsys, "history", "triage", "--db", db)
    rows = [line.split(maxsplit=4)[3:] for line in out.splitlines()[1:]]
    assert rows == [
        ["1", "superseded  apply"],
        ["2", "superseded  apply"],  # v2 is active again, by the last activation
        ["1", "superseded  rollback from v2"],
        ["2", "active      rollback from v1"],
    ]


def test_a_refused_apply_exits_2_with_a_located_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2, db = files(tmp_path)
    moat(capsys, "apply", str(v1), "--db", db)
    code, out, err = moat(capsys, "apply", str(v2), "--db", db)
    assert (code, out) == (2, "")
    assert err == (
        f"moat: {v2}:6:1: new key 'cache' is not in version 1; if it is meant, apply with "
        "--allow-new-keys\n"
    )
    with Store.open(db) as store:
        assert store.active_policy("triage")["version"] == 1


def test_apply_checks_the_graphs_that_use_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, _, db = files(tmp_path)
    code, out, _ = moat(capsys, "apply", str(v1), "--db", db)
    assert (code, out) == (
        0,
        "policy 'triage': version 1 stored and active (checked against triage)\n",
    )
    wide = tmp_path / "wide.yaml"
    wide.write_text(V1.replace("0.4", "4"))
    code, _, err = moat(capsys, "apply", str(wide), "--db", db)
    assert code == 2
    assert err.startswith(
        f"moat: {wide}:3:14: policy.router.threshold = 4 does not fit graph 'triage' node "
        "'check' (review) field 'threshold': Input should be less than or equal to 1"
    )
    code, _, err = moat(capsys, "apply", str(wide), "--graph", "graphs/triage.yaml", "--db", db)
    assert code == 2 and "does not fit graph 'triage'" in err


def test_diff_compares_files_and_stored_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2, db = files(tmp_path)
    code, out, _ = moat(capsys, "diff", str(v1), str(v2))
    assert code == 0
    assert out.splitlines()[2:] == ["+ cache.ttl_s: 60", "~ router.threshold: 0.4 -> 0.5"]
    moat(capsys, "apply", str(v2), "--db", db)
    code, out, _ = moat(capsys, "diff", "triage", str(v1), "--db", db)
    assert out.splitlines()[2:] == ["- cache.ttl_s: 60", "~ router.threshold: 0.5 -> 0.4"]


def test_unknown_names_and_versions_list_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, _, db = files(tmp_path)
    monkeypatch.setenv("MOAT_DB", db)
    moat(capsys, "apply", str(v1))
    code, _, err = moat(capsys, "show", "triage", "--version", "9")
    assert (code, err) == (2, "moat: policy 'triage' has no version 9; stored versions: 1\n")
    code, _, err = moat(capsys, "history", "billing")
    assert code == 2 and "no policy named 'billing'" in err and "(policies: triage)" in err
    code, _, err = moat(capsys, "rollback", "--to", "3")
    assert (code, err) == (2, "moat: policy 'triage' has no version 3; stored versions: 1\n")


def test_an_apply_with_no_graph_to_check_against_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Run from the wrong folder, apply finds no graph to check against: a value the
    # running graph cannot use would only show as failed requests, so nothing goes live.
    v1, _, db = files(tmp_path)
    (tmp_path / "graphs" / "triage.yaml").unlink()
    code, out, err = moat(capsys, "apply", str(v1), "--db", db)
    assert (code, out) == (2, "")
    assert err.startswith(f"moat: {v1}: no graph to check policy 'triage' against: ")
    assert "pass --graph GRAPH" in err
    assert not Path(db).exists()


def test_apply_stores_the_file_as_it_was_read_and_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.policy.validate as validate

    v1, _, db = files(tmp_path)
    read = validate.read_file

    def read_then_changed(path: str) -> bytes:
        data = read(path)
        if Path(path) == v1:  # another process rewrites the file just after moat read it
            v1.write_text(V1.replace("0.4", "0.9"))
        return data

    monkeypatch.setattr(validate, "read_file", read_then_changed)
    assert moat(capsys, "apply", str(v1), "--db", db)[0] == 0
    with Store.open(db) as store:
        assert store.active_policy("triage")["body"]["router"]["threshold"] == 0.4


def test_rollback_to_a_version_marked_bad_keeps_its_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2, db = files(tmp_path)
    moat(capsys, "apply", str(v1), "--db", db)
    moat(capsys, "apply", str(v2), "--allow-new-keys", "--db", db)
    moat(capsys, "rollback", "--db", db)
    with Store.open(db) as store:
        store.set_policy_status("triage", 2, "bad")  # as its guard would have marked it

    code, out, err = moat(capsys, "rollback", "--to", "2", "--db", db)
    assert (code, out) == (0, "policy 'triage': version 2 active again (version 1 rolled back)\n")
    assert "version 2 is marked bad and stays so" in err
    code, out, _ = moat(capsys, "show", "--db", db)
    assert out.startswith("# policy triage version 2 (bad)")
    code, out, _ = moat(capsys, "list", "--db", db)
    assert out.splitlines()[1].split() == ["triage", "2", "2", "2", "2"]

    moat(capsys, "rollback", "--to", "1", "--db", db)  # leaving it: still bad
    with Store.open(db) as store:
        assert store.get_policy("triage", 2)["status"] == "bad"
        assert store.active_policy("triage")["version"] == 1


def test_history_shows_the_newest_activations_and_says_when_there_are_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2, db = files(tmp_path)
    moat(capsys, "apply", str(v1), "--db", db)
    moat(capsys, "apply", str(v2), "--allow-new-keys", "--db", db)
    for _ in range(12):  # 2 + 24 activations in all
        assert moat(capsys, "rollback", "--to", "1", "--db", db)[0] == 0
        assert moat(capsys, "rollback", "--to", "2", "--db", db)[0] == 0

    code, out, err = moat(capsys, "history", "triage", "--db", db)
    ids = [int(line.split()[0]) for line in out.splitlines()[1:]]
    assert (code, ids) == (0, list(range(7, 27)))  # the newest 20, oldest first
    assert "earlier activations not shown; --limit 200 shows more" in err

    code, out, err = moat(capsys, "history", "triage@1", "--limit", "3", "--db", db)
    rows = [line.split()[3:5] for line in out.splitlines()[1:]]
    assert (code, rows) == (0, [["1", "superseded"]] * 3)
    code, out, err = moat(capsys, "history", "triage", "--limit", "100", "--db", db)
    assert (len(out.splitlines()), err) == (27, "")

    with pytest.raises(SystemExit):
        moat(capsys, "history", "triage", "--limit", "0", "--db", db)
    assert "'0' is not a number of activations (1 or more)" in capsys.readouterr().err
