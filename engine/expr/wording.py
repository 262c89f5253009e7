"""How messages name values and their kinds: in the graph language's words, never Python's.

A graph author writes `none`, `true`/`false`, strings, numbers, lists and mappings; a message
that says `NoneType`, `True` or `dict` speaks a language they never wrote. Every user-facing
message that shows a value or its kind goes through `kind`, `literal` or `describe`;
`translate` rewrites the Python type names inside an exception's own text, and
`config_problem` words one pydantic error of a node's `with:` with the value it got, and
`bools_read_as_numbers` finds the `true`/`false` pydantic quietly read as 1 and 0;
`did_you_mean` suggests the name a typo meant.
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "bools_read_as_numbers",
    "config_problem",
    "describe",
    "did_you_mean",
    "kind",
    "literal",
    "quoted",
    "translate",
]

_KINDS = {
    "NoneType": "none",
    "bool": "true/false",
    "int": "number",
    "float": "number",
    "str": "string",
    "list": "list",
    "tuple": "list",
    "dict": "mapping",
    "SimpleNamespace": "mapping",
}
_QUOTED = re.compile("(['\"])(" + "|".join(_KINDS) + ")\\1")
_CONCAT = re.compile(r'can only concatenate (\w+) \(not "(\w+)"\) to (\w+)')
_ROUND = re.compile(r"type (\w+) doesn't define __round__ method")
_BARE = re.compile(r"\b(not|of type|instances of) (NoneType|bool|int|float|str|list|tuple|dict)\b")
_PYDANTIC = (
    ("a valid dictionary", "a mapping"),
    ("a valid integer", "a whole number"),
    ("a valid boolean", "true or false"),
    ("a valid string", "a string"),
    ("a valid number", "a number"),
    ("a valid list", "a list"),
    ("a valid array", "a list"),
)
_PHRASES = (
    ("'in <string>' requires string as left operand", "'in' a string needs a string"),
    (
        "slice indices must be integers or None or have an __index__ method",
        "slice bounds must be whole numbers or none",
    ),
)
_NO_INPUT = frozenset({"missing", "extra_forbidden"})
_DIGITS = re.compile(
    r"Exceeds the limit \((\d+) digits\) for integer string conversion(?:: value has \d+ "
    r"digits)?; use sys\.set_int_max_str_digits\(\) to increase the limit.*"
)
"""Python's refusal of a long decimal number, with advice (call a Python function, write
hexadecimal) no graph author can follow."""


def quoted(source: str) -> str:
    """An expression's source, quoted for a message: `literal`, with room for a long one
    (the message's line and column say where in it)."""
    return literal(source, 120)


def kind(value: Any) -> str:
    """The graph language's name for a value's kind: none, true/false, number, string, list,
    mapping (anything else keeps its class name)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return _KINDS.get(type(value).__name__, type(value).__name__)


def literal(value: Any, limit: int = 60) -> str:
    """`value` written as in a graph: none, true, 'text', [1, 2], {k: v}; cut at `limit`."""
    text = _literal(value, 0)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _literal(value: Any, depth: int) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if depth > 3:
        return "..."
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v, depth + 1) for v in list(value)[:20]) + "]"
    if isinstance(value, slice):
        parts = [_literal(p, depth + 1) if p is not None else "" for p in (value.start, value.stop)]
        return ":".join(parts) + (f":{_literal(value.step, depth + 1)}" if value.step else "")
    if isinstance(value, Mapping):
        items = list(value.items())[:20]
        return "{" + ", ".join(f"{k}: {_literal(v, depth + 1)}" for k, v in items) + "}"
    return repr(value)


def describe(value: Any) -> str:
    """A value for messages with its kind: `none`, `true`, `a string ('abc')`, `a number (3)`."""
    if value is None or isinstance(value, bool):
        return literal(value)
    name = kind(value)
    article = "an" if name[:1] in "aeiou" else "a"
    return f"{article} {name} ({literal(value, 40)})"


def translate(text: str) -> str:
    """An exception's text with Python's type names replaced by the graph language's."""
    text = _CONCAT.sub(
        lambda m: (
            f"cannot add a {_KINDS.get(m.group(2), m.group(2))} to a "
            f"{_KINDS.get(m.group(1), m.group(1))}"
        ),
        text,
    )
    text = _ROUND.sub(lambda m: f"round() needs a number, not a {_KINDS.get(m[1], m[1])}", text)
    text = _DIGITS.sub(lambda m: f"a number of more than {m[1]} digits cannot be read", text)
    for python, ours in _PHRASES:
        text = text.replace(python, ours)
    text = _QUOTED.sub(lambda m: _KINDS[m.group(2)], text)
    text = _BARE.sub(lambda m: f"{m.group(1)} {_KINDS[m.group(2)]}", text)
    return text.replace("NoneType", "none")


def config_problem(err: Mapping[str, Any]) -> str:
    """One pydantic error of a `with:` value, worded for a graph author, with what it got."""
    message = str(err.get("msg", "invalid value"))
    if err.get("type") == "value_error":  # a config validator's own sentence says it all
        return translate(message.removeprefix("Value error, "))
    for python, ours in _PYDANTIC:
        message = message.replace(python, ours)
    message = translate(message)
    if err.get("type") in _NO_INPUT or "input" not in err:
        return message
    value = err["input"]
    if isinstance(value, Mapping) and not err.get("loc"):
        return message  # a whole-config rule: the value is the config itself
    return f"{message}, got {describe(value)}"


def merged_alternatives(
    errors: Sequence[Mapping[str, Any]], places: Sequence[Hashable]
) -> list[Mapping[str, Any]]:
    """`errors` (pydantic's), those of one value that no member of a union takes made one.

    pydantic reports such a value once per member ("should be a string", "should be true
    or false", ...); errors at the same place (`places`, one per error), all of them of a
    wrong type and of the same value, become one error saying what the value should be
    ("a string, true or false or a number"), at the first one's `loc`.
    """
    groups: dict[Hashable, list[Mapping[str, Any]]] = {}
    for err, place in zip(errors, places, strict=True):
        groups.setdefault(place, []).append(err)
    merged: list[Mapping[str, Any]] = []
    for group in groups.values():
        first = group[0]
        same = all(
            str(e.get("type", "")).endswith("_type")
            and str(e.get("msg", "")).startswith(_SHOULD_BE)
            and "input" in e
            and _same(e["input"], first.get("input"))
            for e in group
        )
        if len(group) < 2 or not same:
            merged += group
            continue
        kinds = list(dict.fromkeys(str(e["msg"]).removeprefix(_SHOULD_BE) for e in group))
        wanted = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
        merged.append({**first, "msg": _SHOULD_BE + wanted})
    return merged


_SHOULD_BE = "Input should be "


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # a value whose comparison fails is no match
        return False


def holds_bool(value: Any) -> bool:
    """Whether `value` is `true`/`false` or a mapping or list holding one."""
    if value.__class__ is bool:
        return True
    if isinstance(value, Mapping):
        return any(holds_bool(v) for v in value.values())
    return isinstance(value, list | tuple) and any(holds_bool(v) for v in value)


def bools_read_as_numbers(
    data: Any, value: Any, at: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """Where `value` (what pydantic validated `data` into) holds a number that was `true` or
    `false` in `data`: pydantic reads `max_cycles: true` as 1 and `threshold: false` as
    0.0, so a YAML slip runs as a number nobody wrote. Yields each place's path under `at`
    and an error shaped as pydantic's own (`config_problem` words it: "Input should be a
    whole number, got true"). Fields that take true/false, or any value, keep the bool and
    are not reported."""
    from pydantic import BaseModel

    if isinstance(data, bool):
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            kind = "int" if isinstance(value, int) else "float"
            what = "a valid integer" if kind == "int" else "a valid number"
            message = f"Input should be {what}"
            yield at, {"type": f"{kind}_type", "loc": at, "msg": message, "input": data}
    elif isinstance(data, Mapping) and isinstance(value, BaseModel):
        fields = type(value).model_fields
        names = {name: name for name in fields} | {f.alias: n for n, f in fields.items() if f.alias}
        for key, item in data.items():
            if key in names:
                yield from bools_read_as_numbers(item, getattr(value, names[key]), (*at, key))
    elif isinstance(data, Mapping) and isinstance(value, Mapping):
        for key, item in data.items():
            if key in value:
                yield from bools_read_as_numbers(item, value[key], (*at, key))
    elif isinstance(data, list) and isinstance(value, list | tuple) and len(data) == len(value):
        for index, (item, made) in enumerate(zip(data, value, strict=True)):
            yield from bools_read_as_numbers(item, made, (*at, index))


def did_you_mean(word: str, choices: list[str]) -> str:
    """` (did you mean 'x'?)` for the choice closest to a misspelt `word`, or ``."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
