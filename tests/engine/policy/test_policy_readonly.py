"""A pinned policy snapshot is read-only: whatever a node tries, no other request sees it."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from engine import Node, NodeContext, Pipeline, PolicyPin, PolicyReadOnly, load_graph
from engine.frozen import FrozenDict, FrozenList, thaw
from engine.plugin.registry import Registry
from engine.store.store import Store

BODY: dict[str, Any] = {
    "name": "meddle",
    "limits": {"max": 3, "tiers": ["a", "b"]},
    "routes": [{"name": "x", "weights": [1, 2]}],
    "note": "shared",
}

GRAPH = """
moat: 1
name: meddle
policy: meddle.yaml
input: {type: object, properties: {step: {type: integer}}}
nodes:
  meddle: {type: meddler, with: {step: "{{ input.step }}"}}
  echo: {type: echo, with: {limits: "{{ policy.limits }}", tiers: "{{ policy.limits.tiers }}"}}
output:
  limit: policy.limits.max
  tiers: echo.tiers
  seen: meddle.seen
  refused: meddle.refused
"""

# Every way to change a dict or a list in place, by name.
DICT_OPS: dict[str, Any] = {
    "setitem": lambda d: d.__setitem__("max", 99),
    "setitem_new": lambda d: d.__setitem__("injected", True),
    "delitem": lambda d: d.__delitem__(next(iter(d))),
    "pop": lambda d: d.pop(next(iter(d))),
    "popitem": lambda d: d.popitem(),
    "clear": lambda d: d.clear(),
    "update": lambda d: d.update({"max": 0}),
    "setdefault": lambda d: d.setdefault("fresh", []),
    "ior": lambda d: d.__ior__({"max": 7}),
    "reinit": lambda d: d.__init__({"max": 1}),
    "setattr": lambda d: setattr(d, "hidden", 1),
}
LIST_OPS: dict[str, Any] = {
    "append": lambda s: s.append("z"),
    "extend": lambda s: s.extend(["z"]),
    "insert": lambda s: s.insert(0, "z"),
    "pop": lambda s: s.pop(),
    "remove": lambda s: s.remove(s[0]),
    "clear": lambda s: s.clear(),
    "sort": lambda s: s.sort(key=str, reverse=True),
    "reverse": lambda s: s.reverse(),
    "setitem": lambda s: s.__setitem__(0, "z"),
    "setslice": lambda s: s.__setitem__(slice(0, 1), ["z", "z"]),
    "delitem": lambda s: s.__delitem__(0),
    "iadd": lambda s: s.__iadd__(["z"]),
    "imul": lambda s: s.__imul__(3),
    "reinit": lambda s: s.__init__(["z"]),
}
TARGETS = (
    (),
    ("limits",),
    ("limits", "tiers"),
    ("routes",),
    ("routes", 0),
    ("routes", 0, "weights"),
)


def _at(body: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        body = body[part]
    return body


def attempt(policy: Any, target: int, op: int, via_copy: bool) -> bool:
    """Try one in-place change of `policy` (through a shallow copy when `via_copy`, which
    shares its nested values); True if it was refused."""
    container = _at(policy, TARGETS[target % len(TARGETS)])
    if via_copy:
        container = copy.copy(container)
        if isinstance(container, dict) and container:
            nested = next((v for v in container.values() if isinstance(v, dict | list)), None)
            container = nested if nested is not None else container
    ops = DICT_OPS if isinstance(container, dict) else LIST_OPS
    name = sorted(ops)[op % len(ops)]
    try:
        ops[name](container)
    except PolicyReadOnly:
        return True
    except (KeyError, IndexError, ValueError, AttributeError):  # e.g. popitem of an empty copy
        return False
    return False


PLANS: list[list[tuple[int, int, bool]]] = []
"""The change attempts of each request (`step` picks one), set by the test."""


class Meddler(Node):
    """Tries to change the policy it was handed, then reports what it saw first."""

    type_name = "meddler"

    class Config(BaseModel):
        step: int = 0

    class Output(BaseModel):
        seen: Any = None
        refused: int = 0

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        seen = thaw(ctx.policy)
        refused = 0
        for target, op, via_copy in PLANS[config.step]:  # type: ignore[attr-defined]
            refused += attempt(ctx.policy, target, op, via_copy)
            await anyio.lowlevel.checkpoint()
        return self.Output(seen=seen, refused=refused)


class Echo(Node):
    """Reads policy values through its typed config."""

    type_name = "echo"

    class Config(BaseModel):
        limits: dict[str, Any]
        tiers: list[str]

    class Output(BaseModel):
        tiers: list[str]
        limits: dict[str, Any]

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        tiers = list(config.tiers)  # type: ignore[attr-defined]
        tiers.append("mine")  # a copy of its own: free to change
        return self.Output(tiers=tiers, limits=config.limits)  # type: ignore[attr-defined]


def _graph(folder: Path) -> Any:
    (folder / "meddle.yaml").write_text(json.dumps(BODY))
    path = folder / "meddle.moat.yaml"
    path.write_text(GRAPH)
    return load_graph(path, registry=Registry([Meddler, Echo]))


async def _answer_all(folder: Path, plans: list[list[tuple[int, int, bool]]]) -> None:
    PLANS[:] = plans
    db = folder / "moat.db"
    async with Pipeline(_graph(folder), db=db) as pipe:
        assert pipe.policy is not None
        pinned = pipe.policy.current()
        run_id = pipe.start_run(len(plans))
        for step in range(len(plans)):
            result = await pipe.run({"step": step}, run_id=run_id, seq=step)
            assert result.status == "ok", result.error
            # every request saw the snapshot as stored, whatever the ones before it tried
            assert result.output["seen"] == BODY
            assert result.output["limit"] == 3
            assert result.output["tiers"] == ["a", "b", "mine"]
        assert pipe.policy.current() is pinned
        assert pinned.body == BODY
        await pipe.finish_run(run_id)
    with Store.open(db) as store:
        [row] = store.policy_versions("meddle")
        stored = store.get_policy("meddle", row["version"])
    assert stored is not None and stored["body"] == pinned.body == BODY


_plans = st.lists(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.booleans()), max_size=8),
    min_size=2,
    max_size=4,
)


@settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(_plans)
def test_whatever_a_node_tries_the_next_request_sees_the_stored_snapshot(
    tmp_path_factory: pytest.TempPathFactory, plans: list[list[tuple[int, int, bool]]]
) -> None:
    anyio.run(_answer_all, tmp_path_factory.mktemp("meddle"), plans)


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(0, 50), st.integers(0, 50), st.booleans())
def test_every_in_place_change_of_a_pinned_body_is_refused(
    target: int, op: int, via_copy: bool
) -> None:
    pin = PolicyPin("meddle", 1, copy.deepcopy(BODY))
    refused = attempt(pin.body, target, op, via_copy)
    assert pin.body == BODY
    # a change through a shallow copy of a mapping with nothing nested lands in the copy
    assert refused or via_copy


def test_the_refusal_names_where_and_what_to_do_instead() -> None:
    body = PolicyPin("meddle", 1, BODY).body
    with pytest.raises(PolicyReadOnly, match=r"cannot append to policy\.limits\.tiers: .*"):
        body["limits"]["tiers"].append("c")
    with pytest.raises(PolicyReadOnly, match=r"cannot set policy\.routes\[0\]\.name: "):
        body["routes"][0]["name"] = "y"
    with pytest.raises(TypeError, match=r"read-only .* Work on a copy .*`moat policy apply`"):
        body["note"] = "mine"


def test_a_pin_freezes_a_copy_once_and_keeps_the_callers_body_apart() -> None:
    body = copy.deepcopy(BODY)
    pin = PolicyPin("meddle", 1, body)
    body["limits"]["max"] = 4  # the caller's own dict: not the pin's
    assert pin.body["limits"]["max"] == 3
    again = PolicyPin("meddle", 1, pin.body)
    assert again.body is pin.body  # frozen already: not copied again


def test_a_frozen_body_reads_serialises_copies_and_pickles_like_the_original() -> None:
    body = PolicyPin("meddle", 1, BODY).body
    assert isinstance(body, dict) and isinstance(body["limits"]["tiers"], list)
    assert json.loads(json.dumps(body)) == BODY
    shipped = pickle.loads(pickle.dumps(body))  # a Ray worker's copy stays a snapshot
    assert shipped == BODY and type(shipped) is FrozenDict
    assert type(shipped["routes"]) is FrozenList
    with pytest.raises(PolicyReadOnly, match=r"policy\.routes"):
        shipped["routes"].append({})
    mine = copy.deepcopy(body)
    mine["limits"]["tiers"].append("c")  # a deep copy is the caller's own
    assert type(mine) is dict and body["limits"]["tiers"] == ["a", "b"]
    shallow = dict(body)
    shallow["note"] = "mine"
    assert body["note"] == "shared"
