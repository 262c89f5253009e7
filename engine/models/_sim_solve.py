"""What the right answer to a request is, read from its text the way a model would read it.

The simulated model does not look answers up: for the kinds of request a program can check
(arithmetic, unit conversions, facts stated in a note, fields of a support ticket, a
message's label among given ones, the output of a short Python snippet) it works the
answer out from the request's own text. Whether it then gives that answer or a plausible
wrong one is the correctness model's decision (`engine.models._sim_model`). A request none
of these readers understands has no `Solution`; the sim then answers in generic prose.

`Solution.matches` is how a simulated judge decides whether a draft is right: the final
`Answer:` line (or the JSON object, for extraction) compared with the solution. The
benchmark's own checkers (`bench/checkers.py`) are written separately and read only the
answer's text and the workload's expected value.
"""

from __future__ import annotations

import ast
import functools
import json
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Solution", "final_answer", "first_json", "solve"]

LABELS = ("billing", "shipping", "account", "product")
_ISSUE_WORDS = (
    ("billing", ("charged", "invoice", "refund", "payment")),
    ("shipping", ("arrived", "never arrived", "stuck", "delivery", "parcel")),
    ("account", ("log in", "locked", "password", "sign in")),
    ("product", ("stopped working", "overheats", "broken", "won't turn on")),
)
_URGENCY = (("urgent", "high"), ("no rush", "low"), ("look into it", "normal"))
UNITS: dict[tuple[str, str], Callable[[float], float]] = {
    ("km", "miles"): lambda x: x * 0.621371,
    ("miles", "km"): lambda x: x * 1.609344,
    ("kg", "lb"): lambda x: x * 2.204623,
    ("lb", "kg"): lambda x: x * 0.4535924,
    ("litres", "gallons"): lambda x: x * 0.2641721,
    ("feet", "metres"): lambda x: x * 0.3048,
    ("celsius", "fahrenheit"): lambda x: x * 9 / 5 + 32,
}
_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
}


@dataclass(frozen=True, slots=True)
class Solution:
    """The right answer to a request, and how to give it right or wrong."""

    kind: str
    """`number`, `text` or `json`."""
    value: Any
    choices: tuple[str, ...] = field(default_factory=tuple)
    """Other values a confused reader would give (labels, names, cities in the text)."""

    def render(self, value: Any) -> str:
        """The answer line (or JSON) for `value`."""
        if self.kind == "json":
            return json.dumps(value)
        if self.kind == "number":
            return f"Answer: {_number(value)}"
        return f"Answer: {value}"

    def wrong(self, rng: random.Random) -> Any:
        """A plausible wrong value: a slip in the arithmetic, a neighbouring fact, a label
        that is not the right one, one field of a ticket misread."""
        if self.kind == "number":
            v = float(self.value)
            slips = [v + rng.choice((1, -1)) * rng.randint(1, 9), v * rng.choice((0.9, 1.1, 10))]
            slips += [round(v) + rng.choice((2, -2)), -v if v else 3.0]
            return next(s for s in rng.sample(slips, len(slips)) if not _close(s, v))
        if self.kind == "json":
            out = dict(self.value)
            key = rng.choice(sorted(out))
            current = out[key]
            if key == "issue":
                out[key] = rng.choice([lbl for lbl in LABELS if lbl != current])
            elif key == "urgency":
                out[key] = rng.choice([u for _, u in _URGENCY if u != current])
            elif key == "order_id":
                out[key] = None if current else "00000"
            else:
                out[key] = str(current).split(" ")[0]
            return out
        others = [c for c in self.choices if _norm(c) != _norm(str(self.value))]
        if others:
            return rng.choice(others)
        text = str(self.value)
        return text[::-1] if len(text) > 1 and text[::-1] != text else text + "1"

    def matches(self, answer: str) -> bool:
        """Whether `answer` (a draft's text) gives this solution."""
        if self.kind == "json":
            found = first_json(answer)
            return isinstance(found, dict) and all(
                _norm(str(found.get(k))) == _norm(str(v)) for k, v in self.value.items()
            )
        lines = [line for line in answer.splitlines() if line.strip()]
        final = final_answer(answer) or (lines[-1] if lines else None)
        if final is None:
            return False
        if self.kind == "number":
            numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", final)
            return bool(numbers) and _close(float(numbers[0].replace(",", "")), self.value)
        return _norm(final) == _norm(str(self.value))


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.01, 0.01 * abs(b))


def _norm(text: str) -> str:
    return re.sub(r"[\s`'\".!]+", " ", text).strip().lower()


def final_answer(text: str) -> str | None:
    """The value of the last `Answer:` line of `text`, else None."""
    found = re.findall(r"(?im)^\W*answer\s*:\s*(.+?)\s*$", text)
    return found[-1] if found else None


def first_json(text: str) -> Any:
    """The first JSON object in `text`, or None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


@functools.lru_cache(maxsize=1024)
def solve(text: str) -> Solution | None:
    """The solution of the request `text`, or None when it is not a checkable kind.

    Every call of a request reads the same text: the latest texts' solutions are kept
    (a `Solution` never changes)."""
    for reader in (_code, _extraction, _classification, _context, _convert, _percent, _arith):
        found = reader(text)
        if found is not None:
            return found
    return None


def _eval(node: ast.AST) -> int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return int(_OPS[type(node.op)](_eval(node.left), _eval(node.right)))
    raise ValueError("not plain integer arithmetic")


def _arith(text: str) -> Solution | None:
    asks = r"(?:what(?: is|'s)?|compute|calculate|evaluate)\s+([\d(][\d\s+\-*()]*[\d)])"
    for span in re.findall(asks, text, re.I):
        # spaced operators: "12 * 3 + 4", never a date (2024-05-01) or a range (3-4)
        if not re.search(r"[\d)] [+\-*] [\d(]", span) or len(span) > 80:
            continue
        try:
            return Solution("number", _eval(ast.parse(span.strip(), mode="eval")))
        except (SyntaxError, ValueError, RecursionError):
            continue
    return None


def _percent(text: str) -> Solution | None:
    m = re.search(r"(\d+(?:\.\d+)?)\s*% of (\d+(?:\.\d+)?)", text)
    return Solution("number", round(float(m[1]) * float(m[2]) / 100, 2)) if m else None


def _convert(text: str) -> Solution | None:
    m = re.search(r"convert (-?\d+(?:\.\d+)?) ?(?:degrees )?(\w+) (?:in)?to (\w+)", text, re.I)
    if m is None:
        return None
    rule = UNITS.get((m[2].lower(), m[3].lower()))
    return Solution("number", round(rule(float(m[1])), 2)) if rule else None


_FACTS = (
    ("year", r"started in (\d{4})", r"\byear\b|\bwhen\b"),
    ("lead", r"led by ([A-Z][a-z]+ [A-Z][a-z]+)", r"\bwho\b|\blead"),
    ("size", r"has (\d+) engineers", r"how many|engineers"),
    ("city", r"office is in ([A-Z][a-z]+(?: [A-Z][a-z]+)?)", r"\bcity\b|\bwhere\b"),
    ("budget", r"budget is (\d+) euros", r"budget"),
)


def _context(text: str) -> Solution | None:
    m = re.search(r"Note:(.*?)Question:(.*)", text, re.S)
    if m is None:
        return None
    note, question = m[1], m[2]
    projects = list(re.finditer(r"The (\w+) project", note))
    asked = re.search(r"\b([A-Z]\w+) (?:project|team|office)", question)
    if not projects or asked is None:
        return None
    for i, start in enumerate(projects):
        if start[1] != asked[1]:
            continue
        end = projects[i + 1].start() if i + 1 < len(projects) else len(note)
        part = note[start.start() : end]
        for _, fact, cue in _FACTS:
            if re.search(cue, question, re.I) and (found := re.search(fact, part)):
                value = found[1]
                others = tuple(f[1] for f in re.finditer(fact, note) if f[1] != value)
                if value.isdigit():
                    return Solution("number", int(value), others)
                return Solution("text", value, others)
    return None


def _issue(message: str) -> str | None:
    lowered = message.lower()
    for label, words in _ISSUE_WORDS:
        if any(w in lowered for w in words):
            return label
    return None


def _classification(text: str) -> Solution | None:
    m = re.search(r"classify this (?:customer )?message.*?message:\s*(.+)", text, re.I | re.S)
    label = _issue(m[1]) if m else None
    return Solution("text", label, LABELS) if label else None


def _extraction(text: str) -> Solution | None:
    m = re.search(r"from this support ticket.*?:\s*\"(.+?)\"", text, re.I | re.S)
    if m is None:
        return None
    ticket = m[1]
    name = re.search(r"this is ([A-Z][a-z]+ [A-Z][a-z]+)", ticket)
    order = re.search(r"\b(\d{5})\b", ticket)
    issue = _issue(ticket)
    urgency = next((u for cue, u in _URGENCY if cue in ticket.lower()), None)
    if name is None or issue is None or urgency is None:
        return None
    fields = {
        "customer": name[1],
        "order_id": order[1] if order else None,
        "issue": issue,
        "urgency": urgency,
    }
    return Solution("json", fields)


def _code(text: str) -> Solution | None:
    m = re.search(r"```python\n(.*?)```", text, re.S)
    if m is None:
        return None
    code = m[1]
    if loop := re.search(
        r"total = (\d+)\nfor i in range\((\d+)\):\n\s+total \+= i \* (\d+)\nprint\(total\)", code
    ):
        a, n, k = (int(g) for g in loop.groups())
        return Solution("number", a + k * n * (n - 1) // 2)
    if words := re.search(
        r"words = \[(.*?)\]\nprint\(sum\(len\(w\) for w in words if len\(w\) > (\d+)\)\)", code
    ):
        items = re.findall(r"'(\w+)'", words[1])
        return Solution("number", sum(len(w) for w in items if len(w) > int(words[2])))
    if steps := re.search(r"x = (\d+)\nsteps = 0\nwhile x > 1:", code):
        x, count = int(steps[1]), 0
        while x > 1 and count < 10_000:
            x = x // 2 if x % 2 == 0 else 3 * x + 1
            count += 1
        return Solution("number", count)
    if word := re.search(r"s = '(\w+)'\nprint\(s\[::-1\]\.upper\(\) \+ str\(len\(s\)\)\)", code):
        s = word[1]
        return Solution("text", s[::-1].upper() + str(len(s)))
    return None
