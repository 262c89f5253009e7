"""The PII detector (`engine.pii`) that the `redact` node and the gateway's egress share.

Quality is measured on generated corpora with fixed seeds (tests/support/pii_corpus.py): recall per
kind on values of many locales embedded in varied sentences, and false positives on
number-heavy prose that holds no personal data. README.md records the figures.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.models import find_pii, redact_text
from engine.models._egress import apply_egress_policy
from engine.pii import KINDS, detect
from tests.support.pii_corpus import GENERATORS, PHONE_FORMATS, labelled_corpus, ordinary_corpus

RECALL = 0.99
FALSE_POSITIVES = 0.01


def _found_exactly(text: str, kind: str, value: str) -> bool:
    start = text.index(value)
    return any(
        s.kind == kind and s.start == start and s.end == start + len(value) for s in detect(text)
    )


def test_recall_is_at_least_99_percent_per_kind() -> None:
    corpus = labelled_corpus(500, seed=7)
    totals: Counter[str] = Counter(kind for _, kind, _ in corpus)
    hits: Counter[str] = Counter()
    misses: dict[str, list[str]] = {}
    for text, kind, value in corpus:
        if _found_exactly(text, kind, value):
            hits[kind] += 1
        else:
            misses.setdefault(kind, []).append(text)
    assert set(totals) == set(KINDS)
    for kind, total in totals.items():
        assert hits[kind] / total >= RECALL, (kind, hits[kind], total, misses[kind][:5])


def test_phone_recall_is_at_least_99_percent_in_every_country() -> None:
    rng = random.Random(3)
    for country, formats in PHONE_FORMATS.items():
        values = [rng.choice(formats)(rng) for _ in range(300)]
        texts = [
            f"{rng.choice(['Call', 'Office:', 'Or'])} {v} {rng.choice(['.', 'today'])}"
            for v in values
        ]
        found = sum(_found_exactly(t, "PHONE", v) for t, v in zip(texts, values, strict=True))
        assert found / len(values) >= RECALL, (country, found)
    assert len(PHONE_FORMATS) >= 8


def test_false_positives_on_number_heavy_prose_are_at_most_one_percent() -> None:
    corpus = ordinary_corpus(5000, seed=11)
    flagged = [(text, detect(text)) for text in corpus if detect(text)]
    assert len(flagged) / len(corpus) <= FALSE_POSITIVES, flagged[:10]


def test_the_phone_shapes_of_the_issue_are_found() -> None:
    for text, value in [
        ("UK office (020) 7946 0777, ask for Sam", "(020) 7946 0777"),
        ("Handy 0171 2345679 bis 18 Uhr", "0171 2345679"),
        ("call 612 34 56 78", "612 34 56 78"),
        ("Tel:020 7946 0958.", "020 7946 0958"),
        ("ref 12, then 030/1234567", "030/1234567"),
    ]:
        assert _found_exactly(text, "PHONE", value), text


def test_ipv6_in_every_notation_is_found() -> None:
    for value in [
        "2001:db8::8a2e:370:7334",
        "2001:0DB8:0000:0000:0000:FF00:0042:8329",
        "::ffff:192.0.2.128",
        "64:ff9b::192.0.2.33",
        "fe80::1ff:fe23:4567:890a%eth0",
        "::1",
    ]:
        assert _found_exactly(f"host {value}, port 22", "IP", value), value
    assert _found_exactly("at [2001:db8::1]:8080 now", "IP", "2001:db8::1")


def test_an_iban_typed_in_lower_case_is_found_whole() -> None:
    for text, value in (
        ("pay to de89370400440532013000 today", "de89370400440532013000"),
        ("IBAN gb82 west 1234 5698 7654 32, thanks", "gb82 west 1234 5698 7654 32"),
        ("IBAN Gb82 West 1234 5698 7654 32", "Gb82 West 1234 5698 7654 32"),
    ):
        assert _found_exactly(text, "IBAN", value), text
    assert detect("IBAN gb82 west 1234 5698 7654 33") == []  # mod-97 still decides
    assert detect("commit ab12cdef0123456789abcdef0123456789abcd") == []


def test_an_iban_after_a_near_miss_or_another_iban_is_found() -> None:
    # a code that opens like an IBAN ("XY12") used to swallow the words after it, and the
    # scan went on after all of them
    for text, values in (
        ("code XY12 or DE89370400440532013000", ["DE89370400440532013000"]),
        ("flight LH12 to pay DE89370400440532013000 now", ["DE89370400440532013000"]),
        (
            "GB82 WEST 1234 5698 7654 32 or gb82west12345698765432",
            ["GB82 WEST 1234 5698 7654 32", "gb82west12345698765432"],
        ),
        ("seat 12 on LH45 then DE89 3704 0044 0532 0130 00", ["DE89 3704 0044 0532 0130 00"]),
        ("DE12 DE89 3704 0044 0532 0130 00", ["DE89 3704 0044 0532 0130 00"]),
    ):
        assert [(s.kind, s.value) for s in detect(text)] == [("IBAN", v) for v in values], text
        for value in values:
            assert _found_exactly(text, "IBAN", value), (text, value)


def test_the_groups_of_an_iban_are_never_a_phone() -> None:
    text = "seat 12 on LH45 then DE89 3704 0044 0532 0130 00"
    assert [s.kind for s in detect(text)] == ["IBAN"]
    sent, found, _ = apply_egress_policy(
        [{"role": "user", "content": text}], {"egress": {"redact": True}}
    )
    assert sent[0]["content"] == "seat 12 on LH45 then [IBAN]" and found == {"IBAN": 1}
    _, found, blocked = apply_egress_policy(
        [{"role": "user", "content": "code XY12 or DE89370400440532013000"}],
        {"egress": {"allow_unredacted": False}},
    )
    assert blocked and found == {"IBAN": 1}


def test_validators_reject_lookalikes() -> None:
    assert detect("card 4111 1111 1111 1112") == []  # Luhn fails
    assert detect("IBAN GB82 WEST 1234 5698 7654 33") == []  # mod-97 fails
    assert detect("ip 256.1.1.1 and 10:30:45 and 12:30:45:10") == []
    assert detect("ssn 666-12-3456 or 900-12-3456 or 123-00-4567") == []
    assert detect("NI GB123456A") == []  # GB is not an allowed prefix
    assert detect("ISBN 0-306-40615-2 and ISBN 0306406152, order 0171 2345679") == []
    assert detect("sha256 0400353395c5040663d62c5d82b501b3") == []
    assert detect("Invoice dated 01 02 2024 10 30, order 123-45-6789 shipped") == []
    assert [s.kind for s in detect("IBAN GB82 WEST 1234 5698 7654 32")] == ["IBAN"]
    assert [s.kind for s in detect("password=hunter22 ok")] == ["SECRET"]


def test_gateway_egress_redacts_ipv6_ssn_and_national_phones() -> None:
    text = "From fe80::1%eth0, SSN 123-45-6789, call (020) 7946 0777 or 0171 2345679."
    messages = [{"role": "user", "content": text}]
    sent, found, blocked = apply_egress_policy(messages, {"egress": {"redact": True}})
    assert sent[0]["content"] == "From [IP], SSN [SSN], call [PHONE] or [PHONE]."
    assert found == {"IP": 1, "PHONE": 2, "SSN": 1} and not blocked
    _, found, blocked = apply_egress_policy(messages, {"egress": {"allow_unredacted": False}})
    assert blocked and found == {"IP": 1, "PHONE": 2, "SSN": 1}


def test_gateway_and_redact_node_see_the_same_spans() -> None:
    # one detector: what the egress counts is exactly what `detect` finds
    for text, _, _ in labelled_corpus(40, seed=5):
        assert find_pii(text) == dict(sorted(Counter(s.kind for s in detect(text)).items()))
        redacted, counts = redact_text(text)
        assert counts == find_pii(text)
        assert all(s.value not in redacted for s in detect(text))


WORDS = st.sampled_from(
    ["the", "order", "ships", "on", "Monday,", "see", "page", "12", "v2.3", "at", "10:30", "—"]
)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(sorted(GENERATORS)),
    seed=st.integers(0, 2**32),
    before=st.lists(WORDS, max_size=6),
    after=st.lists(WORDS, max_size=6),
)
def test_a_value_between_ordinary_words_is_found_whole(
    kind: str, seed: int, before: list[str], after: list[str]
) -> None:
    value = GENERATORS[kind](random.Random(seed))
    prefix = " ".join(before)
    if kind in ("PHONE", "SSN") and before and before[-1] in ("order", "page"):
        prefix += " is"  # "order <number>" / "page <number>" reads as a reference, by design
    if after and after[0][0].isdigit():
        after = ["and", *after]  # "+41 44 141 77 76 12" may well be one number: punctuate
    text = " ".join(p for p in (prefix, value, " ".join(after)) if p) + "."
    assert _found_exactly(text, kind, value), text


_IBANS = [
    "DE89370400440532013000",
    "GB82WEST12345698765432",
    "NL91ABNA0417164300",
    "FR1420041010050500013M02606",
    "BE68539007547034",
    "MT84MALT011000012345MTLCAST001S",
    "NO9386011117947",
]
"""Valid IBANs of 15 to 31 characters, some with letters in the account part."""


def _written(iban: str, grouped: bool, lower: bool) -> str:
    """`iban` as people print it: in groups of four or unbroken, in upper or lower case."""
    value = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if grouped else iban
    return value.lower() if lower else value


# Near misses open like an IBAN but name no country: with a real one, "SE56 DE89 3704 0044
# 0532 0130 00" holds a valid Swedish IBAN of 24 characters before the German one, so
# detection could not tell which was meant.
_FILLERS = st.one_of(
    st.sampled_from(["XY12", "LH45", "lh12", "xy99", "code", "or", "pay", "seat", "IBAN"]),
    st.sampled_from(["0044", "3704", "00", "1234 5678"]),
    st.integers(0, 99_999).map(str),
)
_PIECES = st.one_of(
    _FILLERS.map(lambda word: (word, False)),
    st.builds(_written, st.sampled_from(_IBANS), st.booleans(), st.booleans()).map(
        lambda iban: (iban, True)
    ),
)


@st.composite
def _text_with_ibans(draw: st.DrawFn) -> tuple[str, list[tuple[int, str]]]:
    """Words, numbers and near-miss codes with IBANs at random places, and where each IBAN is."""
    text, ibans = "", []
    for piece, is_iban in draw(st.lists(_PIECES, max_size=14)):
        if text:
            text += draw(st.sampled_from([" ", ", ", " or ", "; "]))
        if is_iban:
            ibans.append((len(text), piece))
        text += piece
    return text, ibans


@settings(max_examples=300, deadline=None)
@given(_text_with_ibans())
def test_every_iban_among_near_misses_is_found_at_its_exact_span(
    case: tuple[str, list[tuple[int, str]]],
) -> None:
    text, ibans = case
    found = [(s.start, s.value) for s in detect(text) if s.kind == "IBAN"]
    assert found == ibans, text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_spans_are_ordered_disjoint_and_match_the_text(text: str) -> None:
    spans = detect(text)
    for a, b in itertools.pairwise(spans):
        assert a.end <= b.start
    for s in spans:
        assert text[s.start : s.end] == s.value and s.kind in KINDS


def _detect_with_every_finder(text: str) -> list[tuple[int, int, str, str]]:
    """What `detect` found before it skipped finders: every finder, in order, on the text."""
    from engine import pii

    spans: list[pii.Span] = []
    for finder in pii._FINDERS:
        for span in finder(text):
            if not any(s.start < span.end and span.start < s.end for s in spans):
                spans.append(span)
    return sorted((s.start, s.end, s.kind, s.value) for s in spans)


def test_skipping_finders_that_cannot_match_finds_exactly_the_same_spans() -> None:
    texts = [text for text, _, _ in labelled_corpus(40)]
    texts += ordinary_corpus(300)
    texts += ["no digits or at-signs here", "fe80::1 and ::ffff:c000:0201", "key: sk-" + "a" * 24]
    for text in texts:
        assert [(s.start, s.end, s.kind, s.value) for s in detect(text)] == (
            _detect_with_every_finder(text)
        ), text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09 @:=.-_+()#sk\n\u0660"), max_size=60))
def test_skipping_finders_never_changes_what_detect_finds(text: str) -> None:
    assert [(s.start, s.end, s.kind, s.value) for s in detect(text)] == (
        _detect_with_every_finder(text)
    )


def test_spans_kept_for_a_text_are_those_a_fresh_scan_finds() -> None:
    from engine.pii import _detect, detect

    text = "mail bob@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111"
    first = detect(text)
    assert first == _detect(text) and len(first) == 3
    first.clear()  # a caller's list is its own
    assert detect(text) == _detect(text)
    long = "x " * 3000 + text
    assert detect(long) == _detect(long)


def test_gateway_egress_redacts_values_written_back_to_back() -> None:
    # the second of each pair starts right after the first one's last digit: one scan
    # sees no start of a value there, and it left for the remote model
    text = "Call +44 20 7946 0958+44 20 7946 0959 or 2001:db8::8a2e:370:73340044 20 7946 0960."
    assert redact_text(text) == ("Call [PHONE][PHONE] or [IP][PHONE].", {"IP": 1, "PHONE": 3})
    policy = {"egress": {"redact": True}}
    [sent], found, blocked = apply_egress_policy([{"role": "user", "content": text}], policy)
    assert detect(sent["content"]) == [] and found == {"IP": 1, "PHONE": 3} and not blocked


def test_gateway_egress_redacts_a_long_chain_of_values_whole() -> None:
    chain = "".join(f"+44 20 7946 {n:04d}" for n in range(2000))
    assert redact_text(chain) == ("[PHONE]" * 2000, {"PHONE": 2000})


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["+44 20 7946 0958", "ann@example.com", "10.0.0.1", "078-05-1120", "word", "12"]
            ),
            st.sampled_from(["", "", " ", "+", "0", ".", "\n"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_text_redacted_for_egress_holds_no_value_the_detector_finds(
    pieces: list[tuple[str, str]],
) -> None:
    text = "".join(piece + glue for piece, glue in pieces)
    redacted, counts = redact_text(text)
    assert detect(redacted) == []
    assert sum(counts.values()) >= len(detect(text))
