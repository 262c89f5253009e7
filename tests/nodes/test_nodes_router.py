"""The `router` node: exemplars, complexity features, past outcomes and the remaining budget."""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import NodeError
from engine.plugin.context import SharedState
from nodes._support.features import features
from nodes.router import RouterNode
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
