"""What the `sim` provider knows about a call beyond its messages, in-process and over HTTP.

The simulated model answers from the call's messages plus a little context the engine
holds: which request, node, cycle and attempt the call is for (its seed), the request's
hidden labels, and where the request's own text sits in the messages (so a review prompt
that quotes principles about weapons is not read as a request about weapons). In-process
the provider reads that context from the `ProviderRequest`; over HTTP moat's `openai`
provider sends it in one header (`X-Moat-Call`, percent-encoded JSON) and `moat
sim-server` rebuilds the very same call from it, so a graph makes the same decisions on
either path. The provider sends it to `moat sim-server`'s models only (`sim-small`, ...),
never to another endpoint. It carries ids, counters, character offsets and, only for
requests that have them (benchmark workloads), the hidden labels: never the request's
text. Labels enter the answer on the server exactly as in-process: through the
noise model of `engine.models._sim_model`, never copied into an output.
"""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.models._egress import redact_text
from engine.models.base import ProviderRequest

__all__ = [
    "CALL_HEADER",
    "REQUEST_FIELDS",
    "CallContext",
    "call_context",
    "call_headers",
    "locate_request",
    "parse_call_header",
    "request_text",
]

CALL_HEADER = "X-Moat-Call"
"""The HTTP header that carries a `CallContext`."""
REQUEST_FIELDS = ("prompt", "text", "question", "query", "message", "input")
"""The input fields read as the request's own text, first non-empty one wins."""

Span = tuple[int, int, int]
"""(message index, start, end): where the request's own text is in the messages."""

_PLACEHOLDER = re.compile(r"\\\[([A-Z]+)\\\]")
"""An escaped `[KIND]` placeholder of `redact_text`, inside `re.escape`d text."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """The engine-side facts about one attempt that the sim needs besides the messages."""

    request_id: str
    seed: int
    """The run's seed for simulated models."""
    node_id: str
    cycle: int
    attempt: int
    labels: Mapping[str, Any] = field(default_factory=dict)
    span: Span | None = None
    """Where the request's own text is in the messages; None: not found in them."""


def _request_value(data: Mapping[str, Any]) -> str:
    for key in REQUEST_FIELDS:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _redacted_pattern(redacted: str) -> re.Pattern[str] | None:
    """A pattern matching `redacted` with any redactor's `[KIND]`/`[KIND_N]` placeholders."""
    escaped = re.escape(redacted)
    pattern, count = _PLACEHOLDER.subn(r"\\[\1(?:_\\d+)?\\]", escaped)
    return re.compile(pattern) if count else None


@functools.lru_cache(maxsize=1024)
def _forms(value: str) -> tuple[str, re.Pattern[str] | None]:
    """The redacted copy of a request's text and the pattern of its placeholders: every
    call of a request looks for the same text, so those of the latest requests are kept."""
    redacted = redact_text(value)[0]
    return redacted, _redacted_pattern(redacted)


def locate_request(messages: Sequence[Mapping[str, str]], data: Mapping[str, Any]) -> Span | None:
    """Where the request's text (from the input `data`) is in `messages`, latest first.

    The text is found verbatim or as a redacted copy (a graph that redacted the request
    sent only placeholders such as `[EMAIL]` or `[EMAIL_1]`); None when the graph sent
    the model no form of it.
    """
    value = _request_value(data)
    if not value:
        return None
    forms: tuple[str, re.Pattern[str] | None] | None = None  # the scan only when needed
    for index in reversed(range(len(messages))):
        content = messages[index].get("content", "")
        at = content.find(value)
        if at >= 0:
            return (index, at, at + len(value))
        redacted, pattern = forms = forms or _forms(value)
        at = content.find(redacted)
        if at >= 0:
            return (index, at, at + len(redacted))
        found = pattern.search(content) if pattern is not None else None
        if found is not None:
            return (index, found.start(), found.end())
    return None


def request_text(messages: Sequence[Mapping[str, str]], span: Span | None) -> str:
    """The request's own text as the model saw it: the span, else the last user message."""
    if span is not None:
        index, start, end = span
        if 0 <= index < len(messages):
            return messages[index].get("content", "")[start:end]
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


def call_context(call: ProviderRequest) -> CallContext:
    """The context of one attempt, with the request located in its messages."""
    info = call.request
    span = locate_request(call.messages, info.input)
    return CallContext(
        info.id, info.seed, call.node_id, call.cycle, call.attempt, info.labels, span
    )


def call_headers(context: CallContext) -> dict[str, str]:
    """The HTTP header that carries `context` to `moat sim-server`."""
    body: dict[str, Any] = {
        "request": context.request_id,
        "seed": context.seed,
        "node": context.node_id,
        "cycle": context.cycle,
        "attempt": context.attempt,
        "span": list(context.span) if context.span is not None else None,
    }
    if context.labels:
        body["labels"] = dict(context.labels)
    # key order kept: the sim draws its random answers in the order of the label fields
    text = json.dumps(body, separators=(",", ":"), default=str)
    return {CALL_HEADER: _header_value(text)}


def _header_value(text: str) -> str:
    """`text` as a header value that `urllib.parse.unquote` gives back: printable ASCII
    (what `json.dumps` writes) needs only its `%` escaped, anything else is quoted."""
    if text.isascii() and text.isprintable():
        return text.replace("%", "%25")
    return urllib.parse.quote(text, safe="")


_CALL_FIELDS = ("request", "seed", "node", "cycle", "attempt", "span", "labels")
"""The fields of an `X-Moat-Call` value (`call_headers` writes them)."""


def parse_call_header(value: str) -> CallContext:
    """The `CallContext` in an `X-Moat-Call` header value.

    Raises:
        ValueError: the value is not a context this module wrote.
    """
    try:
        body = json.loads(urllib.parse.unquote(value))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{CALL_HEADER}: not percent-encoded JSON ({exc.msg})") from None
    if not isinstance(body, dict):
        raise ValueError(f"{CALL_HEADER}: expected a JSON object")
    fields = ", ".join(_CALL_FIELDS)
    unknown = sorted(set(body) - set(_CALL_FIELDS))
    if unknown:
        raise ValueError(f"{CALL_HEADER}: unknown field {unknown[0]!r}; the fields are {fields}")
    if "request" not in body:
        raise ValueError(
            f"{CALL_HEADER}: no field 'request' (the request's id); the fields are {fields}"
        )
    request = body["request"]
    if not isinstance(request, str):
        raise ValueError(f"{CALL_HEADER}: field 'request' must be the request's id, a string")
    counts: dict[str, Any] = {name: body.get(name, 0) for name in ("seed", "cycle", "attempt")}
    for name, number in counts.items():
        if type(number) is not int:
            raise ValueError(
                f"{CALL_HEADER}: field {name!r} must be a whole number, not {number!r}"
            )
    node = body.get("node", "http")
    if not isinstance(node, str):
        raise ValueError(f"{CALL_HEADER}: field 'node' must be the node's id, a string")
    span = body.get("span")
    labels = body.get("labels") or {}
    if span is not None and not (
        isinstance(span, list) and len(span) == 3 and all(type(i) is int for i in span)
    ):
        raise ValueError(f"{CALL_HEADER}: field 'span' must be [message, start, end]")
    if not isinstance(labels, dict):
        raise ValueError(f"{CALL_HEADER}: field 'labels' must be an object")
    return CallContext(
        request_id=request,
        seed=counts["seed"],
        node_id=node,
        cycle=counts["cycle"],
        attempt=counts["attempt"],
        labels=labels,
        span=(span[0], span[1], span[2]) if span is not None else None,
    )
