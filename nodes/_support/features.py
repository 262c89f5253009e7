"""Cheap text features for routing and prompt classes: length, structure, kind, code, steps.

`features()` runs a few regular expressions (tens of microseconds) and returns the
signals the router weighs into a complexity score in [0, 1], with the reason codes that
fired, and a coarse `prompt_class` used by `speculate` to learn acceptance per class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Features", "features"]

_REASONING = re.compile(
    r"(?i)\b(why|how (?:does|do|can|would|should)|explain|compare|contrast|analy[sz]e|"
    r"evaluate|design|prove|derive|trade-?offs?|justify|critique|plan|architect)\b"
)
_FACTUAL = re.compile(r"(?i)^\s*(what is|what's|who|when|where|define|list|name)\b")
_CODE = re.compile(
    r"```|\b(def|class|function|return|import|const|let|var|SELECT|FROM|WHERE|#include)\b|"
    r"[{};]\s*$|=>|\b\w+\(\)|Traceback|Exception|\berror:",
    re.M,
)
_STEPS = re.compile(
    r"(?i)\b(step[- ]by[- ]step|first(?:ly)?|then|after that|finally|next,|secondly)\b"
)
# `[ \t]`, not `\s`: a `\s*` after `^` would run over every following blank line, once per
# line, which is quadratic on a text of newlines
_LIST_LINE = re.compile(r"(?m)^[ \t]*(?:[-*•]|\d+[.)])\s+")


@dataclass(frozen=True, slots=True)
class Features:
    """What the router and speculate read from a text."""

    words: int
    lines: int
    list_items: int
    reasoning: bool
    factual: bool
    code: bool
    steps: int
    questions: int
    complexity: float
    """Weighted combination in [0, 1] (0 trivial, 1 hard)."""
    reasons: tuple[str, ...]

    @property
    def prompt_class(self) -> str:
        """A coarse bucket: length band, kind and whether code is involved."""
        band = "short" if self.words < 30 else "medium" if self.words < 150 else "long"
        kind = "reasoning" if self.reasoning else "factual" if self.factual else "other"
        return f"{band}/{kind}{'/code' if self.code else ''}"


def features(text: str) -> Features:
    """The routing features of `text`."""
    n_words = len(text.split())
    lines = text.count("\n") + 1
    items = len(_LIST_LINE.findall(text))
    reasoning = bool(_REASONING.search(text))
    factual = bool(_FACTUAL.search(text)) and not reasoning
    code = bool(_CODE.search(text))
    steps = len(_STEPS.findall(text)) + (items if items >= 2 else 0)
    questions = text.count("?")
    signals = [
        (min(1.0, n_words / 200) * 0.35, n_words >= 80, "LONG_INPUT"),
        (0.15 if lines >= 4 or items >= 2 else 0.0, lines >= 4 or items >= 2, "STRUCTURED_INPUT"),
        (0.3 if reasoning else 0.0, reasoning, "REASONING_QUESTION"),
        (0.3 if code else 0.0, code, "CODE_PRESENT"),
        (min(0.25, 0.1 * steps + 0.05 * max(0, questions - 1)), steps >= 2 or questions >= 3,
         "MULTI_STEP"),
        (-0.1 if factual else 0.0, factual, "FACTUAL_QUESTION"),
    ]  # fmt: skip
    complexity = max(0.0, min(1.0, sum(w for w, _, _ in signals)))
    reasons = tuple(code for _, fired, code in signals if fired)
    return Features(
        n_words, lines, items, reasoning, factual, code, steps, questions, complexity, reasons
    )
