"""`moat serve` refuses what a graph cannot give (the client's tools, a response format,
token logprobs, audio) with OpenAI's 400 naming the field, rather than a 200 without it;
the neutral values of those fields are what a request without them means, and are taken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.serve import MoatServer
from engine.serve.sim_app import SimServer
from engine.serve.wire import ApiError, parse_chat
from tests.engine.serve.test_serve import echo_graph, rows
from tests.engine.serve.test_serve_hostile import sim_http
from tests.support.serve_client import client, http

pytestmark = pytest.mark.anyio

USER: Any = {"role": "user", "content": "hi"}
TOOL: Any = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
SCHEMA: Any = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}

REFUSED = [
    ({"tools": [TOOL]}, "tools", "unsupported_parameter", "never calls the client's tools"),
    ({"tool_choice": "required"}, "tool_choice", "unsupported_value", 'or with "auto"'),
    (
        {"tool_choice": {"type": "function", "function": {"name": "lookup"}}},
        "tool_choice",
        "unsupported_value",
        "never calls the client's tools",
    ),
    ({"functions": [TOOL["function"]]}, "functions", "unsupported_parameter", "legacy name"),
    ({"function_call": {"name": "lookup"}}, "function_call", "unsupported_value", "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value", ""),
    ({"response_format": SCHEMA}, "response_format", "unsupported_value", "validate node"),
    ({"logprobs": True}, "logprobs", "unsupported_value", "no token log-probabilities"),
    ({"top_logprobs": 5}, "top_logprobs", "unsupported_value", "(or with 0)"),
    ({"modalities": ["text", "audio"]}, "modalities", "unsupported_value", "text only"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter", ""),
    ({"web_search_options": {}}, "web_search_options", "unsupported_parameter", "retrieve"),
    ({"tool_choice": "any"}, "tool_choice", "invalid_value", '"none", "auto", "required"'),
    ({"function_call": "required"}, "function_call", "invalid_value", '"none", "auto" or'),
    ({"functions": "lookup"}, "functions", "invalid_value", "a list of function objects"),
    ({"modalities": "text"}, "modalities", "invalid_value", 'e.g. ["text"]'),
]
NEUTRAL: dict[str, list[Any]] = {
    "tools": [None, []],
    "tool_choice": [None, "none", "auto"],
    "functions": [None, []],
    "function_call": [None, "none", "auto"],
    "response_format": [None, {"type": "text"}],
    "logprobs": [None, False],
    "top_logprobs": [None, 0],
    "modalities": [None, ["text"], []],
    "audio": [None],
    "web_search_options": [None],
}


@pytest.mark.parametrize(("fields", "param", "code", "words"), REFUSED)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_field_a_graph_cannot_honour_is_a_400_naming_it_and_what_to_do(
    tmp_path: Path, fields: dict[str, Any], param: str, code: str, words: str, stream: bool
) -> None:
    body = {"model": "echo", "messages": [USER], "stream": stream, **fields}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert error["message"].startswith(f"`{param}")
    assert words in error["message"]


async def test_a_response_format_refusal_says_where_a_graph_declares_its_schema(
    tmp_path: Path,
) -> None:
    body = {"model": "echo", "messages": [USER], "response_format": {"type": "json_object"}}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.json()["error"]["message"] == (
        '`response_format` {"type": "json_object"} cannot be honoured: a graph\'s answer has '
        "the format its own nodes give it, which moat serve cannot change per request; "
        "declare the JSON schema in the graph (a model node's `schema`, or a validate node) "
        'and send `response_format` as {"type": "text"} or not at all'
    )


async def test_the_official_client_gets_the_refusal_as_a_bad_request_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    db = tmp_path / "moat.db"
    async with MoatServer([echo_graph(tmp_path)], db=db) as server, client(server) as oai:
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.chat.completions.create(model="echo", messages=[USER], tools=[TOOL])
        with pytest.raises(openai.BadRequestError) as streamed:
            await oai.chat.completions.create(
                model="echo",
                messages=[USER],
                stream=True,
                response_format=SCHEMA,
            )
        answered = await oai.chat.completions.create(model="echo", messages=[USER])
        await server.graphs["echo"].pipe.settle()
        server.graphs["echo"].pipe.flush()
    assert (refused.value.param, refused.value.code) == ("tools", "unsupported_parameter")
    assert (streamed.value.param, streamed.value.code) == ("response_format", "unsupported_value")
    assert answered.choices[0].message.content == "hi | turns: 0 | public"
    assert rows(db, "SELECT status FROM requests") == [{"status": "ok"}]


async def test_the_neutral_values_an_openai_client_sends_are_taken(tmp_path: Path) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, client(server) as oai:
        reply = await oai.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "hi"}],
            tools=[],
            tool_choice="none",
            parallel_tool_calls=False,
            response_format={"type": "text"},
            logprobs=False,
            top_logprobs=0,
            modalities=["text"],
        )
        legacy = await oai.chat.completions.create(
            model="echo", messages=[USER], functions=[], function_call="auto"
        )
    assert reply.choices[0].message.content == "hi | turns: 0 | public"
    assert reply.choices[0].logprobs is None and reply.choices[0].message.tool_calls is None
    assert legacy.choices[0].message.content == reply.choices[0].message.content


ANSWER: Any = {"role": "assistant", "content": "a1"}
CALL: Any = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
UNANSWERABLE = [
    (
        [USER, ANSWER, USER, {"role": "assistant", "content": "So"}],
        "messages[3]",
        "messages[3] (assistant) comes after the last user message, messages[2]: a graph "
        "answers the last user message and cannot honour a turn after it",
    ),
    (
        [USER, {"role": "system", "content": "answer in French"}],
        "messages[1]",
        "messages[1] (system) comes after the last user message, messages[0]",
    ),
    (
        [
            USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            USER,
        ],
        "messages[1].tool_calls",
        "messages[1].tool_calls: a graph never calls the client's tools",
    ),
    (
        [USER, {"role": "assistant", "content": "", "function_call": CALL["function"]}, USER],
        "messages[1].function_call",
        "messages[1].function_call: a graph never calls the client's tools",
    ),
    (  # a tool's result was taken as one more turn of text, as if the client had said it
        [USER, ANSWER, {"role": "tool", "tool_call_id": "c1", "content": "42"}, USER],
        "messages[2].role",
        "messages[2].role 'tool': a tool message is the result of a tool the assistant "
        "called, and a graph never calls the client's tools, so it cannot honour one; send "
        "the result as text in a user message (moat serve takes the roles system, "
        "developer, user and assistant)",
    ),
    (
        [USER, {"role": "function", "name": "lookup", "content": "42"}],
        "messages[1].role",
        "messages[1].role 'function': a function message is the result of a tool",
    ),
]


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    UNANSWERABLE,
    ids=[
        "assistant-prefill",
        "system-after",
        "tool-calls",
        "function-call",
        "tool-result",
        "function-result",
    ],
)
async def test_a_turn_a_graph_cannot_honour_is_a_400_naming_the_message_not_dropped(
    tmp_path: Path, messages: list[Any], param: str, words: str
) -> None:
    db = tmp_path / "moat.db"
    body = {"model": "echo", "messages": messages}
    async with MoatServer([echo_graph(tmp_path)], db=db) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["code"] == "unsupported_value"
    assert error["message"].startswith(words)
    assert rows(db, "SELECT id FROM requests") == []


async def test_an_assistant_turn_with_no_tool_calls_in_the_history_is_taken(
    tmp_path: Path,
) -> None:
    messages = [USER, {"role": "assistant", "content": "a1", "tool_calls": []}, USER]
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, client(server) as oai:
        reply = await oai.chat.completions.create(model="echo", messages=messages)
    assert reply.choices[0].message.content == "hi | turns: 2 | public"


async def test_sim_server_still_takes_the_fields_moat_serve_refuses() -> None:
    # the simulated models stand in for a real provider, which takes them
    body = {
        "model": "sim-small",
        "messages": [USER],
        "tools": [TOOL],
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
    }
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 200


UNNEUTRAL = st.sampled_from(
    [
        ("tools", [TOOL]),
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("functions", [{"name": "f"}]),
        ("function_call", {"name": "f"}),
        ("response_format", {"type": "json_object"}),
        ("response_format", SCHEMA),
        ("logprobs", True),
        ("top_logprobs", 1),
        ("modalities", ["audio"]),
        ("audio", {"voice": "alloy"}),
        ("web_search_options", {}),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    neutral=st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in NEUTRAL.items()}),
    asked=st.lists(UNNEUTRAL, max_size=3),
)
def test_a_request_is_taken_exactly_when_it_asks_for_nothing_a_graph_cannot_give(
    neutral: dict[str, Any], asked: list[tuple[str, Any]]
) -> None:
    body = {"model": "echo", "messages": [USER], **neutral, **dict(asked)}
    try:
        parse_chat(body)
    except ApiError as exc:
        assert asked, f"refused neutral values: {exc.message}"
        assert exc.status == 400 and exc.param in dict(asked)
        assert exc.code in ("unsupported_parameter", "unsupported_value")
        return
    assert not asked
