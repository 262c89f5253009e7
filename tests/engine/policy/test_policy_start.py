"""A process starts on the store's active version only if its graph can read it: a graph
edited to read a key the active version lacks is refused before any request runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine import PolicyError
from engine.api import Pipeline
from engine.cli import main
from engine.policy.manager import apply_policy
from engine.store.store import Store

GRAPH = """\
moat: 1
name: triage
plugins: [tests.support.graph_nodes]
policy: policy.yaml
nodes:
  check:
    type: echo
    with:
      value: "{{ policy.router.threshold + policy.router.margin }}"
output:
  a: check.value
"""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield  # `main` binds structlog to the captured stderr, closed after the test
    structlog.reset_defaults()


def edited_project(tmp_path: Path) -> tuple[Path, Path]:
    """A store whose active version predates the graph's new key; the graph and the db."""
    db = tmp_path / "moat.db"
    with Store.open(db) as store:
        apply_policy(store, {"name": "policy", "router": {"threshold": 0.4}})
    (tmp_path / "policy.yaml").write_text("router: {threshold: 0.4, margin: 0.1}\n")
    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH)
    return graph, db


@pytest.mark.anyio
async def test_a_pipeline_refuses_an_active_version_its_graph_cannot_read(tmp_path: Path) -> None:
    graph, db = edited_project(tmp_path)
    with pytest.raises(
        PolicyError,
        match=r"^policy 'policy' version 1, active in .*moat\.db, does not fit graph 'triage' "
        r"\(.*graph\.yaml\): graph 'triage' \(node 'check'\) reads 'policy\.router\.margin', "
        r"but the policy has no 'margin' under 'router'.*; add it\. Apply a version that does "
        r"\(`moat policy apply .*policy\.yaml --graph .*graph\.yaml`, with --allow-new-keys "
        r"for keys it adds\), or roll back to one \(`moat policy rollback policy --to VERSION`\)$",
    ):
        async with Pipeline(graph, db=db):
            pass


def test_moat_run_on_an_active_version_its_graph_cannot_read_exits_2_having_run_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph, db = edited_project(tmp_path)
    code = main(["run", str(graph), "--json", "{}", "--db", str(db)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert "does not fit graph 'triage'" in err and "'policy.router.margin'" in err
    with Store.open(db) as store:
        assert store.query("SELECT COUNT(*) AS n FROM requests")[0]["n"] == 0
    # the fix it names works
    code = main(
        [
            "policy",
            "apply",
            str(tmp_path / "policy.yaml"),
            "--graph",
            str(graph),
            "--allow-new-keys",
            "--db",
            str(db),
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert main(["run", str(graph), "--json", "{}", "--db", str(db)]) == 0
    assert '"output": {"a": 0.5}' in capsys.readouterr().out
