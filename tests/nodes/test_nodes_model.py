"""The `model` node: one call, text or structured output, task passthrough."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nodes.model import ModelNode
from tests.support.nodes_fakes import FakeModel, FakeRuntime, run_node

pytestmark = pytest.mark.anyio


async def test_plain_call_returns_text_tokens_and_cost() -> None:
    m = FakeModel("small", {"answer": "Paris is the capital."}, cost=0.002)
    rt = FakeRuntime(models={"small": m})
    out = await run_node(ModelNode(), {"model": "small", "prompt": "Capital of France?"}, rt)
    assert out.text == "Paris is the capital."
    assert out.json is None
    assert out.model == "small" and out.cost_usd == 0.002 and out.simulated
    assert out.tokens == out.input_tokens + out.output_tokens
    assert m.calls[0].task == "answer" and m.calls[0].prompt == "Capital of France?"
    assert rt.events == []


async def test_schema_output_uses_lenient_parser_when_provider_did_not_parse() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    m = FakeModel("small", {"extract": "```json\n{'city': 'Paris',}\n```"})
    rt = FakeRuntime(models={"small": m})
    cfg = {"model": "small", "prompt": "x", "schema": schema, "task": "extract"}
    out = await run_node(ModelNode(), cfg, rt)
    assert out.json == {"city": "Paris"}
    assert m.calls[0].schema == schema and m.calls[0].task == "extract"


async def test_unparseable_structured_answer_gives_none() -> None:
    rt = FakeRuntime(models={"m": FakeModel("m", {"answer": "sorry"})})
    out = await run_node(ModelNode(), {"model": "m", "prompt": "x", "json_mode": True}, rt)
    assert out.json is None and out.text == "sorry"


async def test_messages_instead_of_prompt() -> None:
    m = FakeModel("m")
    msgs = [{"role": "user", "content": "hi"}]
    await run_node(
        ModelNode(),
        {"model": "m", "messages": msgs, "system": "be brief"},
        FakeRuntime(models={"m": m}),
    )
    assert m.calls[0].messages == msgs and m.calls[0].system == "be brief"


def test_config_needs_exactly_one_of_prompt_or_messages() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'prompt' or 'messages'"):
        ModelNode.Config.model_validate({"model": "m"})
    assert ModelNode.model_keys == ("model",)
    assert "json" in ModelNode.Output.model_fields
