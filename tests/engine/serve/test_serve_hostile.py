"""`moat serve` and `moat sim-server` under careless and hostile clients: each gets an error
that names what is wrong, and nothing of it reaches the log as a crash."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import anyio
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.errors import SpecError
from engine.models.server import SimService
from engine.serve import MoatServer, hash_key, keys_from_env, load_keys
from engine.serve.sim_app import SimServer
from engine.serve.wire import ApiError, parse_chat
from tests.engine.serve.test_serve import echo_graph, samples
from tests.support.serve_client import chat_scope, client, hanging_up_after, http

pytestmark = pytest.mark.anyio

USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (3, "messages[1].content"),
        ({"text": "hi"}, "messages[1].content"),
        ([{"type": "image_url", "image_url": {"url": "x"}}], "messages[1].content[0]"),
        ([{"type": "text", "text": "a"}, "b"], "messages[1].content[1]"),
        ([{"type": "text", "text": 5}], "messages[1].content[0].text"),
    ],
    ids=["number", "object", "image-part", "bare-string-part", "text-not-string"],
)
async def test_a_bad_message_content_is_a_400_naming_the_content_field(
    tmp_path: Path, content: Any, param: str
) -> None:
    body = {"model": "echo", "messages": [USER, {"role": "user", "content": content}]}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param} ")


@pytest.mark.parametrize("role", [["user"], {"name": "user"}], ids=["list", "object"])
async def test_a_role_that_is_not_a_string_is_a_400_naming_it(tmp_path: Path, role: Any) -> None:
    body = {"model": "echo", "messages": [USER, {"role": role, "content": "x"}]}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[1].role"
    assert error["message"].startswith("messages[1].role must be one of assistant, ")


async def test_a_number_with_more_digits_than_python_reads_is_a_400_saying_so(
    tmp_path: Path,
) -> None:
    raw = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "n": '
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", content=raw + b"9" * 5000 + b"}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert "a number with more than 4300 digits" in error["message"]


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("temperature", "hot", "temperature"),
        ("temperature", 2.5, "temperature"),
        ("top_p", -0.1, "top_p"),
        ("presence_penalty", True, "presence_penalty"),
        ("frequency_penalty", 3, "frequency_penalty"),
        ("max_tokens", -1, "max_tokens"),
        ("max_tokens", 1.5, "max_tokens"),
        ("max_completion_tokens", "100", "max_completion_tokens"),
        ("seed", "7", "seed"),
        ("seed", 2**70, "seed"),
        ("max_tokens", 10**400, "max_tokens"),
        ("stop", {"a": 1}, "stop"),
        ("stop", [1, 2], "stop"),
        ("stop", ["a", "b", "c", "d", "e"], "stop"),
        ("logprobs", "yes", "logprobs"),
        ("top_logprobs", 21, "top_logprobs"),
        ("tools", "calculator", "tools"),
        ("tools", [1], "tools"),
        ("tool_choice", 1, "tool_choice"),
        ("response_format", "json", "response_format"),
        ("response_format", {"kind": "json_object"}, "response_format"),
        ("stream_options", "yes", "stream_options"),
        ("stream_options", {"include_usage": "no"}, "stream_options.include_usage"),
        ("metadata", ["a"], "metadata"),
        ("parallel_tool_calls", 1, "parallel_tool_calls"),
        # fields no graph uses, once taken whatever they held
        ("store", "yes", "store"),
        ("logit_bias", "none", "logit_bias"),
        ("logit_bias", {"50256": -101}, "logit_bias"),
        ("logit_bias", {"50256": "ban"}, "logit_bias"),
        ("prediction", "the old text", "prediction"),
        ("reasoning_effort", 5, "reasoning_effort"),
        ("verbosity", ["low"], "verbosity"),
        ("service_tier", True, "service_tier"),
        ("prompt_cache_key", 7, "prompt_cache_key"),
        ("safety_identifier", {"id": 1}, "safety_identifier"),
    ],
)
async def test_a_known_field_of_the_wrong_type_is_a_400_naming_it_though_graphs_ignore_it(
    tmp_path: Path, field: str, value: Any, param: str
) -> None:
    body = {"model": "echo", "messages": [USER], "stream": True, field: value}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert error["message"].startswith(f"`{param}` must be ")


async def test_the_neutral_values_of_fields_no_graph_uses_are_taken(tmp_path: Path) -> None:
    body = {
        "model": "echo",
        "messages": [USER],
        "store": False,
        "logit_bias": {"50256": -100},
        "prediction": {"type": "content", "content": "hi"},
        "reasoning_effort": "low",
        "verbosity": "low",
        "service_tier": "auto",
        "prompt_cache_key": "k1",
        "safety_identifier": "u1",
        "vendor_extra": {"top_k": 5},  # (as vLLM's extra fields: not OpenAI's, not refused)
    }
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text


async def test_a_message_name_that_is_not_a_string_is_a_400_naming_it(tmp_path: Path) -> None:
    message = {"role": "user", "content": "hi", "name": {"first": "Ana"}}
    body = {"model": "echo", "messages": [message]}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[0].name"
    assert error["message"].startswith("messages[0].name must be a string")


async def test_stream_options_without_stream_is_a_400_as_openai_answers_it(
    tmp_path: Path,
) -> None:
    body = {"model": "echo", "messages": [USER], "stream_options": {"include_usage": True}}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        refused = await web.post("/chat/completions", json=body)
        streamed = await web.post("/chat/completions", json={**body, "stream": True})
        unset = await web.post("/chat/completions", json={**body, "stream_options": None})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "stream_options"
    assert (
        error["message"] == "`stream_options` is for a streamed answer: send it with `stream: true`"
    )
    assert streamed.status_code == unset.status_code == 200
    assert '"usage"' in streamed.text.split("data: ")[-2]


async def test_the_sampling_fields_an_openai_client_sends_are_taken_and_ignored(
    tmp_path: Path,
) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, client(server) as oai:
        reply = await oai.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "hi"}],
            temperature=0.2,
            top_p=1,
            max_tokens=50,
            max_completion_tokens=50,
            presence_penalty=-2,
            frequency_penalty=0.5,
            stop=["\n", "END"],
            seed=-3,
            logprobs=False,
            top_logprobs=0,
            parallel_tool_calls=True,
            metadata={"app": "x"},
            stream_options=None,
        )
    assert reply.choices[0].message.content == "hi | turns: 0 | public"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
TOP_FIELDS = [
    "model", "messages", "n", "stream", "stream_options", "user", "temperature", "top_p",
    "max_tokens", "max_completion_tokens", "stop", "seed", "tools", "tool_choice",
    "response_format", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
    "metadata", "logit_bias", "store", "prediction", "reasoning_effort",
]  # fmt: skip
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]


@settings(max_examples=300, deadline=None)
@given(
    top=st.dictionaries(st.sampled_from(TOP_FIELDS), JSON, max_size=3),
    message=st.dictionaries(st.sampled_from(MESSAGE_FIELDS), JSON, max_size=2),
)
def test_any_json_in_any_field_of_a_chat_request_is_read_or_refused_with_a_400(
    top: dict[str, Any], message: dict[str, Any]
) -> None:
    body = {"model": "echo", "messages": [USER, {**USER, **message}], **top}
    try:
        chat = parse_chat(body)
    except ApiError as exc:
        assert exc.status == 400
        assert exc.param is None or exc.message.startswith(("`", exc.param))
        return
    assert chat.model == body["model"] and isinstance(chat.input["prompt"], str)


async def test_a_client_that_hangs_up_mid_body_is_a_499_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"model": "echo", "messages": [USER]}).encode()
    receive, send, sent = hanging_up_after(body[:10])
    caplog.set_level(logging.ERROR, logger="moat.serve")
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        with anyio.fail_after(10):
            await server.app(chat_scope(), receive, send)
        after = await web.post("/chat/completions", json={"model": "echo", "messages": [USER]})
        scraped = samples((await web.get("http://moat.test/metrics")).text)
        recorded = server.graphs["echo"].pipe.memory.requests()
    assert sent[0]["status"] == 499
    assert after.status_code == 200
    assert [r.getMessage() for r in caplog.records] == []
    assert 'moat_http_responses_total{code="500"}' not in scraped
    assert scraped['moat_http_responses_total{code="499"}'] == 1
    assert len(recorded) == 1  # only the request that was sent whole


def answering(name: str, *outputs: str) -> str:
    """A graph answering with one zero-latency sim call, and `outputs` (`NAME: EXPR`)
    beside its `answer`."""
    extra = "".join(f"\n  {line}" for line in outputs)
    return f"""
moat: 1
name: {name}
models:
  small: {{provider: sim, profile: small, time_scale: 0}}
input: {{type: object, required: [prompt], properties: {{prompt: {{type: string}}}}}}
nodes:
  answer: {{type: model, with: {{model: small, prompt: "{{{{ input.prompt }}}}"}}}}
output:
  answer: answer.text{extra}
"""


DECIDING = answering("dec", "decision: input.prompt")


@pytest.mark.parametrize(
    ("decision", "header"),
    [
        ("accept", "accept"),
        ("ok\r\nSet-Cookie: pwned=1", "ok%0D%0ASet-Cookie: pwned=1"),
        ("caf\u00e9 \u2603", "caf%C3%A9 %E2%98%83"),
        ("a\x00b", "a%00b"),
    ],
    ids=["word", "crlf", "unicode", "nul"],
)
async def test_a_decision_a_header_cannot_carry_is_percent_encoded_in_its_header(
    tmp_path: Path, decision: str, header: str
) -> None:
    graph = tmp_path / "dec.yaml"
    graph.write_text(DECIDING)
    body = {"model": "dec", "messages": [{"role": "user", "content": decision}]}
    async with MoatServer([graph], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["x-moat-decision"] == header
    assert "set-cookie" not in response.headers
    assert response.json()["moat"]["decision"] == decision


# -- moat sim-server ------------------------------------------------------------------------

SIM = "http://sim.test/v1"


def sim_http(server: SimServer) -> httpx2.AsyncClient:
    """A plain HTTP client on a sim-server's app."""
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=server.app), base_url=SIM)


async def test_sim_server_refuses_json_nested_past_the_parser_with_a_400() -> None:
    raw = b'{"model": "sim-small", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", content=raw)
        after = await web.post("/chat/completions", json={"model": "sim-small", "messages": [USER]})
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]
    assert after.status_code == 200


async def test_sim_server_streams_the_answer_it_would_send_whole() -> None:
    messages: Any = [{"role": "user", "content": "What is a Roth IRA?"}]
    async with (
        sim_http(SimServer(time_scale=0)) as web,
        openai.AsyncOpenAI(base_url=SIM, api_key="any", http_client=web, max_retries=0) as oai,
    ):
        whole = await oai.chat.completions.create(model="sim-small", messages=messages, seed=3)
        stream = await oai.chat.completions.create(
            model="sim-small",
            messages=messages,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage == whole.usage


async def test_sim_server_refuses_a_stream_flag_that_is_not_a_boolean() -> None:
    body = {"model": "sim-small", "messages": [USER], "stream": "true"}
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    assert "`stream`" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"_task": ["a"]}, "`_task` must be a string"),
        ({"n": 2}, "`n` must be 1"),
        (
            {"messages": [{"role": "user", "content": "caf\ud800"}]},
            "messages[0].content has a lone surrogate",
        ),
    ],
    ids=["task-list", "n", "surrogate"],
)
async def test_sim_server_refuses_a_field_it_cannot_take_with_a_400_naming_it(
    raw: dict[str, Any], words: str
) -> None:
    body = json.dumps({"model": "sim-small", "messages": [USER], **raw}).encode()
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stop", {"a": 1}),
        ("top_p", 2),
        ("tools", "calculator"),
        ("stream_options", {"include_usage": "no"}),
        ("max_completion_tokens", 0),
        ("logprobs", "yes"),
    ],
)
async def test_sim_server_checks_openai_s_fields_as_moat_serve_and_openai_do(
    tmp_path: Path, field: str, value: Any
) -> None:
    body = {"model": "sim-small", "messages": [USER], "stream": True, field: value}
    async with sim_http(SimServer(time_scale=0)) as web:
        simulated = await web.post("/chat/completions", json=body)
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        served = await web.post("/chat/completions", json={**body, "model": "echo"})
    assert simulated.status_code == served.status_code == 400
    expected = served.json()["error"]["message"]
    assert simulated.json()["error"]["message"] == f"bad chat completion request: {expected}"


async def test_sim_server_refuses_a_number_with_more_digits_than_python_reads() -> None:
    raw = b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "seed": '
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", content=raw + b"9" * 5000 + b"}")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "a number with more than 4300 digits" in message and "sys." not in message


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"x-sim-fault": "rate_limit", "x-sim-retry-after": "inf"}, "X-Sim-Retry-After"),
        ({"x-sim-fault": "rate_limit", "x-sim-retry-after": "nan"}, "X-Sim-Retry-After"),
        ({"x-sim-fault": "rate-limit"}, "X-Sim-Fault: no fault 'rate-limit'; faults: error, "),
    ],
    ids=["retry-inf", "retry-nan", "unknown-fault"],
)
async def test_sim_server_refuses_a_fault_header_it_cannot_honour_with_a_400(
    headers: dict[str, str], words: str
) -> None:
    body = {"model": "sim-small", "messages": [USER]}
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", json=body, headers=headers)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/", "/v2/chat/completions/"])
async def test_sim_server_names_the_unknown_path_as_sent_and_its_routes(path: str) -> None:
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.get(f"http://sim.test{path}")
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert message == (
        f"no route GET {path}; the sim-server serves POST /v1/chat/completions, "
        "GET /v1/models and GET /v1/models/MODEL"
    )


SIM_FIELDS = [*TOP_FIELDS, "_labels", "_task"]


@settings(max_examples=200, deadline=None)
@given(
    top=st.dictionaries(st.sampled_from(SIM_FIELDS), JSON, max_size=3),
    message=st.dictionaries(st.sampled_from(MESSAGE_FIELDS), JSON, max_size=2),
)
def test_any_json_in_any_field_is_answered_or_refused_by_the_sim_server_never_a_500(
    top: dict[str, Any], message: dict[str, Any]
) -> None:
    body = {"model": "sim-small", "messages": [USER, {**USER, **message}], **top}
    raw = json.dumps(body).encode()
    reply = anyio.run(SimService(time_scale=0).answer, "POST", "/v1/chat/completions", {}, raw)
    assert reply.status in (200, 400), reply.body


async def test_sim_server_takes_a_client_that_hangs_up_mid_body_quietly() -> None:
    server = SimServer(time_scale=0)
    receive, send, sent = hanging_up_after(b'{"model": "sim-')
    with anyio.fail_after(10):
        await server.app(chat_scope(), receive, send)  # no exception for uvicorn to log
    assert sent[0]["status"] == 499
    assert server.dropped_connections == 0  # no answer was being prepared
    async with sim_http(server) as web:
        after = await web.post("/chat/completions", json={"model": "sim-small", "messages": [USER]})
    assert after.status_code == 200


async def test_sim_server_refuses_a_body_over_its_limit_with_a_413_reading_no_more_of_it() -> None:
    pieces = 0

    async def endless() -> Any:
        nonlocal pieces
        for _ in range(10_000):  # 640 MB, were it all read
            pieces += 1
            yield b"x" * 65536

    server = SimServer(time_scale=0, max_body_bytes=1 << 20)
    async with sim_http(server) as web:
        declared = await web.post("/chat/completions", content=b"x" * ((1 << 20) + 1))
        streamed = await web.post("/chat/completions", content=endless())
        after = await web.post("/chat/completions", json={"model": "sim-small", "messages": [USER]})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
        assert error["message"].startswith("the request body is over 1048576 bytes")
    assert pieces <= 17
    assert after.status_code == 200


def test_sim_server_bodies_are_limited_by_default() -> None:
    assert SimServer().max_body_bytes == 32 << 20


async def test_serve_closes_the_connection_of_a_body_over_its_limit(tmp_path: Path) -> None:
    graph = echo_graph(tmp_path, max_bytes=200)
    async with MoatServer([graph], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", content=b"x" * 1000)
    assert response.status_code == 413
    assert response.headers["connection"] == "close"  # the rest of the body is not read


# -- API keys -------------------------------------------------------------------------------


def test_a_keys_file_giving_one_key_to_two_tenants_is_refused_naming_both_lines(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(
        f"acme sha256:{hash_key('sk-1')}\n# rotated\nglobex sha256:{hash_key('sk-1').upper()}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_keys(keys)
    assert str(caught.value).startswith(f"{keys}:3: ")
    assert "also the key of line 1 (tenant 'acme')" in str(caught.value)


def test_keys_from_the_environment_giving_one_key_to_two_tenants_are_refused() -> None:
    with pytest.raises(SpecError, match=r"entry 2 .* also the key of entry 1 \(tenant 'acme'\)"):
        keys_from_env("acme=sk-1,globex=sk-1")


def test_the_same_key_twice_for_one_tenant_is_accepted(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"acme sha256:{hash_key('sk-1')}\nacme sha256:{hash_key('sk-1')}\n")
    assert load_keys(keys).keys == {hash_key("sk-1"): "acme"}
    assert keys_from_env("acme=sk-1,acme=sk-1").keys == {hash_key("sk-1"): "acme"}


# -- answers JSON cannot carry --------------------------------------------------------------

INFINITE = answering("inf", 'score: "1e308 * 10"', 'scores: "[1.5, -1e308 * 10]"')


def strict_json(text: str) -> Any:
    """JSON as the standard has it: no NaN or Infinity."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_an_output_number_json_cannot_carry_is_sent_as_null(
    tmp_path: Path, stream: bool
) -> None:
    graph = tmp_path / "inf.yaml"
    graph.write_text(INFINITE)
    body = {"model": "inf", "messages": [USER], "stream": stream}
    async with MoatServer([graph], db=tmp_path / "moat.db") as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
        await server.graphs["inf"].pipe.settle()
    assert response.status_code == 200
    if stream:
        events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        moat = [strict_json(event) for event in events[:-1]][-1]["moat"]
    else:
        moat = strict_json(response.text)["moat"]
    assert moat["output"]["score"] is None and moat["output"]["scores"] == [1.5, None]
    assert moat["request_id"] == response.headers["x-moat-request-id"]


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("grace", ["inf", "nan", "-5"])
def test_a_grace_period_that_is_not_a_finite_number_of_seconds_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], grace: str
) -> None:
    db = tmp_path / "moat.db"
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(echo_graph(tmp_path)), "--port", "0", "--db", str(db), "--grace", grace])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --grace: {grace!r} is not a number of at least 0" in err
    assert not db.exists()


@pytest.mark.parametrize("user", ["john doe", "ünï", "x" * 129, "a/b"])
async def test_a_user_that_cannot_name_a_tenant_is_a_400_not_the_public_tenant(
    tmp_path: Path, user: str
) -> None:
    """Without --keys the `user` names the tenant, whose cache is its own: two such users
    silently made `public` would share one cache (and one audit identity)."""
    body = {"model": "echo", "messages": [USER], "user": user}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        refused = await web.post("/chat/completions", json=body)
        answered = await web.post("/chat/completions", json={**body, "user": "john.doe@x"})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("user", "invalid_user")
    assert "cannot name a tenant" in error["message"]
    assert answered.status_code == 200


async def test_a_compressed_body_is_a_415_saying_so_not_a_json_error(tmp_path: Path) -> None:
    body = gzip.compress(json.dumps({"model": "echo", "messages": [USER]}).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        refused = await web.post("/chat/completions", content=body, headers=headers)
        plain = await web.post(
            "/chat/completions",
            json={"model": "echo", "messages": [USER]},
            headers={"content-encoding": "identity"},
        )
    assert refused.status_code == 415
    error = refused.json()["error"]
    assert error["code"] == "unsupported_content_encoding"
    assert "Content-Encoding: gzip" in error["message"]
    assert plain.status_code == 200
