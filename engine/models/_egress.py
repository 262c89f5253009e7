"""A minimal built-in PII redactor the gateway applies before text leaves for a remote model.

It covers what must never reach a third party by accident: email addresses, phone
numbers, payment card numbers (Luhn-checked, so order numbers survive), IBANs, IPv4
addresses and API secrets in the `sk-...` style. Each hit becomes a typed placeholder
such as `[EMAIL]`, so the model still sees that something was there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["apply_egress_policy", "find_pii", "redact_text"]

_SECRET = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}\b")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"\b\d(?:[ \-]?\d){12,18}\b")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d \-().]{7,}\d\b")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _is_iban(match: str) -> bool:
    compact = match.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _is_phone(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 8 <= len(digits) <= 15


# Order matters: secrets and emails first (they contain digits a phone rule would eat),
# cards and IBANs before phones (long digit runs), IPs before phones (dotted digits).
_RULES: tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...] = (
    ("SECRET", _SECRET, None),
    ("EMAIL", _EMAIL, None),
    ("IBAN", _IBAN, _is_iban),
    ("CARD", _CARD, _is_card),
    ("IP", _IPV4, None),
    ("PHONE", _PHONE, _is_phone),
)


def redact_text(text: str) -> tuple[str, dict[str, int]]:
    """Replace personal data and secrets in `text` by typed placeholders.

    Args:
        text: any text about to leave the machine.

    Returns:
        The redacted text, and how many items of each kind were replaced (`EMAIL`,
        `PHONE`, `CARD`, `IBAN`, `IP`, `SECRET`); kinds with no hit are left out.
    """
    counts: dict[str, int] = {}
    for kind, pattern, check in _RULES:

        def _sub(
            m: re.Match[str], kind: str = kind, check: Callable[[str], bool] | None = check
        ) -> str:
            if check is not None and not check(m.group(0)):
                return m.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return f"[{kind}]"

        text = pattern.sub(_sub, text)
    return text, counts


def find_pii(text: str) -> dict[str, int]:
    """Count the personal data and secrets in `text` without changing it."""
    return redact_text(text)[1]


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
