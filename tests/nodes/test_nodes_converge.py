"""The `converge` node: refusals first, cautious early convergence in cycle 1, then acceptance."""

from __future__ import annotations

from typing import Any

import pytest

from nodes.converge import ConvergeNode
from tests.support.nodes_fakes import FakeRuntime, run_node

pytestmark = pytest.mark.anyio

CLEAN = {"critic_action": "proceed", "violations": [], "score": 0.95, "expected_harm": 0.02}


async def _run(cfg: dict[str, Any], cycle: int = 1) -> tuple[Any, FakeRuntime]:
    rt = FakeRuntime()
    out = await run_node(ConvergeNode(), cfg, rt, cycle=cycle)
    return out, rt


async def test_cycle_one_converges_early_only_when_everything_agrees() -> None:
    out, rt = await _run(CLEAN)
    assert (out.converged, out.decision, out.early, out.reason) == (
        True,
        "accept",
        True,
        "early_convergence",
    )
    assert rt.types() == ["EARLY_CONVERGENCE_ACCEPTED", "CONVERGENCE_EVALUATED"]


@pytest.mark.parametrize(
    ("change", "blocker"),
    [
        ({"critic_action": "revise"}, "CRITIC_NOT_PROCEED"),
        ({"violations": ["privacy"]}, "VIOLATIONS_PRESENT"),
        ({"violations": 1}, "VIOLATIONS_PRESENT"),
        ({"score": 0.7}, "SCORE_BELOW_EARLY_MIN"),
        ({"expected_harm": 0.2}, "HARM_NOT_BELOW_FLOOR"),
        ({"expected_harm": None}, "HARM_NOT_COMPUTED"),
        ({"concerns": ["tone"]}, "RESIDUAL_CONCERNS"),
    ],
)
async def test_any_disagreeing_signal_rejects_early_convergence(
    change: dict[str, Any], blocker: str
) -> None:
    out, rt = await _run({**CLEAN, **change})
    assert (out.converged, out.decision, out.early) == (False, "revise", False)
    assert rt.types() == ["EARLY_CONVERGENCE_REJECTED", "CONVERGENCE_EVALUATED"]
    assert rt.last("EARLY_CONVERGENCE_REJECTED").reason_codes == [blocker]


async def test_missing_harm_allowed_only_when_configured() -> None:
    out, _ = await _run({**CLEAN, "expected_harm": None, "allow_missing_harm": True})
    assert out.early and out.reasons == ["CRITIC_CLEAN", "HARM_NOT_COMPUTED_ALLOWED"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"hard": True}, "hard_violation"),
        ({"critic_action": "refuse"}, "critic_refuse"),
        ({"expected_harm": 0.9}, "harm_above_refuse"),
    ],
)
async def test_refusals_converge_in_any_cycle(change: dict[str, Any], reason: str) -> None:
    for cycle in (1, 3):
        out, rt = await _run({**CLEAN, **change}, cycle)
        assert (out.converged, out.decision, out.reason, out.early) == (
            True,
            "refuse",
            reason,
            False,
        )
        assert rt.types() == ["CONVERGENCE_EVALUATED"]


async def test_later_cycles_accept_clean_critic_with_tolerable_harm() -> None:
    out, rt = await _run({**CLEAN, "expected_harm": 0.3, "score": 0.5}, cycle=2)
    assert (out.converged, out.decision, out.early) == (True, "accept", False)
    assert rt.types() == ["CONVERGENCE_EVALUATED"]
    out, _ = await _run({**CLEAN, "expected_harm": 0.5}, cycle=2)
    assert (out.converged, out.decision, out.reasons) == (False, "revise", ["HARM_ABOVE_CEILING"])


async def test_last_cycle_converges_on_revise() -> None:
    out, rt = await _run({**CLEAN, "critic_action": "revise", "max_cycles": 3}, cycle=3)
    assert (out.converged, out.decision, out.reason) == (True, "revise", "max_cycles")
    assert rt.last("CONVERGENCE_EVALUATED").payload["converged"] is True  # type: ignore[index]


async def test_cycle_from_config_overrides_context() -> None:
    out, rt = await _run({**CLEAN, "cycle": 2}, cycle=0)
    assert out.converged and not out.early
    assert "EARLY_CONVERGENCE_ACCEPTED" not in rt.types()


@pytest.mark.parametrize(
    ("signals", "early_code", "later_code"),
    [
        ({"critic_action": "refuse", "hard": True}, "HARD_VIOLATION_REVISE",
         "HARD_VIOLATION_REVISE"),
        ({"critic_action": "proceed", "expected_harm": 0.95}, "HARM_ABOVE_REFUSE_REVISE",
         "HARM_ABOVE_REFUSE_REVISE"),
        ({"critic_action": "refuse"}, "CRITIC_NOT_PROCEED", "CRITIC_REVISE"),
    ],
)  # fmt: skip
async def test_may_refuse_false_turns_refusal_signals_into_a_revision(
    signals: dict[str, Any], early_code: str, later_code: str
) -> None:
    for cycle, max_cycles in ((1, 3), (2, 3), (3, 3)):
        rt = FakeRuntime()
        config = {**signals, "cycle": cycle, "max_cycles": max_cycles, "may_refuse": False}
        out = await run_node(ConvergeNode(), config, rt)
        assert out.decision == "revise" and out.converged == (cycle == max_cycles)
        assert (early_code if cycle == 1 else later_code) in out.reasons
