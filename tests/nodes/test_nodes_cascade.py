"""The `cascade` node: stops at the first confident model, escalates the unsure, never crashes."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from nodes.cascade import CascadeNode
from tests.support.nodes_fakes import FakeModel, FakeRuntime, run_node

pytestmark = pytest.mark.anyio


def _models(**confidences: float | str) -> dict[str, FakeModel]:
    """One fake model per name, answering with the given confidence (a str: raw text)."""
    out = {}
    for name, c in confidences.items():
        reply: Any = c if isinstance(c, str) else {"answer": f"{name} answer", "confidence": c}
        out[name] = FakeModel(name, {"answer": reply}, cost=0.01)
    return out


async def _cascade(rt: FakeRuntime, **cfg: Any) -> Any:
    config = {"prompt": "What is 2+2?", "models": ["small", "medium", "large"], **cfg}
    return await run_node(CascadeNode(), config, rt)


async def test_a_confident_first_model_answers_alone() -> None:
    rt = FakeRuntime(models=_models(small=0.95, medium=0.9, large=0.99))
    out = await _cascade(rt, accept_at=0.8)
    assert (out.text, out.model, out.steps, out.escalated, out.accepted) == (
        "small answer", "small", 1, False, True,
    )  # fmt: skip
    assert rt.models["medium"].calls == [] and rt.models["large"].calls == []
    call = rt.models["small"].calls[0]
    assert call.task == "answer" and set(call.schema["properties"]) == {"answer", "confidence"}
    assert rt.last("CASCADE_STEP").decision == "accepted"


async def test_an_unsure_answer_escalates_to_the_next_model() -> None:
    rt = FakeRuntime(models=_models(small=0.4, medium=0.85, large=0.99))
    out = await _cascade(rt, accept_at=0.8)
    assert (out.model, out.tried, out.escalated) == ("medium", ["small", "medium"], True)
    assert out.cost_usd == pytest.approx(0.02)
    assert [e.decision for e in rt.events] == ["escalated", "accepted"]


async def test_no_confident_model_keeps_the_last_answer_unaccepted() -> None:
    rt = FakeRuntime(models=_models(small=0.1, medium=0.2, large=0.3))
    out = await _cascade(rt, accept_at=0.8)
    assert (out.model, out.accepted, out.steps) == ("large", False, 3)
    assert rt.events[-1].decision == "kept"


async def test_start_skips_cheaper_models_and_escalate_false_stops_there() -> None:
    rt = FakeRuntime(models=_models(small=0.99, medium=0.1, large=0.99))
    out = await _cascade(rt, start="medium", escalate=False)
    assert (out.model, out.steps, out.accepted) == ("medium", 1, False)
    assert rt.models["small"].calls == [] and rt.models["large"].calls == []


async def test_unreadable_answers_escalate_and_keep_their_text() -> None:
    rt = FakeRuntime(models=_models(small="no json here", medium="still none"))
    out = await _cascade(rt, models=["small", "medium"])
    assert (out.model, out.text, out.confidence) == ("medium", "still none", 0.0)
    assert rt.events[0].reason_codes == ["UNPARSEABLE"]


def test_start_must_be_one_of_the_models() -> None:
    with pytest.raises(ValidationError, match="name one of them"):
        CascadeNode.Config(prompt="x", models=["small"], start="large")


@settings(max_examples=40, deadline=None)
@given(
    confidences=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    accept_at=st.floats(0, 1),
)
def test_the_kept_answer_is_the_first_confident_one_or_the_last(
    confidences: list[float], accept_at: float
) -> None:
    names = [f"m{i}" for i in range(len(confidences))]
    rt = FakeRuntime(models=_models(**dict(zip(names, confidences, strict=True))))

    async def go() -> Any:
        return await _cascade(rt, models=names, accept_at=accept_at, max_steps=10)

    out = anyio.run(go)
    first = next((i for i, c in enumerate(confidences) if c >= accept_at), len(names) - 1)
    assert out.model == names[first] and out.steps == first + 1
    assert out.accepted == (confidences[first] >= accept_at)


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ({"response": "4", "confidence": 0.95}, "ANSWER_UNREADABLE"),
        ({"answer": " ", "confidence": 0.95}, "ANSWER_UNREADABLE"),
        ({"answer": "4", "confidence": 9}, "ANSWER_UNREADABLE"),
        ('{"answer": "4", "confidence": NaN}', "ANSWER_UNREADABLE"),
        ({"answer": "4", "confidence": "very"}, "ANSWER_UNREADABLE"),
        ('{"confidence": 0.95, "answer": "The answer is fo', "TRUNCATED"),
        ("I can't help with that.", "UNPARSEABLE"),
    ],
)
async def test_an_unreadable_confident_answer_escalates(reply: object, code: str) -> None:
    models = _models(medium=0.9)
    models["small"] = FakeModel("small", {"answer": reply}, cost=0.01)
    rt = FakeRuntime(models=models)
    out = await _cascade(rt, models=["small", "medium"], accept_at=0.8)
    assert (out.model, out.text, out.accepted) == ("medium", "medium answer", True)
    assert [(e.decision, e.reason_codes) for e in rt.events] == [
        ("escalated", [code]),
        ("accepted", ["CONFIDENT"]),
    ]
    assert out.cost_usd == pytest.approx(0.02)


async def test_a_numeric_string_confidence_reads_as_its_number() -> None:
    rt = FakeRuntime(
        models={"small": FakeModel("small", {"answer": {"answer": "4", "confidence": "0.95"}})}
    )
    out = await _cascade(rt, models=["small", "medium"])
    assert (out.model, out.text, out.confidence, out.accepted) == ("small", "4", 0.95, True)


async def test_an_unreadable_last_answer_never_displaces_a_readable_one() -> None:
    models = _models(small=0.5, medium="I can't help with that.")
    rt = FakeRuntime(models=models)
    out = await _cascade(rt, models=["small", "medium"], accept_at=0.8)
    assert (out.model, out.text, out.confidence, out.accepted) == (
        "small", "small answer", 0.5, False,
    )  # fmt: skip
    assert (out.steps, out.tried) == (2, ["small", "medium"])
    assert [e.decision for e in rt.events] == ["escalated", "discarded"]


async def test_an_unreadable_answer_is_never_accepted_even_at_accept_at_zero() -> None:
    rt = FakeRuntime(models=_models(small="no json", medium="still none"))
    out = await _cascade(rt, models=["small", "medium"], accept_at=0.0)
    assert (out.model, out.text, out.accepted, out.steps) == ("medium", "still none", False, 2)
    assert [e.decision for e in rt.events] == ["escalated", "kept"]
