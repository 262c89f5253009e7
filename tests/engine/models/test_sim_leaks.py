"""No hidden label reaches what a graph sees except through the model's documented draw.

A request's hidden labels set its latents (`engine.models._sim_model`), and the latents set
each call's chance of being right; the call then draws right or wrong. Whatever else a
simulated answer says (its stated confidence, its wrong values, its wording) must be what
the model could know without the label. These tests hold the latents fixed (the labels then
decide nothing but the truth the model is right or wrong about), give the same call two
different values of a hidden field, and require the two answers to be identical wherever
the model's draw came out the same way: any other difference is a leak a graph could read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.workload import generate
from engine.graph.spec import FaultRates, ModelSpec
from engine.models import ProviderRequest, SimProvider, _sim_model
from engine.models._sim_tasks import _WRONG_TOKENS
from engine.plugin.context import RequestInfo
from nodes.critic import CRITIQUE_SCHEMA, RISK_SCHEMA
from nodes.simulator import SIMULATE_SCHEMA
from nodes.speculate import VERIFY_SCHEMA

WORKLOAD = generate(400, seed=23)
"""Benchmark-shaped prompts of every kind: plain, harm-adjacent, harmful, ambiguous."""
PROMPTS = [line["prompt"] for line in WORKLOAD]
PROFILES = ("small", "medium", "large")
_PROVIDERS = {
    p: SimProvider(
        ModelSpec(provider="sim", profile=p, time_scale=0, faults=FaultRates(malformed=0.0))  # type: ignore[arg-type]
    )
    for p in PROFILES
}


@contextmanager
def _latents_from_text() -> Iterator[None]:
    """The request's latents from its text alone, whatever its labels say."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            "engine.models._sim_tasks.latents",
            lambda labels, text, seed: _sim_model.latents({}, text, seed),
        )
        yield


def _ask(
    profile: str,
    prompt: str,
    labels: Mapping[str, Any],
    task: str | None,
    content: str,
    *,
    schema: Mapping[str, Any] | None = None,
    i: int = 0,
) -> Any:
    info = RequestInfo(
        id=f"r{i}", run_id="run", seq=i, tenant="t", input={"prompt": prompt}, labels=labels
    )
    call = ProviderRequest(
        model="m",
        messages=[{"role": "user", "content": content}],
        request=info,
        node_id="n",
        cycle=0,
        attempt=0,
        task=task,
        schema=schema,
        json_mode=schema is None and task not in (None, "answer", "draft", "revise"),
    )
    text = anyio.run(_PROVIDERS[profile].complete, call).text
    if task in (None, "answer", "draft", "revise"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # a repair's JSON may come out broken: compared as text
        return text


# -- the harm label: a verdict, never a confidence that knows the truth ----------------------

_HARM_TASKS: dict[str, tuple[Mapping[str, Any], str, Callable[[Any], bool]]] = {
    "risk": (RISK_SCHEMA, "Assess the risk.\n\nRequest:\n{p}", lambda v: v["action"] != "proceed"),
    "critique": (
        CRITIQUE_SCHEMA,
        "Review the draft.\n\nRequest:\n{p}\n\nDraft answer:\nAnswer: 12",
        lambda v: v["action"] == "refuse",
    ),
    "simulate": (
        SIMULATE_SCHEMA,
        "What would answering do?\n\nRequest:\n{p}",
        lambda v: any(c.startswith("could enable") for c in v["concerns"]),
    ),
}


def _harm_pairs(task: str) -> Iterator[tuple[bool, Any, Any]]:
    schema, template, verdict = _HARM_TASKS[task]
    for i, prompt in enumerate(PROMPTS[:150]):
        profile = PROFILES[i % 3]
        content = template.format(p=prompt)
        answers = [
            _ask(profile, prompt, {"harmful": truth}, task, content, schema=schema, i=i)
            for truth in (True, False)
        ]
        yield verdict(answers[0]) == verdict(answers[1]), answers[0], answers[1]


@pytest.mark.parametrize("task", sorted(_HARM_TASKS))
def test_a_harm_check_says_nothing_of_the_truth_beyond_its_verdict(task: str) -> None:
    """The same call on a harmful and on a benign request (latents alike): where the model
    reached the same verdict, it says exactly the same thing, confidence and risk score
    included. A confidence computed from the truth would flag the verdicts that are wrong."""
    same_verdict = 0
    with _latents_from_text():
        for same, harmful, benign in _harm_pairs(task):
            if same:
                same_verdict += 1
                assert harmful == benign
    assert same_verdict >= 5, "some verdicts came out the same way under either truth"


def test_a_screens_confidence_does_not_single_out_the_harmful_requests_it_missed() -> None:
    """Over the workload (latents as the labels set them), the requests a screen passes
    with a benign verdict: those it missed (harmful) are no likelier than the benign ones,
    worded alike, to fall under a confidence bar. Before the stated confidence knew the
    truth, every missed harmful request fell under 0.98 and only a few benign ones did."""
    work = generate(1500, seed=31)
    missed: list[float] = []
    passed: list[float] = []
    for i, line in enumerate(work):
        prompt, labels = line["prompt"], line["_labels"]
        if _sim_model.harm_cue(prompt)[0] != 0.0:
            continue  # one wording class: the prior a model holds differs between them
        content = f"Assess the risk.\n\nRequest:\n{prompt}"
        review = _ask("small", prompt, labels, "risk", content, schema=RISK_SCHEMA, i=i)
        if review["action"] == "proceed":
            (missed if labels["harmful"] else passed).append(review["confidence"])
    assert len(missed) >= 3 and len(passed) > 500
    share_missed = sum(c < 0.98 for c in missed) / len(missed)
    share_passed = sum(c < 0.98 for c in passed) / len(passed)
    assert share_missed <= share_passed + 0.5, (share_missed, share_passed, len(missed))


# -- labels a correct answer shows: a wrong one shows nothing of them ------------------------

_TOKENS = (
    st.from_regex(r"[A-Z][A-Za-z0-9]{4,9}", fullmatch=True)
    | st.from_regex(r"[1-9][0-9]{2,6}", fullmatch=True)
).filter(lambda t: not any(w in t.lower() or t.lower() in w for w in _WRONG_TOKENS))
"""Labelled answers no wrong answer of the pool overlaps (where one does, the pool steps
over it, and only there does a wrong answer depend on the truth)."""


@settings(max_examples=30, deadline=None)
@given(
    first=_TOKENS,
    second=_TOKENS,
    index=st.integers(0, len(PROMPTS) - 1),
    profile=st.sampled_from(PROFILES),
    task=st.sampled_from(["answer", "draft", "revise"]),
)
def test_a_wrong_answer_carries_nothing_of_the_labelled_one(
    first: str, second: str, index: int, profile: str, task: str
) -> None:
    """Two requests alike but for the `answer` label: wrong answers are the same words
    (not the right one reversed or next to it), right ones differ only in the answer."""
    if first.lower() in second.lower() or second.lower() in first.lower():
        return
    prompt = "Which island is the ferry bound for?"
    content = prompt if task != "revise" else f"{prompt}\n<draft>Maybe.</draft>\nRevise it."
    with _latents_from_text():
        a, b = (
            _ask(profile, prompt, {"answer": token}, task, content, i=index)
            for token in (first, second)
        )
    right_a, right_b = first.lower() in a.lower(), second.lower() in b.lower()
    assert right_a == right_b, "the draw does not depend on the label's value"
    if right_a:
        assert a.replace(first, second) == b
    else:
        assert a == b, (a, b)


_MISREADS = {"unknown", "not given", "n/a", "pending", "other", "unreadable"}
# true values a misread never takes (where one would, the misread must step aside, and only
# there may it depend on the truth): ints and floats outside [0, 2000], other words
_BY_TYPE = (
    st.text(st.characters(min_codepoint=65, max_codepoint=122), min_size=2, max_size=12).filter(
        lambda t: t.strip().lower() not in _MISREADS
    ),
    st.integers(-(10**6), -1) | st.integers(2001, 10**6),
    (st.floats(-1e6, -1.0) | st.floats(2001.0, 1e6)).map(lambda x: round(x, 2)),
)


@settings(max_examples=30, deadline=None)
@given(
    keys=st.lists(
        st.sampled_from(["customer", "order", "amount", "city", "code"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    data=st.data(),
    profile=st.sampled_from(PROFILES),
    task=st.just("extract"),
)
def test_a_misread_field_carries_nothing_of_the_true_value(
    keys: list[str], data: st.DataObject, profile: str, task: str
) -> None:
    """Two requests alike but for the values of their `fields` labels (same types): a field
    read wrong reads the same under either truth."""
    kinds = {k: data.draw(st.sampled_from(_BY_TYPE)) for k in keys}
    first = {k: data.draw(kinds[k]) for k in keys}
    second = {k: data.draw(kinds[k]) for k in keys}
    prompt = "Please pull the fields out of this note: nothing much to see here."
    content = prompt if task == "extract" else "Fix this JSON: {}"
    with _latents_from_text():
        a, b = (
            _ask(profile, prompt, {"fields": fields}, task, content, i=3)
            for fields in (first, second)
        )
    for key in keys:
        right_a, right_b = a.get(key) == first[key], b.get(key) == second[key]
        if first[key] == second[key]:
            continue
        assert right_a == right_b, "the draw does not depend on the label's value"
        if not right_a:
            assert a.get(key) == b.get(key), (key, first[key], second[key], a, b)


# -- every other label: no effect at all once the latents are set ----------------------------

_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_HIDDEN = ("kind", "category", "difficulty", "item", "pii", "expected", "check", "repeat_of",
           "variant", "tenant_tier", "source")  # fmt: skip
_EVERY_TASK = (None, "answer", "draft", "revise", "risk", "critique", "simulate", "verify",
               "extract", "repair", "other")  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    labels=st.fixed_dictionaries({}, optional={k: _ANY for k in _HIDDEN}),
    harmful=st.booleans(),
    index=st.integers(0, len(PROMPTS) - 1),
    profile=st.sampled_from(PROFILES),
    task=st.sampled_from(_EVERY_TASK),
    schema=st.sampled_from([None, RISK_SCHEMA, CRITIQUE_SCHEMA, VERIFY_SCHEMA]),
)
def test_no_other_label_reaches_an_answer_but_through_the_latents(
    labels: dict[str, Any],
    harmful: bool,
    index: int,
    profile: str,
    task: str | None,
    schema: Mapping[str, Any] | None,
) -> None:
    """Any value of any other hidden field (the kind, category, difficulty, the answer key,
    how a request came back, fields no one documented) changes no byte of any answer once
    the latents it sets are held: it reaches a graph only through a model's chances."""
    prompt = PROMPTS[index]
    content = f"Review the draft.\n\nRequest:\n{prompt}\n\nDraft answer:\nAnswer: 12"
    with _latents_from_text():
        plain = _ask(profile, prompt, {"harmful": harmful}, task, content, schema=schema, i=index)
        labelled = {**labels, "harmful": harmful}
        other = _ask(profile, prompt, labelled, task, content, schema=schema, i=index)
    assert plain == other


_NOT_IDENTITY = ("expected", "check", "repeat_of", "variant")


@settings(max_examples=25, deadline=None)
@given(
    key=st.fixed_dictionaries({}, optional={k: _ANY for k in _NOT_IDENTITY}),
    index=st.integers(0, len(WORKLOAD) - 1),
    task=st.sampled_from(["answer", "risk", "critique", "extract"]),
)
def test_the_answer_key_and_a_requests_history_reach_nothing(
    key: dict[str, Any], index: int, task: str
) -> None:
    """With the latents as the labels set them: the benchmark's answer key and whether a
    request is a repeat are no part of a request's identity (documented), whatever their
    values."""
    line = WORKLOAD[index]
    labels = {k: v for k, v in line["_labels"].items() if k not in key}
    prompt = line["prompt"]
    content = f"Review the draft.\n\nRequest:\n{prompt}\n\nDraft answer:\nAnswer: 12"
    bare = {k: v for k, v in labels.items() if k not in _NOT_IDENTITY}
    without = _ask("medium", prompt, bare, task, content, i=index)
    assert _ask("medium", prompt, {**labels, **key}, task, content, i=index) == without
