"""The `openai` provider against hostile OpenAI-compatible endpoints.

Each test points a model at a loopback endpoint that answers wrongly on purpose (bodies
that are not chat completions, absurd usage, odd Retry-After values, ...) and checks what
the node sees and what `llm_calls` records: an error naming the model, the endpoint and
what was wrong, retried or not as the model's settings say, and a cost that is never
below what the endpoint may have billed. Both HTTP routes are exercised: aiohttp on
asyncio, the official client's own on trio.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import Pipeline
from engine.errors import MoatError, NodeError, RateLimited, TransientError
from engine.events import LlmCall
from engine.graph.loader import load_graph_text
from engine.graph.spec import ModelSpec, Price
from engine.models import CallScope, Gateway, _direct_http
from engine.models.base import ResponseLost
from engine.models.gateway import RETRY_AFTER_CAP_S
from engine.models.openai_provider import (
    ClientRegistry,
    OpenAIProvider,
    _response,
    endpoint_label,
    parse_retry_after,
)
from engine.plugin.context import Completion, RequestInfo
from engine.scheduler.runner import RequestResult
from tests.support.hostile_openai import Reply, completion, hostile_endpoint, http

BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
PRICE = Price(input=1.0, output=2.0)
MAX_TOKENS = 10


def _reserved(calls: Sequence[LlmCall]) -> float:
    """The reservation of the one call made: its input bound and output limit, at PRICE."""
    (call,) = calls
    return (call.input_tokens * PRICE.input + MAX_TOKENS * PRICE.output) / 1e6


async def _call(
    reply: Reply, *, retries: int = 0, deadline_s: float | None = None, **spec: Any
) -> tuple[Completion | MoatError, list[LlmCall], str]:
    """One gateway call of a model served by `reply`: the answer or the error raised, the
    recorded attempts and the model's base URL."""
    async with hostile_endpoint({"m": reply}) as root:
        base_url = f"{root}/m/v1"
        model = ModelSpec(
            provider="openai",
            model="gpt-4o-mini",
            base_url=base_url,
            max_retries=retries,
            price=PRICE,
            **spec,
        )
        info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
        deadline = None if deadline_s is None else anyio.current_time() + deadline_s
        scope = CallScope(request=info, node_id="answer", deadline=deadline)
        provider = OpenAIProvider(model, registry=ClientRegistry(), api_key="sk-test")
        async with Gateway({"m": model}, providers={"m": provider}) as gateway:
            with anyio.fail_after(10):
                try:
                    result: Completion | MoatError = await gateway.client("m", scope).complete(
                        prompt="x", max_tokens=MAX_TOKENS
                    )
                except MoatError as exc:
                    result = exc
    return result, scope.calls, base_url


GRAPH = """\
moat: 1
name: hostile
models:
  m: {{provider: openai, model: gpt-4o-mini, base_url: "{base_url}", max_retries: 0,
      price: {{input: 1.0, output: 2.0}} {model}}}
input: {{type: object, required: [prompt], properties: {{prompt: {{type: string}}}}}}
budget: {{cost_usd: {budget}}}
nodes:
  answer:
    type: model
    {node}
    with: {{model: m, prompt: "{{{{ input.prompt }}}}", max_tokens: 10}}
output: {{answer: answer.text}}
"""


async def _run(
    reply: Reply, tmp_path: Path, *, budget: float = 1.0, model: str = "", node: str = ""
) -> tuple[RequestResult, list[tuple[Any, ...]]]:
    """One request through a graph whose model is served by `reply`: its result and its
    `llm_calls` rows (status, input and output tokens, cost, error) as stored."""
    db = tmp_path / "moat.db"
    async with hostile_endpoint({"m": reply}) as root:
        text = GRAPH.format(base_url=f"{root}/m/v1", budget=budget, model=model, node=node)
        async with Pipeline(load_graph_text(text, "hostile.yaml"), db=db) as pipe:
            with anyio.fail_after(10):
                result = await pipe.run({"prompt": "hello"})
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select status, input_tokens, output_tokens, cost_usd, error from llm_calls"
        ).fetchall()
    return result, rows


DEEP = b"[" * 100_000 + b"]" * 100_000
"""JSON nested past what the parser can recurse into."""


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b'{"choices": [ ', "Expecting value"),
        (b"", "Expecting value"),
        (b'{"choices":[{"message":{"content":"\xff"}}]}', "can't decode byte 0xff"),
        (b"data: {}\n\ndata: [DONE]\n\n", "Expecting value"),
        (DEEP, "nested too deeply"),
    ],
    ids=["truncated", "empty", "not-utf8", "sse", "deep"],
)
async def test_a_200_that_cannot_be_read_may_have_been_billed(body: bytes, what: str) -> None:
    """The endpoint said it answered: the generation may be billed, so the attempt is
    charged its reservation, and retried like a lost answer."""
    result, calls, base_url = await _call(http(200, body))
    assert isinstance(result, ResponseLost)
    assert f"model 'gpt-4o-mini' at {base_url}: unreadable response body (" in str(result)
    assert what in str(result)
    assert [(c.status, c.output_tokens) for c in calls] == [("error", MAX_TOKENS)]
    assert calls[0].cost_usd == pytest.approx(_reserved(calls))


@BACKENDS
@pytest.mark.anyio
async def test_an_error_status_whose_body_cannot_be_parsed_is_still_that_status() -> None:
    result, calls, _ = await _call(http(500, DEEP))
    assert type(result) is TransientError
    assert "server error: Error code: 500" in str(result)
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)]


USAGE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@given(prompt=USAGE_VALUES, output=USAGE_VALUES)
def test_usage_is_charged_only_when_both_counts_are_plausible(prompt: Any, output: Any) -> None:
    """Whatever `usage` says, the answer's counts fit a store column, and are the body's
    own only when both are whole, non-negative and below any call's size."""
    usage = {"prompt_tokens": prompt, "completion_tokens": output}
    response = _response("gpt-4o-mini", "model 'gpt-4o-mini'", completion(usage=usage))
    assert 0 <= response.input_tokens < 2**31 and 0 <= response.output_tokens < 2**31
    plausible = all(type(n) is int and 0 <= n < 2**31 for n in (prompt, output))
    assert response.usage_reported is plausible
    if plausible:
        assert (response.input_tokens, response.output_tokens) == (prompt, output)


@pytest.mark.anyio
async def test_an_absurd_usage_is_charged_the_reservation_and_stored(tmp_path: Path) -> None:
    """A usage of 10**30 tokens is no bill (and no SQLite INTEGER): the run used to fail
    writing it to the store; the call is charged its reservation instead."""
    usage = {"prompt_tokens": 10**30, "completion_tokens": 10**30}
    result, rows = await _run(http(200, completion(usage=usage)), tmp_path)
    assert result.status == "ok" and result.output == {"answer": "hi"}
    [(status, input_tokens, output_tokens, cost, error)] = rows
    assert (status, output_tokens, error) == ("ok", MAX_TOKENS, None)
    assert cost == pytest.approx((input_tokens * PRICE.input + MAX_TOKENS * PRICE.output) / 1e6)
    assert result.cost_usd == pytest.approx(cost)


@given(value=st.text(max_size=40) | st.floats().map(str) | st.integers().map(str))
def test_any_retry_after_is_no_wait_or_a_finite_one(value: str) -> None:
    for name in ("retry-after", "retry-after-ms"):
        seconds = parse_retry_after({name: value})
        assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "attempts"),
    [
        ({"retry-after": "-5"}, 2),
        ({"retry-after": "inf"}, 2),
        ({"retry-after": "nan"}, 2),
        ({"retry-after": "soon-ish"}, 2),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 2),
        ({"retry-after": "99999999"}, 1),
        ({"retry-after-ms": "1e300"}, 1),
        ({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}, 1),
    ],
    ids=["negative", "inf", "nan", "garbage", "past-date", "huge", "huge-ms", "future-date"],
)
async def test_a_429_never_waits_past_what_a_call_waits_for(
    headers: dict[str, str], attempts: int
) -> None:
    """A Retry-After that is no finite time is ignored (the backoff applies); one longer
    than a call waits ends the call at once, saying so, instead of hanging on it."""
    reply = http(429, {"error": {"message": "slow down"}}, headers)
    started = anyio.current_time()
    result, calls, base_url = await _call(reply, retries=1)
    assert anyio.current_time() - started < 2
    assert isinstance(result, RateLimited)
    assert str(result).startswith(
        f"node 'answer': model 'gpt-4o-mini' at {base_url}: rate limited: Error code: 429 - "
        "slow down"
    )
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)] * attempts
    if attempts == 1:
        assert f"longer than the {RETRY_AFTER_CAP_S:g} s a call waits (after 1 attempt)" in str(
            result
        )


def _choice(message: Any, finish: str = "stop") -> dict[str, Any]:
    return completion(choices=[{"index": 0, "message": message, "finish_reason": finish}])


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "what"),
    [
        ([1, 2], "the body is an array, not an object"),
        ({"id": "x"}, "no `choices`"),
        (completion(choices={"0": {}}), "`choices` is an object"),
        (completion(choices=[]), "`choices` is empty"),
        (completion(choices=["hi"]), "`choices[0]` is a string"),
        (_choice(None), "`choices[0].message` is null"),
        (_choice({"content": 5}), "`choices[0].message.content` is a number, not text"),
        (_choice({"content": ["hi"]}), "`choices[0].message.content` is an array, not text"),
    ],
)
async def test_a_200_that_is_no_chat_completion_says_what_is_missing(body: Any, what: str) -> None:
    result, calls, base_url = await _call(http(200, body))
    assert isinstance(result, ResponseLost)
    assert (
        f"model 'gpt-4o-mini' at {base_url}: malformed response ({what}) (after 1 attempt)"
        in str(result)
    )
    assert [(c.status, c.output_tokens) for c in calls] == [("error", MAX_TOKENS)]
    assert calls[0].cost_usd == pytest.approx(_reserved(calls))


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "kind", "said"),
    [
        ({"message": "model overloaded", "type": "server_error"}, TransientError, ""),
        ({"message": "slow down", "code": 429}, RateLimited, "rate limited: Error code: 429 ("),
        (
            {"message": "no such model", "code": 404},
            NodeError,
            "request refused: Error code: 404 (",
        ),
        (
            {"message": "upstream failed", "code": 502},
            TransientError,
            "server error: Error code: 502 (",
        ),
        ("quota exhausted", TransientError, ""),
    ],
)
async def test_a_200_holding_an_error_is_that_error_and_billed_nothing(
    error: Any, kind: type[Exception], said: str
) -> None:
    """Gateways (OpenRouter, LiteLLM) pass an upstream error on in a 200: it is an error
    answer, mapped by the HTTP status it names, and retried or not as that status is."""
    result, calls, base_url = await _call(http(200, {"error": error}), retries=1)
    text = error["message"] if isinstance(error, dict) else error
    assert type(result) is kind
    assert f"model 'gpt-4o-mini' at {base_url}: {said}answered 200 with an error: {text}" in str(
        result
    )
    retried = kind is not NodeError
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)] * (1 + retried)


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("message", "finish"),
    [
        ({"role": "assistant", "content": None, "refusal": "I can't help"}, "stop"),
        ({"role": "assistant", "content": None, "tool_calls": []}, "tool_calls"),
        ({"role": "assistant", "content": ""}, "content_filter"),
        ({"role": "assistant", "content": "h"}, "length"),
    ],
)
async def test_an_answer_without_text_is_empty_and_says_why_it_stopped(
    message: Any, finish: str
) -> None:
    result, calls, _ = await _call(http(200, _choice(message, finish)))
    assert isinstance(result, Completion)
    assert result.text == (message["content"] or "")
    assert [(c.status, c.input_tokens, c.output_tokens, c.finish_reason) for c in calls] == [
        ("ok", 7, 2, finish)
    ]
    assert result.cost_usd == pytest.approx((7 * PRICE.input + 2 * PRICE.output) / 1e6)


@pytest.mark.parametrize(
    ("base_url", "shown"),
    [
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("http://user:secret@10.0.0.5:8000/v1?key=k#x", "http://10.0.0.5:8000/v1"),
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
    ],
)
def test_errors_name_the_endpoint_without_its_credentials(base_url: str, shown: str) -> None:
    assert endpoint_label(base_url) == shown


async def _endless(stream: anyio.abc.SocketStream) -> None:
    """A 200 whose chunked body never ends."""
    await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    await stream.send(b"transfer-encoding: chunked\r\n\r\n")
    while True:
        await stream.send(b"400\r\n" + b" " * 0x400 + b"\r\n")


def _chunked(body: bytes) -> Reply:
    async def reply(stream: anyio.abc.SocketStream) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        await stream.send(head + b"transfer-encoding: chunked\r\n\r\n")
        await stream.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    return reply


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # (the direct route's)
@pytest.mark.parametrize(
    "reply",
    [http(200, b" " * 5000 + b"{}"), _endless],
    ids=["declared-too-long", "endless"],
)
async def test_an_answer_past_the_size_limit_is_lost_not_read_into_memory(
    reply: Reply, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_direct_http, "MAX_RESPONSE_BYTES", 4096)
    result, calls, _ = await _call(reply)
    assert isinstance(result, ResponseLost)
    assert "body passed 0 MiB and was not read" in str(result)
    assert [c.status for c in calls] == ["error"] and calls[0].cost_usd == _reserved(calls)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_chunked_answer_within_the_limit_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_direct_http, "MAX_RESPONSE_BYTES", 4096)
    result, calls, _ = await _call(_chunked(json.dumps(completion()).encode()))
    assert isinstance(result, Completion) and result.text == "hi"
    assert [c.status for c in calls] == ["ok"]
