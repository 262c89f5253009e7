"""Structured model calls shared by the built-in nodes: ask for JSON, read it leniently.

Nodes that need a JSON object from a model (critic, simulator, speculate's verifier) call
`ask_json`: it passes the schema to the gateway, takes the provider's parsed value when
there is one and otherwise runs the deterministic parser of `nodes._support.jsonfix`. A reply that
still cannot be read comes back as `value=None`, so every node decides its own safe
fallback instead of crashing on a malformed answer. So does a reply cut off mid-object
(`finish_reason: length`): the parser could close its brackets, but the fields it lost are
unknown, not absent, and a verdict read from half an answer is a guess. What the parser
reads from an unreadable reply taken as cut off anywhere is kept apart (`partial`), for a
node that shows text rather than trusting a verdict: what an answer wrote before its cut
is still the model's words.

The field readers (`unit`, `flag`, `choice`, `texts`) read one field the way models write
it (`"0.9"`, `"false"`, `"Refuse"`, one string for a list) and return None for what they
cannot read, NaN and off-scale numbers included, so a node never mistakes an unreadable
field for a confident one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from engine import Completion, NodeContext
from nodes._support.jsonfix import JsonFixError, parse_lenient

__all__ = [
    "JsonReply",
    "ask_json",
    "choice",
    "cut_off",
    "flag",
    "object_schema",
    "texts",
    "unit",
    "unreadable_codes",
]
_NUMBER = (int, float)
_TRUNCATED = frozenset({"closed_brackets", "closed_string"})
"""Parser fixes that mean the answer stopped before its end."""
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_NOTHING = frozenset({"", "none", "n/a", "null", "[]"})
"""What models write for an empty list."""


@dataclass(frozen=True, slots=True)
class JsonReply:
    """A completion and the JSON object read from it (None when unreadable)."""

    completion: Completion
    value: dict[str, Any] | None
    fixes: tuple[str, ...] = ()
    truncated: bool = False
    """The answer stopped mid-object; `value` is then None."""
    partial: dict[str, Any] | None = None
    """When `value` is None: the object the parser reads from the reply taken as cut off
    wherever it stopped (its last value may stop short, later fields are lost), if any."""
    prose: bool = False
    """The reply holds no JSON at all (no `{` or `[`): the model answered in words."""


async def ask_json(
    ctx: NodeContext,
    model: str,
    *,
    prompt: str,
    schema: Mapping[str, Any],
    task: str,
    system: str | None = None,
    max_tokens: int | None = None,
    speculative: bool = False,
) -> JsonReply:
    """Call `model` for a JSON object following `schema`; never raises on bad JSON."""
    bet: dict[str, Any] = (
        {"speculative": True} if speculative else {}
    )  # (a client of old needs no new word)
    completion = await ctx.model(model).complete(
        prompt=prompt, system=system, schema=schema, task=task, max_tokens=max_tokens, **bet
    )
    if isinstance(completion.json, dict):
        return JsonReply(completion, completion.json)
    try:
        parsed = parse_lenient(completion.text)
    except JsonFixError as exc:
        partial = None if exc.prose else _partial(completion.text)
        return JsonReply(completion, None, prose=exc.prose, partial=partial)
    value = parsed.value if isinstance(parsed.value, dict) else None
    if cut_off(parsed.fixes):
        partial = _partial(completion.text)
        return JsonReply(completion, None, parsed.fixes, truncated=True, partial=partial)
    return JsonReply(completion, value, parsed.fixes)


def _partial(text: str) -> dict[str, Any] | None:
    """The object `text` holds read as cut off wherever it stopped, if it holds one."""
    try:
        parsed = parse_lenient(text, cut_off=True)
    except JsonFixError:
        return None
    return parsed.value if isinstance(parsed.value, dict) else None


def cut_off(fixes: tuple[str, ...]) -> bool:
    """Whether the lenient parser's `fixes` show the text stopped before its end."""
    return not _TRUNCATED.isdisjoint(fixes)


def unreadable_codes(reply: JsonReply, code: str) -> list[str]:
    """The reason codes of an unreadable reply: `code`, and `ANSWER_TRUNCATED` when cut off."""
    return [code, "ANSWER_TRUNCATED"] if reply.truncated else [code]


def object_schema(properties: Mapping[str, Any], required: list[str]) -> dict[str, Any]:
    """A JSON Schema for an object with these properties."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": required,
        "additionalProperties": False,
    }


def unit(value: Any) -> float | None:
    """A number in [0, 1] from a number or a numeric string; None when it is missing, not a
    finite number, or off the scale (a risk of 7 is not a probability, whatever it meant)."""
    try:
        if isinstance(value, str):
            number = float(value.strip())
        elif isinstance(value, _NUMBER) and not isinstance(value, bool):
            number = float(value)
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return number if 0.0 <= number <= 1.0 else None  # NaN fails both comparisons


def flag(value: Any) -> bool | None:
    """A boolean from `true`/`false`, their spellings as strings, or 0/1; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def choice(value: Any, options: Collection[str]) -> str | None:
    """One of `options` (lower case), whatever the case and blanks; else None."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in options:
            return word
    return None


def texts(value: Any) -> list[str] | None:
    """A list of strings: a list as is, one string as a list of it (`"none"` as empty), a
    missing value as empty; None for anything else."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(x) for x in value]
    if isinstance(value, str):
        return [] if value.strip().lower() in _NOTHING else [value.strip()]
    return None
