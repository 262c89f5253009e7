"""`moat policy apply` checks a policy against every graph that reads it that it can find
(`--graph`, ./graphs/, and the graphs the store's runs recorded), wherever it is run from,
and refuses to activate a policy it can check against no graph."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine.cli import main
from engine.store.store import Store

GRAPH = """\
moat: 1
name: {name}
plugins: [tests.support.graph_nodes]
models:
  small: {{provider: sim, profile: small}}
policy: ../policies/triage.yaml
nodes:
  check:
    type: review
    with:
      threshold: "{{{{ policy.router.threshold }}}}"
output:
  a: check.action
"""
POLICY = "name: triage\nrouter:\n  threshold: {t}\n"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # `main` binds structlog to the current (captured) stderr, closed after the test
    yield
    structlog.reset_defaults()


def moat(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def project(root: Path, name: str = "triage") -> Path:
    """A project folder with graphs/NAME.yaml reading policies/triage.yaml; the graph."""
    (root / "graphs").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "policies" / "triage.yaml").write_text(POLICY.format(t=0.4))
    graph = root / "graphs" / f"{name}.yaml"
    graph.write_text(GRAPH.format(name=name))
    return graph


def policy(tmp_path: Path, threshold: float) -> Path:
    file = tmp_path / f"t{threshold}.yaml"
    file.write_text(POLICY.format(t=threshold))
    return file


def active(db: Path) -> int:
    with Store.open(db, readonly=True) as store:
        return int(store.active_policy("triage")["version"])


def record_run(db: Path, graph_path: str, policy_name: str = "triage") -> None:
    """A run as `moat run` records it: its graph's path and policy in `config_json`."""
    with Store.open(db) as store:
        run = store.create_run("triage", None, 0, {"graph_path": graph_path, "policy": policy_name})
        store.finish_run(run, "finished")


def test_apply_elsewhere_checks_the_graphs_of_the_stores_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = project(tmp_path / "proj")
    db = tmp_path / "moat.db"
    monkeypatch.chdir(tmp_path / "proj")
    code, _, err = moat(capsys, "run", "graphs/triage.yaml", "--prompt", "hi", "--db", str(db))
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no graphs/ here: only the store knows the graph

    wide = policy(tmp_path, 4)
    code, out, err = moat(capsys, "policy", "apply", str(wide), "--db", str(db))
    assert (code, out) == (2, "")
    assert err.startswith(
        f"moat: {wide}:3:14: policy.router.threshold = 4 does not fit graph 'triage' node "
        "'check' (review) field 'threshold': Input should be less than or equal to 1"
    )
    assert active(db) == 1

    code, out, err = moat(capsys, "policy", "apply", str(policy(tmp_path, 0.5)), "--db", str(db))
    assert (code, out, err) == (
        0,
        "policy 'triage': version 2 stored and active (was 1) (checked against triage)\n",
        "",
    )
    assert os.path.isfile(graph)


def test_apply_with_no_graph_to_check_against_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    file = policy(tmp_path, 0.4)
    db = tmp_path / "moat.db"
    code, out, err = moat(capsys, "policy", "apply", str(file), "--db", str(db))
    assert (code, out) == (2, "")
    assert err == (
        f"moat: {file}: no graph to check policy 'triage' against: none in graphs/ reads it, "
        "and the store records no run of it whose graph is still there; pass --graph GRAPH "
        "(the graph that reads it), so a value it cannot take is refused before it goes live\n"
    )
    assert not db.exists()  # refused: not even an empty store is left behind

    graph = project(tmp_path / "proj")
    code, out, _ = moat(
        capsys, "policy", "apply", str(file), "--graph", str(graph), "--db", str(db)
    )
    assert (code, out) == (
        0,
        "policy 'triage': version 1 stored and active (checked against triage)\n",
    )
    # the store has a version now, but no run: the next apply still needs a graph
    code, _, err = moat(capsys, "policy", "apply", str(policy(tmp_path, 0.5)), "--db", str(db))
    assert code == 2 and "pass --graph GRAPH" in err
    assert active(db) == 1


def test_a_recorded_graph_that_is_gone_is_skipped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    graph = project(tmp_path / "proj")
    gone = str(tmp_path / "old" / "graphs" / "triage.yaml")
    db = tmp_path / "moat.db"
    record_run(db, gone)
    record_run(db, str(graph))
    record_run(db, str(tmp_path / "other.yaml"), policy_name="billing")  # not this policy

    code, out, err = moat(capsys, "policy", "apply", str(policy(tmp_path, 0.4)), "--db", str(db))
    assert (code, out) == (
        0,
        "policy 'triage': version 1 stored and active (checked against triage)\n",
    )
    assert err == (
        f"note: {gone}, the graph of earlier runs of policy 'triage', no longer exists; "
        "not checked against it\n"
    )
    code, _, err = moat(capsys, "policy", "apply", str(policy(tmp_path, 4)), "--db", str(db))
    assert code == 2 and "does not fit graph 'triage'" in err

    graph.unlink()  # now no recorded graph is left: refused, each missing one named
    code, _, err = moat(capsys, "policy", "apply", str(policy(tmp_path, 0.5)), "--db", str(db))
    assert code == 2
    assert f"note: {graph}, the graph of earlier runs" in err
    assert f"note: {gone}, the graph of earlier runs" in err
    assert "no graph to check policy 'triage' against" in err and "pass --graph GRAPH" in err
    assert active(db) == 1


def test_graph_options_add_to_the_graphs_found_rather_than_replace_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    recorded = project(tmp_path / "proj")  # its review node takes a threshold up to 1
    lenient = tmp_path / "proj" / "graphs" / "lenient.yaml"  # takes any threshold
    lenient.write_text(
        GRAPH.format(name="lenient")
        .replace("type: review", "type: echo")
        .replace("threshold:", "value:")
        .replace("check.action", "check.text")
    )
    db = tmp_path / "moat.db"
    record_run(db, str(recorded))
    args = ("--graph", str(lenient), "--db", str(db))

    code, out, _ = moat(capsys, "policy", "apply", str(policy(tmp_path, 0.4)), *args)
    assert (code, out) == (
        0,
        "policy 'triage': version 1 stored and active (checked against lenient, triage)\n",
    )
    code, _, err = moat(capsys, "policy", "apply", str(policy(tmp_path, 4)), *args)
    assert code == 2 and "does not fit graph 'triage'" in err
    assert active(db) == 1


def test_a_graph_option_that_reads_another_policy_is_refused_at_the_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `name: triage-v2` taken for a version label: checked against the triage graph and
    # stored, it would be reported as checked against it, while that graph never reads it.
    monkeypatch.chdir(tmp_path)
    graph = project(tmp_path / "proj")
    db = tmp_path / "moat.db"
    labelled = tmp_path / "next.yaml"
    labelled.write_text("router:\n  threshold: 0.5\nname: triage-v2\n")
    code, out, err = moat(
        capsys, "policy", "apply", str(labelled), "--graph", str(graph), "--db", str(db)
    )
    assert (code, out) == (2, "")
    assert err == (
        f"moat: {labelled}:3:7: the policy is named 'triage-v2', but --graph {graph} reads "
        f"policy 'triage' (its `policy:` file {tmp_path / 'proj' / 'policies' / 'triage.yaml'})"
        ": it would never read this version; to change what that graph reads, write "
        "`name: triage` in the file; else pass the graph that reads 'triage-v2'\n"
    )
    unnamed = tmp_path / "triage-next.yaml"  # named after its file
    unnamed.write_text("router:\n  threshold: 0.5\n")
    code, _, err = moat(
        capsys, "policy", "apply", str(unnamed), "--graph", str(graph), "--db", str(db)
    )
    assert code == 2
    assert err.startswith(
        f"moat: {unnamed}: the policy is named after its file 'triage-next', but --graph "
    )
    assert "add `name: triage` to the file" in err
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "moat: 1\nname: plain\nplugins: [tests.support.graph_nodes]\n"
        "nodes:\n  e: {type: echo, with: {value: 1}}\noutput:\n  a: e.value\n"
    )
    code, _, err = moat(
        capsys,
        "policy",
        "apply",
        str(policy(tmp_path, 0.5)),
        "--graph",
        str(plain),
        "--db",
        str(db),
    )
    assert code == 2
    assert f"but --graph {plain} reads no policy (it has no `policy:`)" in err
    assert f"add `policy: FILE` to {plain}" in err
    assert not db.exists()  # nothing stored, not even an empty store
