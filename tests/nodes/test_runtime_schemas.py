"""A JSON Schema a `{{ }}` expression makes is checked when the node runs, as `moat check`
checks a literal one: a request with a schema moat cannot apply fails that node with the
fix, never with a jsonschema traceback or a call to the model."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from engine.events import MemorySink
from engine.graph.loader import load_graph_text
from engine.scheduler.runner import Runner

pytestmark = pytest.mark.anyio

GRAPH = """
moat: 1
name: runtime-schemas
models:
  small: {provider: sim, profile: small}
input: {type: object, properties: {node: {type: string}, schema: {}, value: {}}}
nodes:
  checked: {type: validate, with: {schema: "{{ input.schema }}", value: "{{ input.value }}"}}
  answer: {type: model, with: {model: small, prompt: hi, schema: "{{ input.schema }}"}}
  fast:
    type: speculate
    with: {draft_model: small, target_model: small, prompt: hi, schema: "{{ input.schema }}"}
output:
  out: >-
    checked.valid if input.node == 'checked'
    else answer.json if input.node == 'answer' else fast.text
"""
OUTSIDE = (
    "with.schema.properties.a.$ref: $ref 'https://example.com/a.json' points outside the "
    "schema, and moat fetches no schemas; copy the definition under `with.schema.$defs` and "
    "refer to it as '#/$defs/NAME'"
)
NOT_A_SCHEMA = (
    "with.schema.type: not a JSON Schema: 'bogus' is not valid under any of the given schemas "
    "(https://json-schema.org/understanding-json-schema)"
)


async def _run(node: str, schema: Any, value: Any = 1) -> tuple[str, str | None, MemorySink]:
    graph = load_graph_text(textwrap.dedent(GRAPH), "test.yaml")
    sink = MemorySink()
    async with Runner(graph, sink=sink) as runner:
        result = await runner.run(
            {"node": node, "schema": schema, "value": value}, request_id="req-1"
        )
    return result.status, result.error, sink


@pytest.mark.parametrize("node", ["checked", "answer", "fast"])
@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "bogus"}, NOT_A_SCHEMA),
        ({"properties": {"a": {"$ref": "https://example.com/a.json"}}}, OUTSIDE),
    ],
)
async def test_a_schema_moat_cannot_apply_fails_the_node_with_the_fix(
    node: str, schema: Any, message: str
) -> None:
    status, error, sink = await _run(node, schema)
    assert (status, error) == ("failed", f"node {node!r}: {message}")
    assert [(r.node, r.status.value) for r in sink.node_runs()] == [(node, "failed")]
    assert sink.llm_calls() == []  # nothing was asked of a model with a broken schema


async def test_a_ref_to_nothing_fails_the_node_once_validation_reaches_it() -> None:
    schema = {"properties": {"a": {"$ref": "#/$defs/missing"}}}
    assert (await _run("checked", schema, {"b": 1}))[:2] == ("ok", None)
    status, error, _ = await _run("checked", schema, {"a": 1})
    assert (status, error) == (
        "failed",
        "node 'checked': with.schema: $ref '#/$defs/missing' names nothing in `with.schema`; "
        "define it under `with.schema.$defs` and refer to it as '#/$defs/NAME'",
    )
