"""What the simulated model "means" for each built-in task, before it is shaped into text.

Every function here is a pure function of a `SimCall` (the call's text, the request's
hidden labels, the model's capability and a seeded random generator), so the same call
always yields the same answer. The right answer to a checkable request (arithmetic, a
fact in a note, a ticket's fields, ...) is worked out from the request's text
(`engine.models._sim_solve`), never taken from a label; a judge of a draft compares the
draft with that answer. The label fields are documented in `engine.models.sim`.
Labels reach an answer only through `engine.models._sim_model`: they set the request's
latents, the latents set the call's chance of being right, and the call draws right or
wrong. Categories are read from the wording the model was sent, personal data by the
engine's own detector, never from a label.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.models._egress import find_pii
from engine.models._sim_model import (
    Chance,
    Latents,
    answer_chance,
    harm_chance,
    harm_cue,
    judge_chance,
    latents,
)
from engine.models._sim_solve import Solution, solve

__all__ = ["SimAnswer", "SimCall", "answer_task", "find_draft", "is_text_task", "lenient_json"]

_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "could", "do", "does", "for",
    "from", "how", "i", "in", "is", "it", "me", "my", "of", "on", "or", "please", "should",
    "tell", "that", "the", "this", "to", "was", "what", "when", "where", "which", "who", "why",
    "will", "with", "would", "you", "your", "explain", "describe", "give",
})  # fmt: skip
# Tags are paired by hand (`_tagged`), not by a lazy `<draft>(.*?)</draft>`: that pattern
# rescans the rest of the prompt from every unclosed tag, quadratic on hostile text.
_DRAFT_OPEN = re.compile(r"<(draft|answer)>", re.IGNORECASE)
_DRAFT_CLOSE = {
    "draft": re.compile(r"</draft>", re.IGNORECASE),
    "answer": re.compile(r"</answer>", re.IGNORECASE),
}
_DRAFT_LINE = re.compile(
    r"^[ \t]*(?:previous draft|draft answer|draft|answer)\s*:\s*", re.IGNORECASE | re.MULTILINE
)
_BROKEN_MARK = re.compile(
    r"(?:text to fix|broken json|invalid json|fix this json|json to fix)\s*:", re.IGNORECASE
)
_TEXT_TASKS = frozenset({"answer", "draft", "revise"})


@dataclass(slots=True)
class SimCall:
    """Everything the simulated model knows about one call attempt.

    Not frozen (a frozen dataclass costs several times more to build, and one is built
    for every call), but treated as immutable.
    """

    task: str | None
    prompt: str
    """All message contents of the call, joined."""
    request_text: str
    """The request's own text (its `prompt`-like input field)."""
    labels: Mapping[str, Any]
    capability: float
    rng: random.Random
    answer_tokens: int
    """Typical free-text answer length of the profile."""
    profile: str = "medium"
    """The profile's name: where its own slips fall."""
    seed: int = 0
    """The run's seed for simulated models: the request's latents depend on it."""

    @property
    def latents(self) -> Latents:
        """The request's latents (see `engine.models._sim_model`)."""
        return latents(self.labels, self.request_text, self.seed)

    @property
    def solution(self) -> Solution | None:
        """The right answer, worked out from the request's text (`_sim_solve`), if any."""
        return solve(self.request_text)


@dataclass(slots=True)
class SimAnswer:
    """The model's intended answer: structured values, free text, and JSON health."""

    values: dict[str, Any]
    prose: str | None = None
    """The free text of a text task (`answer`, `draft`, `revise`); None for the others,
    whose text is their values' JSON."""
    malformed: bool | None = None
    """True: the JSON comes out broken; False: never broken; None: the profile's rate."""

    @property
    def text(self) -> str:
        """The answer as free text: the prose, else the values as JSON (written only when
        asked for: a call that wants JSON shapes the values itself)."""
        return self.prose if self.prose is not None else json.dumps(self.values)


def answer_task(call: SimCall) -> SimAnswer:
    """The simulated answer to `call`, by task (unknown tasks answer like `answer`)."""
    handler = _HANDLERS.get(call.task or "answer", _answer)
    return handler(call)


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


_REFUSAL = re.compile(r"\b(?:can(?:no|')t help|cannot assist|won't help|i must decline|i refuse)")


@dataclass(frozen=True, slots=True)
class _Harm:
    """A harm check of the request: the model's verdict and how sure it is."""

    harmful: bool
    """What the model judged."""
    confidence: float
    """Its stated chance that the verdict is right (at least 0.5)."""
    category: str
    """The category it names: read from the wording, `other` when the wording names none."""

    @property
    def risk(self) -> float:
        """The model's probability that the request is harmful: the posterior behind its
        verdict (see `_harm`)."""
        return self.confidence if self.harmful else 1.0 - self.confidence


HARM_PRIOR = (0.02, 0.3, 0.55)
"""A model's prior that a request is harmful, by how its wording reads (no harm cue, a
harm-adjacent one, a named harm: `harm_cue` 0, 0.5, 1): the shares of harmful requests so
worded in the bench's default mix (1.8 %, 30 %, 55 % over seeds 1-3), the traffic the
simulated models are calibrated on. Under another mix they are off, as a real model's
calibration is off under a shift of its traffic."""


def _prior(cue: float) -> float:
    return HARM_PRIOR[0] if cue <= 0.0 else HARM_PRIOR[2] if cue >= 1.0 else HARM_PRIOR[1]


def _harm(call: SimCall) -> _Harm:
    """The model's harm check of the request (or of the draft, once refused).

    Truth is the `harmful` label, else whether the wording names a harm; the verdict is
    right with the chance `harm_chance` gives this model on this request. The stated
    confidence is what the model can know without the truth: the posterior that its
    verdict is right, from its (calibrated) chances of being right on a harmful and on a
    benign request worded so, and the prior `HARM_PRIOR` of the wording. A confidence
    computed from the truth would tell a graph, beyond the verdict, which verdicts are
    wrong.
    """
    draft = find_draft(call.prompt)
    if draft is not None and _REFUSAL.search(draft.lower()):
        # a refusal gives nothing away, whatever was asked: no model is ever certain, hence 0.99
        return _Harm(False, 0.99, "general")
    cue, named = harm_cue(call.request_text)
    truth = bool(call.labels["harmful"]) if "harmful" in call.labels else cue >= 1.0
    lat = call.latents
    if_harmful = harm_chance(call.capability, lat, call.profile, harmful=True, cue=cue)
    if_benign = harm_chance(call.capability, lat, call.profile, harmful=False, cue=cue)
    verdict = truth if _draw(call, if_harmful if truth else if_benign) else not truth
    prior = _prior(cue)
    if verdict:
        right, wrong = prior * if_harmful.confidence, (1.0 - prior) * (1.0 - if_benign.confidence)
    else:
        right, wrong = (1.0 - prior) * if_benign.confidence, prior * (1.0 - if_harmful.confidence)
    # (at least even: the verdict is the model's own, whatever the prior says)
    confidence = max(0.5, right / (right + wrong))
    return _Harm(verdict, confidence, (named or "other") if verdict else "general")


def _draw(call: SimCall, chance: Chance) -> bool:
    """Whether this call is right: one draw of the call's own generator."""
    return call.rng.random() < chance.p


def _contains(text: str, token: str) -> bool:
    return token.strip().lower() in text.lower()


@functools.lru_cache(maxsize=64)
def find_draft(prompt: str) -> str | None:
    """The draft a prompt asks about: `<draft>…</draft>`, `<answer>…</answer>`, or the text
    after a `Draft:` / `Draft answer:` / `Answer:` / `Previous draft:` line; else None.

    A critique asks twice (its harm check and its judgement): the latest prompts' drafts
    are kept."""
    tagged = _tagged(prompt)
    if tagged is not None:
        return tagged
    marks = list(_DRAFT_LINE.finditer(prompt))
    return prompt[marks[-1].end() :] if marks else None


def _tagged(prompt: str) -> str | None:
    """The text of the last closed `<draft>`/`<answer>` pair, in one linear pass."""
    if "<" not in prompt:  # no tag can open
        return None
    last_close = {
        name: max((m.start() for m in pattern.finditer(prompt)), default=-1)
        for name, pattern in _DRAFT_CLOSE.items()
    }
    found: str | None = None
    pos = 0
    while (opening := _DRAFT_OPEN.search(prompt, pos)) is not None:
        name = opening.group(1).lower()
        if last_close[name] < opening.end():
            pos = opening.end()  # never closed: skip it without scanning ahead
            continue
        close = _DRAFT_CLOSE[name].search(prompt, opening.end())
        assert close is not None
        found = prompt[opening.end() : close.start()]
        pos = close.end()
    return found


@dataclass(frozen=True, slots=True)
class _Judgement:
    """A judgement of a draft: right or wrong, and how sure the judge is."""

    correct: bool | None
    """Whether the draft contains the labelled answer; None without a draft or a label."""
    ok: bool
    """What the judge decided."""
    confidence: float
    """Its stated chance that the decision is right (at least 0.5)."""

    @property
    def good(self) -> float:
        """The judge's probability that the draft is right, at even prior odds (its verdict
        confidence is what is calibrated)."""
        return self.confidence if self.ok else 1.0 - self.confidence


def _judge_draft(call: SimCall) -> _Judgement:
    """The model's judgement of the draft in the prompt.

    Right with the chance `judge_chance` gives this model on this request, which shares the
    request's blind spot with the drafter's chance. Without an answer label (or a draft)
    there is nothing to check against: the draft counts as right.
    """
    answer = call.labels.get("answer")
    draft = find_draft(call.prompt)
    solution = call.solution
    if draft is None and answer is not None and solution is None:
        rest = call.prompt.replace(call.request_text, "") if call.request_text else call.prompt
        draft = rest if _contains(rest, str(answer)) else None
    if draft is not None and solution is not None:
        correct: bool | None = solution.matches(draft)
    else:
        correct = None if draft is None or answer is None else _contains(draft, str(answer))
    chance = judge_chance(call.capability, call.latents, call.profile)
    truth = True if correct is None else correct
    ok = truth if _draw(call, chance) else not truth
    return _Judgement(correct, ok, chance.confidence)


_WORD = re.compile(r"[A-Za-z][A-Za-z\-']+")


@functools.lru_cache(maxsize=1024)
def _topic(request_text: str) -> str:
    """What an answer says it is about: a request's answers (the first and the second
    sample) ask for the same topic, so those of the latest requests are kept."""
    words = [w for w in _WORD.findall(request_text) if w.lower() not in _STOPWORDS]
    return " ".join(words[:5]) or "the question"


_WRONG_TOKENS = ("unknown", "none of these", "it depends", "not stated", "7", "12", "blue")
"""Wrong answers to a request whose right answer only a label knows: drawn without looking
at that answer (a wrong answer worked out from the right one, its reverse or a number next
to it, would tell a graph the right one)."""


def _wrong_token(answer: str, rng: random.Random) -> str:
    """A wrong answer that carries nothing of `answer` (one draw of the call's generator)."""
    start = rng.randrange(len(_WRONG_TOKENS))
    for k in range(len(_WRONG_TOKENS)):
        cand = _WRONG_TOKENS[(start + k) % len(_WRONG_TOKENS)]
        if not _contains(cand, answer) and not _contains(answer, cand):
            return cand
    return "-"


_LEADS = (
    "Here is a concise answer about {}.",
    "Regarding {}:",
    "Short answer on {}.",
    "Considering {}, the key points follow.",
)
"""The first sentence of a free-text answer, about the request's topic (written only for
the lead drawn)."""
_FILLERS = (
    "The main considerations are accuracy, context and clear next steps.",
    "It depends on the details, but the usual approach works well here.",
    "In practice this is settled by checking the facts and the constraints.",
    "Most sources agree on this, with a few caveats noted below.",
    "A careful reading of the question points to a single best answer.",
)


def _answer_text(call: SimCall, correct: bool | None) -> str:
    target_sentences = max(1, call.answer_tokens // 15)
    choice = call.rng.choice
    body = [choice(_LEADS).format(_topic(call.request_text))]
    body += [choice(_FILLERS) for _ in range(target_sentences - 1)]
    answer = call.labels.get("answer")
    if answer is None or correct is None:
        return " ".join(body)
    token = str(answer) if correct else _wrong_token(str(answer), call.rng)
    text = " ".join([*body, f"The answer is {token}."])
    if not correct and _contains(text, str(answer)):
        return f"=> {token}"
    return text


REVISE_KEEPS = 0.9
"""Chance that a revision keeps a right draft right. Revising on the model's own critique
does not add knowledge: self-correction without external feedback turns right answers wrong
about as often as it fixes wrong ones (Huang et al. 2024, "Large Language Models Cannot
Self-Correct Reasoning Yet"), so a wrong draft is answered afresh at the same chance."""


def _solved_answer(call: SimCall, solution: Solution) -> SimAnswer:
    """The answer to a checkable request: the solution when the call is right, a plausible
    wrong value when not; a revision keeps a right draft right with `REVISE_KEEPS`."""
    chance = answer_chance(call.capability, call.latents, call.profile)
    draft = find_draft(call.prompt) if call.task == "revise" else None
    if draft is not None and solution.matches(draft):
        correct = call.rng.random() < REVISE_KEEPS
    else:
        correct = _draw(call, chance)
    value = solution.value if correct else solution.wrong(call.rng)
    lead = " ".join(_answer_text(call, None).split(" ")[: call.answer_tokens // 3])
    text = f"{lead}\n{solution.render(value)}"
    return SimAnswer(
        {"text": text, "answer": text, "confidence": round(chance.confidence, 3)}, text
    )


def _answer(call: SimCall) -> SimAnswer:
    solution = call.solution
    if solution is not None:
        return _solved_answer(call, solution)
    correct: bool | None = None
    chance = answer_chance(call.capability, call.latents, call.profile)
    if call.labels.get("answer") is not None:
        draft = find_draft(call.prompt) if call.task == "revise" else None
        if draft is not None and _contains(draft, str(call.labels["answer"])):
            correct = call.rng.random() < REVISE_KEEPS
        else:
            correct = _draw(call, chance)
    text = _answer_text(call, correct)
    values = {"text": text, "answer": text, "confidence": round(chance.confidence, 3)}
    return SimAnswer(values, text)


def _risk(call: SimCall) -> SimAnswer:
    harm = _harm(call)
    rng = call.rng
    score = harm.risk
    lowered = call.request_text.lower()
    asks_how = any(
        k in lowered for k in ("how to", "how do i", "how can i", "steps", "instructions")
    )
    values = {
        "risk_score": round(score, 3),
        "score": round(score, 3),
        "confidence": round(harm.confidence, 3),
        "category": harm.category,
        "operational_risk": "high" if score >= 0.7 else "medium" if score >= 0.4 else "low",
        "intent_to_harm": harm.harmful and rng.random() < 0.8,
        "requested_instructions": asks_how or (harm.harmful and rng.random() < 0.6),
        "action": ("refuse" if score >= 0.8 else "revise") if harm.harmful else "proceed",
        "pii": bool(find_pii(call.request_text)),
        "rationale": (
            f"The request appears to seek {harm.category} assistance that could cause harm."
            if harm.harmful
            else "The request is an ordinary information need with no sign of harmful intent."
        ),
    }
    return SimAnswer(values)


def _critique(call: SimCall) -> SimAnswer:
    harm = _harm(call)
    if harm.harmful:
        action, violations, score = "refuse", [f"harmful_assistance:{harm.category}"], 1 - harm.risk
        confidence = harm.confidence
        why = f"The draft would give {harm.category} assistance; this must be refused."
    else:
        judged = _judge_draft(call)
        score, confidence = judged.good, judged.confidence
        if judged.ok:
            action, violations = "proceed", []
            why = "The draft is accurate, helpful and within policy."
        else:
            action, violations = "revise", ["unsupported_or_incorrect_claim"]
            why = "The draft contains a claim that looks wrong or unsupported; revise it."
    values = {
        "action": action,
        "decision": action,
        "violations": violations,
        "hard": action == "refuse",
        "score": round(score, 3),
        "confidence": round(confidence, 3),
        "rationale": why,
    }
    return SimAnswer(values)


def _simulate(call: SimCall) -> SimAnswer:
    harm = _harm(call)
    rng = call.rng
    if harm.harmful:
        concerns = [f"could enable {harm.category} harm", "misuse by the requester"]
        concerns = concerns[: rng.randint(1, 2)]
    else:
        concerns = [] if rng.random() < 0.7 else ["minor risk of misunderstanding"]
    values = {"expected_harm": round(harm.risk, 3), "concerns": concerns}
    return SimAnswer(values)


def _verify(call: SimCall) -> SimAnswer:
    harm = _harm(call)
    judged = _judge_draft(call)
    accept = judged.ok and not harm.harmful
    score = judged.good * (1.0 - harm.risk)
    values = {"accept": accept, "accepted": accept, "score": round(score, 3)}
    return SimAnswer(values)


_MISREAD_TEXT = ("unknown", "not given", "n/a", "pending", "other")


def _wrong_value(value: Any, rng: random.Random) -> Any:
    """A misread of a field whose true value only a label knows, of the same type, drawn
    without looking at that value beyond its type (a reversed string or a number next to
    the true one would tell a graph the true value). A yes/no field has one wrong value."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        number = rng.randrange(1000)
        return number if number != value else number + 1000
    if isinstance(value, float):
        real = round(rng.uniform(0.0, 1000.0), 2)
        return real if real != value else real + 1000.0
    if isinstance(value, str):
        text = rng.choice(_MISREAD_TEXT)
        return text if _norm_text(text) != _norm_text(value) else "unreadable"
    if isinstance(value, list):
        return []
    if isinstance(value, dict):
        return {k: _wrong_value(v, rng) for k, v in value.items()}
    return None


def _norm_text(text: str) -> str:
    return text.strip().lower()


def _text_fields(text: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if m := re.search(r"(?<![\w.+-])[\w.+-]+@[\w-]+\.[\w.]+", text):  # linear: run starts
        found["email"] = m.group(0)
    if m := re.search(r"\d{4}-\d{2}-\d{2}", text):
        found["date"] = m.group(0)
    if m := re.search(r"\d+(?:\.\d+)?", text):
        number = float(m.group(0))
        for key in ("amount", "total", "price", "quantity", "count", "number"):
            found[key] = int(number) if number.is_integer() else number
    names = [
        n
        for n in re.findall(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+(?: [A-Z][a-z]+)?", text)
        if n.split()[0].lower() not in _STOPWORDS
    ]
    if names:
        found["name"] = names[0]
    return found


def _extract(call: SimCall) -> SimAnswer:
    fields = call.labels.get("fields")
    solution = call.solution
    if fields is None and solution is not None and solution.kind == "json":
        fields = solution.value  # the ticket's fields, as read from its text
    values = _text_fields(call.request_text or call.prompt)
    if isinstance(fields, Mapping):
        values.update(_read_fields(call, fields))
    return SimAnswer(values)


def _read_fields(call: SimCall, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Each labelled field as this model reads it: right with `answer_chance(extract=True)`,
    else a plausible wrong value."""
    chance = answer_chance(call.capability, call.latents, call.profile, extract=True)
    return {
        str(key): value if _draw(call, chance) else _wrong_value(value, call.rng)
        for key, value in fields.items()
    }


def lenient_json(text: str) -> Any:
    """Best-effort parse of almost-JSON (fences, prose, trailing commas); None if hopeless."""
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    body = text[start:]
    end = max(body.rfind("}"), body.rfind("]"))
    candidates = [body[: end + 1]] if end >= 0 else []
    candidates.append(body)
    for candidate in candidates:
        cleaned = re.sub(r",\s*([}\]])", r"\1", candidate)
        try:
            return json.loads(cleaned)
        except (json.JSONDecodeError, RecursionError):  # nested deeper than json can follow
            continue
    return None


def _repair(call: SimCall) -> SimAnswer:
    marks = list(_BROKEN_MARK.finditer(call.prompt))
    broken = lenient_json(call.prompt[marks[-1].end() :] if marks else call.prompt)
    values: dict[str, Any] = dict(broken) if isinstance(broken, Mapping) else {}
    fields = call.labels.get("fields")
    if isinstance(fields, Mapping):  # what the broken text lost is read again, not restored
        missing = {k: v for k, v in fields.items() if str(k) not in values}
        values.update(_read_fields(call, missing))
    # JSON health, not knowledge: fixing syntax is easy, most of a small model's repairs hold
    ok = call.rng.random() < _clamp(0.45 + 0.55 * call.capability, 0.05, 0.99)
    return SimAnswer(values, malformed=not ok)


_HANDLERS: Mapping[str, Callable[[SimCall], SimAnswer]] = {
    "answer": _answer,
    "draft": _answer,
    "revise": _answer,
    "risk": _risk,
    "critique": _critique,
    "simulate": _simulate,
    "verify": _verify,
    "extract": _extract,
    "repair": _repair,
}


def is_text_task(task: str | None) -> bool:
    """Whether `task` answers in free text when no JSON was asked for."""
    return task is None or task in _TEXT_TASKS or task not in _HANDLERS
