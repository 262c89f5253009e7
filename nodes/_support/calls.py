"""Structured model calls shared by the built-in nodes: ask for JSON, read it leniently.

Nodes that need a JSON object from a model (critic, simulator, speculate's verifier) call
`ask_json`: it passes the schema to the gateway, takes the provider's parsed value when
there is one and otherwise runs the deterministic parser of `nodes._support.jsonfix`. A reply that
still cannot be read comes back as `value=None`, so every node decides its own safe
fallback instead of crashing on a malformed answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine import Completion, NodeContext
from nodes._support.jsonfix import JsonFixError, parse_lenient

__all__ = ["JsonReply", "ask_json", "clamp01", "object_schema"]
_NUMBER = (int, float)


@dataclass(frozen=True, slots=True)
class JsonReply:
    """A completion and the JSON object read from it (None when unreadable)."""

    completion: Completion
    value: dict[str, Any] | None
    fixes: tuple[str, ...] = ()


async def ask_json(
    ctx: NodeContext,
    model: str,
    *,
    prompt: str,
    schema: Mapping[str, Any],
    task: str,
    system: str | None = None,
    max_tokens: int | None = None,
) -> JsonReply:
    """Call `model` for a JSON object following `schema`; never raises on bad JSON."""
    completion = await ctx.model(model).complete(
        prompt=prompt, system=system, schema=schema, task=task, max_tokens=max_tokens
    )
    if isinstance(completion.json, dict):
        return JsonReply(completion, completion.json)
    try:
        parsed = parse_lenient(completion.text)
    except JsonFixError:
        return JsonReply(completion, None)
    value = parsed.value if isinstance(parsed.value, dict) else None
    return JsonReply(completion, value, parsed.fixes)


def object_schema(properties: Mapping[str, Any], required: list[str]) -> dict[str, Any]:
    """A JSON Schema for an object with these properties."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": required,
        "additionalProperties": False,
    }


def clamp01(value: Any, default: float) -> float:
    """`value` as a float in [0, 1], or `default` when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        return default
    return min(1.0, max(0.0, float(value)))
