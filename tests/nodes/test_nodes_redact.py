"""The `redact` node: typed placeholders, stable numbering, restore exactly as written, and
keeping the event loop free while a large text is redacted. Detection quality is in
tests/engine/test_pii.py."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.pii import KINDS, detect
from nodes.redact import PiiVault, RedactNode
from tests.support.loop_probe import HOSTILE_60KB, finishes_first, heartbeats_during
from tests.support.nodes_fakes import FakeRuntime, run_node
from tests.support.pii_corpus import GENERATORS

pytestmark = pytest.mark.anyio


async def test_redact_numbers_placeholders_per_kind_and_reuses_them() -> None:
    rt = FakeRuntime()
    text = (
        "Mail ann@example.com or bob@example.org; ann@example.com again. "
        "Call (415) 555-0132 or 415.555.0132. Card 4111 1111 1111 1111."
    )
    out = await run_node(RedactNode(), {"text": text}, rt)
    # one placeholder per literal: the phone written two ways is two placeholders
    assert out.text == (
        "Mail [EMAIL_1] or [EMAIL_2]; [EMAIL_1] again. Call [PHONE_1] or [PHONE_2]. Card [CARD_1]."
    )
    assert out.found == {"CARD": 1, "EMAIL": 3, "PHONE": 2}
    assert out.count == 6
    ev = rt.last("PII_REDACTED")
    assert ev.decision == "redacted"
    assert ev.reason_codes == ["PII_CARD", "PII_EMAIL", "PII_PHONE"]
    assert "ann@example.com" not in repr(ev.payload)
    back = await run_node(RedactNode(), {"mode": "restore", "text": out.text}, rt)
    assert back.text == text


async def test_each_writing_of_a_value_comes_back_as_it_was_written() -> None:
    rt = FakeRuntime()
    text = (
        "Card 4111 1111 1111 1111, 4111-1111-1111-1111, 4111111111111111 and 4111 1111 1111 1111."
        "\nIBAN GB82 WEST 1234 5698 7654 32, gb82west12345698765432, GB82WEST12345698765432."
        "\nMail Ann.Lee@Example.com or ann.lee@example.com; call (415) 555-0132, 415.555.0132."
        "\nHost 2001:DB8::1 or 2001:db8::1; SSN 123-45-6789, SSN 123 45 6789; NI AB123456C."
    )
    out = await run_node(RedactNode(), {"text": text}, rt)
    assert out.text == (
        "Card [CARD_1], [CARD_2], [CARD_3] and [CARD_1]."
        "\nIBAN [IBAN_1], [IBAN_2], [IBAN_3]."
        "\nMail [EMAIL_1] or [EMAIL_2]; call [PHONE_1], [PHONE_2]."
        "\nHost [IP_1] or [IP_2]; SSN [SSN_1], SSN [SSN_2]; NI [NINO_1]."
    )
    back = await run_node(RedactNode(), {"mode": "restore", "text": out.text}, rt)
    assert back.text == text
    # a model that mentions them in another order still gets each one as written
    answer = "Charged [CARD_3], not [CARD_2]; wrote to [EMAIL_2]."
    again = await run_node(RedactNode(), {"mode": "restore", "text": answer}, rt)
    assert again.text == (
        "Charged 4111111111111111, not 4111-1111-1111-1111; wrote to ann.lee@example.com."
    )


async def test_an_iban_after_a_code_that_opens_like_one_never_reaches_the_model() -> None:
    rt = FakeRuntime()
    text = "seat 12 on LH45 then DE89 3704 0044 0532 0130 00; code XY12 or de89370400440532013000"
    out = await run_node(RedactNode(), {"text": text}, rt)
    # its last groups are no phone, and the IBAN after "XY12 or" is seen
    assert out.text == "seat 12 on LH45 then [IBAN_1]; code XY12 or [IBAN_2]"
    assert out.found == {"IBAN": 2}
    back = await run_node(RedactNode(), {"mode": "restore", "text": out.text}, rt)
    assert back.text == text


def test_writings_redacted_in_separate_texts_of_a_request_keep_their_own_placeholders() -> None:
    vault = PiiVault()
    first, _ = vault.redact("card 4111 1111 1111 1111", frozenset(KINDS))
    second, _ = vault.redact("card 4111-1111-1111-1111, NI AB 12 34 56 C", frozenset(KINDS))
    assert (first, second) == ("card [CARD_1]", "card [CARD_2], NI [NINO_1]")
    assert vault.restore("[CARD_2] then [CARD_1], [NINO_1]") == (
        "4111-1111-1111-1111 then 4111 1111 1111 1111, AB 12 34 56 C",
        {"CARD": 2, "NINO": 1},
    )


async def test_restore_puts_originals_back_within_the_request_only() -> None:
    rt = FakeRuntime()
    node = RedactNode()
    red = await run_node(node, {"text": "I am ann@example.com, SSN 123-45-6789"}, rt)
    answer = f"Dear {red.text.split()[2].rstrip(',')}, we got [SSN_1] and [EMAIL_9]."
    back = await run_node(RedactNode(), {"mode": "restore", "text": answer}, rt)
    assert back.text == "Dear ann@example.com, we got 123-45-6789 and [EMAIL_9]."
    assert back.found == {"EMAIL": 1, "SSN": 1}
    other = await run_node(RedactNode(), {"mode": "restore", "text": answer}, FakeRuntime())
    assert other.text == answer  # another request has no mapping


async def test_clean_text_emits_clean_decision_and_kinds_filter() -> None:
    rt = FakeRuntime()
    out = await run_node(RedactNode(), {"text": "v2.3.1 shipped 2024-05-01 for $1,299.00"}, rt)
    assert out.text == "v2.3.1 shipped 2024-05-01 for $1,299.00"
    assert rt.last("PII_REDACTED").decision == "clean"
    only = await run_node(
        RedactNode(), {"text": "a@b.io from 10.0.0.1", "kinds": ["IP"]}, FakeRuntime()
    )
    assert only.text == "a@b.io from [IP_1]"


def test_a_placeholder_the_text_already_holds_is_never_handed_out_or_restored() -> None:
    vault = PiiVault()
    text = "[EMAIL_1] is how I write it; mine is a@b.co and [CARD_7] stays as it is"
    redacted, _ = vault.redact(text, frozenset(KINDS))
    assert redacted == "[EMAIL_1] is how I write it; mine is [EMAIL_2] and [CARD_7] stays as it is"
    restored, counts = vault.restore(redacted)
    assert restored == text and counts == {"EMAIL": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_a_placeholder_the_text_holds_is_never_restored_to_a_value_of_any_kind(kind: str) -> None:
    vault = PiiVault()
    value = GENERATORS[kind](random.Random(1))
    text = f"I write [{kind}_1] for it; mine is {value} and [{kind}_3] is a note"
    redacted, _ = vault.redact(text, frozenset(KINDS))
    assert redacted == f"I write [{kind}_1] for it; mine is [{kind}_2] and [{kind}_3] is a note"
    assert vault.restore(redacted) == (text, {kind: 1})


def test_placeholders_the_model_mangles_are_left_as_the_model_wrote_them() -> None:
    vault = PiiVault()
    vault.redact("mail a@b.co, card 4111 1111 1111 1111, ip 10.0.0.1", frozenset(KINDS))
    answer = (
        "[email_1] [Email_1] EMAIL_1] [EMAIL_1 [EMAIL 1] [EMAIL-1] [EMAIL_01] [ EMAIL_1 ] "
        "{EMAIL_1} (CARD_1) [card_1] CARD_1 [CARD_11] [IP_1 ] [IP_\u0661] [I P_1]"
    )
    assert vault.restore(answer) == (answer, {})
    # an extra bracket around an intact placeholder is the model's, the placeholder ours
    assert vault.restore("[[CARD_1]] [IP_1].") == (
        "[4111 1111 1111 1111] 10.0.0.1.",
        {"CARD": 1, "IP": 1},
    )


def test_vault_repr_hides_values() -> None:
    vault = PiiVault()
    vault.redact("x@y.com", frozenset(KINDS))
    assert "x@y.com" not in repr(vault)


async def test_redacting_a_large_hostile_text_leaves_the_event_loop_free() -> None:
    text = HOSTILE_60KB + " mail ann@example.com"

    async def big() -> None:
        out = await run_node(RedactNode(), {"text": text}, FakeRuntime())
        assert out.found["EMAIL"] == 1

    async def small() -> None:
        out = await run_node(RedactNode(), {"text": "mail bob@example.org"}, FakeRuntime())
        assert out.text == "mail [EMAIL_1]"

    assert await heartbeats_during(big) >= 3
    assert await finishes_first(big, small) == "small"


_WRITINGS = [
    ("4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111"),
    ("3782 822463 10005", "3782-822463-10005", "378282246310005"),
    ("GB82 WEST 1234 5698 7654 32", "gb82 west 1234 5698 7654 32", "GB82WEST12345698765432"),
    ("de89370400440532013000", "DE89370400440532013000", "DE89 3704 0044 0532 0130 00"),
    ("(415) 555-0132", "415.555.0132", "415-555-0132", "+1 415 555 0132"),
    ("+44 20 7946 0958", "+442079460958", "0044 20 7946 0958"),
    ("ann.lee@example.com", "Ann.Lee@Example.com", "ANN.LEE@EXAMPLE.COM"),
    ("2001:db8::8a2e:370:7334", "2001:DB8::8A2E:370:7334"),
    ("123-45-6789", "123 45 6789"),
    ("AB123456C", "AB 12 34 56 C"),
    ("sk-" + "a1B2" * 8,),
]
"""Values of every kind, each in the ways people write it."""

_WORDS = st.sampled_from(
    ["hello", "the", "order", "ships", "Monday", "12", "v2.3", "at", "10:30", "XY12", "LH45"]
)
_LITERALS = st.builds("[{}_{}]".format, st.sampled_from(KINDS), st.integers(1, 3))
"""Placeholder-like text typed by the user."""
_SEPARATORS = st.sampled_from([" ", ", ", ". ", "; ", "\n", " and ", " or "])


@st.composite
def _texts(draw: st.DrawFn) -> str:
    """A text mixing a few values, each in several writings, with words and
    placeholder-like literals."""
    values = draw(st.lists(st.sampled_from(_WRITINGS), min_size=1, max_size=3))
    writings = st.sampled_from(values).flatmap(st.sampled_from)
    pieces = st.one_of(writings, writings, _WORDS, _LITERALS)
    drawn = draw(st.lists(st.tuples(pieces, _SEPARATORS), max_size=12))
    return "".join(piece + sep for piece, sep in drawn)


@settings(max_examples=300, deadline=None)
@given(_texts())
@example("+1 415 555 0132 4111 1111 1111 1111 ")
def test_redact_then_restore_gives_back_the_text_byte_for_byte(text: str) -> None:
    vault = PiiVault()
    redacted, counts = vault.redact(text, frozenset(KINDS))
    spans = detect(text)
    # every value one scan finds is redacted, and those that value hid (written back to
    # back, `+1 415 555 0132 4111 1111 1111 1111`: the card hides the phone) besides
    for kind in {s.kind for s in spans}:
        assert counts[kind] >= sum(s.kind == kind for s in spans)
    assert vault.redact(redacted, frozenset(KINDS))[1] == {}  # nothing is left
    assert vault.restore(redacted)[0] == text  # the model echoed every placeholder
    # one placeholder per literal, never one the text holds itself, each restored on its own
    tokens = {(s.kind, s.value): vault.placeholder(s.kind, s.value) for s in spans}
    assert len(set(tokens.values())) == len(tokens) <= len(vault)
    for (_, value), token in tokens.items():
        assert token not in text
        assert vault.restore(token)[0] == value


_MANGLES: list[Callable[[str], str]] = [
    str.lower,
    str.title,
    lambda token: token[1:],
    lambda token: token[:-1],
    lambda token: token.replace("_", " "),
    lambda token: token.replace("_", "_0"),
    lambda token: f"[ {token[1:-1]} ]",
]


@settings(max_examples=100, deadline=None)
@given(_texts(), st.lists(st.sampled_from(_MANGLES), min_size=1))
def test_a_mangled_placeholder_is_never_restored(
    text: str, mangles: list[Callable[[str], str]]
) -> None:
    vault = PiiVault()
    vault.redact(text, frozenset(KINDS))
    tokens = sorted({vault.placeholder(s.kind, s.value) for s in detect(text)})
    answer = " ".join(mangles[i % len(mangles)](t) for i, t in enumerate(tokens))
    assert vault.restore(answer) == (answer, {})


async def test_values_written_back_to_back_are_each_redacted() -> None:
    # the second of each pair starts right after the first one's last digit, where the
    # detector sees no start of a value until the first is a placeholder
    text = "Call +44 20 7946 0958+44 20 7946 0959 or 2001:db8::8a2e:370:73340044 20 7946 0960."
    out = await run_node(RedactNode(), {"text": text}, FakeRuntime())
    assert out.text == "Call [PHONE_1][PHONE_2] or [IP_1][PHONE_3]."
    assert out.found == {"IP": 1, "PHONE": 3}
    assert detect(out.text) == []


async def test_a_long_chain_of_values_back_to_back_is_redacted_whole() -> None:
    numbers = [f"+44 20 7946 {n:04d}" for n in range(2000)]
    out = await run_node(RedactNode(), {"text": "".join(numbers)}, FakeRuntime())
    assert out.text == "".join(f"[PHONE_{i}]" for i in range(1, 2001))
    assert out.found == {"PHONE": 2000}


@st.composite
def _glued_texts(draw: st.DrawFn) -> str:
    """Values of every kind, in their writings, with words, often with nothing between."""
    pieces = st.one_of(st.sampled_from([w for ws in _WRITINGS for w in ws]), _WORDS, _LITERALS)
    glue = st.sampled_from(["", "", "", " ", ",", "-", ".", "+", "0", "\n"])
    drawn = draw(st.lists(st.tuples(pieces, glue), min_size=1, max_size=12))
    return "".join(piece + sep for piece, sep in drawn)


@settings(max_examples=400, deadline=None)
@given(_glued_texts())
def test_redacted_text_holds_no_value_the_detector_finds(text: str) -> None:
    vault = PiiVault()
    redacted, counts = vault.redact(text, frozenset(KINDS))
    assert detect(redacted) == []
    assert sum(counts.values()) >= len(detect(text))
    assert vault.restore(redacted)[0] == text


async def test_a_value_no_placeholder_touches_is_judged_in_its_own_context() -> None:
    # `[NINO_1]` is shorter than the number it replaced, and brings "number" within the
    # phone context of the ISBN after it: that is no reason to take the ISBN for a phone
    text = "NI number HL 97 27 65 B; ISBN 978-3-16-148410-0 attached."
    out = await run_node(RedactNode(), {"text": text}, FakeRuntime())
    assert out.text == "NI number [NINO_1]; ISBN 978-3-16-148410-0 attached."
    assert out.found == {"NINO": 1}
