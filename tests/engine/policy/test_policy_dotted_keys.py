"""A key with a dot in its name is one key: refusals name it quoted, as `moat policy diff`
shows it, never as the nested key it spells, and say how to write the nested one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import PolicyError
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph
from engine.policy.manager import apply_policy
from engine.store.store import Store
from tests.support.graph_nodes import registry

GRAPH = """\
moat: 1
name: triage
models:
  small: {provider: sim, profile: small}
policy: policy.yaml
nodes:
  check:
    type: review
    with:
      threshold: "{{ policy.router.threshold }}"
output:
  a: check.action
"""


def graph(tmp_path: Path) -> Graph:
    (tmp_path / "policy.yaml").write_text("name: triage\nrouter:\n  threshold: 0.4\n")
    (tmp_path / "graph.yaml").write_text(GRAPH)
    return load_graph(tmp_path / "graph.yaml", registry=registry())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "next.yaml"
    path.write_text(text)
    return path


def test_a_dotted_key_that_was_removed_is_named_quoted_not_as_the_nested_key(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "moat.db") as store:
        apply_policy(
            store,
            write(tmp_path, 'name: triage\nrouter: {threshold: 0.4}\n"router.threshold": 0.9\n'),
            graphs=[graph(tmp_path)],
        )
        # router.threshold (nested) is still there: the one removed is the dotted key
        with pytest.raises(
            PolicyError,
            match=r"^.*next\.yaml:1:1: '\"router\.threshold\"' was removed \(version 1 has it: "
            r"0\.9\); graphs and nodes may read it",
        ):
            apply_policy(store, write(tmp_path, "name: triage\nrouter: {threshold: 0.4}\n"))
        assert store.active_policy("triage")["version"] == 1


@pytest.mark.parametrize("allow_new_keys", [False, True])
def test_a_dotted_key_written_for_a_nested_one_is_refused_at_its_line_with_the_fix(
    tmp_path: Path, allow_new_keys: bool
) -> None:
    readers = [graph(tmp_path)]
    with Store.open(tmp_path / "moat.db") as store:
        apply_policy(store, tmp_path / "policy.yaml", graphs=readers)
        text = 'name: triage\n# the operator meant router.threshold\n"router.threshold": 0.5\n'
        first = (
            "new key '\"router.threshold\"' is not in version 1"
            if not allow_new_keys
            else "'router' was removed \\(version 1 has it: \\{threshold: 0\\.4\\}\\); graphs "
            "and nodes may read it, so keep it \\(with the old value to keep behaviour\\)"
        )
        with pytest.raises(
            PolicyError,
            match=rf"^.*next\.yaml:3:1: {first}; \"router\.threshold\" is one key with a dot in "
            r"its name, which `policy\.router\.threshold` does not read: to set the nested key, "
            r"write `router: \{threshold: \.\.\.\}`",
        ):
            apply_policy(
                store, write(tmp_path, text), graphs=readers, allow_new_keys=allow_new_keys
            )
        assert store.active_policy("triage")["version"] == 1


def test_a_graph_reading_a_key_the_policy_spells_with_dots_is_told_to_nest_it(
    tmp_path: Path,
) -> None:
    # no version yet: nothing to compare with, only the graph's reads
    readers = [graph(tmp_path)]
    nested = 'name: triage\nrouter:\n  other: 1\n  "limit.x": 2\n"router.threshold": 0.5\n'
    with Store.open(tmp_path / "moat.db") as store:
        with pytest.raises(
            PolicyError,
            match=r"^.*next\.yaml:5:1: graph 'triage' \(node 'check'\) reads "
            r"'policy\.router\.threshold', but the policy has no 'threshold' under 'router'\. "
            r"Keys there: \"limit\.x\", other; add it; \"router\.threshold\" is one key "
            r"with a dot in its name, which `policy\.router\.threshold` does not read: to set "
            r"the nested key, write `router: \{threshold: \.\.\.\}`$",
        ):
            apply_policy(store, write(tmp_path, nested), graphs=readers)
        assert store.list_policies() == []
