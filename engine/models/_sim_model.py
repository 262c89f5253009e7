"""The sim's model of correctness: when a simulated model is right, and how sure it says it is.

Hidden labels never reach an output directly. They set *latents* of the request, and the
latents set each call's chance of being right; the call then draws right or wrong from
its own seeded generator. Whatever a graph reads from a simulated answer is therefore a
noisy channel whose accuracy is the `p` of `answer_chance`, `judge_chance` or
`harm_chance` below, and nothing better. (A stated confidence is part of that channel: it
is computed from the same formula, never from a label the model could not know; a harm
check states the posterior that its verdict is right, from its chances on a harmful and on
a benign request worded so and a prior by wording, `_sim_tasks.HARM_PRIOR`.)

The model is item response theory (the 2PL/3PL logistic models used to analyse LLM
benchmarks, e.g. Polo et al. 2024, "tinyBenchmarks"). A call's log-odds of being right is

    logit(capability) + DIFFICULTY_SLOPE * (DEFAULT_DIFFICULTY - difficulty)
        - AMBIGUITY_SLOPE * (ambiguity - 0.5) + BLIND_SPOT_SD * blind_spot
        + OWN_SD * own_slip (+ task terms: see `harm_chance`, `EXTRACT_EASE`)

- `difficulty` (0..1): the request's `difficulty` label, else `DEFAULT_DIFFICULTY`.
- `ambiguity` (0..1): one uniform draw per topic (the `kind` and `category` labels, else
  the request's first words) and run seed: how much reasonable readers disagree on that
  topic, the same for every request and every model.
- `blind_spot` ~ N(0, 1): one draw per request (its labels, else its text, and the run
  seed), shared by every model and every call on the request (one for answering and
  judging drafts, another for harm checks). It is what makes errors
  correlate: a request one model gets wrong is likelier to fool the next one, and a critic
  judging a draft shares part of its drafter's blind spot.
- `own_slip` ~ N(0, 1): one draw per request and profile: where one model slips and
  another does not. A profile reviewing its own draft shares its whole blind spot.

Free-text answers and extracted fields are right with probability `sigmoid(logit)`.
Binary judgements (is the request harmful? is the draft right?) have a guessing floor of
one half, `0.5 + 0.5 * sigmoid(logit)` (the 3PL model with guessing parameter 1/2).

A model states a confidence, calibrated by construction: its expected chance of being
right given what it can know about the call, i.e. everything but its own slip (models know
what is hard but not where they personally slip; Kadavath et al. 2022, "Language Models
(Mostly) Know What They Know", find large models well calibrated on their own answers).
The expectation over the unseen slip uses the probit approximation of the logistic-normal
integral (MacKay 1992): `E[sigmoid(x + s Z)] ~ sigmoid(x / sqrt(1 + pi s^2 / 8))`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

__all__ = [
    "AMBIGUITY_SLOPE",
    "BLIND_SPOT_SD",
    "DEFAULT_DIFFICULTY",
    "DIFFICULTY_SLOPE",
    "HARM_BLIND_SPOT_SD",
    "OWN_SD",
    "Chance",
    "Latents",
    "answer_chance",
    "expected_chance",
    "harm_chance",
    "harm_cue",
    "judge_chance",
    "latents",
]

DEFAULT_DIFFICULTY = 0.3
"""The difficulty of a request without a label; a profile's `capability` is its chance of
being right at this difficulty, a topic of median ambiguity and no blind spot."""
DIFFICULTY_SLOPE = 4.0
"""Log-odds lost from the easiest (0) to the hardest (1) request. Item difficulties in IRT
fits of LLM benchmarks spread over several logits; 4 makes the hardest request cost a
capable model about as much as the gap between a small and a large model."""
AMBIGUITY_SLOPE = 1.5
"""Log-odds lost from the clearest to the most ambiguous topic: less than difficulty, since
ambiguity only moves the answer when readers would disagree."""
BLIND_SPOT_SD = 1.5
"""Spread (log-odds) of the per-request blind spot every model shares. Larger than the
model's own slip: models trained on overlapping data err on the same items (Goel et al.
2025, "Great Models Think Alike and this Undermines AI Oversight"; Kim et al. 2025,
"Correlated Errors in Large Language Models"). With difficulty it gives a spread of about
2 logits between requests, the order of the item-difficulty spreads IRT fits find in LLM
benchmarks, so a model's chance on a given request tends towards 0 or 1."""
HARM_BLIND_SPOT_SD = 1.0
"""Spread (log-odds) of the per-request blind spot every harm check shares: smaller than
answering's, since whether a request reads as harmful depends on its surface, which models
read alike, more than on knowledge they may lack."""
OWN_SD = 0.75
"""Spread (log-odds) of one profile's own slip on a request, unknown to the model. It is
per request, not per call: asked again, a model tends to repeat itself (sampling one model
many times gains far less than asking independent solvers; Wang et al. 2023,
"Self-Consistency"), so only the call's final draw is fresh."""
EXTRACT_EASE = 1.0
"""Extra log-odds for copying one field out of a text: easier than answering a question
(field extraction is where small models come closest to large ones)."""

PLAIN_EASE = 4.0
"""Extra log-odds of judging a benign request benign when its wording carries no harm cue:
over-refusal of plainly safe prompts is rare (well under 5 % even for small chat models)."""
CUE_PULL = 3.5
"""Log-odds a harm cue in a benign request's wording takes away: over-refusals concentrate on
safe prompts that look like unsafe ones (Röttger et al. 2024, XSTest; Cui et al. 2024,
OR-Bench), where small models refuse a large share."""
HARM_BASE = 1.0
"""Extra log-odds of recognising a harmful request without any cue word: recognising
intent is the task safety training targets."""
CUE_PUSH = 1.0
"""Extra log-odds a harm cue gives to recognising a harmful request: explicit requests are
refused more reliably than paraphrased ones (the gap jailbreak rewordings exploit)."""

STRONG_CUES: Mapping[str, str] = {
    "bomb": "weapons", "explosive": "weapons", "weapon": "weapons", "gun": "weapons",
    "poison": "violence", "kill": "violence", "murder": "violence", "hurt": "violence",
    "hack": "cyber", "malware": "cyber", "ransomware": "cyber", "phishing": "cyber",
    "exploit": "cyber", "steal": "theft", "launder": "fraud", "counterfeit": "fraud",
    "meth": "drugs", "overdose": "self_harm", "suicide": "self_harm",
}  # fmt: skip
"""Words that read as harm, with the category a model names for them (weight 1)."""
WEAK_CUES = (
    "dangerous", "lethal", "dose", "fake", "bypass", "untraceable", "without the key",
    "without them knowing", "without getting caught", "injection", "fentanyl", "end my life",
)  # fmt: skip
"""Harm-adjacent wording that makes a request look risky without naming a harm (weight 0.5)."""

_NORMAL = NormalDist()
_LABEL_NOISE = ("repeat_of", "variant", "expected", "check")
"""Labels left out of a request's identity: how a request came back (a repeat shares its
latents), and the benchmark's answer key (`expected`, `check`), which the sim never reads
in any form: a checkable request's answer is worked out from its text."""


@dataclass(frozen=True, slots=True)
class Latents:
    """The hidden facts about one request that set every model's chance on it."""

    difficulty: float
    ambiguity: float
    blind_spot: float
    """Shared by every answer, extraction and judgement of a draft on the request."""
    harm_blind_spot: float
    """Shared by every harm check of the request: what makes a request look harmful (or
    harmless) to every model is not what makes it hard to answer."""
    key: str
    """What identifies the request for per-profile draws (its slip)."""


@dataclass(frozen=True, slots=True)
class Chance:
    """One call's chance of being right, and the confidence the model states for it."""

    p: float
    """The true chance that the call is right."""
    confidence: float
    """The model's calibrated estimate of `p` (it cannot see its own slip)."""


def _unit(*parts: object) -> float:
    """A deterministic draw in (0, 1) from `parts`."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


def _difficulty(labels: Mapping[str, Any]) -> float:
    try:
        return min(1.0, max(0.0, float(labels.get("difficulty", DEFAULT_DIFFICULTY))))
    except (TypeError, ValueError):
        return DEFAULT_DIFFICULTY


def _topic(labels: Mapping[str, Any], request_text: str) -> str:
    if "category" in labels or "kind" in labels:
        return f"{labels.get('kind')}/{labels.get('category')}"
    return " ".join(re.findall(r"[a-z]+", request_text.lower())[:3])


def latents(labels: Mapping[str, Any], request_text: str, seed: int) -> Latents:
    """The latents of a request: from its labels when it has some, else from its text.

    Everything is a pure function of its arguments, so the in-process provider and
    `moat sim-server` (which receives the same labels, text and seed) agree.
    """
    if not labels:  # the text alone decides: what the request's every call asks
        return _text_latents(request_text, seed)
    kept = {k: v for k, v in labels.items() if k not in _LABEL_NOISE}
    identity = json.dumps(kept, sort_keys=True, default=str) if kept else request_text
    return _latents(identity, _topic(labels, request_text), _difficulty(labels), seed)


@functools.lru_cache(maxsize=1024, typed=True)
def _text_latents(request_text: str, seed: int) -> Latents:
    return _latents(request_text, _topic({}, request_text), DEFAULT_DIFFICULTY, seed)


@functools.lru_cache(maxsize=1024, typed=True)
def _latents(identity: str, topic: str, difficulty: float, seed: int) -> Latents:
    """The latents from what they depend on: every call of a request asks for the same
    ones, so those of the latest requests are kept."""
    key = hashlib.blake2b(f"{seed}:{identity}".encode(), digest_size=8).hexdigest()
    return Latents(
        difficulty=difficulty,
        ambiguity=_unit("ambiguity", seed, topic),
        blind_spot=_NORMAL.inv_cdf(_unit("blind-spot", key)),
        harm_blind_spot=_NORMAL.inv_cdf(_unit("harm-blind-spot", key)),
        key=key,
    )


def _own_slip(lat: Latents, profile: str) -> float:
    return _slip(lat.key, profile)


@functools.lru_cache(maxsize=1024)
def _slip(key: str, profile: str) -> float:
    """A profile's own slip on the request of latents `key`: the calls of one profile on
    one request ask for the same one, so those of the latest requests are kept."""
    return _NORMAL.inv_cdf(_unit("own-slip", key, profile))


def _shared_logit(capability: float, lat: Latents) -> float:
    """The log-odds every model shares on the request, and this profile's ability."""
    return (
        _logit(capability)
        + DIFFICULTY_SLOPE * (DEFAULT_DIFFICULTY - lat.difficulty)
        - AMBIGUITY_SLOPE * (lat.ambiguity - 0.5)
        + BLIND_SPOT_SD * lat.blind_spot
    )


_SLIP_SPREAD = math.sqrt(1.0 + math.pi * OWN_SD**2 / 8.0)
"""The probit approximation's divisor for the unseen own slip (see the module docstring)."""


def _chance(known: float, lat: Latents, profile: str, floor: float) -> Chance:
    """`floor + (1 - floor) * sigmoid(known + own slip)`, with the calibrated confidence."""
    p = _sigmoid(known + OWN_SD * _own_slip(lat, profile))
    seen = _sigmoid(known / _SLIP_SPREAD)
    return Chance(floor + (1.0 - floor) * p, floor + (1.0 - floor) * seen)


def answer_chance(
    capability: float, lat: Latents, profile: str, *, extract: bool = False
) -> Chance:
    """The chance that a free-text answer (or one extracted field) is right."""
    ease = EXTRACT_EASE if extract else 0.0
    return _chance(_shared_logit(capability, lat) + ease, lat, profile, 0.0)


def judge_chance(capability: float, lat: Latents, profile: str) -> Chance:
    """The chance that a judgement of a draft (right or wrong?) is right."""
    return _chance(_shared_logit(capability, lat), lat, profile, 0.5)


_STRONG = tuple((re.compile(rf"\b{word}"), category) for word, category in STRONG_CUES.items())
_ANY_STRONG = re.compile(r"\b(?:" + "|".join(STRONG_CUES) + ")")
_ANY_WEAK = re.compile(r"\b(?:" + "|".join(map(re.escape, WEAK_CUES)) + ")")


@functools.lru_cache(maxsize=1024)
def harm_cue(request_text: str) -> tuple[float, str | None]:
    """How much the wording reads as harm (0, 0.5 or 1) and the category it names, if any.

    Every harm check of a request asks about the same text, so answers are kept for the
    latest texts; one pass over the text rules out every strong cue at once, and the cues
    are tried one by one (in their order, which picks the category) only when one is there.
    """
    lowered = request_text.lower()
    if _ANY_STRONG.search(lowered):
        for pattern, category in _STRONG:
            if pattern.search(lowered):
                return 1.0, category
    if _ANY_WEAK.search(lowered):
        return 0.5, None
    return 0.0, None


def harm_chance(
    capability: float, lat: Latents, profile: str, *, harmful: bool, cue: float
) -> Chance:
    """The chance that a harm check of the request (harmful or not?) is right.

    Benign requests are judged on wording alone: plain ones are almost never flagged, harm
    cues pull toward a false flag. Harmful ones are harder to spot when hard or ambiguous
    and easier when their wording names the harm.
    """
    ambiguity = AMBIGUITY_SLOPE * (lat.ambiguity - 0.5)
    ability = _logit(capability) + HARM_BLIND_SPOT_SD * lat.harm_blind_spot - ambiguity
    if harmful:
        difficulty = DIFFICULTY_SLOPE * (DEFAULT_DIFFICULTY - lat.difficulty)
        known = ability + difficulty + HARM_BASE + CUE_PUSH * cue
    else:
        known = ability + PLAIN_EASE - CUE_PULL * cue
    return _chance(known, lat, profile, 0.5)


def expected_chance(capability: float, difficulty: float, task: str = "answer") -> float:
    """A profile's chance on a request of known `difficulty`, averaged over the other latents
    (median ambiguity; blind spot and slip integrated out): what a router that knew the
    difficulty, and nothing else, could expect. `task` is `answer` or `risk` (a harmful
    request without a cue word)."""
    known = _logit(capability) + DIFFICULTY_SLOPE * (DEFAULT_DIFFICULTY - difficulty)
    if task == "risk":
        spread = math.sqrt(1.0 + math.pi * (HARM_BLIND_SPOT_SD**2 + OWN_SD**2) / 8.0)
        return 0.5 + 0.5 * _sigmoid((known + HARM_BASE) / spread)
    spread = math.sqrt(1.0 + math.pi * (BLIND_SPOT_SD**2 + OWN_SD**2) / 8.0)
    return _sigmoid(known / spread)
