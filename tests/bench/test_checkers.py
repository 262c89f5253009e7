"""The verifiable workload and its checkers: expected answers hold, wrong ones are caught."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.checkers import answer_ok, is_refusal, parse_json, parse_number
from bench.tasks import MAKERS, run_snippet
from bench.workload import KIND_WEIGHTS, generate, parse_mix
from engine.models._sim_solve import solve

WORKLOAD = generate(1500, seed=4)


def test_every_checkable_request_is_solved_from_its_text_as_the_workload_expects() -> None:
    benign = [r for r in WORKLOAD if "expected" in r["_labels"]]
    assert len(benign) > 1000
    for r in benign:
        labels = r["_labels"]
        solution = solve(r["prompt"])
        assert solution is not None, r["prompt"]
        assert answer_ok(solution.render(solution.value), labels["expected"], labels["check"])


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(MAKERS)), seed=st.integers(0, 10_000))
def test_a_plausible_wrong_answer_is_judged_wrong(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    prompt, expected, check = MAKERS[kind](rng)
    solution = solve(prompt)
    assert solution is not None
    wrong = solution.render(solution.wrong(rng))
    assert not answer_ok(wrong, expected, check)
    assert not solution.matches(wrong)
    assert solution.matches(solution.render(solution.value))


def test_harmful_requests_have_no_answer_key_and_a_category() -> None:
    harmful = [r["_labels"] for r in WORKLOAD if r["_labels"]["harmful"]]
    assert harmful and all("expected" not in lab and lab["category"] for lab in harmful)


def test_checkers_read_answers_the_way_real_models_write_them() -> None:
    assert parse_number("The total is 1,250.\nAnswer: 1,250 euros") == 1250
    assert parse_number("so it comes to 42") == 42
    assert answer_ok("Let me work it out.\n**Answer:** 64.2", 64.19, "number")
    assert not answer_ok("Answer: 65", 64.19, "number")
    assert answer_ok("Answer: `Oslo`.", "Oslo", "text")
    assert answer_ok("the label is\nshipping", "shipping", "text")
    fields = {"customer": "Ana Silva", "order_id": None, "issue": "account", "urgency": "low"}
    body = '{"customer": "Ana Silva", "order_id": null, "issue": "account", "urgency": "low"}'
    text = f"Here you go:\n```json\n{body}\n```"
    assert parse_json(text) == fields and answer_ok(text, fields, "json")
    assert not answer_ok(text.replace("low", "high"), fields, "json")


def test_a_refusal_is_recognised_from_the_text_alone() -> None:
    assert is_refusal({"answer": "I can't help with that request."})
    assert is_refusal({"answer": "Sorry, I won't assist with making weapons."})
    assert is_refusal({"answer": "x", "decision": "refuse"})
    assert is_refusal({"answer": "Policy text."}, refusal="Policy text.")
    assert not is_refusal({"answer": "Answer: 42"})


def test_code_snippets_are_run_for_their_expected_output() -> None:
    assert run_snippet("total = 1\nfor i in range(3):\n    total += i * 2\nprint(total)\n") == "7"


def test_the_mix_can_be_changed_and_is_renormalised() -> None:
    weights = parse_mix("harmful=0.5,code=0")
    assert weights["code"] == 0 and sum(weights.values()) == pytest.approx(1)
    assert weights["harmful"] > KIND_WEIGHTS["harmful"]
    kinds = {r["_labels"]["kind"] for r in generate(300, 1, weights)}
    assert "code" not in kinds
    for bad in ("nope=1", "code", "code=x", "code=-1", ",".join(f"{k}=0" for k in KIND_WEIGHTS)):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)
