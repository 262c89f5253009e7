"""PII detection with validators: which spans of a text are personal data or secrets.

Every kind pairs a permissive pattern with a validator, so ordinary text full of numbers
(dates, prices, versions, order numbers, ISBNs, times) is left alone: card numbers must
pass Luhn and carry a card-network prefix, IBANs the ISO 7064 mod-97 check and their
country's length, IP addresses must parse, US SSNs obey the issuing rules, UK National
Insurance numbers the HMRC prefix rules, and phone numbers need a recognisable shape
(`+CC`, North American 3-3-4 with valid area and exchange, or a national trunk `0`) or a
phone keyword right before them. Overlaps go to the more specific kind.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["KINDS", "PiiKind", "Span", "detect", "normalise_value"]

PiiKind = Literal["SECRET", "EMAIL", "IBAN", "CARD", "SSN", "NINO", "IP", "PHONE"]
"""The kinds of value `detect` finds."""
KINDS: tuple[str, ...] = get_args(PiiKind)
"""Every kind, most specific first (the order that wins overlaps)."""


@dataclass(frozen=True, slots=True)
class Span:
    """One detected value."""

    start: int
    end: int
    kind: str
    value: str


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,24}(?![\w-])"
)
_SECRETS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"),
    re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
]
_SECRET_ASSIGN = re.compile(
    r"(?i)\b(?:password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|"
    r"access[_-]?key|access[_-]?token|auth[_-]?token|token)\b[\"']?\s*[:=]\s*([\"']?)"
    r"(?P<value>[^\s\"',;]{4,})\1"
)
_CARD = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,22}(?![\w-]|[.,]\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,9}\b")
_SSN = re.compile(r"(?<![\w-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w-]|[.,]\d)")
_NINO = re.compile(r"\b([A-Z]{2}) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}")
_PHONE_SHAPES = [
    # +CC then 2-6 groups: international
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,6}(?![\w-]|[.,]\d)"),
    # North American 3-3-4 with separators, optional leading 1
    re.compile(
        r"(?<![\w#+.-])(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|[.,]\d)"
    ),
    # national trunk prefix 0 (UK, DE, FR, ...)
    re.compile(r"(?<![\w#+.-])0\d{1,4}(?:[ -]\d{2,6}){1,4}(?![\w-]|[.,]\d)"),
    re.compile(r"(?<![\w#+.-])0\d{9,10}(?![\w-]|[.,]\d)"),
]
_PHONE_BARE = re.compile(r"(?<![\w#+.-])1?\d{10}(?![\w-]|[.,]\d)")
_PHONE_WORDS = re.compile(
    r"(?i)(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|text|sms|reach|ring|"
    r"contact|number)\b[^\n\d]{0,16}$"
)
_NOT_PHONE_WORDS = re.compile(
    r"(?i)(?:order|invoice|ref|reference|ticket|case|tracking|isbn|account|acct|sku|"
    r"serial|id|no\.?)\s*[#:]?\s*$"
)
_IP_NOT_WORDS = re.compile(
    r"(?i)(?:§|\b(?:v|version|ver\.?|release|section|sect\.?|chapter|clause|step|figure|fig\.?|"
    r"table|rule|para\.?|oid|build))\s*$"
)
_IP_NOT_AFTER = re.compile(r"(?i)\s*(?:dotted\s+)?(?:version|release|build|update|patch)\b")
_SSN_WORDS = re.compile(r"(?i)(?:ssn|social security(?: number| no\.?)?|ss#)\D{0,12}$")
_NINO_BAD_PREFIX = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
    "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28,
    "PT": 25, "QA": 29, "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TR": 26,
}  # fmt: skip


def detect(text: str) -> list[Span]:
    """Every PII span of `text`, non-overlapping, in text order."""
    found: list[Span] = []
    for finder in _FINDERS:
        for span in finder(text):
            if not any(span.start < s.end and s.start < span.end for s in found):
                found.append(span)
    return sorted(found, key=lambda s: s.start)


def normalise_value(kind: str, value: str) -> str:
    """The identity of a value, so `(415) 555-0132` and `415.555.0132` share a placeholder."""
    if kind in ("PHONE", "CARD", "SSN"):
        return "".join(ch for ch in value if ch.isdigit())
    if kind in ("IBAN", "NINO"):
        return value.replace(" ", "").upper()
    if kind in ("EMAIL", "IP"):
        return value.lower()
    return value


def _secrets(text: str) -> Iterator[Span]:
    for pattern in _SECRETS:
        for m in pattern.finditer(text):
            yield Span(m.start(), m.end(), "SECRET", m.group())
    for m in _SECRET_ASSIGN.finditer(text):
        value = m.group("value")
        if len(value) >= 8 or any(not ch.isalpha() for ch in value):
            yield Span(m.start("value"), m.end("value"), "SECRET", value)


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield Span(m.start(), m.end(), "EMAIL", m.group())


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        groups = m.group().split(" ")
        # the last groups may be a following word: shrink until the checksum holds
        for k in range(len(groups), 0, -1):
            candidate = "".join(groups[:k]).upper()
            if _iban_ok(candidate):
                end = m.start() + len(" ".join(groups[:k]))
                yield Span(m.start(), end, "IBAN", text[m.start() : end])
                break


def _iban_ok(iban: str) -> bool:
    if not (iban[:2].isalpha() and iban[2:4].isdigit()):
        return False
    expected = _IBAN_LENGTHS.get(iban[:2])
    if (expected is not None and len(iban) != expected) or not 15 <= len(iban) <= 34:
        return False
    digits = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        raw = m.group()
        groups = re.split(r"[ -]", raw)
        for k in range(len(groups), 0, -1):
            digits = "".join(groups[:k])
            if not _card_grouping(groups[:k]):
                continue
            if 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn(digits):
                end = m.start() + sum(map(len, groups[:k])) + k - 1
                yield Span(m.start(), end, "CARD", text[m.start() : end])
                break


def _card_grouping(groups: list[str]) -> bool:
    """Cards are printed whole, in fours, or 4-6-5 / 4-6-4 (Amex, Diners)."""
    lengths = [len(g) for g in groups]
    if len(lengths) == 1:
        return True
    if lengths in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ssns(text: str) -> Iterator[Span]:
    for m in _SSN.finditer(text):
        area, sep, group, serial = m.groups()
        if not sep and not _SSN_WORDS.search(text[: m.start()]):
            continue
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        yield Span(m.start(), m.end(), "SSN", m.group())


def _ninos(text: str) -> Iterator[Span]:
    for m in _NINO.finditer(text):
        prefix = m.group(1)
        if prefix[0] in "DFIQUV" or prefix[1] in "DFIOQUV" or prefix in _NINO_BAD_PREFIX:
            continue
        yield Span(m.start(), m.end(), "NINO", m.group())


def _ips(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        if _IP_NOT_WORDS.search(text[max(0, m.start() - 12) : m.start()]):
            continue
        if _IP_NOT_AFTER.match(text, m.end()):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Span(m.start(), m.end(), "IP", m.group())
    for m in _IPV6.finditer(text):
        value = m.group().rstrip(".")
        if value.endswith(":") and not value.endswith("::"):
            value = value[:-1]  # a colon ending the sentence, as in "at fe80::1: it"
        if value.count(":") >= 2 and any(ch not in ":." for ch in value) and _is_ipv6(value):
            yield Span(m.start(), m.start() + len(value), "IP", value)


def _is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def _phones(text: str) -> Iterator[Span]:
    for i, pattern in enumerate(_PHONE_SHAPES):
        for m in pattern.finditer(text):
            if _phone_ok(text, m, nanp=i == 1):
                yield Span(m.start(), m.end(), "PHONE", m.group())
    for m in _PHONE_BARE.finditer(text):
        if _PHONE_WORDS.search(text[max(0, m.start() - 40) : m.start()]):
            yield Span(m.start(), m.end(), "PHONE", m.group())


def _phone_ok(text: str, m: re.Match[str], *, nanp: bool) -> bool:
    value = m.group()
    digits = "".join(ch for ch in value if ch.isdigit())
    before = text[max(0, m.start() - 20) : m.start()]
    if _NOT_PHONE_WORDS.search(before) and not _PHONE_WORDS.search(before):
        return False
    if value.startswith("+"):
        return 8 <= len(digits) <= 15
    if nanp:
        local = digits[-10:]
        return len(digits) in (10, 11) and local[0] in "23456789" and local[3] in "23456789"
    return 10 <= len(digits) <= 11


_FINDERS: list[Callable[[str], Iterator[Span]]] = [
    _secrets,
    _emails,
    _ibans,
    _cards,
    _ssns,
    _ninos,
    _ips,
    _phones,
]
