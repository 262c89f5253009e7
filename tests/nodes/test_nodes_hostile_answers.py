"""The model-reading nodes against the answers real endpoints give, over real HTTP.

Each test serves one chat completion from a loopback OpenAI-compatible endpoint (a refusal,
NaN, a JSON object cut off at `finish_reason: length`, the wrong keys) to a node of a small
graph, and checks that the node degrades as its docs say: a cautious decision with the reason
codes naming what was unreadable, never a harmless reading of it, and the call's cost
recorded in `llm_calls` whatever the answer.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import Pipeline
from engine.graph.loader import load_graph_text
from tests.support.hostile_openai import completion, hostile_endpoint, http

pytestmark = pytest.mark.anyio

GRAPH = """\
moat: 1
name: hostile-answers
models:
  m: {{provider: openai, model: gpt-4o-mini, base_url: "{root}/m/v1", max_retries: 0,
      price: {{input: 1.0, output: 2.0}}}}
input: {{type: object, required: [prompt], properties: {{prompt: {{type: string}}}}}}
nodes:
  judge:
    type: {node}
    with: {with_}
output: {{out: judge}}
"""
COST = (7 * 1.0 + 2 * 2.0) / 1e6
"""What `completion()`'s usage (7 prompt and 2 answer tokens) costs at the graph's price."""


def _answer(content: str, finish: str = "stop") -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}}
    return http(200, completion(choices=[{**choice, "finish_reason": finish}]))


async def _run(node: str, with_: str, content: str, finish: str, tmp_path: Path) -> Any:
    """The node's output and the `llm_calls` rows (node, status, cost) of one request."""
    db = tmp_path / "moat.db"
    async with hostile_endpoint({"m": _answer(content, finish)}) as root:
        graph = load_graph_text(GRAPH.format(root=root, node=node, with_=with_), "h.yaml")
        async with Pipeline(graph, db=db) as pipe:
            with anyio.fail_after(10):
                result = await pipe.run({"prompt": "Is it safe to eat raw flour?"})
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select node, status, cost_usd from llm_calls").fetchall()
    assert result.status == "ok", result.error
    return result.output["out"], rows


CUT = '{"expected_harm": 0.02, "concerns": ["raw flour can carry E. co'
REFUSAL = "I'm sorry, but I can't help with that."


@pytest.mark.parametrize(
    ("node", "with_", "content", "finish", "expected"),
    [
        ("critic", "{model: m, draft: d}", REFUSAL, "stop",
         {"action": "revise", "parsed": False}),
        ("critic", "{model: m, draft: d}", '{"action": "proceed", "violations": ["hea', "length",
         {"action": "revise", "parsed": False}),
        ("critic", "{model: m, mode: request, revise_at: 0.7}",
         '{"risk_score": NaN, "category": "food", "operational_risk": "low", '
         '"intent_to_harm": false, "action": "proceed"}', "stop",
         {"action": "revise", "parsed": False, "confidence": 0.0}),
        ("simulator", "{model: m, draft: d}", CUT, "length",
         {"expected_harm": 0.5, "severity": "medium", "parsed": False}),
        ("simulator", "{model: m, draft: d}", "```json\n{\"expected_harm\": \"0.02\"}\n```",
         "stop", {"expected_harm": 0.02, "severity": "low", "parsed": True}),
        ("cascade", "{prompt: p, models: [m]}", '{"confidence": 0.95, "answer": "No: raw',
         "length", {"accepted": False, "confidence": 0.0}),
        ("cascade", "{prompt: p, models: [m]}", '{"reply": "No.", "confidence": 0.99}', "stop",
         {"accepted": False, "confidence": 0.0}),
    ],
    ids=["critic-refusal", "critic-cut-off", "critic-nan-risk", "simulator-cut-off",
         "simulator-fenced-string", "cascade-cut-off", "cascade-wrong-key"],
)  # fmt: skip
async def test_a_node_reads_a_bad_answer_cautiously_and_records_its_cost(
    node: str, with_: str, content: str, finish: str, expected: dict[str, Any], tmp_path: Path
) -> None:
    out, rows = await _run(node, with_, content, finish, tmp_path)
    assert {k: out[k] for k in expected} == expected
    assert rows == [("judge", "ok", pytest.approx(COST))]


async def test_a_refusing_repairer_stops_at_the_bound_and_every_attempt_is_charged(
    tmp_path: Path,
) -> None:
    with_ = "{schema: {type: object, required: [a]}, text: nope, repair_model: m, max_repairs: 3}"
    out, rows = await _run("validate", with_, REFUSAL, "stop", tmp_path)
    assert (out["valid"], out["attempts"], out["repaired_by"]) == (False, 3, None)
    assert out["errors"] == ["no parseable JSON: no '{' or '[' found"]
    assert out["cost_usd"] == pytest.approx(3 * COST)
    assert rows == [("judge", "ok", pytest.approx(COST))] * 3
