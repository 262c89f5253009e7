"""OpenAI's chat completion fields, checked as OpenAI checks them, for servers that take
requests in its format: `moat serve` and `moat sim-server`.

Neither uses most of them (a graph's policy chooses the models and their settings; the
simulated models ignore sampling), but a client that sends one wrongly should learn it
from them as it would from OpenAI, rather than in production. Pure functions on JSON
values; each server raises its own error from the problem found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.requests import show_value

__all__ = ["chat_field_problem"]


def _number(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high


def _whole(low: float, high: float = float("inf")) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _stop(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value)


def _objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, Mapping) for item in value)


def _typed(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("type"), str)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _object(value: Any) -> bool:
    return isinstance(value, Mapping)


_FIELDS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (_number(0, 2), "a number from 0 to 2"),
    "top_p": (_number(0, 1), "a number from 0 to 1"),
    "presence_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "frequency_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "max_tokens": (_whole(1, 2**31 - 1), "a whole number from 1 to 2147483647"),
    "max_completion_tokens": (_whole(1, 2**31 - 1), "a whole number from 1 to 2147483647"),
    "seed": (_whole(-(2**63), 2**63 - 1), "a whole number of 64 bits"),
    "stop": (_stop, "a string or a list of at most 4 strings"),
    "logprobs": (_boolean, "true or false"),
    "top_logprobs": (_whole(0, 20), "a whole number from 0 to 20"),
    "tools": (_objects, "a list of tool objects"),
    "tool_choice": (lambda v: isinstance(v, str | Mapping), 'a string ("auto", ...) or an object'),
    "parallel_tool_calls": (_boolean, "true or false"),
    "response_format": (_typed, 'an object with a `type`, e.g. {"type": "text"}'),
    "stream_options": (_object, 'an object, e.g. {"include_usage": true}'),
    "metadata": (_object, "an object"),
}
"""Each field's check and what it must be, in OpenAI's words where it has them."""


def chat_field_problem(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field of a chat completion body OpenAI would refuse, as `(param,
    message)` (e.g. `("temperature", "`temperature` must be a number from 0 to 2, not
    'hot'")`), or None. `model`, `messages`, `n`, `stream` and `user` are the caller's to
    check (what each server takes of them differs)."""
    for name, (valid, what) in _FIELDS.items():
        value = body.get(name)
        if value is not None and not valid(value):
            return name, f"`{name}` must be {what}, not {show_value(value)}"
    options = body.get("stream_options")
    if options is not None:
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            param = "stream_options.include_usage"
            return param, f"`{param}` must be true or false, not {show_value(usage)}"
        if body.get("stream") is not True:
            message = "`stream_options` is for a streamed answer: send it with `stream: true`"
            return "stream_options", message
    return None
