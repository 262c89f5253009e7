"""What leaves for a remote model is redacted as the policy asks: the chat and the schema.

A structured call sends its JSON Schema with the chat (OpenAI reads it into the model's
context); its descriptions, titles, examples, defaults, constants and enumerated values
are text like any other. With `egress.redact: true` personal data in them is replaced by
typed placeholders before the call leaves; with `egress.allow_unredacted: false` it blocks
the call. The schema's own vocabulary (property names, types, patterns, references) is
left as it is, and a local model gets the schema unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import EgressBlocked
from engine.events import EventType
from engine.graph.spec import ModelSpec, Price
from engine.models import CallScope, Gateway, ProviderRequest, ProviderResponse, find_pii
from engine.plugin.context import RequestInfo

REMOTE = ModelSpec(
    provider="openai", model="fake", base_url="http://unused", price=Price(input=1, output=2)
)
PII = ["bob@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "GB82WEST12345698765432"]


class Recording:
    """A provider that keeps what it was sent."""

    name = "openai"

    def __init__(self) -> None:
        self.seen: list[ProviderRequest] = []

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        self.seen.append(call)
        return ProviderResponse(text="{}", provider_model="fake", input_tokens=1, output_tokens=1)

    async def aclose(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event_type: str, **kw: Any) -> int:
        self.items.append((str(event_type), kw))
        return len(self.items)


def _scope(policy: dict[str, Any], events: Events) -> CallScope:
    info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    return CallScope(request=info, node_id="draft", policy=policy, emit=events)


SCHEMA = {
    "type": "object",
    "title": "Reply to bob@example.com",
    "description": "Write to the customer at +44 20 7946 0958",
    "properties": {
        "to": {"type": "string", "enum": ["bob@example.com", "support"]},
        "card": {"type": "string", "default": "4111 1111 1111 1111", "pattern": "^[0-9 ]+$"},
        "type": {"type": "string", "examples": ["GB82WEST12345698765432"]},
    },
    "required": ["to", "card"],
}


@pytest.mark.anyio
async def test_personal_data_in_a_remote_calls_schema_is_redacted_before_it_leaves() -> None:
    provider, events = Recording(), Events()
    scope = _scope({"egress": {"redact": True}}, events)
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        await gateway.client("m", scope).complete(prompt="Draft the reply", schema=SCHEMA)
    sent = provider.seen[0].schema
    assert sent is not None and find_pii(json.dumps(sent)) == {}
    assert sent == {
        "type": "object",
        "title": "Reply to [EMAIL]",
        "description": "Write to the customer at [PHONE]",
        "properties": {
            "to": {"type": "string", "enum": ["[EMAIL]", "support"]},
            "card": {"type": "string", "default": "[CARD]", "pattern": "^[0-9 ]+$"},
            "type": {"type": "string", "examples": ["[IBAN]"]},
        },
        "required": ["to", "card"],
    }
    assert SCHEMA["title"] == "Reply to bob@example.com"  # the node's own schema is untouched
    [(kind, event)] = events.items
    assert kind == EventType.PII_REDACTED
    assert event["payload"]["found"] == {"CARD": 1, "EMAIL": 2, "IBAN": 1, "PHONE": 1}


@pytest.mark.anyio
async def test_personal_data_in_a_remote_calls_schema_blocks_it_when_the_policy_forbids() -> None:
    provider, events = Recording(), Events()
    scope = _scope({"egress": {"allow_unredacted": False}}, events)
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        with pytest.raises(EgressBlocked, match=r"prompt \(or its schema\) contains personal data"):
            await gateway.client("m", scope).complete(prompt="Draft the reply", schema=SCHEMA)
    assert provider.seen == []
    assert [kind for kind, _ in events.items] == [EventType.EGRESS_BLOCKED]
    assert [c.status for c in scope.calls] == ["refused"]


@pytest.mark.anyio
async def test_a_local_model_and_a_policy_without_egress_rules_send_the_schema_as_it_is() -> None:
    for spec, policy in [
        (REMOTE.model_copy(update={"remote": False}), {"egress": {"redact": True}}),
        (REMOTE, {}),
    ]:
        provider, events = Recording(), Events()
        async with Gateway({"m": spec}, providers={"m": provider}) as gateway:
            await gateway.client("m", _scope(policy, events)).complete(prompt="x", schema=SCHEMA)
        assert provider.seen[0].schema == SCHEMA and events.items == []


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
SCHEMAS = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT | st.sampled_from(PII),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["description", "title", "enum", "default", "type", "pattern", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=50, deadline=None)
@given(schema=st.dictionaries(st.sampled_from(["description", "properties", "examples"]), SCHEMAS))
@pytest.mark.anyio
async def test_no_schema_text_outside_the_vocabulary_leaves_with_personal_data(
    schema: dict[str, Any],
) -> None:
    provider, events = Recording(), Events()
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        scope = _scope({"egress": {"redact": True}}, events)
        await gateway.client("m", scope).complete(prompt="x", schema=schema)
    sent = provider.seen[0].schema
    assert sent is not None

    def data(value: Any, key: str | None = None) -> list[str]:
        if isinstance(value, str):
            return [] if key in ("type", "pattern") else [value]
        if isinstance(value, dict):
            return [t for k, v in value.items() for t in data(v, k)]
        if isinstance(value, list):
            return [t for v in value for t in data(v, key)]
        return []

    for text in data(sent):
        assert not any(value in text for value in PII), (text, sent)


@pytest.mark.anyio
async def test_a_schema_nested_under_a_vocabulary_keyword_is_redacted_as_data() -> None:
    """`type` holds vocabulary while it is text or a list of texts; a schema written inside
    it is no type name, and its description leaves redacted like any other."""
    schema = {"description": {"description": None, "type": [{"description": PII[0]}]}}
    provider, events = Recording(), Events()
    async with Gateway({"m": REMOTE}, providers={"m": provider}) as gateway:
        scope = _scope({"egress": {"redact": True}}, events)
        await gateway.client("m", scope).complete(prompt="x", schema=schema)
    sent = provider.seen[0].schema
    assert sent is not None and PII[0] not in str(sent)
    assert sent["description"]["type"][0]["description"] != PII[0]
