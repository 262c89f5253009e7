"""The chat completion fields `moat serve` cannot honour, refused rather than ignored.

A graph decides its answer with its own nodes: it cannot call the client's tools, cannot
promise the client's output format, has no token log-probabilities and answers in text
only. A client that asks for any of these would otherwise get a 200 that lacks what it
asked for (no `tool_calls`, text where it expected JSON, `logprobs: null`), so the request
is refused with OpenAI's `unsupported_parameter` or `unsupported_value` and what to do
instead. Neutral values (`tools: []`, `tool_choice: "auto"`, `response_format: {"type":
"text"}`, `logprobs: false`) are what a request without the field means, and are taken.
Only the fields' kinds are checked before (`engine.models.chat_fields`, shared with `moat
sim-server`, which takes all of these).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from engine.requests import show_value

UNSUPPORTED_PARAMETER = "unsupported_parameter"
UNSUPPORTED_VALUE = "unsupported_value"

_NO_TOOLS = (
    "a graph decides its answer with its own nodes and never calls the client's tools "
    "(an answer never has `tool_calls`); send the request without {what} (a step that "
    "needs a tool belongs in the graph, as a node)"
)
_TOOL_CHOICES = ("none", "auto")
_NEUTRAL = 'it (or with "auto")'
_FORMAT = (
    "a graph's answer has the format its own nodes give it, which moat serve cannot "
    "change per request; declare the JSON schema in the graph (a model node's `schema`, "
    'or a validate node) and send `response_format` as {"type": "text"} or not at all'
)
_NO_LOGPROBS = (
    "a graph's answer is decided by its nodes, not sampled token by token, so it has no "
    "token log-probabilities; send the request without {what}"
)
_TEXT_ONLY = "a graph answers in text only; send the request without {what}"

Problem = tuple[str, str, str]
"""`(param, message, code)`: the field at fault, what is wrong and what to do, and
OpenAI's error code."""


def _shown(value: Any, limit: int = 60) -> str:
    """A request's value as the client wrote it, JSON, shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:  # (as deep as the parser took, which the encoder may not)
        return "(nested too deeply to show)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tools(body: Mapping[str, Any]) -> Problem | None:
    tools = body.get("tools")  # (a list of objects: checked before; `[]` asks for nothing)
    if tools:
        message = f"`tools` cannot be honoured: {_NO_TOOLS.format(what='them')}"
        return "tools", message, UNSUPPORTED_PARAMETER
    return _choice(body, "tool_choice", ("none", "auto", "required"))


def _functions(body: Mapping[str, Any]) -> Problem | None:
    """The legacy `functions` and `function_call` (the deprecated names of tools)."""
    functions = body.get("functions")
    if functions is not None and not (
        isinstance(functions, list) and all(isinstance(f, Mapping) for f in functions)
    ):
        message = f"`functions` must be a list of function objects, not {show_value(functions)}"
        return "functions", message, "invalid_value"
    if functions:
        what = "`functions` (the legacy name of `tools`)"
        message = f"{what} cannot be honoured: {_NO_TOOLS.format(what='them')}"
        return "functions", message, UNSUPPORTED_PARAMETER
    return _choice(body, "function_call", ("none", "auto"))


def _choice(body: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> Problem | None:
    """`tool_choice` or `function_call`: "none" and "auto" ask for no tool; "required"
    or a named tool asks for one, which a graph never calls."""
    choice = body.get(name)
    if choice is None or choice in _TOOL_CHOICES:
        return None
    if not isinstance(choice, Mapping) and choice not in choices:
        listed = ", ".join(f'"{c}"' for c in choices)
        message = f"`{name}` must be one of {listed} or an object, not {show_value(choice)}"
        return name, message, "invalid_value"
    message = f"`{name}` {_shown(choice)} cannot be honoured: {_NO_TOOLS.format(what=_NEUTRAL)}"
    return name, message, UNSUPPORTED_VALUE


def _response_format(body: Mapping[str, Any]) -> Problem | None:
    form = body.get("response_format")  # (an object with a string `type`: checked before)
    if form is None or form["type"] == "text":
        return None
    what = f"`response_format` {_shown({'type': form['type']})}"
    return "response_format", f"{what} cannot be honoured: {_FORMAT}", UNSUPPORTED_VALUE


def _logprobs(body: Mapping[str, Any]) -> Problem | None:
    if body.get("logprobs") is True:
        message = f"`logprobs: true` cannot be honoured: {_NO_LOGPROBS.format(what='it')}"
        return "logprobs", message, UNSUPPORTED_VALUE
    top = body.get("top_logprobs")
    if top:  # (a whole number from 0 to 20: checked before; 0 asks for none)
        what = f"`top_logprobs: {top}`"
        message = f"{what} cannot be honoured: {_NO_LOGPROBS.format(what='it (or with 0)')}"
        return "top_logprobs", message, UNSUPPORTED_VALUE
    return None


def _modalities(body: Mapping[str, Any]) -> Problem | None:
    modalities = body.get("modalities")
    if modalities is not None:
        if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
            shown = show_value(modalities)
            message = f'`modalities` must be a list of strings, e.g. ["text"], not {shown}'
            return "modalities", message, "invalid_value"
        others = [m for m in modalities if m != "text"]
        if others:
            what = f"`modalities` {_shown(modalities)}"
            hint = _TEXT_ONLY.format(what='them (or with ["text"])')
            return "modalities", f"{what} cannot be honoured: {hint}", UNSUPPORTED_VALUE
    if body.get("audio") is not None:
        message = f"`audio` cannot be honoured: {_TEXT_ONLY.format(what='`audio`')}"
        return "audio", message, UNSUPPORTED_PARAMETER
    return None


def _web_search(body: Mapping[str, Any]) -> Problem | None:
    if body.get("web_search_options") is not None:
        message = (
            "`web_search_options` cannot be honoured: a graph searches only through its "
            "own nodes (a retrieve node); send the request without it"
        )
        return "web_search_options", message, UNSUPPORTED_PARAMETER
    return None


_CHECKS: tuple[Callable[[Mapping[str, Any]], Problem | None], ...] = (
    _tools,
    _functions,
    _response_format,
    _logprobs,
    _modalities,
    _web_search,
)


def unsupported_problem(body: Mapping[str, Any]) -> Problem | None:
    """The first field of a chat completion body that asks for what a graph cannot give,
    as `(param, message, code)`, or None. The fields' kinds must have been checked
    (`chat_field_problem` found nothing)."""
    for check in _CHECKS:
        problem = check(body)
        if problem is not None:
            return problem
    return None
