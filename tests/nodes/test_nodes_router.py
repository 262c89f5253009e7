"""The `router` node: exemplars, complexity features, past outcomes and the remaining budget."""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import NodeError
from engine.plugin.context import SharedState
from nodes._support.features import features
from nodes.router import RouterMemory, RouterNode
from tests.support.nodes_fakes import FakeRuntime, run_node

pytestmark = pytest.mark.anyio

ROUTES = {
    "small": {
        "model": "small",
        "exemplars": ["What is the capital of France?", "Translate hello to Spanish"],
    },
    "large": {
        "model": "large",
        "exemplars": ["Design a distributed rate limiter and explain the trade-offs"],
    },
}


async def _route(
    text: str, rt: FakeRuntime | None = None, store: SharedState | None = None, **cfg: Any
) -> Any:
    rt = rt or FakeRuntime()
    return await run_node(
        RouterNode(), {"text": text, "routes": ROUTES, **cfg}, rt, store=store or SharedState()
    )


def test_features_score_complexity() -> None:
    simple = features("What is the capital of Peru?")
    hard = features(
        "Explain step by step how to refactor this:\n```python\ndef f(x):\n    return x\n```\n"
        "1. first keep tests green\n2. then split the module\nWhy does it matter? And how?"
    )
    assert simple.complexity < 0.2 and simple.prompt_class == "short/factual"
    assert "FACTUAL_QUESTION" in simple.reasons
    assert hard.complexity > 0.7 and {"CODE_PRESENT", "REASONING_QUESTION", "MULTI_STEP"} <= set(
        hard.reasons
    )
    assert hard.prompt_class == "medium/reasoning/code"


async def test_exemplar_match_decides_and_emits_route_selected() -> None:
    rt = FakeRuntime()
    out = await _route("What is the capital of Spain?", rt)
    assert (out.route, out.model) == ("small", "small")
    assert out.reasons[0] == "EXEMPLAR_MATCH" and out.score >= 0.6
    ev = rt.last("ROUTE_SELECTED")
    assert ev.decision == "small" and ev.reason_codes == out.reasons
    assert ev.payload["prompt_class"] == "short/factual"  # type: ignore[index]


async def test_complexity_decides_without_a_close_exemplar() -> None:
    out = await _route(
        "Explain why my recursive parser is slow, then design a faster one step by step."
    )
    assert out.route == "large" and out.reasons[0] == "COMPLEXITY_HIGH"
    out = await _route("Hi there")
    assert out.route == "small" and out.reasons[0] == "COMPLEXITY_LOW"


async def test_three_tiers_spread_over_complexity() -> None:
    routes = {"s": {"model": "s"}, "m": {"model": "m"}, "l": {"model": "l", "tier": 9}}
    pick = lambda text: run_node(RouterNode(), {"text": text, "routes": routes}, FakeRuntime())  # noqa: E731
    assert (await pick("hello")).route == "s"
    assert (
        await pick("Explain why the sky is blue, compare it with sunsets, then finally summarise.")
    ).route == "m"
    hard = "Explain and compare, step by step, then finally design:\n```\nclass A: pass\n```\n" * 3
    assert (await pick(hard)).route == "l"


async def test_low_budget_takes_the_cheapest_route() -> None:
    rt = FakeRuntime(remaining_usd_value=0.001)
    out = await _route(
        "Design a distributed rate limiter and explain the trade-offs", rt, budget_floor_usd=0.01
    )
    assert out.route == "small" and out.reasons[0] == "BUDGET_LOW"


async def test_failure_on_near_duplicate_escalates_and_cheaper_success_steps_down() -> None:
    store = SharedState()
    text = "Summarise the attached contract clause about termination fees"
    first = await _route(text, store=store)
    assert first.route == "small"
    await run_node(
        RouterNode(),
        {"text": text, "routes": ROUTES, "mode": "feedback", "route": "small", "ok": False},
        FakeRuntime(),
        store=store,
    )
    again = await _route(text + ".", store=store)
    assert again.route == "large" and again.reasons[0] == "PAST_FAILURE_NEAR_DUPLICATE"
    # another tenant has its own history
    other = await run_node(
        RouterNode(), {"text": text, "routes": ROUTES}, FakeRuntime(), store=store, tenant="b"
    )
    assert other.route == "small"
    hard = "Explain why my recursive parser is slow, then design a faster one step by step."
    await run_node(
        RouterNode(),
        {"text": hard, "routes": ROUTES, "mode": "feedback", "route": "small"},
        FakeRuntime(),
        store=store,
    )
    down = await _route(hard, store=store)
    assert down.route == "small" and down.reasons[0] == "PAST_SUCCESS_CHEAPER"


async def test_learn_on_success_records_after_the_request() -> None:
    store = SharedState()
    rt = FakeRuntime()
    hard = "Explain why my recursive parser is slow, then design a faster one step by step."
    out = await _route(hard, rt, store=store, learn_on_success=True)
    assert out.route == "large" and len(rt.callbacks) == 1
    await rt.succeed()
    assert (await _route(hard, store=store)).reasons[
        0
    ] == "COMPLEXITY_HIGH"  # large succeeded: stays


async def test_feedback_with_unknown_route_fails_clearly() -> None:
    with pytest.raises(NodeError, match="use one of the routes: small, large"):
        await _route("x", mode="feedback", route="medium")


PLAIN_ROUTES = {"small": {"model": "small"}, "large": {"model": "large"}}


def _weights(tmp_path: Any, small_reasoning: int = -127) -> Any:
    """A weights file: small is sure (p~0.88) unless the text reasons; large always ~0.73."""
    from nodes._support.learned import BUCKETS, DENSE

    size = len(DENSE) + BUCKETS
    small = [0] * size
    small[0], small[DENSE.index("reasoning")] = 40, small_reasoning  # scale 0.05
    large = [0] * size
    large[0] = 20
    body = {
        "format": "moat-router/1",
        "models": {"small": {"scale": 0.05, "q": small}, "large": {"scale": 0.05, "q": large}},
    }
    path = tmp_path / "w.json"
    path.write_text(__import__("json").dumps(body))
    return path


async def _learned_route(text: str, **cfg: Any) -> Any:
    return await run_node(
        RouterNode(), {"text": text, "routes": PLAIN_ROUTES, **cfg}, FakeRuntime(),
        store=SharedState(),
    )  # fmt: skip


async def test_learned_weights_pick_the_cheapest_route_likely_right(tmp_path: Any) -> None:
    path = str(_weights(tmp_path))
    plain = await _learned_route("What is the capital of Peru?", weights=path, min_p_correct=0.8)
    assert plain.route == "small" and plain.reasons[0] == "LEARNED_SUFFICIENT"
    assert plain.predicted["small"] == pytest.approx(0.881, abs=0.01)
    hard = await _learned_route("Explain why the sky is blue", weights=path, min_p_correct=0.8)
    assert hard.route == "large" and hard.reasons[0] == "LEARNED_BEST_CHANCE"
    assert hard.predicted["small"] < 0.1


async def test_the_shipped_weights_load_and_predict_every_model() -> None:
    out = await _learned_route("What is the capital of Peru?", weights="builtin", min_p_correct=0)
    assert out.route == "small" and set(out.predicted) == {"small", "large"}
    assert all(0 < p < 1 for p in out.predicted.values())


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "not JSON"),
        ('{"format": "other"}', "not a router weights file"),
        ('{"format": "moat-router/1", "models": {"small": {"scale": 1, "q": [1]}}}', "int8 values"),
        ('{"format": "moat-router/1", "models": {"tiny": {"scale": 1, "q": ' + str([0] * 140)
         + "}}}", "none of this router's routes"),
    ],
)  # fmt: skip
async def test_bad_weights_fail_with_a_clear_error(tmp_path: Any, content: str, match: str) -> None:
    path = tmp_path / f"bad{abs(hash(content))}.json"
    path.write_text(content)
    with pytest.raises(NodeError, match=match):
        await _learned_route("hi", weights=str(path))


def test_router_memory_keeps_a_bounded_number_of_tenants() -> None:
    # tenant names come from requests: a client inventing one per request must not grow
    # the process's memory without end
    memory = RouterMemory(max_tenants=3)
    for tenant in ["a", "b", "c", "a", "d", "e"]:
        memory.record(tenant, "reset my password", "cheap", True)
    assert [t for t in "abcde" if memory.similar(t, "reset my password", 0.9)] == ["a", "d", "e"]
    assert [(r, ok) for r, ok, _ in memory.similar("a", "reset my password", 0.9)] == [
        ("cheap", True),
        ("cheap", True),
    ]
