"""`moat sim-server` refuses the requests `moat serve` and real providers refuse, in the
same OpenAI error shape (`param` and `code` included), and takes the ones providers take."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from engine.serve import MoatServer
from engine.serve.sim_app import SimServer
from tests.engine.serve.test_serve import echo_graph
from tests.engine.serve.test_serve_hostile import sim_http
from tests.support.serve_client import http

pytestmark = pytest.mark.anyio

USER: Any = {"role": "user", "content": "hi"}
BAD_MESSAGES = [
    ({"role": "wizard", "content": "hi"}, "messages[0].role", "invalid_value"),
    ({"role": "user", "content": 5}, "messages[0].content", "invalid_value"),
    ({"role": "user"}, "messages[0].content", "missing_required_parameter"),
    ({"role": "user", "content": None}, "messages[0].content", "missing_required_parameter"),
    ({"content": "hi"}, "messages[0].role", "invalid_value"),
    ("hi", "messages[0]", "invalid_value"),
]


async def _asked_of_both(tmp_path: Path, body: dict[str, Any]) -> tuple[Any, Any]:
    """`body` posted to `moat sim-server` and (as model `echo`) to `moat serve`."""
    async with sim_http(SimServer(time_scale=0)) as web:
        simulated = await web.post("/chat/completions", json=body)
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        served = await web.post("/chat/completions", json={**body, "model": "echo"})
    return simulated, served


@pytest.mark.parametrize(
    ("message", "param", "code"),
    BAD_MESSAGES,
    ids=["role", "content-number", "no-content", "content-null", "no-role", "text"],
)
async def test_a_malformed_message_is_the_400_moat_serve_gives(
    tmp_path: Path, message: Any, param: str, code: str
) -> None:
    body = {"model": "sim-small", "messages": [message]}
    simulated, served = await _asked_of_both(tmp_path, body)
    assert simulated.status_code == served.status_code == 400
    error, expected = simulated.json()["error"], served.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert (expected["param"], expected["code"]) == (param, code)
    assert error["message"] == f"bad chat completion request: {expected['message']}"


async def test_every_400_names_its_field_and_code() -> None:
    body = {"model": "sim-small", "messages": [USER], "temperature": "hot"}
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "bad chat completion request: `temperature` must be a number from 0 to 2, "
        "not 'hot'",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }


@pytest.mark.parametrize(
    ("field", "value"), [("store", "yes"), ("logit_bias", {"50256": -101}), ("verbosity", 1)]
)
async def test_a_field_of_the_wrong_type_no_model_uses_is_the_400_moat_serve_gives(
    tmp_path: Path, field: str, value: Any
) -> None:
    body = {"model": "sim-small", "messages": [USER], field: value}
    simulated, served = await _asked_of_both(tmp_path, body)
    assert simulated.status_code == served.status_code == 400
    error, expected = simulated.json()["error"], served.json()["error"]
    assert (
        (error["param"], error["code"])
        == (expected["param"], expected["code"])
        == (
            field,
            "invalid_value",
        )
    )
    assert error["message"] == f"bad chat completion request: {expected['message']}"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ('{"model": "sim-small", "messages": [{"role": "user", "content": "caf\xe9"}]}'.encode(
            "latin-1"
        ), "the request body is not UTF-8 JSON"),
        (b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "seed": NaN}',
         "the request body is not valid JSON: NaN is not a JSON number"),
        (b'{"model": "sim-small", "temperature": 1e999, "messages": []}',
         "the request body is not valid JSON: the number 1e999 is out of range"),
    ],
    ids=["latin-1", "nan", "overflow"],
)  # fmt: skip
async def test_a_body_that_is_not_json_is_a_400_saying_so(raw: bytes, words: str) -> None:
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", content=raw)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (None, "invalid_json")
    assert error["message"].startswith(f"bad chat completion request: {words}")
    assert "codec" not in error["message"]


async def test_a_compressed_body_is_a_415_as_moat_serve_answers_it() -> None:
    raw = gzip.compress(json.dumps({"model": "sim-small", "messages": [USER]}).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", content=raw, headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_content_encoding"
    assert error["message"].startswith("the request body is sent with Content-Encoding: gzip")


@pytest.mark.parametrize(
    ("call", "words"),
    [
        ({"request_id": "r-1", "seed": 0}, "X-Moat-Call: unknown field 'request_id'; the fields"),
        ({"seed": 0}, "X-Moat-Call: no field 'request' (the request's id)"),
        ({"request": "r-1", "cycle": "two"}, "X-Moat-Call: field 'cycle' must be a whole number"),
    ],
    ids=["misnamed", "missing", "not-a-number"],
)
async def test_a_bad_call_header_names_the_field_as_sent(call: dict[str, Any], words: str) -> None:
    body = {"model": "sim-small", "messages": [USER]}
    headers = {"x-moat-call": json.dumps(call)}
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post("/chat/completions", json=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_header"
    assert error["message"].startswith(f"bad chat completion request: {words}")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/v1/chat/completions", "POST"), ("POST", "/v1/models", "GET")],
)
async def test_a_route_asked_with_another_method_is_a_405_with_allow(
    method: str, path: str, allowed: str
) -> None:
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.request(method, f"http://sim.test{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"] == {
        "message": f"{method} {path}: method not allowed; use {allowed}",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }


async def test_it_takes_the_turns_a_provider_takes_that_moat_serve_refuses() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
        {"role": "assistant", "content": "It is"},  # a prefill
    ]
    async with sim_http(SimServer(time_scale=0)) as web:
        response = await web.post(
            "/chat/completions", json={"model": "sim-small", "messages": messages}
        )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
