"""A refused policy names the file, line and column, says how to fix it, and changes nothing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine import PolicyError, SpecError
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph
from engine.policy.diff import KeyChange, flatten
from engine.policy.manager import (
    PolicyManager,
    apply_policy,
    changed_keys,
    content_hash,
    diff_policies,
    load_policy_file,
    validate_policy,
)
from engine.policy.validate import located_body
from engine.store.store import Store
from tests.support.graph_nodes import registry

BASE = """\
name: triage
router:
  threshold: 0.4
  models: [small, large]
risk:
  refuse_above: 0.8
guard:
  window: 20
"""

GRAPH = """\
moat: 1
name: triage
models:
  small: {provider: sim, profile: small}
policy: policy.yaml
nodes:
  check:
    type: review
    when: policy.risk.refuse_above > 0.1
    with:
      threshold: "{{ policy.router.threshold }}"
output:
  a: check.action
"""


def setup(tmp_path: Path, *, apply_base: bool = True) -> tuple[Store, Graph]:
    (tmp_path / "policy.yaml").write_text(BASE)
    (tmp_path / "graph.yaml").write_text(GRAPH)
    graph = load_graph(tmp_path / "graph.yaml", registry=registry())
    store = Store.open(tmp_path / "moat.db")
    if apply_base:
        apply_policy(store, tmp_path / "policy.yaml", graphs=[graph])
    return store, graph


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def assert_untouched(store: Store, version: int | None = 1) -> None:
    active = store.active_policy("triage")
    assert (active["version"] if active else None) == version
    assert len(store.policy_versions("triage")) == (version or 0)


REFUSED = [
    (
        "invalid yaml",
        "router: {threshold: 0.4\nrisk: 1\n",
        r"^.*bad\.yaml:2:5: invalid YAML: .*",
    ),
    (
        "not a mapping",
        "- threshold\n- 0.4\n",
        r"^.*bad\.yaml:1:1: a policy must be a mapping of settings \(key: value\), not a list$",
    ),
    (
        "empty file",
        "# nothing here\n",
        r"^.*bad\.yaml: the policy is empty; write a mapping of settings",
    ),
    (
        "bad name",
        BASE.replace("name: triage", "name: 'two words'"),
        r"^.*bad\.yaml:1:7: `name:` must be a word of letters, digits, '_', '\.' or '-', "
        r"starting with a letter or digit, at most 128 characters, got 'two words'",
    ),
    (
        "key renamed",
        BASE.replace("  refuse_above: 0.8\n", "  other: 1\n"),
        r"^.*bad\.yaml:6:3: new key 'risk\.other' is not in version 1",
    ),
    (
        "key removed",
        BASE.replace("risk:\n  refuse_above: 0.8\n", "risk: {}\n"),
        r"^.*bad\.yaml:5:1: 'risk\.refuse_above' was removed \(version 1 has it: 0\.8\); "
        r"graphs and nodes may read it, so keep it",
    ),
    (
        "type changed",
        BASE.replace("threshold: 0.4", "threshold: high"),
        r"^.*bad\.yaml:3:14: 'router\.threshold' changed type from number \(0\.4 in version 1\) "
        r"to string \('high'\); graphs and nodes read it as a number",
    ),
    (
        "list became a mapping",
        BASE.replace("models: [small, large]", "models: {a: small}"),
        r"^.*bad\.yaml:4:11: 'router\.models' changed type from list",
    ),
    (
        "misspelt new key",
        BASE.replace("threshold", "treshold"),
        r"^.*bad\.yaml:3:3: new key 'router\.treshold' is not in version 1 \(did you mean "
        r"'threshold'\?\); if it is meant, apply with --allow-new-keys",
    ),
    (
        "value out of the node field's range",
        BASE.replace("threshold: 0.4", "threshold: 1.4"),
        r"^.*bad\.yaml:3:14: policy\.router\.threshold = 1\.4 does not fit graph 'triage' node "
        r"'check' \(review\) field 'threshold': Input should be less than or equal to 1",
    ),
    (
        # NaN compares false with every number: `refuse_above > 0.1` would silently never hold
        "not a number",
        BASE.replace("refuse_above: 0.8", "refuse_above: .nan"),
        r"^.*bad\.yaml:6:17: 'risk\.refuse_above' is \.nan \(not a number\), which compares "
        r"false with every number, so what reads it is silently switched off; give a number$",
    ),
    (
        "not a number in a list",
        BASE.replace("models: [small, large]", "models: [small, large]\n  weights: [1, .NaN]"),
        r"^.*bad\.yaml:5:16: 'router\.weights\.1' is \.nan \(not a number\)",
    ),
    (
        "guard not a mapping",
        BASE.replace("guard:\n  window: 20\n", "guard: 20\n"),
        r"^.*bad\.yaml:7:8: `guard:` must be a mapping such as",
    ),
    (
        "guard unknown setting",
        BASE.replace("window: 20", "windw: 20"),
        r"^.*bad\.yaml:8:3: unknown guard setting 'windw' \(did you mean 'window'\?\); settings: "
        r"max_cost_ratio, max_p95_ratio, min_validation_success, window$",
    ),
    (
        "guard window below 1",
        BASE.replace("window: 20", "window: 0"),
        r"^.*bad\.yaml:8:11: guard\.window = 0: Input should be greater than or equal to 1; "
        r"the guard takes",
    ),
    (
        "guard ratio not positive",
        BASE.replace("window: 20", "window: 20\n  max_cost_ratio: 0"),
        r"^.*bad\.yaml:9:19: guard\.max_cost_ratio = 0: Input should be greater than 0; "
        r"the guard takes",
    ),
    (
        # `window: yes` must not become a window of one request
        "guard window true/false",
        BASE.replace("window: 20", "window: yes"),
        r"^.*bad\.yaml:8:11: guard\.window = true: Input should be a whole number; the guard "
        r"takes window >= 1",
    ),
    (
        "guard ratio a string",
        BASE.replace("window: 20", "window: 20\n  max_cost_ratio: '1.3'"),
        r"^.*bad\.yaml:9:19: guard\.max_cost_ratio = '1\.3': Input should be a number; the guard",
    ),
    (
        "guard success outside 0..1",
        BASE.replace("window: 20", "window: 20\n  min_validation_success: 1.5"),
        r"^.*bad\.yaml:9:27: guard\.min_validation_success = 1\.5: Input should be less than "
        r"or equal to 1; the guard takes window >= 1",
    ),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_refused_policy_is_located_and_leaves_the_active_version(
    tmp_path: Path, text: str, message: str
) -> None:
    store, graph = setup(tmp_path)
    with store, pytest.raises(PolicyError, match=message):
        apply_policy(store, write(tmp_path, text), name="triage", graphs=[graph])
    with Store.open(tmp_path / "moat.db") as again:
        assert_untouched(again)


def test_a_key_the_graph_reads_must_exist_even_in_a_first_version(tmp_path: Path) -> None:
    store, graph = setup(tmp_path, apply_base=False)
    bad = write(tmp_path, BASE.replace("  refuse_above: 0.8\n", "  refuse: 0.8\n"))
    with (
        store,
        pytest.raises(
            PolicyError,
            match=r"^.*bad\.yaml:5:1: graph 'triage' \(node 'check'\) reads 'policy\.risk\."
            r"refuse_above', but the policy has no 'refuse_above' under 'risk' \(did you mean "
            r"'refuse'\?\)\. Keys there: refuse; add it$",
        ),
    ):
        apply_policy(store, bad, graphs=[graph])
    with Store.open(tmp_path / "moat.db") as again:
        assert_untouched(again, None)


def test_a_graph_reading_below_a_scalar_is_refused(tmp_path: Path) -> None:
    store, graph = setup(tmp_path, apply_base=False)
    bad = write(tmp_path, BASE.replace("risk:\n  refuse_above: 0.8\n", "risk: 0.8\n"))
    with (
        store,
        pytest.raises(
            PolicyError,
            match=r"^.*bad\.yaml:5:7: graph 'triage' \(node 'check'\) reads 'policy\.risk\."
            r"refuse_above', but 'risk' is a number; make it a mapping with the key 'refuse_above'",
        ),
    ):
        apply_policy(store, bad, graphs=[graph])
    with Store.open(tmp_path / "moat.db") as again:
        assert_untouched(again, None)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    store, _ = setup(tmp_path)
    with store, pytest.raises(PolicyError, match=r"nope\.yaml: policy file not found"):
        apply_policy(store, tmp_path / "nope.yaml")
    with Store.open(tmp_path / "moat.db") as again:
        assert_untouched(again)


def test_a_manager_refuses_a_policy_of_another_name(tmp_path: Path) -> None:
    store, graph = setup(tmp_path)
    manager = PolicyManager(store, name="triage", default_body={}, graph=graph)
    manager.ensure_registered()
    other = write(tmp_path, BASE.replace("name: triage", "name: billing"))
    with (
        store,
        pytest.raises(
            PolicyError, match=r"bad\.yaml: the policy is named 'billing' but 'triage' was expected"
        ),
    ):
        manager.apply(other)
    assert manager.current().version == 1
    with Store.open(tmp_path / "moat.db") as again:
        assert_untouched(again)


def test_new_keys_are_accepted_when_allowed(tmp_path: Path) -> None:
    store, graph = setup(tmp_path)
    grown = write(tmp_path, BASE + "cache:\n  ttl_s: 60\n")
    with store:
        applied = apply_policy(store, grown, graphs=[graph], allow_new_keys=True)
        assert (applied.outcome, applied.pin.version, applied.previous_version) == (
            "created",
            2,
            1,
        )
        assert store.get_policy("triage", 2)["parent_version"] == 1
        assert store.get_policy("triage", 1)["status"] == "superseded"


def test_int_and_float_are_the_same_type(tmp_path: Path) -> None:
    store, graph = setup(tmp_path)
    with store:
        applied = apply_policy(store, write(tmp_path, BASE.replace("0.8", "1")), graphs=[graph])
        assert applied.pin.body["risk"] == {"refuse_above": 1}


def test_identical_content_makes_no_new_version(tmp_path: Path) -> None:
    store, graph = setup(tmp_path)
    with store:
        again = apply_policy(store, tmp_path / "policy.yaml", graphs=[graph])
        assert again.outcome == "unchanged"
        assert "unchanged, identical to the active version 1" in again.message
        assert_untouched(store)


def test_content_seen_before_reactivates_its_version(tmp_path: Path) -> None:
    store, _ = setup(tmp_path)
    with store:
        apply_policy(store, write(tmp_path, BASE.replace("0.4", "0.5")))
        back = apply_policy(store, tmp_path / "policy.yaml")
        assert (back.outcome, back.pin.version) == ("reactivated", 1)
        assert len(store.policy_versions("triage")) == 2


def test_validation_works_on_bodies_without_a_file() -> None:
    previous = {"a": {"b": 1}}
    with pytest.raises(PolicyError, match=r"^'a\.b' changed type from number"):
        validate_policy({"a": {"b": "x"}}, located_body({}), previous=previous)
    validate_policy({"a": {"b": 2.5}}, located_body({}), previous=previous)


def test_load_policy_file_names_the_policy_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "governed.yaml"
    path.write_text("router: {threshold: 0.4}\n")
    name, body, located = load_policy_file(path)
    assert (name, body) == ("governed", {"router": {"threshold": 0.4}})
    assert located.where(("router", "threshold")).line == 1


@pytest.mark.parametrize("stem", ["my policy", "été", "a@b", "-dash", "x" * 200])
def test_a_file_name_no_command_could_name_needs_a_name_key(tmp_path: Path, stem: str) -> None:
    # Stored under such a name, the policy could be listed but never shown, rolled back
    # or diffed: every command refuses the name.
    path = tmp_path / f"{stem}.yaml"
    path.write_text("router: {threshold: 0.4}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy_file(path)
    assert str(caught.value).startswith(f"{path}:1:1: the policy has no `name:` and its file name")
    assert "add `name: NAME` to the file" in str(caught.value)
    assert load_policy_file(path, stored=False)[1] == {"router": {"threshold": 0.4}}  # diff
    path.write_text("name: triage\nrouter: {threshold: 0.4}\n")
    assert load_policy_file(path)[0] == "triage"


def test_a_policy_name_is_at_most_128_characters(tmp_path: Path) -> None:
    path = tmp_path / "triage.yaml"
    path.write_text(f"name: {'t' * 129}\nrouter: {{threshold: 0.4}}\n")
    with pytest.raises(PolicyError, match=r"triage.yaml:1:7: `name:` must be a word .* 128"):
        load_policy_file(path)
    path.write_text(f"name: {'t' * 128}\nrouter: {{threshold: 0.4}}\n")
    assert load_policy_file(path)[0] == "t" * 128


def test_content_hash_ignores_key_order() -> None:
    assert content_hash({"a": 1, "b": {"c": 2, "d": 3}}) == content_hash(
        {"b": {"d": 3, "c": 2}, "a": 1}
    )
    assert content_hash({"a": 1}) != content_hash({"a": 1.5})


def test_changed_keys_are_dotted_leaves() -> None:
    old = {"router": {"threshold": 0.4, "models": ["a"]}, "cache": {"ttl": 60}}
    new = {"router": {"threshold": 0.5, "models": ["a"]}, "cache": {"ttl": 60}, "x": True}
    assert changed_keys(old, new) == {"router.threshold", "x"}
    assert changed_keys(old, old) == set()
    assert [c.kind for c in diff_policies(new, old)] == ["changed", "removed"]


def test_a_file_diffed_with_itself_has_no_differences_even_with_nan() -> None:
    # NaN is never equal to itself; a stored version from before NaN was refused, or a
    # file, may still hold one, and `moat policy diff A A` must say nothing changed.
    def body() -> dict[str, object]:
        return {"router": {"threshold": float("nan"), "ratio": float("inf")}}

    assert diff_policies(body(), body()) == []
    assert [c.key for c in diff_policies(body(), {"router": {"threshold": 0.4, "ratio": 1}})] == [
        "router.ratio",
        "router.threshold",
    ]


def test_a_model_the_policy_names_must_be_one_the_graph_defines(tmp_path: Path) -> None:
    # Accepted, `smal` would fail every request that reaches the node, at run time.
    (tmp_path / "graph.yaml").write_text(
        GRAPH.replace(
            '      threshold: "{{ policy.router.threshold }}"\n',
            '      threshold: "{{ policy.router.threshold }}"\n'
            '      model: "{{ policy.risk.model }}"\n',
        )
    )
    (tmp_path / "policy.yaml").write_text(BASE.replace("risk:\n", "risk:\n  model: small\n"))
    graph = load_graph(tmp_path / "graph.yaml", registry=registry())
    with Store.open(tmp_path / "moat.db") as store:
        bad = write(tmp_path, BASE.replace("risk:\n", "risk:\n  model: smal\n"))
        with pytest.raises(
            PolicyError,
            match=r"^.*bad\.yaml:6:10: policy\.risk\.model = 'smal' does not fit graph 'triage' "
            r"node 'check' \(review\) field 'model': 'smal' is not defined under the graph's "
            r"`models:` \(did you mean 'small'\?\); defined: small; change the value$",
        ):
            apply_policy(store, bad, graphs=[graph])
        assert store.active_policy("triage") is None
        assert apply_policy(store, tmp_path / "policy.yaml", graphs=[graph]).pin.version == 1


def test_a_first_version_keeps_the_types_of_the_graphs_own_policy(tmp_path: Path) -> None:
    # `check.score > policy.risk.refuse_above` reads the request too, so it is not evaluated
    # on apply; with 'high' it would fail every request. Had `moat run` started first, the
    # graph's own policy would be version 1 and the type change refused: so it is now.
    (tmp_path / "graph.yaml").write_text(
        GRAPH.replace("  a: check.action\n", "  a: check.action\n  high: check.score > 0.1\n")
        .replace("check.score > 0.1", "check.score > policy.risk.refuse_above")
        .replace("    when: policy.risk.refuse_above > 0.1\n", "")
    )
    (tmp_path / "policy.yaml").write_text(BASE)
    graph = load_graph(tmp_path / "graph.yaml", registry=registry())
    with Store.open(tmp_path / "moat.db") as store:
        bad = write(tmp_path, BASE.replace("refuse_above: 0.8", "refuse_above: high"))
        with pytest.raises(
            PolicyError,
            match=r"^.*bad\.yaml:6:17: 'risk\.refuse_above' changed type from number \(0\.8 in "
            r".*policy\.yaml, the policy file of graph 'triage'\) to string \('high'\)",
        ):
            apply_policy(store, bad, graphs=[graph])
        assert store.active_policy("triage") is None
        # keys of its own, and keys the graph does not read left out, stay free
        fine = write(tmp_path, BASE.replace("  models: [small, large]\n", "") + "extra: 1\n")
        assert apply_policy(store, fine, graphs=[graph]).pin.version == 1


def test_true_or_false_is_no_number_for_a_node_field_nor_an_egress_gate(tmp_path: Path) -> None:
    # pydantic would read `threshold: true` as 1.0 and `min: false` as 0.0
    (tmp_path / "policy.yaml").write_text(BASE.replace("threshold: 0.4", "threshold: true"))
    (tmp_path / "graph.yaml").write_text(GRAPH)
    with pytest.raises(
        SpecError,
        match=r"policy\.yaml:3:14: policy\.router\.threshold = true "
        r"does not fit graph 'triage' node 'check' \(review\) field 'threshold': "
        r"Input should be a number; change the value$",
    ):
        load_graph(tmp_path / "graph.yaml", registry=registry())

    store, graph = setup(tmp_path)  # the policy file fixed, applied as version 1
    gate = BASE + "egress:\n  gates:\n    battery: {env: BATTERY, min: false}\n"
    with (
        store,
        pytest.raises(
            PolicyError,
            match=r"bad\.yaml:11:34: `egress\.gates\.battery\.min`"
            r": Input should be a valid number",
        ),
    ):
        apply_policy(store, write(tmp_path, gate), name="triage", graphs=[graph])


def test_a_key_with_a_dot_is_diffed_apart_from_the_nested_key_it_spells() -> None:
    old = {"router": {"x": 1}, "router.x": 2, "": 0}
    new = {"router": {"x": 1}, "router.x": 3, "": 0}
    assert diff_policies(old, new) == [KeyChange("changed", '"router.x"', 2, 3)]
    assert dict(flatten(new)) == {"router.x": 1, '"router.x"': 3, '""': 0}
    assert changed_keys({"router": {"x": 1}}, {"router": {"x": 1}, "router.x": 2}) == {'"router.x"'}
