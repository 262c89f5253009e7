"""A graph's own `serve:` mapping of chat requests to its input: checked by `moat check`
with located errors, applied by `moat serve`."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.graph.loader import check_text
from engine.serve import MoatServer
from tests.support.serve_client import client, http

pytestmark = pytest.mark.anyio

GRAPH = """\
moat: 1
name: support
models:
  small: {{provider: sim, profile: small, time_scale: 0}}
input:
  type: object
  required: [question]
  properties:
    question: {{type: string}}
    rules: {{type: string}}
    turns: {{type: integer}}
    tenant: {{type: string}}
serve:
  input:
{mapping}
nodes:
  answer: {{type: model, with: {{model: small, prompt: "{{{{ input.question }}}}"}}}}
output:
  answer: "input.question + ' / ' + input.rules + ' / ' + str(input.turns) + ' / ' + input.tenant"
"""
GOOD = """\
    question: prompt
    rules: "system or 'none'"
    turns: len(messages)
"""


def errors(mapping: str) -> list[str]:
    report = check_text(GRAPH.format(mapping=mapping), "support.yaml")
    return [str(e) for e in report.errors]


def test_a_valid_mapping_checks_clean() -> None:
    assert errors(GOOD) == []


def test_a_mapping_to_an_unknown_input_property_is_located() -> None:
    (error,) = errors(GOOD + "    qustion: prompt\n")
    assert error.startswith("support.yaml:18:5: serve.input.qustion: the graph's `input` has no")
    assert "(did you mean 'question'?)" in error


def test_a_mapping_reading_an_unknown_name_is_located_at_the_name() -> None:
    (error,) = errors("    question: \"promt + '!'\"\n")
    assert error.startswith("support.yaml:15:15: serve.input.question: 'promt' is not a name")
    assert "(did you mean 'prompt'?)" in error
    assert "Names: history, messages, prompt, system, tenant, user" in error


async def test_moat_serve_applies_the_graph_s_mapping(tmp_path: Path) -> None:
    graph = tmp_path / "support.yaml"
    graph.write_text(GRAPH.format(mapping=GOOD))
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Where is my order?"},
    ]
    async with MoatServer([graph], db=None) as server, client(server) as oai:
        reply = await oai.chat.completions.create(
            model="support",
            messages=messages,  # type: ignore[arg-type]
            user="ana",
        )
    assert reply.choices[0].message.content == "Where is my order? / Be kind. / 4 / ana"


async def test_a_mapping_this_request_cannot_give_is_a_400_that_takes_no_request_id(
    tmp_path: Path,
) -> None:
    graph = tmp_path / "support.yaml"
    graph.write_text(GRAPH.format(mapping="    question: history[0].content\n"))
    async with MoatServer([graph], db=None) as server, http(server) as web:
        response = await web.post(
            "/chat/completions",
            json={"model": "support", "messages": [{"role": "user", "content": "x"}]},
        )
        answered = await web.post(
            "/chat/completions",
            json={
                "model": "support",
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y"},
                    {"role": "user", "content": "z"},
                ],
            },
        )
    assert response.status_code == 400 and "x-moat-request-id" not in response.headers
    error = response.json()["error"]
    assert "serve.input.question" in error["message"] and error["param"] == "messages"
    # (the graph's output reads what this mapping leaves out: a failed request, with its id)
    assert answered.headers["x-moat-request-id"].endswith("-000000")  # the first number


async def test_a_mapped_value_the_graph_s_input_refuses_is_a_400_naming_the_mapping(
    tmp_path: Path,
) -> None:
    graph = tmp_path / "support.yaml"
    graph.write_text(GRAPH.format(mapping="    question: prompt\n    rules: user\n"))
    body = {"model": "support", "messages": [{"role": "user", "content": "Hi"}]}
    async with MoatServer([graph], db=None) as server, http(server) as web:
        refused = await web.post("/chat/completions", json=body)
        answered = await web.post("/chat/completions", json={**body, "user": "ana"})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "invalid_input")
    assert error["message"].startswith(
        "graph 'support' sets input.rules with serve.input.rules: 'user', whose value for "
        "this request its input refuses: request: input rules: none is not of type 'string' "
        f"(request {refused.headers['x-moat-request-id']})"
    )
    assert answered.status_code == 200
