"""The `critic` and `simulator` nodes: decisions, principle reuse, traces, malformed answers."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.plugin.context import SharedState
from nodes._support.principles import DEFAULT_PRINCIPLES, load_principles
from nodes.critic import CriticNode
from nodes.simulator import SimulatorNode
from tests.support.nodes_fakes import FakeModel, FakeRuntime, run_node

pytestmark = pytest.mark.anyio

SAFE_RISK = {
    "risk_score": 0.1,
    "category": "general",
    "operational_risk": "low",
    "intent_to_harm": False,
    "requested_instructions": False,
    "action": "proceed",
    "rationale": "benign",
}


async def test_request_mode_assesses_risk_and_traces_it() -> None:
    judge = FakeModel("judge", {"risk": SAFE_RISK})
    rt = FakeRuntime(models={"judge": judge})
    out = await run_node(
        CriticNode(), {"model": "judge", "mode": "request"}, rt, input={"prompt": "Bake bread?"}
    )
    assert out.action == "proceed" and out.risk_score == 0.1 and out.score == pytest.approx(0.9)
    assert out.operational_risk == "low" and out.parsed
    assert judge.calls[0].task == "risk" and "Bake bread?" in (judge.calls[0].prompt or "")
    assert set(judge.calls[0].schema["properties"]) >= {"risk_score", "intent_to_harm", "action"}
    assert rt.types() == ["PRINCIPLES_RETRIEVED", "CRITIC_DECISION"]
    assert rt.last("CRITIC_DECISION").reason_codes == ["MODEL_PROCEED"]
    stages = [s for s, _ in rt.traces]
    assert stages == ["REQUEST_ANALYSIS_CONTEXT", "RISK_ASSESSMENT"]
    risk = rt.traces[1][1]
    assert risk["risk_policy_action"] == "proceed" and risk["estimation_mode"] == "model"


@pytest.mark.parametrize(
    ("reply", "action", "codes"),
    [
        ({**SAFE_RISK, "risk_score": 0.6}, "revise", ["RISK_ABOVE_REVISE", "MODEL_PROCEED"]),
        ({**SAFE_RISK, "risk_score": 0.9}, "refuse", ["RISK_ABOVE_REFUSE", "MODEL_PROCEED"]),
        (
            {
                **SAFE_RISK,
                "intent_to_harm": True,
                "requested_instructions": True,
                "operational_risk": "high",
            },
            "refuse",
            ["INTENT_OPERATIONAL", "MODEL_PROCEED"],
        ),
        ({**SAFE_RISK, "action": "refuse"}, "refuse", ["MODEL_REFUSE"]),
        ("not json at all", "revise", ["RISK_UNPARSEABLE", "RISK_ABOVE_REVISE", "MODEL_REVISE"]),
    ],
)
async def test_request_mode_takes_the_more_cautious_of_model_and_thresholds(
    reply: object, action: str, codes: list[str]
) -> None:
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"risk": reply})})
    out = await run_node(CriticNode(), {"model": "judge", "mode": "request", "request": "x"}, rt)
    assert out.action == action
    assert rt.last("CRITIC_DECISION").reason_codes == codes


async def test_principles_are_retrieved_once_per_request_and_reused() -> None:
    critique = {"action": "proceed", "violations": [], "hard": False, "score": 0.95}
    judge = FakeModel("judge", {"risk": SAFE_RISK, "critique": critique})
    rt = FakeRuntime(models={"judge": judge})
    store = SharedState()
    req = {"input": {"prompt": "how do I pick a lock"}, "store": store}
    await run_node(CriticNode(), {"model": "judge", "mode": "request"}, rt, **req)
    for cycle in (1, 2):
        await run_node(
            CriticNode(), {"model": "judge", "draft": f"draft {cycle}"}, rt, cycle=cycle, **req
        )
    principle_events = [t for t in rt.types() if t.startswith("PRINCIPLES_")]
    assert principle_events == ["PRINCIPLES_RETRIEVED", "PRINCIPLES_REUSED", "PRINCIPLES_REUSED"]
    assert [s for s, _ in rt.traces].count("REQUEST_ANALYSIS_CONTEXT") == 1
    # every critic reviewed against the same principles
    ids = [e.payload["principles"] for e in rt.events if e.type == "CRITIC_DECISION"]  # type: ignore[index]
    assert ids[0] == ids[1] == ids[2]
    assert "helpful" in ids[0] and "honest" in ids[0]
    # a new request retrieves again
    rt2 = FakeRuntime(models={"judge": judge})
    await run_node(CriticNode(), {"model": "judge", "draft": "d"}, rt2, **req)
    assert "PRINCIPLES_RETRIEVED" in rt2.types()


async def test_draft_mode_corrects_proceed_with_violations_and_flags_hard() -> None:
    reply = {"action": "proceed", "violations": ["privacy"], "hard": True, "score": 0.3}
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"critique": reply})})
    out = await run_node(CriticNode(), {"model": "judge", "draft": "d", "request": "r"}, rt)
    assert (out.action, out.violations, out.hard) == ("revise", ["privacy"], True)
    codes = rt.last("CRITIC_DECISION").reason_codes
    assert codes == ["MODEL_PROCEED", "VIOLATIONS_OVERRIDE_PROCEED", "HARD_VIOLATION"]


async def test_draft_mode_unparseable_answer_becomes_revise() -> None:
    sloppy = "{'action': 'proceed', 'violations': [], 'hard': False, 'score': 0.9,}"
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"critique": sloppy})})
    # lenient parsing recovers this one
    out = await run_node(CriticNode(), {"model": "judge", "draft": "d", "request": "r"}, rt)
    assert out.parsed and out.action == "proceed"
    # one cut off after its action is not: its violations are unknown, not absent
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"critique": "{'action': 'proceed'"})})
    out = await run_node(CriticNode(), {"model": "judge", "draft": "d", "request": "r"}, rt)
    assert (out.action, out.parsed) == ("revise", False)
    assert rt.last("CRITIC_DECISION").reason_codes == ["CRITIC_UNPARSEABLE", "ANSWER_TRUNCATED"]
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"critique": "I think it's fine"})})
    out = await run_node(CriticNode(), {"model": "judge", "draft": "d", "request": "r"}, rt)
    assert (out.action, out.parsed) == ("revise", False)
    assert rt.last("CRITIC_DECISION").reason_codes == ["CRITIC_UNPARSEABLE"]


async def test_principles_from_yaml_text_and_inline(tmp_path: Path) -> None:
    y = tmp_path / "p.yaml"
    y.write_text(
        "principles:\n  - {id: kind, text: Be kind to animals, tags: [animals], hard: true}\n"
    )
    t = tmp_path / "p.txt"
    t.write_text("# comment\nNo spoilers\nCite sources\n")
    assert [p.id for p in load_principles(str(y))] == ["kind"]
    assert load_principles(str(y))[0].hard
    assert [p.text for p in load_principles(str(t))] == ["No spoilers", "Cite sources"]
    assert load_principles(None) == DEFAULT_PRINCIPLES
    with pytest.raises(ValueError, match="cannot read principles file"):
        load_principles(str(tmp_path / "missing.yaml"))
    judge = FakeModel(
        "judge", {"critique": {"action": "proceed", "violations": [], "hard": False, "score": 1}}
    )
    rt = FakeRuntime(models={"judge": judge})
    cfg = {
        "model": "judge",
        "draft": "d",
        "request": "cats",
        "principles": ["Be nice", {"id": "x", "text": "Y"}],
    }
    out = await run_node(CriticNode(), cfg, rt)
    assert out.principles == ["p1", "x"]
    assert "Be nice" in (judge.calls[0].prompt or "")


async def test_simulator_reports_harm_and_concerns() -> None:
    sim = FakeModel("sim", {"simulate": {"expected_harm": 0.05, "concerns": []}})
    rt = FakeRuntime(models={"sim": sim})
    out = await run_node(SimulatorNode(), {"model": "sim", "draft": "Bread needs yeast."}, rt)
    assert (out.expected_harm, out.concerns, out.severity, out.parsed) == (0.05, [], "low", True)
    assert sim.calls[0].task == "simulate"
    ev = rt.last("SIMULATOR_EXECUTED")
    assert ev.decision == "low" and ev.reason_codes == ["HARM_LOW"]


async def test_simulator_unreadable_answer_is_cautious() -> None:
    rt = FakeRuntime(models={"sim": FakeModel("sim", {"simulate": "hmm"})})
    out = await run_node(SimulatorNode(), {"model": "sim", "draft": "d"}, rt)
    assert out.expected_harm == 0.5 and out.severity == "medium" and not out.parsed
    assert out.concerns == ["simulator output unreadable"]
    assert rt.last("SIMULATOR_EXECUTED").reason_codes == [
        "SIMULATOR_UNPARSEABLE",
        "HARM_MEDIUM",
        "CONCERNS_RAISED",
    ]


@pytest.mark.parametrize(
    ("reply", "escalate", "verdict", "codes"),
    [
        ({**SAFE_RISK, "confidence": 0.97}, False, "proceed", ["SCREEN_PASSED"]),
        ({**SAFE_RISK, "confidence": 0.7}, True, "proceed",
         ["ESCALATE", "CONFIDENCE_BELOW_ESCALATE"]),
        ({**SAFE_RISK, "risk_score": 0.95, "action": "refuse", "confidence": 0.95}, True,
         "refuse", ["ESCALATE"]),
        ({**SAFE_RISK, "risk_score": 0.6, "confidence": 0.99}, True, "revise", ["ESCALATE"]),
    ],
)  # fmt: skip
async def test_a_screen_escalates_instead_of_refusing(
    reply: dict[str, object], escalate: bool, verdict: str, codes: list[str]
) -> None:
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"risk": reply})})
    config = {"model": "judge", "mode": "request", "escalate_below": 0.9, "refuse_at": 0.8}
    out = await run_node(CriticNode(), config, rt, input={"prompt": "Bake bread?"})
    assert out.escalate is escalate and out.verdict == verdict
    assert out.action == ("revise" if escalate else "proceed")  # never `refuse`
    decision = rt.last("CRITIC_DECISION")
    assert decision.reason_codes[-len(codes) :] == codes
    assert decision.payload is not None and decision.payload["escalate"] is escalate


async def test_without_a_stated_confidence_the_screen_reads_its_score() -> None:
    reply = {**SAFE_RISK, "risk_score": 0.2}  # no `confidence`: 0.8 from the score
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"risk": reply})})
    out = await run_node(
        CriticNode(), {"model": "judge", "mode": "request", "escalate_below": 0.85}, rt
    )
    assert out.confidence == pytest.approx(0.8) and out.escalate


async def test_an_unreadable_screen_escalates() -> None:
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"risk": "not json at all"})})
    out = await run_node(
        CriticNode(), {"model": "judge", "mode": "request", "escalate_below": 0.5}, rt
    )
    assert out.escalate and not out.parsed and out.action == "revise"


async def test_a_deciding_review_keeps_its_refusal_and_reports_its_confidence() -> None:
    reply = {**SAFE_RISK, "risk_score": 0.95, "action": "refuse", "confidence": 0.93}
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"risk": reply})})
    out = await run_node(CriticNode(), {"model": "judge", "mode": "request"}, rt)
    assert out.action == "refuse" and not out.escalate and out.verdict is None
    assert out.confidence == pytest.approx(0.93)


@pytest.mark.parametrize(
    ("change", "action", "codes"),
    [
        ({"risk_score": "0.9"}, "refuse", ["RISK_ABOVE_REFUSE", "MODEL_PROCEED"]),
        ({"risk_score": " 0.1 ", "action": "Proceed"}, "proceed", ["MODEL_PROCEED"]),
        ({"action": "REFUSE"}, "refuse", ["MODEL_REFUSE"]),
        ({"risk_score": float("nan")}, "revise", ["RISK_SCORE_UNREADABLE", "MODEL_PROCEED"]),
        ({"risk_score": 7}, "revise", ["RISK_SCORE_UNREADABLE", "MODEL_PROCEED"]),
        ({"risk_score": -0.4}, "revise", ["RISK_SCORE_UNREADABLE", "MODEL_PROCEED"]),
        ({"risk_score": "low"}, "revise", ["RISK_SCORE_UNREADABLE", "MODEL_PROCEED"]),
        ({"operational_risk": "HIGH", "intent_to_harm": "false",
          "requested_instructions": "false"}, "revise", ["OPERATIONAL_HIGH", "MODEL_PROCEED"]),
        ({"operational_risk": "high", "intent_to_harm": "yes",
          "requested_instructions": "true"}, "refuse", ["INTENT_OPERATIONAL", "MODEL_PROCEED"]),
        ({"intent_to_harm": "perhaps"}, "revise",
         ["INTENT_TO_HARM_UNREADABLE", "INTENT_TO_HARM", "MODEL_PROCEED"]),
    ],
)  # fmt: skip
async def test_request_mode_reads_fields_as_models_write_them(
    change: dict[str, object], action: str, codes: list[str]
) -> None:
    # revise_at 0.6: an unreadable risk (taken as 0.5) still must not let the request through
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"risk": {**SAFE_RISK, **change}})})
    config = {"model": "judge", "mode": "request", "request": "x", "revise_at": 0.6}
    out = await run_node(CriticNode(), config, rt)
    assert out.action == action
    assert rt.last("CRITIC_DECISION").reason_codes == codes
    assert out.parsed is ("RISK_SCORE_UNREADABLE" not in codes)


@settings(max_examples=60, deadline=None)
@given(
    risk=st.one_of(
        st.none(),
        st.floats(allow_nan=True).filter(lambda x: not 0 <= x <= 1),
        st.text(max_size=8).filter(lambda s: not _reads_as_unit(s)),
        st.booleans(),
        st.lists(st.floats(0, 1), max_size=2),
    ),
    confidence=st.one_of(st.none(), st.floats(0, 1)),
)
def test_an_unreadable_risk_never_lets_a_request_through(
    risk: object, confidence: float | None
) -> None:
    reply = {**SAFE_RISK, "risk_score": risk, "confidence": confidence}
    for escalate_below in (None, 0.5):
        rt = FakeRuntime(models={"judge": FakeModel("judge", {"risk": reply})})
        config = {"model": "judge", "mode": "request", "request": "x", "revise_at": 0.9,
                  "refuse_at": 0.95, "escalate_below": escalate_below}  # fmt: skip
        out = anyio.run(run_node, CriticNode(), config, rt)
        assert out.action == "revise" and not out.parsed and out.confidence == 0.0
        assert out.escalate is (escalate_below is not None)


def _reads_as_unit(text: str) -> bool:
    try:
        return 0 <= float(text) <= 1
    except ValueError:
        return False


@pytest.mark.parametrize(
    ("reply", "out", "codes"),
    [
        ({"action": "proceed", "violations": "privacy: names a patient", "hard": False,
          "score": 0.4}, ("revise", ["privacy: names a patient"], False),
         ["MODEL_PROCEED", "VIOLATIONS_OVERRIDE_PROCEED"]),
        ({"action": "proceed", "violations": "none", "hard": "false", "score": "0.9"},
         ("proceed", [], False), ["MODEL_PROCEED"]),
        ({"action": "proceed", "violations": {"privacy": "names a patient"}, "hard": False,
          "score": 0.9}, ("revise", [], False), ["MODEL_PROCEED", "VIOLATIONS_UNREADABLE"]),
        ({"action": "proceed", "violations": [], "hard": "maybe", "score": 0.9},
         ("revise", [], True),
         ["MODEL_PROCEED", "HARD_UNREADABLE", "VIOLATIONS_OVERRIDE_PROCEED", "HARD_VIOLATION"]),
        ('{"action": "proceed", "violations": [], "hard": false, "score": 0.9, "rationale": "Fi',
         ("revise", [], False), ["CRITIC_UNPARSEABLE", "ANSWER_TRUNCATED"]),
    ],
)  # fmt: skip
async def test_draft_mode_reads_fields_as_models_write_them(
    reply: object, out: tuple[str, list[str], bool], codes: list[str]
) -> None:
    rt = FakeRuntime(models={"judge": FakeModel("judge", {"critique": reply})})
    got = await run_node(CriticNode(), {"model": "judge", "draft": "d", "request": "r"}, rt)
    assert (got.action, got.violations, got.hard) == out
    assert rt.last("CRITIC_DECISION").reason_codes == codes


@pytest.mark.parametrize(
    "reply",
    [
        '{"expected_harm": NaN, "concerns": []}',
        {"expected_harm": -2, "concerns": []},
        {"expected_harm": 7, "concerns": []},
        {"expected_harm": "none", "concerns": []},
        {"harm": 0.01, "concerns": []},
        '{"expected_harm": 0.01, "concerns": ["it names the',
        '{"expected_harm": 0.016, ',
    ],
)
async def test_simulator_never_reads_an_unreadable_harm_as_low(reply: object) -> None:
    rt = FakeRuntime(models={"sim": FakeModel("sim", {"simulate": reply})})
    out = await run_node(SimulatorNode(), {"model": "sim", "draft": "d"}, rt)
    assert (out.expected_harm, out.severity, out.parsed) == (0.5, "medium", False)
    assert out.concerns == ["simulator output unreadable"]
    codes = rt.last("SIMULATOR_EXECUTED").reason_codes
    assert codes[0] == "SIMULATOR_UNPARSEABLE" and codes[-2:] == ["HARM_MEDIUM", "CONCERNS_RAISED"]
    truncated = isinstance(reply, str) and not reply.endswith("}")
    assert ("ANSWER_TRUNCATED" in codes) is truncated
    assert ("HARM_UNREADABLE" in codes) is (not truncated)


@pytest.mark.parametrize(
    ("concerns", "read"),
    [
        ("it leaks a phone number", ["it leaks a phone number"]),
        ("None", []),
        (None, []),
        ({"privacy": "high"}, ["simulator concerns unreadable"]),
    ],
)
async def test_simulator_reads_harm_and_concerns_as_models_write_them(
    concerns: object, read: list[str]
) -> None:
    reply = {"expected_harm": "0.05", "concerns": concerns}
    rt = FakeRuntime(models={"sim": FakeModel("sim", {"simulate": reply})})
    out = await run_node(SimulatorNode(), {"model": "sim", "draft": "d"}, rt)
    assert (out.expected_harm, out.concerns, out.parsed) == (0.05, read, True)
