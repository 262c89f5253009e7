"""Whatever body an operator applies, `apply` either activates it whole or refuses it with
a `PolicyError` and leaves the store as it was: no other exception, nothing half-applied."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import PolicyError
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph
from engine.policy.manager import apply_policy, rollback_policy
from engine.store.store import Store
from tests.engine.policy.test_policy_validate import GRAPH
from tests.support.graph_nodes import registry

BASE: dict[str, Any] = {
    "name": "triage",
    "router": {"threshold": 0.4, "models": ["small", "large"]},
    "risk": {"refuse_above": 0.8},
    "guard": {"window": 20, "max_cost_ratio": 1.3},
}
PATHS = [
    ("router", "threshold"),
    ("router", "models"),
    ("router", "models", 1),
    ("risk", "refuse_above"),
    ("risk",),
    ("guard", "window"),
    ("guard", "max_p95_ratio"),
    ("guard",),
    ("name",),
    ("store_text",),
    ("egress",),
    ("cache.ttl",),
    ("router", "extra"),
]
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(),  # nan and infinities included
    st.sampled_from(["0.5", "1e-3", "yes", "small", "", "full", "triage", "a.b"]),
    st.text(max_size=6),
)
value = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def state(store: Store) -> tuple[Any, ...]:
    return (
        store.query("SELECT * FROM policy_snapshots ORDER BY name, version"),
        store.query("SELECT id, name, version, reason FROM policy_activations ORDER BY id"),
        store.query("SELECT COUNT(*) AS n FROM orchestration_events")[0]["n"],
    )


def mutated(changes: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    """BASE with each change made where its path still leads (a path through a value an
    earlier change replaced with a leaf, or with a list for a key, is skipped)."""
    body = yaml.safe_load(yaml.safe_dump(BASE))
    for path, new in changes:
        cur: Any = body
        for part in path[:-1]:
            cur = _step(cur, part)
        last = path[-1]
        if isinstance(cur, dict) and isinstance(last, str):
            cur[last] = new
        elif isinstance(cur, list) and isinstance(last, int) and cur:
            cur[min(last, len(cur) - 1)] = new
    return body


def _step(cur: Any, part: str | int) -> Any:
    if isinstance(cur, dict) and isinstance(part, str):
        return cur.get(part)
    if isinstance(cur, list) and isinstance(part, int) and cur:
        return cur[min(part, len(cur) - 1)]
    return None


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Graph, Store]]:
    """The graph, its policy file applied as version 1 of a store, shared by the examples
    (each ends back on version 1)."""
    root = tmp_path_factory.mktemp("project")
    (root / "policy.yaml").write_text(yaml.safe_dump(BASE))
    (root / "graph.yaml").write_text(GRAPH)
    graph = load_graph(root / "graph.yaml", registry=registry())
    with Store.open(root / "moat.db") as store:
        apply_policy(store, root / "policy.yaml", graphs=[graph])
        yield root, graph, store


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    changes=st.lists(st.tuples(st.sampled_from(PATHS), value), min_size=1, max_size=3),
    allow_new_keys=st.booleans(),
    as_file=st.booleans(),
)
def test_apply_activates_a_body_whole_or_refuses_it_leaving_the_store_as_it_was(
    project: tuple[Path, Graph, Store],
    changes: list[tuple[tuple[Any, ...], Any]],
    allow_new_keys: bool,
    as_file: bool,
) -> None:
    root, graph, store = project
    body = mutated(changes)
    source: Any = body
    if as_file:
        source = root / "next.yaml"
        source.write_text(yaml.safe_dump(body, allow_unicode=True))
    before = state(store)
    try:
        applied = apply_policy(store, source, graphs=[graph], allow_new_keys=allow_new_keys)
    except PolicyError as exc:
        assert str(exc)  # a message, and nothing changed
        assert state(store) == before
        return
    _, activations, _ = state(store)
    active = store.active_policy("triage")
    assert active is not None and active["version"] == applied.pin.version
    stored = store.get_policy("triage", applied.pin.version)
    assert stored is not None and stored["body"] == body == applied.pin.body
    assert all(not isinstance(v, float) or math.isfinite(v) for v in _leaves(stored["body"]))
    assert len(activations) - len(before[1]) == (0 if applied.outcome == "unchanged" else 1)
    if applied.pin.version != 1:
        rollback_policy(store, "triage", to=1)  # the next example starts where this one did


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]
