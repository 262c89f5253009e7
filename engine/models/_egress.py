"""The egress policy the gateway applies before text leaves for a remote model.

Detection is `engine.pii`, the same detector the `redact` node uses: emails, phone numbers,
payment cards (Luhn-checked, so order numbers survive), IBANs, IPv4 and IPv6 addresses, US
SSNs, UK National Insurance numbers and secrets. Each hit becomes a typed placeholder such
as `[EMAIL]`, so the model still sees that something was there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import anyio.to_thread

from engine.pii import KINDS, Span, detect, redact

__all__ = [
    "INLINE_MAX_CHARS",
    "apply_egress_policy",
    "egress_off_loop",
    "egress_schema",
    "find_pii",
    "redact_text",
]

INLINE_MAX_CHARS = 4096
"""Messages up to this many characters in all are scanned inline, longer ones in a thread."""


def redact_text(text: str) -> tuple[str, dict[str, int]]:
    """Replace personal data and secrets in `text` by typed placeholders.

    Args:
        text: any text about to leave the machine.

    Returns:
        The redacted text, and how many items of each kind were replaced (the kinds of
        `engine.pii.KINDS`); kinds with no hit are left out.
    """
    return redact(text, _typed, placed=_placed)


def _typed(span: Span) -> str:
    return f"[{span.kind}]"


_TYPED = re.compile(r"\[(?:" + "|".join(KINDS) + r")\]")


def _placed(text: str) -> list[tuple[int, int]]:
    """Where typed placeholders stand in `text` (the text's own `[EMAIL]` too: no value
    holds one)."""
    return [m.span() for m in _TYPED.finditer(text)] if "[" in text else []


def find_pii(text: str) -> dict[str, int]:
    """Count the personal data and secrets in `text` without changing it."""
    counts: dict[str, int] = {}
    for span in detect(text):
        counts[span.kind] = counts.get(span.kind, 0) + 1
    return dict(sorted(counts.items()))


def apply_egress_policy(
    messages: list[dict[str, str]], policy: Mapping[str, Any]
) -> tuple[list[dict[str, str]], dict[str, int], bool]:
    """Apply the policy's `egress` settings to chat messages bound for a remote model.

    `egress.redact: true` redacts every message; otherwise `egress.allow_unredacted: false`
    blocks messages that contain personal data.

    Returns:
        The messages to send, what was found (redacted, or the reason to block) by kind,
        and whether the call must be blocked.
    """
    egress = policy.get("egress")
    egress = egress if isinstance(egress, Mapping) else {}
    found: dict[str, int] = {}
    if egress.get("redact"):
        redacted = []
        for m in messages:
            content, counts = redact_text(m.get("content", ""))
            redacted.append({**m, "content": content})
            for kind, n in counts.items():
                found[kind] = found.get(kind, 0) + n
        return redacted, found, False
    if egress.get("allow_unredacted", True) is False:
        found = find_pii("\n".join(m.get("content", "") for m in messages))
        return messages, found, bool(found)
    return messages, found, False


_SCHEMA_WORDS = frozenset(
    {"$anchor", "$id", "$ref", "$schema", "format", "pattern", "required", "type"}
)
"""Schema keywords whose text is the schema's own vocabulary (names, types, references,
patterns), not data: left as they are when they hold text or lists of text."""


def egress_schema(
    schema: Mapping[str, Any], policy: Mapping[str, Any]
) -> tuple[Mapping[str, Any], dict[str, int], bool]:
    """Apply the policy's `egress` settings to the JSON Schema of structured output, which
    the remote model reads with the chat: its descriptions, titles, examples, defaults,
    constants and enumerated values may carry personal data too.

    Returns:
        The schema to send (the same object when nothing was redacted), what was found by
        kind, and whether the call must be blocked.
    """
    egress = policy.get("egress")
    if not isinstance(egress, Mapping):
        return schema, {}, False
    redacting = bool(egress.get("redact"))
    if not redacting and egress.get("allow_unredacted", True) is not False:
        return schema, {}, False
    texts: list[str] = []
    _collect(schema, texts)
    if not texts or not find_pii("\n".join(texts)):
        return schema, {}, False
    found: dict[str, int] = {}
    redacted = _redacted(schema, found)
    if redacting:
        return redacted, found, False
    return schema, found, True


def _data(key: object, value: object) -> bool:
    """Whether `value`, under `key` of a schema object, may be data (not vocabulary):
    a vocabulary keyword's value is vocabulary only while it is text or a list of texts
    (a schema nested in it, `"type": [{"description": ...}]`, is read as data)."""
    if key not in _SCHEMA_WORDS or isinstance(value, Mapping):
        return True
    if isinstance(value, list | tuple):
        return not all(isinstance(item, str) for item in value)
    return False


def _collect(value: object, texts: list[str]) -> None:
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if _data(key, item):
                _collect(item, texts)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, texts)


def _redacted(value: Any, found: dict[str, int]) -> Any:
    if isinstance(value, str):
        text, counts = redact_text(value)
        for kind, n in counts.items():
            found[kind] = found.get(kind, 0) + n
        return text
    if isinstance(value, Mapping):
        return {k: _redacted(v, found) if _data(k, v) else v for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item, found) for item in value]
    return value


async def egress_off_loop(
    messages: list[dict[str, str]], policy: Mapping[str, Any]
) -> tuple[list[dict[str, str]], dict[str, int], bool]:
    """`apply_egress_policy`, in a worker thread when the messages are long.

    Scanning a 60 KB prompt takes tens of milliseconds; on the event loop that would stall
    every other request of the process.
    """
    if sum(len(m.get("content", "")) for m in messages) <= INLINE_MAX_CHARS:
        return apply_egress_policy(messages, policy)
    return await anyio.to_thread.run_sync(apply_egress_policy, messages, policy)
