"""The `speculate` node: cascade, hedged race with cancellation of the loser, adaptive depth."""

from __future__ import annotations

import pytest

from engine.errors import NodeError, TransientError
from nodes.speculate import SpeculateNode
from tests.support.nodes_fakes import FakeModel, FakeRuntime, run_node

pytestmark = pytest.mark.anyio

ACCEPT = {"accept": True, "score": 0.9}
REJECT = {"accept": False, "score": 0.2}
CFG = {"prompt": "What is 2+2?", "draft_model": "small", "target_model": "large"}


def _models(verdict: object, *, draft_delay: float = 0.0, target_delay: float = 0.0) -> FakeRuntime:
    small = FakeModel("small", {"draft": "4", "verify": verdict}, cost=0.001, delay=draft_delay)
    large = FakeModel("large", {"answer": "Four."}, cost=0.01, delay=target_delay)
    return FakeRuntime(models={"small": small, "large": large})


async def test_cascade_accepts_a_good_draft_without_the_target() -> None:
    rt = _models(ACCEPT)
    out = await run_node(SpeculateNode(), CFG, rt)
    assert (out.text, out.source, out.accepted, out.hedged, out.strategy) == (
        "4",
        "draft",
        True,
        False,
        "cascade",
    )
    assert rt.models["large"].calls == [] and out.wasted_usd == 0.0
    assert [c.task for c in rt.models["small"].calls] == ["draft", "verify"]
    ev = rt.last("SPECULATE_DECISION")
    assert ev.decision == "draft" and ev.reason_codes == [
        "HIGH_PREDICTED_ACCEPTANCE",
        "DRAFT_ACCEPTED",
    ]


async def test_cascade_falls_back_to_target_and_reports_waste() -> None:
    rt = _models(REJECT)
    out = await run_node(SpeculateNode(), CFG, rt)
    assert (out.text, out.source, out.accepted) == ("Four.", "target", False)
    assert out.wasted_usd == pytest.approx(0.002) and out.cost_usd == pytest.approx(0.012)


async def test_schema_invalid_draft_is_rejected_without_verifying() -> None:
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    small = FakeModel("small", {"draft": "four"})
    large = FakeModel("large", {"answer": {"n": 4}})
    rt = FakeRuntime(models={"small": small, "large": large})
    out = await run_node(SpeculateNode(), {**CFG, "schema": schema}, rt)
    assert out.source == "target" and out.json == {"n": 4}
    assert [c.task for c in small.calls] == ["draft"]
    assert "DRAFT_SCHEMA_INVALID" in rt.last("SPECULATE_DECISION").reason_codes


async def test_learnt_rejections_switch_to_hedging_then_skipping() -> None:
    node = SpeculateNode()
    strategies = []
    for i in range(12):
        rt = _models(REJECT, target_delay=0.01)  # the draft path finishes first, as usual
        out = await run_node(node, CFG, rt, request_id=f"r{i}")
        strategies.append(out.strategy)
    assert strategies[0] == "cascade"
    assert "hedged" in strategies and strategies[-1] == "target_only"
    assert node.acceptance["short/factual"] < 0.15
    # other classes keep the prior
    rt = _models(ACCEPT)
    out = await run_node(
        node, {**CFG, "prompt": "Explain why the sky is blue, then compare it with sunsets."}, rt
    )
    assert out.strategy == "cascade" and out.accepted


async def test_hedged_race_accepted_draft_cancels_the_target() -> None:
    node = SpeculateNode()
    rt = _models(ACCEPT, target_delay=5.0)
    out = await run_node(node, {**CFG, "prior": 0.3}, rt)
    assert (out.strategy, out.source, out.accepted, out.hedged) == ("hedged", "draft", True, True)
    assert rt.models["large"].calls[0].cancelled
    ev = rt.last("SPECULATE_DECISION")
    assert ev.payload["cancelled"] == ["target"] and ev.payload["wasted_usd"] == 0.0  # type: ignore[index]
    assert node.acceptance["short/factual"] == pytest.approx(0.8 * 0.3 + 0.2)


async def test_hedged_race_fast_target_cancels_the_draft() -> None:
    rt = _models(ACCEPT, draft_delay=5.0)
    out = await run_node(SpeculateNode(), {**CFG, "prior": 0.3}, rt)
    assert (out.source, out.text, out.accepted) == ("target", "Four.", False)
    assert rt.models["small"].calls[0].cancelled
    assert rt.last("SPECULATE_DECISION").payload["cancelled"] == ["draft"]  # type: ignore[index]


async def test_hedged_race_rejected_draft_waits_for_target_and_counts_waste() -> None:
    rt = _models(REJECT, target_delay=0.05)
    out = await run_node(SpeculateNode(), {**CFG, "prior": 0.3}, rt)
    assert out.source == "target" and out.wasted_usd == pytest.approx(0.002)


async def test_hedged_race_failing_target_and_rejected_draft_fails_clearly() -> None:
    small = FakeModel("small", {"draft": "4", "verify": REJECT})
    large = FakeModel("large", {"answer": TransientError("503")})
    rt = FakeRuntime(models={"small": small, "large": large})
    with pytest.raises(
        NodeError, match="target model 'large' failed and the draft was not accepted"
    ):
        await run_node(SpeculateNode(), {**CFG, "prior": 0.3}, rt)
    ok = _models(ACCEPT)
    ok.models["large"] = large
    out = await run_node(SpeculateNode(), {**CFG, "prior": 0.3}, ok)
    assert out.source == "draft"


async def test_unparseable_verdict_rejects() -> None:
    rt = _models("no idea")
    out = await run_node(SpeculateNode(), CFG, rt)
    assert (
        out.source == "target"
        and "VERIFY_UNPARSEABLE" in rt.last("SPECULATE_DECISION").reason_codes
    )


@pytest.mark.parametrize(
    ("verdict", "code"),
    [
        ({"accept": "false", "score": 0.9}, "DRAFT_REJECTED"),
        ({"accept": "no", "score": "0.95"}, "DRAFT_REJECTED"),
        ({"accept": True, "score": 9}, "VERIFY_UNREADABLE"),
        ('{"accept": true, "score": NaN}', "VERIFY_UNREADABLE"),
        ({"accept": "looks fine", "score": 0.9}, "VERIFY_UNREADABLE"),
        ({"verdict": "accept"}, "VERIFY_UNREADABLE"),
        ('{"accept": true, "score": 0.9', "ANSWER_TRUNCATED"),
    ],
)
async def test_a_verdict_that_does_not_clearly_accept_rejects_the_draft(
    verdict: object, code: str
) -> None:
    rt = _models(verdict)
    out = await run_node(SpeculateNode(), CFG, rt)
    assert (out.text, out.source, out.accepted) == ("Four.", "target", False)
    assert out.wasted_usd == pytest.approx(0.002)  # the draft and its verdict, both charged
    assert rt.last("SPECULATE_DECISION").reason_codes[-1] == code


async def test_a_verdict_in_strings_still_accepts() -> None:
    rt = _models({"accept": "True", "score": "0.9"})
    out = await run_node(SpeculateNode(), CFG, rt)
    assert (out.source, out.accepted) == ("draft", True)
    assert rt.last("SPECULATE_DECISION").payload["verify_score"] == 0.9  # type: ignore[index]


async def test_a_draft_cut_off_mid_object_is_rejected_without_verifying() -> None:
    schema = {"type": "object", "properties": {"items": {"type": "array"}}}
    small = FakeModel("small", {"draft": '{"items": ["bread", "milk", "eg'})
    large = FakeModel("large", {"answer": {"items": ["bread", "milk", "eggs", "tea"]}})
    rt = FakeRuntime(models={"small": small, "large": large})
    out = await run_node(SpeculateNode(), {**CFG, "schema": schema}, rt)
    assert out.source == "target" and out.json == {"items": ["bread", "milk", "eggs", "tea"]}
    assert [c.task for c in small.calls] == ["draft"]
    assert "DRAFT_SCHEMA_INVALID" in rt.last("SPECULATE_DECISION").reason_codes
