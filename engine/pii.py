"""PII detection with validators: which spans of a text are personal data or secrets.

The one detector of the project: the `redact` node and the gateway's `egress: {redact: true}`
both call `detect`. Every kind pairs a permissive candidate pattern with a validator, so
ordinary text full of numbers (dates, prices, versions, order numbers, ISBNs, times) is left
alone: card numbers must pass Luhn and carry a card-network prefix, IBANs the ISO 7064
mod-97 check and their country's length, IP addresses (v4, v6 in every notation, with a
zone) must parse, US SSNs obey the issuing rules, UK National Insurance numbers the HMRC
prefix rules, and phone numbers need a recognisable shape (`+CC` or `00CC`, North American
3-3-4, a national trunk `0` as in `(020) 7946 0777` or `0171 2345679`, a bracketed area code
as in `(11) 91234-5678`) or a phone word right before them. Overlaps go to the more specific
kind.

Request text is hostile input, so every pattern here runs in linear time: candidates start
only where a run begins (look-behinds), repeats are bounded or over disjoint alternatives,
and context is read from fixed-size windows, never from the whole prefix.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["KINDS", "PiiKind", "Placed", "Span", "detect", "redact"]

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
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,8}"
    r"\.[A-Za-z]{2,24}(?![\w-])"
)
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z ]{0,40}PRIVATE KEY-----")
_SECRETS = [
    re.compile(r"(?<![\w-])sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"),
    re.compile(r"(?<!\w)[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    re.compile(r"(?<!\w)(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?<!\w)gh[pousr]_[A-Za-z0-9]{36,}\b"),
    re.compile(r"(?<!\w)github_pat_[A-Za-z0-9_]{22,}"),
    re.compile(r"(?<![\w-])xox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}"),
    re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
]
_SECRET_ASSIGN = re.compile(
    r"(?i)\b(?:password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|"
    r"access[_-]?key|access[_-]?token|auth[_-]?token|token)\b[\"']?[ \t]{0,8}[:=][ \t]{0,8}"
    r"([\"']?)(?P<value>[^\s\"',;]{4,})\1"
)
# Every start of a run of digit groups is tried (zero-width, bounded body), so a card right
# after another number ("12 4111 1111 1111 1111") is still seen.
_CARD = re.compile(r"(?<![\w.,-])(?=([2-6]\d{3}(?:[ -]?\d){9,18}))")
_CARD_RUNS_ON = re.compile(r"[\w-]|[.,]\d")
# Every word that opens like an IBAN is tried (zero-width, bounded body), so an IBAN right
# after a near miss ("code XY12 or DE89...") or inside a longer run is still seen. One
# character per step (an alphanumeric, or a space that precedes one): no two ways to split a
# run, so a long run of letter-digit groups cannot make the engine backtrack.
_IBAN = re.compile(r"(?<![A-Za-z0-9])(?=([A-Za-z]{2}\d{2}(?:[A-Za-z0-9]| (?=[A-Za-z0-9])){11,40}))")
"""An IBAN as printed (groups of four or unbroken), in either case: people type them in
lower case too. The country's length and the check digits decide."""
_SSN = re.compile(r"(?<![\w-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w-]|[.,]\d)")
_NINO = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2}) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.%])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}"
    r"(?:%[A-Za-z0-9_.-]{1,32})?"
)
# A phone candidate starts at a digit, `+` or `(` not inside a word or a number, where one of
# the shapes `_phone_shape` accepts can begin (a cheap gate: most starts in digit-heavy text
# fail it at once). The zero-width look-ahead yields every such start, so a number right
# after a failed candidate is still seen, and its bounded body keeps each start O(1).
_PHONE_GATE = (
    r"\+\d(?=(?:[ .()/-]{0,2}\d){7})"  # +CC, eight digits or more
    r"|00[1-9](?=(?:[ .-]?\d){7})"  # 00CC
    r"|(?:1[ .-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d[ .-])[2-9]\d\d[ .-]\d{4}(?!\d)"  # NANP
    r"|\(?0[1-9](?=(?:[ ()./-]{0,2}\d){7})"  # national trunk 0
    r"|\(\d{2,4}\) ?\d{4}"  # bracketed area code
)
_PHONE_START = r"(?<![\w+#.,/-])(?<!\d:)"
_PHONE_BODY = r"(?=([+(]?\d[\d ()./-]{5,26}\d\)?))"
_PHONE_CANDIDATE = re.compile(_PHONE_START + f"(?=(?:{_PHONE_GATE}))" + _PHONE_BODY)
_PHONE_AFTER_WORD = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|text|sms|reach|ring|"
    r"contact|number|nummer|numéro|teléfono|telefono|handy|móvil)\b[^\n\d+(]{0,16}"
    + _PHONE_START
    + _PHONE_BODY
)
_PHONE_TOKEN = re.compile(r"\+?\d+|\(\d{1,5}\)")
_REFERENCE_WORDS = re.compile(
    r"(?i)(?:order|invoice|ref|reference|ticket|case|tracking|isbn|issn|account|acct|sku|"
    r"serial|id|no\.?|batch|lot|part|model|build|page|pages|pp\.?)\s{0,3}[#:]?\s{0,3}$"
)
_IP_NOT_WORDS = re.compile(
    r"(?i)(?:§|\b(?:v|version|ver\.?|release|section|sect\.?|chapter|clause|step|figure|fig\.?|"
    r"table|rule|para\.?|oid|build))\s{0,3}$"
)
_IP_NOT_AFTER = re.compile(r"(?i)\s{0,3}(?:dotted\s{1,3})?(?:version|release|build|update|patch)\b")
_SSN_WORDS = re.compile(r"(?i)(?:ssn|social security(?: number| no\.?)?|ss#)\D{0,12}$")
_NINO_BAD_PREFIX = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip
_WINDOW = 40
"""How many characters before a candidate its context words are looked for in."""


def detect(text: str) -> list[Span]:
    """Every PII span of `text`, non-overlapping, in text order.

    The same text is often scanned twice in a request (the `redact` node, then the sim or
    the gateway looking for the request in a prompt): the spans of the latest short texts
    are kept (`KEPT_TEXTS`), and each caller gets a list of its own.
    """
    if len(text) > KEPT_MAX_CHARS:
        return _detect(text)
    return list(_kept(text))


KEPT_TEXTS = 1024
"""Texts whose spans are kept, latest first."""
KEPT_MAX_CHARS = 4096
"""Longer texts are scanned every time (and often in a worker thread)."""


@functools.lru_cache(maxsize=KEPT_TEXTS)
def _kept(text: str) -> tuple[Span, ...]:
    return tuple(_detect(text))


def _detect(text: str) -> list[Span]:
    starts: list[int] = []
    spans: list[Span] = []
    for finder in _finders(text):
        for span in finder(text):
            # spans are kept sorted and disjoint, so only the neighbours can overlap
            i = bisect.bisect_right(starts, span.start)
            if i and spans[i - 1].end > span.start:
                continue
            if i < len(spans) and spans[i].start < span.end:
                continue
            starts.insert(i, span.start)
            spans.insert(i, span)
    return spans


Placed = Callable[[str], list[tuple[int, int]]]
"""Where a redaction's own placeholders stand in a text, as sorted (start, end) pairs."""

_REACH = 256
"""How far around a new placeholder a later pass of `redact` looks for the values it
exposed: beyond the detector's context windows (`_WINDOW` characters before a value, a
few after it)."""
_EDGE = 64
"""A span this close to a window's cut may read differently in the whole text: it is left
to the scan of the whole text."""


def redact(
    text: str,
    placeholder: Callable[[Span], str],
    kinds: Collection[str] = KINDS,
    *,
    placed: Placed,
    spans: list[Span] | None = None,
) -> tuple[str, dict[str, int]]:
    """`text` with every detected span of `kinds` replaced by `placeholder(span)`, until
    the detector finds none left outside the placeholders.

    Values written back to back hide one another: in `+44 20 7946 0958+44 20 7946 0959`
    the second number follows a digit, so it does not start a phone number until the first
    is a placeholder. So redaction goes on, taking from then on only the values next to a
    placeholder (no letter or digit between, `_GAP`): those are what the glue hid. A value
    further off may read differently too, a placeholder being shorter than what it
    replaced brings a context word nearer (`NI number [NINO]; ISBN 978-3-16-148410-0`), but
    the first scan judged it in its own context. Each further pass reads only the text
    around the placeholders the pass before put in (`_REACH` characters either side), so a
    chain of a thousand such values costs a thousand small windows, not a thousand scans
    of the text, and one last scan of the whole text confirms that nothing is left (a
    text of one window is read whole at once). A span that covers a placeholder
    (`placed`) is not a value; every pass replaces some text outside them, so it ends.

    Args:
        text: the text to redact.
        placeholder: what replaces a span.
        kinds: the kinds to replace (others are left as they are).
        placed: where the placeholders `placeholder` hands out stand in a text.
        spans: `detect(text)`, when the caller has it already.

    Returns:
        The redacted text and the number of replaced spans by kind, sorted by kind.
    """
    found: dict[str, int] = {}
    spans = detect(text) if spans is None else spans
    whole = True  # the spans are those of the whole text
    while True:
        text, regions = _replace(text, placeholder, kinds, spans, found)
        if regions:
            spans, whole = _exposed(text, regions, kinds, placed)
        elif whole:
            return text, dict(sorted(found.items()))
        else:  # the windows found nothing more: confirm on the whole text
            spans, whole = _free(text, detect(text), kinds, placed), True


def _replace(
    text: str,
    placeholder: Callable[[Span], str],
    kinds: Collection[str],
    spans: list[Span],
    found: dict[str, int],
) -> tuple[str, list[tuple[int, int]]]:
    """`text` with `spans` of `kinds` (sorted, disjoint) replaced, counted in `found`, and
    where the new placeholders stand."""
    parts: list[str] = []
    regions: list[tuple[int, int]] = []
    pos = at = 0
    for span in spans:
        if span.kind not in kinds:
            continue
        token = placeholder(span)
        parts += (text[pos : span.start], token)
        at += span.start - pos
        regions.append((at, at + len(token)))
        at += len(token)
        found[span.kind] = found.get(span.kind, 0) + 1
        pos = span.end
    if not regions:
        return text, regions
    parts.append(text[pos:])
    return "".join(parts), regions


def _exposed(
    text: str, regions: list[tuple[int, int]], kinds: Collection[str], placed: Placed
) -> tuple[list[Span], bool]:
    """The spans of `kinds` that the placeholders at `regions` exposed, and whether the
    whole text was read: each region is read with `_REACH` characters either side
    (overlapping windows merged); a span near a window's cut is left for the scan of the
    whole text."""
    if len(text) <= 2 * _REACH:  # one window would hold it all
        return _free(text, detect(text), kinds, placed), True
    windows: list[list[int]] = []
    for start, end in regions:
        lo, hi = max(0, start - _REACH), min(len(text), end + _REACH)
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], hi)
        else:
            windows.append([lo, hi])
    spans: list[Span] = []
    for lo, hi in windows:
        window = text[lo:hi]
        for s in _free(window, detect(window), kinds, placed):
            if (lo and s.start < _EDGE) or (hi < len(text) and s.end > hi - lo - _EDGE):
                continue
            spans.append(Span(s.start + lo, s.end + lo, s.kind, s.value))
    return spans, False


def _free(text: str, spans: list[Span], kinds: Collection[str], placed: Placed) -> list[Span]:
    """`spans` of `kinds` next to one of the placeholders `placed` finds in `text` (`_GAP`)
    that cover none."""
    taken = placed(text) if spans else []
    free = []
    for span in spans:
        if span.kind not in kinds:
            continue
        i = bisect.bisect_left(taken, (span.end, span.end))  # the first one after the span
        if i and taken[i - 1][1] > span.start:
            continue  # it covers a placeholder
        before = taken[i - 1][1] if i else -_GAP - 1
        after = taken[i][0] if i < len(taken) else len(text) + _GAP + 1
        if _next_to(text, before, span.start) or _next_to(text, span.end, after):
            free.append(span)
    return free


_GAP = 8
"""How far apart a value and a placeholder are next to one another: at most this many
characters, none of them a letter or digit (a space, a comma, a `+`: what glue leaves)."""


def _next_to(text: str, start: int, end: int) -> bool:
    return end - start <= _GAP and not any(c.isalnum() for c in text[start:end])


def _before(text: str, start: int) -> str:
    return text[max(0, start - _WINDOW) : start]


def _secrets(text: str) -> Iterator[Span]:
    yield from _pem_keys(text)
    for pattern in _SECRETS:
        for m in pattern.finditer(text):
            yield Span(m.start(), m.end(), "SECRET", m.group())
    for m in _SECRET_ASSIGN.finditer(text):
        value = m.group("value")
        if len(value) >= 8 or any(not ch.isalpha() for ch in value):
            yield Span(m.start("value"), m.end("value"), "SECRET", value)


def _pem_keys(text: str) -> Iterator[Span]:
    """PEM private keys, BEGIN to END; searched forward once, so unclosed keys cost O(n)."""
    pos = 0
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        end = _PEM_END.search(text, begin.end())
        if end is None:
            return  # no END anywhere after: no later BEGIN can be closed either
        yield Span(begin.start(), end.end(), "SECRET", text[begin.start() : end.end()])
        pos = end.end()


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield Span(m.start(), m.end(), "EMAIL", m.group())


def _ibans(text: str) -> Iterator[Span]:
    taken = 0
    for m in _IBAN.finditer(text):
        start, candidate = m.start(1), m.group(1)
        if start < taken:
            continue  # a group of the IBAN just found
        expected = _IBAN_LENGTHS.get(candidate[:2].upper())
        if expected is None:
            continue
        end = _iban_end(candidate, expected)
        if end is None:
            continue
        value = candidate[:end]
        if _iban_ok(value.replace(" ", "")):
            taken = start + end
            yield Span(start, taken, "IBAN", value)


def _iban_end(candidate: str, length: int) -> int | None:
    """Where an IBAN of `length` characters ends in `candidate`, if it is printed whole.

    Printed IBANs are either unbroken or in groups of four; the value must end at a word end.
    """
    spaced = candidate[4:5] == " "  # grouped in fours from the start, or not at all
    end = length + (length - 1) // 4 if spaced else length
    if end > len(candidate):
        return None
    value = candidate[:end]
    if spaced and any(value[i] != " " for i in range(4, len(value), 5)):
        return None
    if spaced and value.count(" ") != (length - 1) // 4:
        return None
    if end < len(candidate) and candidate[end] != " ":
        return None
    return end


def _iban_ok(iban: str) -> bool:
    if not (iban[:2].isalpha() and iban[2:4].isdigit()):
        return False
    if len(iban) != _IBAN_LENGTHS.get(iban[:2].upper(), -1):
        return False
    digits = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def _cards(text: str) -> Iterator[Span]:
    taken = 0
    for m in _CARD.finditer(text):
        start = m.start(1)
        if start < taken:
            continue
        end = _card_end(text, start, m.group(1))
        if end is not None:
            taken = end
            yield Span(start, end, "CARD", text[start:end])


def _card_end(text: str, start: int, raw: str) -> int | None:
    """Where the longest valid card number starting at `start` ends, if one does."""
    groups = re.split(r"[ -]", raw)
    for k in range(len(groups), 0, -1):
        digits = "".join(groups[:k])
        if not 13 <= len(digits) <= 19 or not _card_grouping(groups[:k]):
            continue
        end = start + sum(map(len, groups[:k])) + k - 1
        if k == len(groups) and _CARD_RUNS_ON.match(text, end):
            continue  # more digits or a word follow: not a card printed alone
        if _luhn(digits):
            return end
    return None


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
        before = _before(text, m.start())
        ssn_word = _SSN_WORDS.search(before) is not None
        if not ssn_word and (not sep or _REFERENCE_WORDS.search(before)):
            continue  # bare nine digits, or "order 123-45-6789": a reference, not an SSN
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
    # v6 first: its mixed notation `::ffff:192.0.2.1` ends in a v4 address
    for m in _IPV6.finditer(text):
        value = _ipv6_value(m.group())
        if value is not None:
            yield Span(m.start(), m.start() + len(value), "IP", value)
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


def _ipv6_value(raw: str) -> str | None:
    """The IPv6 address at the start of `raw` (trailing sentence punctuation dropped)."""
    value = raw.rstrip(".")
    if "%" not in value and value.endswith(":") and not value.endswith("::"):
        value = value[:-1]  # a colon ending the sentence, as in "at fe80::1: it"
    if value.count(":") < 2 or all(ch in ":." for ch in value.split("%")[0]):
        return None
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return value


def _phones(text: str) -> Iterator[Span]:
    yield from _phones_found(text, _PHONE_CANDIDATE, keyword=False)
    # any run of 7-15 digits right after a phone word ("call 612 34 56 78")
    yield from _phones_found(text, _PHONE_AFTER_WORD, keyword=True)


def _phones_found(text: str, pattern: re.Pattern[str], *, keyword: bool) -> Iterator[Span]:
    taken = 0
    for m in pattern.finditer(text):
        start = m.start(1)
        if start < taken:
            continue
        end = _phone_end(text, start, m.group(1), keyword=keyword)
        if end is not None:
            taken = end
            yield Span(start, end, "PHONE", text[start:end])


def _phone_end(text: str, start: int, candidate: str, *, keyword: bool) -> int | None:
    """Where the longest phone number starting at `start` ends, if one does."""
    tokens = _phone_tokens(candidate)
    if not tokens:
        return None
    groups = [t.group() for t in tokens]
    counts = [len(g) - g.count("+") - g.count("(") - g.count(")") for g in groups]
    for k in range(len(tokens), 0, -1):
        cut = tokens[k - 1].end()
        if k < len(tokens) and candidate[cut] != " ":
            continue  # cut only at a space: "0171-2345679-3" is not a phone with a tail
        if not 7 <= sum(counts[:k]) <= 17:
            continue
        end = start + cut
        if end < len(text) and (text[end].isalnum() or text[end] == "_"):
            return None  # the digits run on into a word: a hash or a code, not a phone
        if _phone_shape(groups[:k], candidate[:cut], keyword=keyword):
            if not keyword and _REFERENCE_WORDS.search(_before(text, start)):
                return None
            return end
    return None


def _phone_tokens(candidate: str) -> list[re.Match[str]]:
    """The digit groups of a candidate (at most 8), up to the first separator no phone uses."""
    tokens: list[re.Match[str]] = []
    pos = 0
    for t in _PHONE_TOKEN.finditer(candidate):
        gap = candidate[pos : t.start()]
        if gap not in ("", " ", "-", ".", "/") or len(tokens) == 8:
            break
        if t.group().startswith("+") and tokens:
            break
        tokens.append(t)
        pos = t.end()
    return tokens


def _phone_shape(groups: list[str], value: str, *, keyword: bool) -> bool:
    """Whether digit `groups` (as printed in `value`) have the shape of a phone number."""
    digits = "".join(g.strip("+()") for g in groups if g != "(0)")
    lengths = [len(g.strip("+()")) for g in groups]
    if groups[0].startswith("+"):
        return 8 <= len(digits) <= 15 and len(groups) <= 7 and lengths[0] <= 15
    if digits.startswith("00"):
        return 10 <= len(digits) <= 15 and len(groups) <= 7 and lengths[0] in (2, 4, 5)
    if _nanp(groups, lengths, digits):
        return True
    if digits[0] == "0" and _trunk(groups, lengths, value):
        return True
    if groups[0].startswith("(") and 2 <= lengths[0] <= 4 and len(groups) in (3, 4):
        return 10 <= len(digits) <= 11 and min(lengths[1:]) >= 4 and "." not in value
    return keyword and 7 <= len(digits) <= 15 and len(groups) <= 5


def _nanp(groups: list[str], lengths: list[int], digits: str) -> bool:
    """North American 3-3-4 with separators, optionally after a country code 1."""
    if lengths[:1] == [1] and groups[0] == "1":
        lengths, digits = lengths[1:], digits[1:]
    return lengths == [3, 3, 4] and digits[0] in "23456789" and digits[3] in "23456789"


def _trunk(groups: list[str], lengths: list[int], value: str) -> bool:
    """National numbers behind a trunk 0: `020 7946 0958`, `0171 2345679`, `06.12.34.56.78`."""
    total = sum(lengths)
    if lengths[0] < 2 and not groups[0].startswith("("):
        return False  # "0-306-40615-2" is an ISBN, not a phone
    if groups[0].strip("(")[:2] == "00" or not 9 <= total <= 12 or len(groups) > 5:
        return False
    if len(groups) > 1 and min(lengths[1:]) < 2:
        return False
    if any(a == 4 and b == 2 for a, b in itertools.pairwise(lengths)):
        return False  # "01 02 2024 10 30": a date and time; no national plan groups so
    if "." in value and not all(n == 2 for n in lengths):
        return False  # dotted pairs are French numbers; other dotted runs are dates
    if value.find("/") not in (-1, len(groups[0])) or value.count("/") > 1:
        return False  # "030/1234567": a slash only after the area code
    return len(groups) > 1 or total in (10, 11)


def _finders(text: str) -> list[Callable[[str], Iterator[Span]]]:
    """The finders that can find anything in `text`, in `_FINDERS` order.

    Most text holds no PII, and every finder scans all of it: one that needs a character
    the text lacks (a digit, `@`, `:`) or one of a few literals is skipped, which finds
    exactly what running it would (nothing).
    """
    digits = _ANY_DIGIT.search(text) is not None
    if digits and "@" in text and ":" in text:
        return _FINDERS if _maybe_secret(text) else _FINDERS[1:]
    finders: list[Callable[[str], Iterator[Span]]] = []
    if _maybe_secret(text):
        finders.append(_secrets)
    if "@" in text:
        finders.append(_emails)
    if digits:
        finders += (_ibans, _cards, _ssns, _ninos, _ips, _phones)
    elif ":" in text:
        finders.append(_ips)  # IPv6 needs no digit
    return finders


def _maybe_secret(text: str) -> bool:
    """False only when no secret pattern can match (none of the literals they require)."""
    return "=" in text or ":" in text or any(lit in text for lit in _SECRET_LITERALS)


_ANY_DIGIT = re.compile(r"\d")
_SECRET_LITERALS = (
    "sk-",
    "k_live_",
    "k_test_",
    "AKIA",
    "ASIA",
    "gh",
    "xox",
    "AIza",
    "eyJ",
    "-----",
)
"""One of these is in every match of `_SECRETS` and `_PEM_BEGIN` (`_SECRET_ASSIGN` needs
`:` or `=`)."""

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
