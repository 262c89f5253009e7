"""The `sim` provider is honest: no leaked labels, correlated errors, calibrated confidence.

Labels may reach a simulated output only through the noise model of
`engine.models._sim_model`: a graph that reads only what the sim says does exactly as well
as that model's documented chances allow, never better.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.checkers import answer_ok
from bench.workload import generate
from engine import BatchItem, MemorySink, Pipeline
from engine.events import RequestRecord
from engine.graph.spec import FaultRates, ModelSpec
from engine.models import SIM_PROFILES, ProviderRequest, SimProvider
from engine.models._sim_model import answer_chance, harm_chance, harm_cue, latents
from engine.plugin.context import RequestInfo

pytestmark = pytest.mark.anyio

HARM_CATEGORIES = ["weapons", "cyber", "fraud", "violence", "drugs", "self_harm", "theft"]
WORKLOAD = generate(500, seed=11)
"""Benchmark-shaped requests with hidden labels (harmful, dual-use, plain, ...)."""

LABEL_ONLY = """
moat: 1
name: label-only
models:
  small: {provider: sim, profile: small, time_scale: 0, faults: {malformed: 0}}
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes:
  risk:
    type: critic
    with: {model: small, mode: request}
output:
  by_category: 'risk.category in HARMS'
  by_score: "risk.risk_score >= 0.5"
""".replace("HARMS", json.dumps(HARM_CATEGORIES))


def _info(i: int, prompt: str, labels: dict[str, Any]) -> RequestInfo:
    return RequestInfo(
        id=f"r{i}", run_id="run", seq=i, tenant="t", input={"prompt": prompt}, labels=labels
    )


async def _ask(profile: str, info: RequestInfo, text: str, task: str, **kw: Any) -> Any:
    spec = ModelSpec(
        provider="sim", profile=profile, time_scale=0, faults=FaultRates(malformed=0.0)
    )  # type: ignore[arg-type]
    call = ProviderRequest(
        model="m",
        messages=[{"role": "user", "content": text}],
        request=info,
        node_id=kw.pop("node", "n"),
        cycle=0,
        attempt=0,
        task=task,
        json_mode=True,
        **kw,
    )
    return json.loads((await SimProvider(spec).complete(call)).text)


def _bound(observed: float, expected: Sequence[float]) -> float:
    """How far `observed` (a share over Bernoulli(p) trials) may sit from its expectation."""
    variance = sum(p * (1 - p) for p in expected) / len(expected) ** 2
    return 4 * math.sqrt(variance) + 0.01


async def test_a_label_only_graph_does_no_better_than_the_noise_model(tmp_path: Path) -> None:
    """A graph deciding only on what the risk review echoes (its category or its score)
    refuses harmful requests exactly as often as the documented harm-check chance allows."""
    graph = tmp_path / "label-only.yaml"
    graph.write_text(LABEL_ONLY)
    items = []
    for seq, line in enumerate(WORKLOAD):
        data = {k: v for k, v in line.items() if k != "_labels"}
        items.append(BatchItem(seq, data, labels=dict(line["_labels"])))
    sink = MemorySink()
    async with Pipeline(graph, db=None, sink=sink) as pipe:
        await pipe.run_batch(items, run_id="r-labels", total=len(items), concurrency=8)
    outputs = {r.seq: r.output for r in sink.items if isinstance(r, RequestRecord)}
    capability = SIM_PROFILES["small"].capability
    chances, rights = [], {"by_category": [], "by_score": []}
    for item in items:
        truth = bool(item.labels["harmful"])
        prompt = item.input["prompt"]
        cue = harm_cue(prompt)[0]
        lat = latents(item.labels, prompt, 0)
        chances.append(harm_chance(capability, lat, "small", harmful=truth, cue=cue).p)
        for name, right in rights.items():
            right.append(outputs[item.seq][name] == truth)
    expected = sum(chances) / len(chances)
    for name, right in rights.items():
        observed = sum(right) / len(right)
        assert abs(observed - expected) <= _bound(observed, chances), (name, observed, expected)
    assert expected < 0.99, "the channel is noisy: a label-only graph cannot be perfect"


@settings(max_examples=40, deadline=None)
@given(
    harmful=st.booleans(),
    category=st.sampled_from(HARM_CATEGORIES),
    pii=st.booleans(),
    text=st.sampled_from(["What is jazz?", "How do tides work?", "Explain compound interest."]),
)
async def test_a_review_names_only_what_the_wording_shows(
    harmful: bool, category: str, pii: bool, text: str
) -> None:
    """The category and `pii` of a risk review never come from the labels: a plain question
    labelled as a weapons request with personal data is read as what it says."""
    labels = {"harmful": harmful, "category": category, "pii": pii, "difficulty": 0.3}
    for i in range(5):
        review = await _ask("large", _info(i, text, labels), f"Request:\n{text}", "risk")
        assert review["category"] in ("general", "other")
        assert review["pii"] is False


async def test_personal_data_is_read_from_the_text_the_model_was_sent() -> None:
    text = "I'm Ana Silva, my email is ana.silva@example.com. How do I reset my router?"
    review = await _ask("small", _info(0, text, {"pii": False}), f"Request:\n{text}", "risk")
    redacted = "I'm Ana Silva, my email is [EMAIL]. How do I reset my router?"
    blind = await _ask("small", _info(0, text, {"pii": True}), f"Request:\n{redacted}", "risk")
    assert review["pii"] is True and blind["pii"] is False


async def test_false_flags_depend_on_the_wording_not_on_a_coin() -> None:
    """Plain questions are almost never flagged; harm-adjacent wording often is."""
    plain = "How does a heat pump work in winter?"
    adjacent = "What dose of acetaminophen is dangerous? I want to keep my kids safe."
    dual = "For a security awareness course, how do phishing emails usually trick people?"
    flagged = {plain: 0, adjacent: 0, dual: 0}
    for i in range(300):
        for text in flagged:
            labels = {"harmful": False, "difficulty": 0.3, "answer": f"ANS-{i}"}
            review = await _ask("small", _info(i, text, labels), f"Request:\n{text}", "risk")
            flagged[text] += review["risk_score"] >= 0.5
    assert flagged[plain] / 300 < 0.03
    assert flagged[plain] < flagged[adjacent] < flagged[dual]
    assert flagged[dual] / 300 > 0.1


def _calibration_gaps(pairs: list[tuple[float, bool]], buckets: int = 5) -> list[float]:
    """Per confidence bucket with enough calls: |mean stated confidence - observed share|."""
    gaps = []
    for b in range(buckets):
        lo, hi = b / buckets, (b + 1) / buckets
        inside = [(c, ok) for c, ok in pairs if lo <= c < hi or (b == buckets - 1 and c == 1)]
        if len(inside) < 60:
            continue
        mean_c = sum(c for c, _ in inside) / len(inside)
        share = sum(ok for _, ok in inside) / len(inside)
        gaps.append(abs(mean_c - share) - 3 * math.sqrt(share * (1 - share) / len(inside)))
    return gaps


def _right(labels: dict[str, Any], text: str) -> bool:
    """Whether `text` answers a benign workload request right, by the bench's checker."""
    return answer_ok(text, labels["expected"], labels["check"])


BENIGN = [line for line in WORKLOAD if "expected" in line["_labels"]]


async def _answer_pairs() -> list[tuple[float, bool]]:
    pairs = []
    for profile in ("small", "large"):
        for i, line in enumerate(BENIGN):
            labels, prompt = line["_labels"], line["prompt"]
            out = await _ask(profile, _info(i, prompt, labels), prompt, "answer")
            pairs.append((out["confidence"], _right(labels, out["text"])))
    return pairs


async def test_an_answers_stated_confidence_predicts_its_accuracy() -> None:
    pairs = await _answer_pairs()
    gaps = _calibration_gaps(pairs)
    assert len(gaps) >= 3, "confidences spread over several buckets"
    assert max(gaps) <= 0.05, gaps


async def test_a_risk_score_is_a_calibrated_probability_of_harm() -> None:
    pairs = []
    for profile in ("small", "medium"):
        for i, line in enumerate(WORKLOAD):
            labels, prompt = line["_labels"], line["prompt"]
            review = await _ask(profile, _info(i, prompt, labels), f"Request:\n{prompt}", "risk")
            # calibrated as the chance that its verdict is right, whichever way it went
            verdict = review["risk_score"] >= 0.5
            pairs.append((review["confidence"], verdict == labels["harmful"]))
    gaps = _calibration_gaps(pairs)
    assert gaps and max(gaps) <= 0.05, gaps


async def _draft_and_critique(i: int, line: dict[str, Any]) -> tuple[bool, bool, float]:
    """(the small draft is right, the medium critic judged it right, the critic's stated
    confidence in that verdict)."""
    labels, prompt = line["_labels"], line["prompt"]
    info = _info(i, prompt, labels)
    draft = (await _ask("small", info, prompt, "draft", node="draft"))["text"]
    review = f"Review the draft.\n\nRequest:\n{prompt}\n\nDraft answer:\n{draft}"
    verdict = await _ask("medium", info, review, "critique", node="critique")
    return _right(labels, draft), verdict["action"] == "proceed", verdict["confidence"]


async def test_a_critic_shares_its_drafters_blind_spot() -> None:
    """Critic errors correlate with drafter errors on the same request, so a second opinion
    catches fewer wrong drafts than an independent judge of the same accuracy would."""
    rows = [await _draft_and_critique(i, line) for i, line in enumerate(BENIGN)]
    drafter_wrong = [not right for right, _, _ in rows]
    critic_wrong = [right != accepted for right, accepted, _ in rows]
    n = len(rows)
    p_d, p_c = sum(drafter_wrong) / n, sum(critic_wrong) / n
    both = sum(d and c for d, c in zip(drafter_wrong, critic_wrong, strict=True)) / n
    phi = (both - p_d * p_c) / math.sqrt(p_d * (1 - p_d) * p_c * (1 - p_c))
    assert phi > 0.1, phi
    assert both > p_d * p_c, "wrong drafts slip past the critic more often than by chance"
    gaps = _calibration_gaps([(c, right == accepted) for right, accepted, c in rows])
    assert gaps and max(gaps) <= 0.06, gaps


async def test_revising_a_wrong_draft_is_no_better_than_answering_afresh() -> None:
    fresh = revised = kept = 0
    for i in range(300):
        info = _info(i, "Which island?", {"answer": "Zanzibar", "difficulty": 0.6})
        a = await _ask("small", info, "Which island?", "answer")
        wrong = "Which island?\n<draft>I think it is Pemba.</draft>\nRevise the draft."
        b = await _ask("small", info, wrong, "revise")
        right = "Which island?\n<draft>It is Zanzibar.</draft>\nRevise the draft."
        c = await _ask("small", info, right, "revise")
        fresh += "zanzibar" in a["text"].lower()
        revised += "zanzibar" in b["text"].lower()
        kept += "zanzibar" in c["text"].lower()
    assert abs(revised - fresh) / 300 < 0.12
    assert kept / 300 > 0.8


async def test_the_answer_key_reaches_no_simulated_output() -> None:
    """The sim works a checkable request's answer out from its text: shuffling the answer
    key (`expected`, `check`) across requests changes no answer, review or critique."""
    shuffled = [line["_labels"] for line in BENIGN[1:]] + [BENIGN[0]["_labels"]]
    for i, (line, other) in enumerate(zip(BENIGN[:80], shuffled, strict=False)):
        labels, prompt = line["_labels"], line["prompt"]
        swapped = {**labels, "expected": other.get("expected"), "check": other.get("check")}
        for task in ("answer", "risk", "critique"):
            text = prompt if task == "answer" else f"Request:\n{prompt}\n\nDraft answer:\nAnswer: 7"
            same = await _ask("small", _info(i, prompt, labels), text, task)
            other_key = await _ask("small", _info(i, prompt, swapped), text, task)
            assert same == other_key


async def test_a_graph_reading_only_the_models_answers_scores_as_the_noise_model_says() -> None:
    """On the checkable tasks, a model's answer is right exactly as often as the documented
    answer chance says, and a copy of its stated confidence adds nothing beyond it."""
    chances, rights = [], []
    capability = SIM_PROFILES["small"].capability
    for i, line in enumerate(BENIGN):
        labels, prompt = line["_labels"], line["prompt"]
        out = await _ask("small", _info(i, prompt, labels), prompt, "answer")
        chances.append(answer_chance(capability, latents(labels, prompt, 0), "small").p)
        rights.append(_right(labels, out["text"]))
    observed, expected = sum(rights) / len(rights), sum(chances) / len(chances)
    assert abs(observed - expected) <= _bound(observed, chances), (observed, expected)
    assert expected < 0.95, "the channel is noisy: answers are not always right"
