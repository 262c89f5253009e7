"""The `redact` node: typed placeholders, stable numbering, restore, and keeping the event
loop free while a large text is redacted. Detection quality is in tests/engine/test_pii.py."""

from __future__ import annotations

import pytest

from engine.pii import KINDS
from nodes.redact import PiiVault, RedactNode
from tests.support.loop_probe import HOSTILE_60KB, finishes_first, heartbeats_during
from tests.support.nodes_fakes import FakeRuntime, run_node

pytestmark = pytest.mark.anyio


async def test_redact_numbers_placeholders_per_kind_and_reuses_them() -> None:
    rt = FakeRuntime()
    text = (
        "Mail ann@example.com or bob@example.org; ann@example.com again. "
        "Call (415) 555-0132 or 415.555.0132. Card 4111 1111 1111 1111."
    )
    out = await run_node(RedactNode(), {"text": text}, rt)
    assert out.text == (
        "Mail [EMAIL_1] or [EMAIL_2]; [EMAIL_1] again. Call [PHONE_1] or [PHONE_1]. Card [CARD_1]."
    )
    assert out.found == {"CARD": 1, "EMAIL": 3, "PHONE": 2}
    assert out.count == 6
    ev = rt.last("PII_REDACTED")
    assert ev.decision == "redacted"
    assert ev.reason_codes == ["PII_CARD", "PII_EMAIL", "PII_PHONE"]
    assert "ann@example.com" not in repr(ev.payload)


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
