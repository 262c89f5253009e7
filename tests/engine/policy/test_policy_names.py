"""Every `moat policy` command takes NAME and NAME@VERSION alike and refuses hostile ones
with a clear message (exit 2, never an internal error); rollbacks walk back the history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import PolicyError
from engine.cli import main
from engine.policy.manager import apply_policy
from engine.store.policy_ops import roll_back, transaction
from engine.store.policy_tables import activate, insert_snapshot
from engine.store.store import Store
from tests.support.fast_graphs import TRIAGE_GRAPH as GRAPH

POLICY = "name: triage\nrouter:\n  threshold: {t}\n"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _in_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run from a folder whose graphs/ reads the policy, as `apply` checks against it
    for folder, text in (("graphs", GRAPH), ("policies", POLICY.format(t=0.5))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "triage.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)


def moat(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(["policy", *args])
    except SystemExit as exc:  # argparse refuses a malformed option value
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def applied(tmp_path: Path, capsys: pytest.CaptureFixture[str], versions: int) -> str:
    """A store where versions 1..`versions` of 'triage' were applied in order."""
    db = str(tmp_path / "moat.db")
    for i in range(1, versions + 1):
        file = tmp_path / f"v{i}.yaml"
        file.write_text(POLICY.format(t=i / 10))
        assert moat(capsys, "apply", str(file), "--db", db)[0] == 0
    return db


def active(db: str) -> int:
    with Store.open(db, readonly=True) as store:
        return int(store.active_policy("triage")["version"])


def test_name_at_version_works_in_show_rollback_and_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = applied(tmp_path, capsys, 2)
    code, out, _ = moat(capsys, "show", "triage@1", "--db", db)
    assert code == 0 and out.startswith("# policy triage version 1 (superseded)")
    assert "threshold: 0.1" in out
    code, out, err = moat(capsys, "show", "triage@1", "--version", "2", "--db", db)
    assert code == 2 and "two versions" in err
    code, out, _ = moat(capsys, "history", "triage@2", "--db", db)
    assert code == 0 and [line.split()[3] for line in out.splitlines()[1:]] == ["2"]
    code, out, _ = moat(capsys, "rollback", "triage@1", "--db", db)
    assert (code, out) == (0, "policy 'triage': version 1 active again (version 2 rolled back)\n")


def test_repeated_rollbacks_walk_back_the_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = applied(tmp_path, capsys, 4)
    walked = []
    for _ in range(3):
        code, _, err = moat(capsys, "rollback", "--db", db)
        assert code == 0, err
        walked.append(active(db))
    assert walked == [3, 2, 1]
    code, _, err = moat(capsys, "rollback", "--db", db)
    assert code == 2 and "no earlier version to roll back to" in err
    assert active(db) == 1


def test_a_rollback_undoes_the_latest_activation_not_yet_undone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = applied(tmp_path, capsys, 3)
    # --to jumps down the stack: 3 and 2 are both rolled back from.
    assert moat(capsys, "rollback", "--to", "1", "--db", db)[0] == 0
    code, _, err = moat(capsys, "rollback", "--db", db)
    assert code == 2 and "no earlier version" in err
    # Re-applying version 2's content puts it back on top; a rollback leaves it again.
    assert moat(capsys, "apply", str(tmp_path / "v2.yaml"), "--db", db)[0] == 0
    assert moat(capsys, "apply", str(tmp_path / "v3.yaml"), "--db", db)[0] == 0
    assert [moat(capsys, "rollback", "--db", db)[0] for _ in range(2)] == [0, 0]
    assert active(db) == 1


def history(capsys: pytest.CaptureFixture[str], db: str) -> list[tuple[str, str, str]]:
    """`moat policy history triage` as (activation id, version, status) rows."""
    code, out, err = moat(capsys, "history", "triage", "--db", db)
    assert code == 0, err
    return [(row[0], row[3], row[4]) for row in map(str.split, out.splitlines()[1:])]


def test_history_calls_only_the_current_activation_active(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = applied(tmp_path, capsys, 3)
    assert [moat(capsys, "rollback", "--db", db)[0] for _ in range(2)] == [0, 0]
    assert history(capsys, db) == [
        ("1", "1", "superseded"),  # version 1 is active again, but by activation 5
        ("2", "2", "superseded"),
        ("3", "3", "superseded"),
        ("4", "2", "superseded"),
        ("5", "1", "active"),
    ]
    with Store.open(db) as store:
        store.set_policy_status("triage", 2, "bad")  # as its guard would have marked it
    assert moat(capsys, "rollback", "--to", "2", "--db", db)[0] == 0
    last = moat(capsys, "history", "triage", "--db", db)[1].splitlines()[-1]
    assert last.split()[3:] == ["2", "active", "(bad)", "rollback", "from", "v1"]
    assert history(capsys, db)[1:] == [
        ("2", "2", "bad"),
        ("3", "3", "superseded"),
        ("4", "2", "bad"),
        ("5", "1", "superseded"),
        ("6", "2", "active"),
    ]


ORIGIN = "08bbdfd63212da06"


def central(tmp_path: Path, *names: str) -> str:
    """A central store holding versions 1 and 2 (active) of each policy, named as a sync
    names them when the central store already had the name (`NAME@ORIGIN`)."""
    db = str(tmp_path / "central.db")
    with Store.open(db) as store, transaction(store) as conn:
        for name in names:
            for version in (1, 2):
                body = {"name": "triage", "router": {"threshold": version / 10}}
                insert_snapshot(conn, name, version, f"h{version}", body, None, "inactive")
                activate(conn, name, version, "apply")
    return db


def test_a_synced_name_at_origin_works_in_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synced = f"triage@{ORIGIN}"
    db = central(tmp_path, "triage", synced)
    code, out, _ = moat(capsys, "show", synced, "--db", db)
    assert code == 0 and out.startswith(f"# policy {synced} version 2 (active)")
    code, out, _ = moat(capsys, "show", f"{synced}@1", "--db", db)
    assert code == 0 and out.startswith(f"# policy {synced} version 1 (inactive)")
    code, out, _ = moat(capsys, "history", synced, "--db", db)
    assert code == 0 and [line.split()[3] for line in out.splitlines()[1:]] == ["1", "2"]
    code, out, _ = moat(capsys, "history", f"{synced}@2", "--db", db)
    assert code == 0 and [line.split()[3] for line in out.splitlines()[1:]] == ["2"]
    code, out, _ = moat(capsys, "diff", f"{synced}@1", synced, "--db", db)
    assert (code, out) == (
        0,
        f"--- {synced}@1\n+++ {synced}@2\n~ router.threshold: 0.1 -> 0.2\n",
    )
    code, out, _ = moat(capsys, "rollback", synced, "--db", db)
    assert (code, out) == (
        0,
        f"policy '{synced}': version 1 active again (version 2 rolled back)\n",
    )
    assert moat(capsys, "rollback", synced, "--to", "2", "--db", db)[0] == 0
    with Store.open(db, readonly=True) as store:
        assert store.active_policy(synced)["version"] == 2
        assert store.active_policy("triage")["version"] == 2  # the local one: untouched
        activations = store.policy_history(synced)
    assert [row["reason"] for row in activations][2:] == ["rollback from v2", "rollback from v1"]


def test_list_and_history_columns_fit_synced_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synced = f"triage@{ORIGIN}.2"
    db = central(tmp_path, "triage", synced)
    with Store.open(db) as store:
        store.set_policy_status(synced, 1, "bad")
    assert moat(capsys, "list", "--db", db) == (
        0,
        "NAME                       ACTIVE  LATEST  VERSIONS  BAD\n"
        "triage                          2       2         2  -\n"
        f"{synced}       2       2         2  1\n",
        "",
    )
    for _ in range(5):  # ids past 9: the # column widens, the rest follow
        assert moat(capsys, "rollback", synced, "--to", "1", "--db", db)[0] == 0
        assert moat(capsys, "rollback", synced, "--to", "2", "--db", db)[0] == 0
    code, out, _ = moat(capsys, "history", synced, "--limit", "3", "--db", db)
    lines = [line[:4] + line[25:] for line in out.splitlines()]  # without the time
    assert (code, lines) == (
        0,
        [
            " #  VERSION  STATUS      REASON",
            "12        2  superseded  rollback from v1",
            "13        1  bad         rollback from v2",
            "14        2  active      rollback from v1",
        ],
    )


def test_an_origin_of_digits_alone_is_still_part_of_the_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 16 hex digits are sometimes all decimal: the stored name wins over a version
    synced = "triage@1234567890123456"
    db = central(tmp_path, "triage", synced)
    code, out, _ = moat(capsys, "show", synced, "--db", db)
    assert code == 0 and out.startswith(f"# policy {synced} version 2 (active)")
    code, out, _ = moat(capsys, "show", f"{synced}@1", "--db", db)
    assert code == 0 and out.startswith(f"# policy {synced} version 1 (inactive)")


@pytest.mark.parametrize(
    ("spec", "got"),
    [
        ("triage@abc", "abc"),
        ("triage@0", "0"),
        ("triage@", ""),
        ("triage@1.5", "1.5"),
        (f"triage@{ORIGIN}@x", "x"),
        (f"triage@{ORIGIN}@0", "0"),
    ],
)
def test_a_bad_version_after_a_known_name_is_still_called_a_bad_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, got: str
) -> None:
    db = central(tmp_path, "triage", f"triage@{ORIGIN}")
    for command in ("show", "history", "rollback"):
        code, out, err = moat(capsys, command, spec, "--db", db)
        assert (code, out, err) == (
            2,
            "",
            f"moat: '{spec}': a version is a whole number from 1 (e.g. 2), got '{got}'\n",
        ), command


def test_an_unknown_name_with_an_at_lists_the_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = central(tmp_path, "triage", f"triage@{ORIGIN}")
    code, _, err = moat(capsys, "show", "billing@0123abcd", "--db", db)
    assert (code, err) == (
        2,
        f"moat: no policy named 'billing@0123abcd' in {db} (policies: triage, "
        f"triage@{ORIGIN}); add one with `moat policy apply FILE`\n",
    )


HOSTILE = st.one_of(
    st.text(max_size=400),
    st.text(alphabet="a", min_size=250, max_size=400),
    st.sampled_from(
        [
            "",
            "@",
            "triage@",
            "@1",
            "triage@abc",
            "triage@-1",
            "triage@0",
            "triage@1.5",
            "triage@99999999999999999999999",
            "triage@²",
            "triage@\u0661",
            "tri@ge@1",
            "é",
            "../x",
            "triage@1@2",
            "x.yaml",
            "-",
            "triage\n@1",
        ]
    ),
).filter(lambda s: "\x00" not in s and not s.startswith("-"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=HOSTILE)
def test_hostile_names_are_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    db = str(tmp_path / "moat.db")
    if not Path(db).exists():
        applied(tmp_path, capsys, 1)
    commands = [
        ("show", name),
        ("history", name),
        ("rollback", name),
        ("diff", name, "triage"),
        ("diff", "triage", name),
        ("apply", name),
        ("show", "triage", "--version", name),
        ("rollback", "triage", "--to", name),
    ]
    for args in commands:
        code, _, err = moat(capsys, *args, "--db", db)
        assert code in (0, 2), (args, err)
        assert "internal error" not in err and "Traceback" not in err, (args, err)
        if code == 2:
            assert err.strip(), args
    assert active(db) in (1,)


def test_hostile_stores_are_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk.db").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "dir.db").mkdir()
    for db in ("a" * 300, str(tmp_path / "junk.db"), str(tmp_path / "dir.db")):
        for args in (("list",), ("show",), ("rollback",), ("history",), ("diff", "a", "b")):
            code, _, err = moat(capsys, *args, "--db", db)
            assert code == 2 and "internal error" not in err, (args, db, err)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.one_of(st.integers(1, 3), st.just("rollback")), min_size=1, max_size=8))
def test_rollbacks_pop_an_undo_stack_of_applies(tmp_path_factory: Any, steps: list[Any]) -> None:
    # Reference model: applying content k pushes it (unless it is already active); a
    # rollback pops the active version and reactivates the one below, or is refused.
    db = tmp_path_factory.mktemp("db") / "moat.db"
    version_of: dict[int, int] = {}
    stack: list[int] = []
    with Store.open(db) as store:
        for step in steps:
            if step == "rollback":
                if len(stack) < 2:
                    with pytest.raises(PolicyError, match=r"no earlier version|no active policy"):
                        roll_back(
                            store,
                            "triage",
                            to=None,
                            expect_version=None,
                            mark="superseded",
                            reason=None,
                            run_id="",
                        )
                    continue
                roll_back(
                    store,
                    "triage",
                    to=None,
                    expect_version=None,
                    mark="superseded",
                    reason=None,
                    run_id="",
                )
                stack.pop()
            else:
                applied = apply_policy(store, {"name": "triage", "router": {"threshold": step}})
                version_of.setdefault(step, applied.pin.version)
                if not stack or stack[-1] != step:
                    stack.append(step)
            assert store.active_policy("triage")["version"] == version_of[stack[-1]]


def test_a_long_history_names_its_versions_as_ranges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "moat.db")
    with Store.open(db) as store:
        for i in range(1, 41):
            apply_policy(store, {"name": "triage", "router": {"threshold": i}})
        for version in (3, 4, 5, 9):
            store.set_policy_status("triage", version, "bad")
    missing = "moat: policy 'triage' has no version 99; stored versions: 1-40\n"
    for args in (
        ("show", "triage@99"),
        ("history", "triage@99"),
        ("rollback", "--to", "99"),
        ("diff", "triage@1", "triage@99"),
    ):
        code, out, err = moat(capsys, *args, "--db", db)
        assert (code, out, err) == (2, "", missing), args
    code, out, _ = moat(capsys, "list", "--db", db)
    assert code == 0 and out.splitlines()[1].split(maxsplit=4)[4] == "3-5, 9"
    assert moat(capsys, "rollback", "--to", "1", "--db", db)[0] == 0
    code, _, err = moat(capsys, "rollback", "--db", db)
    assert code == 2 and "(active: v1; stored versions: 1-40)" in err


@pytest.mark.parametrize("reason", ["one\ntwo", "red \x1b[31malert", "tab\there", "r" * 201])
def test_an_activation_reason_is_one_short_printable_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reason: str
) -> None:
    # `history` prints one line per activation: a line break would forge a row, and a
    # terminal escape would rewrite the operator's screen.
    db = applied(tmp_path, capsys, 1)
    file = tmp_path / "v2.yaml"
    file.write_text(POLICY.format(t=0.2))
    code, out, err = moat(capsys, "apply", str(file), "--reason", reason, "--db", db)
    assert (code, out) == (2, "")
    assert err.startswith("moat: the activation reason ") and "one line of at most 200" in err
    assert active(db) == 1
    assert moat(capsys, "apply", str(file), "--reason", "r" * 200, "--db", db)[0] == 0


def test_a_key_with_control_characters_is_refused_and_diffed_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file someone handed over: its key clears the screen and forges a diff line.
    db = applied(tmp_path, capsys, 1)
    evil = tmp_path / "evil.yaml"
    evil.write_text(POLICY.format(t=0.1) + '"\\e[2Jrouter.threshold: 0.9\\n+ x": 1\n')
    code, out, err = moat(capsys, "diff", str(tmp_path / "v1.yaml"), str(evil))
    assert code == 0 and "\x1b" not in out and out.count("\n") == 3
    assert out.splitlines()[2] == '+ "\\u001b[2Jrouter.threshold: 0.9\\n+ x": 1'
    code, out, err = moat(capsys, "apply", str(evil), "--allow-new-keys", "--db", db)
    assert (code, out) == (2, "") and "\x1b" not in err
    assert err == (
        f"moat: {evil}:4:1: the key '\\x1b[2Jrouter.threshold: 0.9\\n+ x' holds a line break "
        "or control character; name keys with printable text\n"
    )
    assert active(db) == 1


def test_a_rollback_on_a_store_that_does_not_exist_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "moat.bd"
    code, out, err = moat(capsys, "rollback", "--db", str(typo))
    assert (code, out) == (2, "")
    assert err == (
        f"moat: {typo}: no such store; name the store the policy was applied to with --db "
        "PATH (or $MOAT_DB)\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["graphs", "policies"]
