"""The `cascade` node: stops at the first confident model, escalates the unsure, never crashes."""

from __future__ import annotations

import json
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


async def test_a_well_formed_answer_is_readable_even_when_unsure() -> None:
    rt = FakeRuntime(models=_models(small=0.3))
    out = await _cascade(rt, models=["small"])
    assert (out.text, out.readable, out.accepted, out.confidence) == (
        "small answer", True, False, 0.3,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "text", "code"),
    [
        ('{"answer": "The capital of France is Par', "The capital of France is Par", "TRUNCATED"),
        ('{"confidence": 0.97, "answer": "Paris, on the Se', "Paris, on the Se", "TRUNCATED"),
        ('{"answer": "Paris.", "confid', "Paris.", "UNPARSEABLE"),
        ('{"answer": "Paris.", "confidence": 0.', "Paris.", "UNPARSEABLE"),
        ('{"answer": "Paris.", "confidence": ', "Paris.", "UNPARSEABLE"),
        ('{"answer": "Say \\"Caf\\u00e9\\" in Par', 'Say "Café" in Par', "TRUNCATED"),
        ('{"answer": "Say \\"hi\\', 'Say "hi', "UNPARSEABLE"),
        ('{"answer": "Caf\\u00', "Caf", "UNPARSEABLE"),
        (
            "```json\n{'answer': 'Paris.', 'confidence': 'sure',}\n```",
            "Paris.",
            "ANSWER_UNREADABLE",
        ),
    ],
    ids=["in-answer", "answer-last", "in-key", "in-number", "before-value", "after-escape",
         "mid-escape", "mid-unicode-escape", "malformed-confidence"],
)  # fmt: skip
async def test_an_answer_no_model_gave_readably_is_shown_as_its_words_not_its_json(
    reply: str, text: str, code: str
) -> None:
    rt = FakeRuntime(models={"small": FakeModel("small", {"answer": reply})})
    out = await _cascade(rt, models=["small"], accept_at=0.0)
    assert (out.text, out.readable, out.accepted, out.confidence) == (text, False, False, 0.0)
    assert [(e.decision, e.reason_codes) for e in rt.events] == [("kept", [code])]


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ('{"reply": "Paris.", "confidence": 0.99}', "ANSWER_UNREADABLE"),
        ('{"answer": 42, "confidence": 0.99}', "ANSWER_UNREADABLE"),
        ('{"confidence": 0.99, "ans', "UNPARSEABLE"),
        ('{"answer": "Paris." "confidence": 0.9}', "UNPARSEABLE"),
        ("[1, 2]", "UNPARSEABLE"),
    ],
)
async def test_a_reply_with_no_answer_to_read_leaves_the_text_empty_never_json(
    reply: str, code: str
) -> None:
    # a JSON fragment is no answer: empty text is what a graph's validation catches
    rt = FakeRuntime(models={"small": FakeModel("small", {"answer": reply})})
    out = await _cascade(rt, models=["small"])
    assert (out.text, out.readable, out.accepted, out.confidence) == ("", False, False, 0.0)
    assert rt.events[0].reason_codes == [code]


async def test_a_recovered_answer_outranks_a_later_reply_with_none() -> None:
    models = {
        "small": FakeModel("small", {"answer": '{"answer": "Paris is the cap'}),
        "medium": FakeModel("medium", {"answer": '{"confidence": 0.9}'}),
    }
    rt = FakeRuntime(models=models)
    out = await _cascade(rt, models=["small", "medium"])
    assert (out.model, out.text, out.readable, out.steps) == ("small", "Paris is the cap", False, 2)
    assert [e.decision for e in rt.events] == ["escalated", "discarded"]


async def test_a_readable_answer_after_a_cut_off_one_is_kept_and_readable() -> None:
    models = {
        "small": FakeModel("small", {"answer": '{"answer": "Paris is the cap'}),
        "medium": FakeModel("medium", {"answer": {"answer": "Paris.", "confidence": 0.6}}),
    }
    rt = FakeRuntime(models=models)
    out = await _cascade(rt, models=["small", "medium"], accept_at=0.9)
    assert (out.model, out.text, out.readable, out.accepted) == ("medium", "Paris.", True, False)


@settings(max_examples=200, deadline=None)
@given(answer=st.text(min_size=1), confidence=st.floats(0, 1), cut=st.integers(0, 10_000))
def test_a_reply_cut_anywhere_after_its_answer_began_shows_a_prefix_of_the_answer(
    answer: str, confidence: float, cut: int
) -> None:
    # escapes, quotes and characters outside the BMP included: whatever the cut leaves is
    # shown as the answer's words (never a half escape or a lone surrogate), never as JSON
    whole = json.dumps({"answer": answer, "confidence": confidence})
    begun = len('{"answer": "')
    reply = whole[: begun + cut % (len(whole) - begun)]  # the closing brace never comes
    rt = FakeRuntime(models={"small": FakeModel("small", {"answer": reply})})

    async def go() -> Any:
        return await _cascade(rt, models=["small"], accept_at=0.0)

    out = anyio.run(go)
    assert (out.readable, out.accepted, out.confidence) == (False, False, 0.0)
    assert answer.startswith(out.text) and (out.text == "" or out.text.strip())
    out.text.encode("utf-8")
