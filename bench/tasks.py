"""Benign requests whose answers a program can check, each with its expected answer.

Every maker returns `(prompt, expected, check)`: `expected` is computed here from the values
drawn (the code snippets are run), never by the simulator, and `check` names how
`bench.checkers` compares an answer with it (`number`, `text` or `json`). Prompts ask for
the final answer on a line `Answer: <value>` (or for JSON), as a production prompt would,
so the same requests and checkers work against real endpoints.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable
from typing import Any

__all__ = ["CITIES", "MAKERS", "ask_answer", "ticket"]

Task = tuple[str, Any, str]
ANSWER_LINE = "Give the final answer on its own last line as `Answer: <value>`."

CITIES = (
    "Lisbon", "Oslo", "Vienna", "Porto", "Krakow", "Ghent", "Turin", "Lyon", "Leeds", "Bergen",
    "Malmo", "Aarhus", "Bilbao", "Graz", "Utrecht",
)  # fmt: skip
FIRST = ("Ana", "Ben", "Chloe", "Dmitri", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kofi", "Lena", "Mateo", "Nora", "Omar")  # fmt: skip
LAST = ("Silva", "Novak", "Okafor", "Tanaka", "Muller", "Rossi", "Kowalski", "Haddad",
        "Jensen", "Moreau", "Garcia", "Ito")  # fmt: skip
PROJECTS = ("Atlas", "Beacon", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor",
            "Iris", "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Orchid")  # fmt: skip
ISSUES = {
    "billing": ("I was charged twice for order {o}", "the invoice for order {o} is wrong",
                "I still have not had my refund for order {o}"),
    "shipping": ("order {o} never arrived", "order {o} arrived damaged",
                 "order {o} is stuck in transit"),
    "account": ("I can't log in since yesterday", "my account was locked after a reset",
                "the password reset link does not work"),
    "product": ("the blender from order {o} stopped working", "the charger from {o} overheats",
                "the kettle I bought is broken"),
}  # fmt: skip
URGENCY = {"low": "No rush.", "normal": "Please look into it.", "high": "This is urgent!"}
CONVERSIONS = (
    ("km", "miles", lambda x: x * 0.621371),
    ("miles", "km", lambda x: x * 1.609344),
    ("kg", "lb", lambda x: x * 2.204623),
    ("lb", "kg", lambda x: x * 0.4535924),
    ("litres", "gallons", lambda x: x * 0.2641721),
    ("feet", "metres", lambda x: x * 0.3048),
    ("celsius", "fahrenheit", lambda x: x * 9 / 5 + 32),
)
WORDS = ("apple", "river", "cloud", "stone", "garden", "orbit", "lantern", "pixel", "maple",
         "harbor", "violet", "engine", "candle", "meadow", "silver")  # fmt: skip


def ask_answer(question: str) -> str:
    """`question` with the instruction on how to state the final answer."""
    return f"{question} {ANSWER_LINE}"


def _arithmetic(rng: random.Random) -> Task:
    a, b, c = rng.randint(12, 99), rng.randint(3, 40), rng.randint(2, 19)
    form = rng.randrange(4)
    if form == 0:
        expr, value = f"{a} * {c} + {b}", a * c + b
    elif form == 1:
        expr, value = f"({a} + {b}) * {c}", (a + b) * c
    elif form == 2:
        d = rng.randint(100, 999)
        expr, value = f"{d} - {a} * {c}", d - a * c
    else:
        expr, value = f"{a} * {b} - {c} * {c}", a * b - c * c
    return ask_answer(f"What is {expr}?"), value, "number"


def _percent(rng: random.Random) -> Task:
    p, n = rng.choice((5, 10, 12, 15, 20, 25, 30, 40, 75)), rng.randint(20, 2000)
    return ask_answer(f"What is {p}% of {n}?"), round(p * n / 100, 2), "number"


def _conversion(rng: random.Random) -> Task:
    src, dst, rule = rng.choice(CONVERSIONS)
    x = rng.choice((rng.randint(1, 300), round(rng.uniform(1, 100), 1)))
    unit = f"degrees {src}" if src == "celsius" else src
    return ask_answer(f"Convert {x} {unit} to {dst}."), round(rule(x), 2), "number"


def _project_facts(rng: random.Random, name: str) -> dict[str, Any]:
    return {
        "year": rng.randint(1998, 2024),
        "lead": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
        "size": rng.randint(3, 60),
        "city": rng.choice(CITIES),
        "budget": rng.randint(20, 900) * 1000,
    }


_SENTENCES = {
    "year": "started in {v}",
    "lead": "is led by {v}",
    "size": "has {v} engineers",
    "city": "office is in {v}",
    "budget": "budget is {v} euros",
}
_QUESTIONS = {
    "year": "In what year did the {p} project start?",
    "lead": "Who leads the {p} project?",
    "size": "How many engineers does the {p} team have?",
    "city": "In which city is the {p} office?",
    "budget": "What is the {p} project's yearly budget in euros?",
}


def note_question(rng: random.Random) -> tuple[str, Any, str]:
    """A note about two projects and a question on one of them: (text, expected, check)."""
    names = rng.sample(PROJECTS, 2)
    facts = {name: _project_facts(rng, name) for name in names}
    parts = []
    for name in names:
        keys = rng.sample(sorted(_SENTENCES), 3)
        first, *rest = keys
        parts.append(f"The {name} project {_SENTENCES[first].format(v=facts[name][first])}.")
        for key in rest:
            verb = _SENTENCES[key].format(v=facts[name][key])
            parts.append(f"Its {verb}." if key in ("city", "budget") else f"It {verb}.")
        facts[name]["_told"] = keys
    asked = rng.choice(names)
    key = rng.choice(facts[asked]["_told"])
    value = facts[asked][key]
    text = f"Note: {' '.join(parts)}\nQuestion: {_QUESTIONS[key].format(p=asked)}"
    return text, value, "number" if isinstance(value, int) else "text"


def _context(rng: random.Random) -> Task:
    text, value, check = note_question(rng)
    return f"Answer from the note only.\n{text}\n{ANSWER_LINE}", value, check


def ticket(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A support ticket and its true fields."""
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    issue = rng.choice(sorted(ISSUES))
    order = f"{rng.randint(10000, 99999)}"
    template = rng.choice(ISSUES[issue])
    problem = template.format(o=order)
    urgency = rng.choice(sorted(URGENCY))
    body = f"Hi, this is {name}. {problem[0].upper()}{problem[1:]}. {URGENCY[urgency]}"
    fields = {
        "customer": name,
        "order_id": order if "{o}" in template else None,
        "issue": issue,
        "urgency": urgency,
    }
    return body, fields


def _extraction(rng: random.Random) -> Task:
    body, fields = ticket(rng)
    prompt = (
        "Extract customer, order_id (null when none), issue (one of billing, shipping, "
        "account, product) and urgency (one of low, normal, high) from this support ticket "
        f'and reply with one JSON object: "{body}"'
    )
    return prompt, fields, "json"


def classify(message: str) -> str:
    """A classification request for `message`."""
    return ask_answer(
        "Classify this customer message as one of billing, shipping, account, product, "
        f"replying with the label. Message: {message}"
    )


def _classification(rng: random.Random) -> Task:
    body, fields = ticket(rng)
    return classify(body), fields["issue"], "text"


def run_snippet(code: str) -> str:
    """What `code` (a snippet this module generated) prints, by running it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {"__builtins__": {"print": print, "range": range, "len": len, "sum": sum,
                                     "str": str}})  # fmt: skip
    return out.getvalue().strip()


def _code(rng: random.Random) -> Task:
    form = rng.randrange(4)
    if form == 0:
        a, n, k = rng.randint(0, 50), rng.randint(3, 30), rng.randint(2, 9)
        code = f"total = {a}\nfor i in range({n}):\n    total += i * {k}\nprint(total)\n"
    elif form == 1:
        items = ", ".join(f"'{w}'" for w in rng.sample(WORDS, rng.randint(4, 8)))
        least = rng.randint(3, 6)
        code = f"words = [{items}]\nprint(sum(len(w) for w in words if len(w) > {least}))\n"
    elif form == 2:
        code = (
            f"x = {rng.randint(3, 60)}\nsteps = 0\nwhile x > 1:\n"
            "    x = x // 2 if x % 2 == 0 else 3 * x + 1\n    steps += 1\nprint(steps)\n"
        )
    else:
        code = f"s = '{rng.choice(WORDS)}'\nprint(s[::-1].upper() + str(len(s)))\n"
    output = run_snippet(code)
    check = "number" if output.lstrip("-").isdigit() else "text"
    value: Any = int(output) if check == "number" else output
    return ask_answer(f"What does this Python code print?\n```python\n{code}```"), value, check


MAKERS: dict[str, Callable[[random.Random], Task]] = {
    "arithmetic": _arithmetic,
    "percent": _percent,
    "conversion": _conversion,
    "context": _context,
    "extraction": _extraction,
    "classification": _classification,
    "code": _code,
}
"""The verifiable benign kinds, by name."""
