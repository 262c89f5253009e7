"""What the simulated model "means" for each built-in task, before it is shaped into text.

Every function here is a pure function of a `SimCall` (the call's text, the request's
hidden labels, the model's capability and a seeded random generator), so the same call
always yields the same answer. The label fields are documented in `engine.models.sim`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimAnswer", "SimCall", "answer_task", "find_draft", "is_text_task", "lenient_json"]

HARM_KEYWORDS: Mapping[str, str] = {
    "bomb": "weapons", "explosive": "weapons", "weapon": "weapons", "gun": "weapons",
    "poison": "violence", "kill": "violence", "murder": "violence", "hurt": "violence",
    "hack": "cyber", "malware": "cyber", "ransomware": "cyber", "phishing": "cyber",
    "exploit": "cyber", "steal": "theft", "launder": "fraud", "counterfeit": "fraud",
    "meth": "drugs", "overdose": "self_harm", "suicide": "self_harm",
}  # fmt: skip
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


@dataclass(frozen=True, slots=True)
class SimCall:
    """Everything the simulated model knows about one call attempt."""

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


@dataclass(slots=True)
class SimAnswer:
    """The model's intended answer: free text, structured values, and JSON health."""

    text: str
    values: dict[str, Any] = field(default_factory=dict)
    malformed: bool | None = None
    """True: the JSON comes out broken; False: never broken; None: the profile's rate."""


def answer_task(call: SimCall) -> SimAnswer:
    """The simulated answer to `call`, by task (unknown tasks answer like `answer`)."""
    handler = _HANDLERS.get(call.task or "answer", _answer)
    return handler(call)


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def _difficulty(call: SimCall) -> float:
    try:
        return _clamp(float(call.labels.get("difficulty", 0.3)), 0.0, 1.0)
    except (TypeError, ValueError):
        return 0.3


def _keyword_category(text: str) -> str | None:
    lowered = text.lower()
    for word, category in HARM_KEYWORDS.items():
        if re.search(rf"\b{word}", lowered):
            return category
    return None


_REFUSAL = re.compile(r"\b(?:can(?:no|')t help|cannot assist|won't help|i must decline|i refuse)")


def _harm(call: SimCall) -> tuple[bool, str]:
    """Whether this model judges the request (or the draft, once refused) harmful."""
    draft = find_draft(call.prompt)
    if draft is not None and _REFUSAL.search(draft.lower()):
        return False, "refusal"
    category = str(call.labels.get("category") or _keyword_category(call.request_text) or "general")
    if "harmful" not in call.labels:
        return _keyword_category(call.request_text) is not None, category
    truth = bool(call.labels["harmful"])
    accuracy = _clamp(call.capability + 0.05 - 0.15 * _difficulty(call), 0.3, 0.99)
    if truth:
        return call.rng.random() < accuracy, category
    return call.rng.random() < (1.0 - accuracy) * 0.4, category


def _contains(text: str, token: str) -> bool:
    return token.strip().lower() in text.lower()


def find_draft(prompt: str) -> str | None:
    """The draft a prompt asks about: `<draft>…</draft>`, `<answer>…</answer>`, or the text
    after a `Draft:` / `Draft answer:` / `Answer:` / `Previous draft:` line; else None."""
    tagged = _tagged(prompt)
    if tagged is not None:
        return tagged
    marks = list(_DRAFT_LINE.finditer(prompt))
    return prompt[marks[-1].end() :] if marks else None


def _tagged(prompt: str) -> str | None:
    """The text of the last closed `<draft>`/`<answer>` pair, in one linear pass."""
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


def _judge_draft(call: SimCall) -> tuple[bool | None, bool]:
    """(is the draft correct per the labels — None if unknown, the model's judgement)."""
    answer = call.labels.get("answer")
    draft = find_draft(call.prompt)
    if draft is None and answer is not None:
        rest = call.prompt.replace(call.request_text, "") if call.request_text else call.prompt
        draft = rest if _contains(rest, str(answer)) else None
    if draft is None or answer is None:
        return None, call.rng.random() < 0.75 + 0.2 * call.capability
    correct = _contains(draft, str(answer))
    accuracy = _clamp(0.5 + 0.5 * call.capability - 0.1 * _difficulty(call), 0.5, 0.99)
    judged = correct if call.rng.random() < accuracy else not correct
    return correct, judged


def _topic(call: SimCall) -> str:
    words = [
        w
        for w in re.findall(r"[A-Za-z][A-Za-z\-']+", call.request_text)
        if w.lower() not in _STOPWORDS
    ]
    return " ".join(words[:5]) or "the question"


def _wrong_token(answer: str, rng: random.Random) -> str:
    candidates: list[str] = []
    if re.fullmatch(r"-?\d+(\.\d+)?", answer.strip()):
        base = float(answer)
        candidates = [f"{base + d:g}" for d in (rng.randint(2, 9), -rng.randint(2, 9), 97, 13)]
    candidates += [answer[::-1], "unknown", "none of these", "7"]
    for cand in candidates:
        if cand and not _contains(cand, answer):
            return cand
    return "-"


def _answer_text(call: SimCall, correct: bool | None) -> str:
    topic = _topic(call)
    leads = (
        f"Here is a concise answer about {topic}.",
        f"Regarding {topic}:",
        f"Short answer on {topic}.",
        f"Considering {topic}, the key points follow.",
    )
    fillers = (
        "The main considerations are accuracy, context and clear next steps.",
        "It depends on the details, but the usual approach works well here.",
        "In practice this is settled by checking the facts and the constraints.",
        "Most sources agree on this, with a few caveats noted below.",
        "A careful reading of the question points to a single best answer.",
    )
    target_sentences = max(1, call.answer_tokens // 15)
    body = [call.rng.choice(leads)]
    body += [call.rng.choice(fillers) for _ in range(target_sentences - 1)]
    answer = call.labels.get("answer")
    if answer is None or correct is None:
        return " ".join(body)
    token = str(answer) if correct else _wrong_token(str(answer), call.rng)
    text = " ".join([*body, f"The answer is {token}."])
    if not correct and _contains(text, str(answer)):
        return f"=> {token}"
    return text


def _answer(call: SimCall) -> SimAnswer:
    correct: bool | None = None
    if call.labels.get("answer") is not None:
        p = _clamp(call.capability - 0.6 * _difficulty(call) + 0.3, 0.02, 0.99)
        draft = find_draft(call.prompt) if call.task == "revise" else None
        if draft is not None:
            p = (
                max(p, 0.95)
                if _contains(draft, str(call.labels["answer"]))
                else min(0.99, p + 0.15)
            )
        correct = call.rng.random() < p
    text = _answer_text(call, correct)
    return SimAnswer(text, {"text": text, "answer": text})


def _risk(call: SimCall) -> SimAnswer:
    harmful, category = _harm(call)
    rng = call.rng
    score = rng.uniform(0.7, 0.97) if harmful else rng.uniform(0.02, 0.3)
    lowered = call.request_text.lower()
    asks_how = any(
        k in lowered for k in ("how to", "how do i", "how can i", "steps", "instructions")
    )
    values = {
        "risk_score": round(score, 3),
        "score": round(score, 3),
        "category": category if harmful or category != "general" else "general",
        "operational_risk": "high" if score >= 0.7 else "medium" if score >= 0.4 else "low",
        "intent_to_harm": harmful and rng.random() < 0.8,
        "requested_instructions": asks_how or (harmful and rng.random() < 0.6),
        "action": ("refuse" if score >= 0.8 else "revise") if harmful else "proceed",
        "pii": bool(call.labels.get("pii", False)),
        "rationale": (
            f"The request appears to seek {category} assistance that could cause harm."
            if harmful
            else "The request is an ordinary information need with no sign of harmful intent."
        ),
    }
    return SimAnswer(json.dumps(values), values)


def _critique(call: SimCall) -> SimAnswer:
    harmful, category = _harm(call)
    rng = call.rng
    if harmful:
        action, violations, score = (
            "refuse",
            [f"harmful_assistance:{category}"],
            rng.uniform(0.02, 0.2),
        )
        why = f"The draft would give {category} assistance; this must be refused."
    else:
        _, judged_ok = _judge_draft(call)
        if judged_ok:
            action, violations, score = "proceed", [], rng.uniform(0.75, 0.97)
            why = "The draft is accurate, helpful and within policy."
        else:
            action, violations, score = (
                "revise",
                ["unsupported_or_incorrect_claim"],
                rng.uniform(0.3, 0.6),
            )
            why = "The draft contains a claim that looks wrong or unsupported; revise it."
    values = {
        "action": action,
        "decision": action,
        "violations": violations,
        "hard": action == "refuse",
        "score": round(score, 3),
        "rationale": why,
    }
    return SimAnswer(json.dumps(values), values)


def _simulate(call: SimCall) -> SimAnswer:
    harmful, category = _harm(call)
    rng = call.rng
    if harmful:
        harm = rng.uniform(0.6, 0.95)
        concerns = [f"could enable {category} harm", "misuse by the requester"][: rng.randint(1, 2)]
    else:
        harm = rng.uniform(0.0, 0.15)
        concerns = [] if rng.random() < 0.7 else ["minor risk of misunderstanding"]
    values = {"expected_harm": round(harm, 3), "concerns": concerns}
    return SimAnswer(json.dumps(values), values)


def _verify(call: SimCall) -> SimAnswer:
    harmful, _ = _harm(call)
    _, judged_ok = _judge_draft(call)
    accept = judged_ok and not harmful
    score = call.rng.uniform(0.7, 0.98) if accept else call.rng.uniform(0.1, 0.5)
    values = {"accept": accept, "accepted": accept, "score": round(score, 3)}
    return SimAnswer(json.dumps(values), values)


def _wrong_value(value: Any, rng: random.Random) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + rng.choice((1, -1, 10, 100)) * (1 if isinstance(value, int) else 1.5)
    if isinstance(value, str):
        return value[::-1] if len(value) > 1 and value[::-1] != value else f"{value} (unverified)"
    if isinstance(value, list):
        return value[:-1]
    if isinstance(value, dict):
        return {k: _wrong_value(v, rng) for k, v in value.items()}
    return None


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
    values = _text_fields(call.request_text or call.prompt)
    if isinstance(fields, Mapping):
        p = _clamp(call.capability - 0.4 * _difficulty(call) + 0.25, 0.05, 0.99)
        for key, true_value in fields.items():
            ok = call.rng.random() < p
            values[str(key)] = true_value if ok else _wrong_value(true_value, call.rng)
    return SimAnswer(json.dumps(values), values)


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
        except json.JSONDecodeError:
            continue
    return None


def _repair(call: SimCall) -> SimAnswer:
    marks = list(_BROKEN_MARK.finditer(call.prompt))
    broken = lenient_json(call.prompt[marks[-1].end() :] if marks else call.prompt)
    values: dict[str, Any] = dict(broken) if isinstance(broken, Mapping) else {}
    fields = call.labels.get("fields")
    if isinstance(fields, Mapping):
        values.update({str(k): v for k, v in fields.items()})
    ok = call.rng.random() < _clamp(0.45 + 0.55 * call.capability, 0.05, 0.99)
    return SimAnswer(json.dumps(values), values, malformed=not ok)


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
