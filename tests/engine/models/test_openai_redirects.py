"""Redirects an OpenAI-compatible endpoint answers a chat completion with.

A 307 or 308 repeats the POST, body and headers included, where it points: to another
origin (scheme, host or port), that would hand the prompt and the API key to a server the
graph never named. Such a redirect is refused, naming the endpoint, where it pointed and
the fix (point `base_url` at the final endpoint); nothing reaches the other origin and
nothing is billed. A 307 or 308 within the endpoint's own origin is followed; a 301, 302
or 303 would turn the POST into a GET without the prompt, so it is refused too. Both HTTP
routes are exercised: the prepared direct route on asyncio, the official client's on trio.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest

from engine.errors import MoatError, NodeError
from engine.events import LlmCall
from engine.graph.spec import ModelSpec, Price
from engine.models import CallScope, Gateway
from engine.models.openai_provider import ClientRegistry, OpenAIProvider
from engine.plugin.context import Completion, RequestInfo
from tests.support.hostile_openai import Reply, completion, hostile_endpoint, http

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])]


class _Target:
    """An endpoint that answers, counting the requests that reached it."""

    def __init__(self) -> None:
        self.reached = 0

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        self.reached += 1
        await stream.send(http(200, completion()))


async def _call(replies: dict[str, Reply], root: str | None = None) -> tuple[Any, list[LlmCall]]:
    """One gateway call of model `a/v1` at the endpoint serving `replies` (the answer or
    the error raised, and the recorded attempts)."""
    async with hostile_endpoint(replies) as own_root:
        model = ModelSpec(
            provider="openai",
            model="gpt-4o-mini",
            base_url=f"{root or own_root}/a/v1",
            max_retries=1,
            price=Price(input=1.0, output=2.0),
        )
        info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
        scope = CallScope(request=info, node_id="answer")
        provider = OpenAIProvider(model, registry=ClientRegistry(), api_key="sk-secret")
        async with Gateway({"m": model}, providers={"m": provider}) as gateway:
            with anyio.fail_after(10):
                try:
                    result: Completion | MoatError = await gateway.client("m", scope).complete(
                        prompt="x", max_tokens=10
                    )
                except MoatError as exc:
                    result = exc
    return result, scope.calls


@pytest.mark.parametrize("status", [307, 308, 302])
async def test_a_redirect_to_another_origin_is_refused_and_never_followed(status: int) -> None:
    target = _Target()
    async with hostile_endpoint({"b": target}) as other:
        location = f"{other}/b/v1/chat/completions?sig=s3cret"
        redirect = http(status, b"", {"location": location})
        async with hostile_endpoint({"a": redirect}) as root:
            result, calls = await _call({}, root)
    assert target.reached == 0
    assert type(result) is NodeError
    message = str(result)
    assert message.startswith(
        f"node 'answer': model 'gpt-4o-mini' at {root}/a/v1: the endpoint redirected the "
        f"call ({status}) to another origin, {other}/b/v1/chat/completions; "
    )
    assert "the prompt and the API key" in message
    assert f"set the model's `base_url` to {other}/b/v1 " in message
    assert "s3cret" not in message and "sk-secret" not in message
    assert message.endswith("(after 1 attempt)")  # no retry: it would be refused again
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)]


async def test_a_redirect_from_http_to_https_is_another_origin_too() -> None:
    location = "https://127.0.0.1/a/v1/chat/completions"
    result, calls = await _call({"a": http(308, b"", {"location": location})})
    assert type(result) is NodeError
    assert f"(308) to another origin, {location}; " in str(result)
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)]


async def test_a_redirect_within_the_endpoint_is_followed() -> None:
    target = _Target()
    location = "/b/v1/chat/completions"
    result, calls = await _call({"a": http(307, b"", {"location": location}), "b": target})
    assert isinstance(result, Completion), result
    assert result.text == "hi" and target.reached == 1
    assert [c.status for c in calls] == ["ok"]


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_a_redirect_within_the_endpoint_that_would_drop_the_prompt_is_refused(
    status: int,
) -> None:
    """A 301, 302 or 303 tells a client to fetch the place with a GET, without the body:
    followed, the prompt would be lost and the answer be to no question. Both routes refuse
    it alike, naming where it pointed and the fix, and nothing is sent there."""
    target = _Target()
    location = "/b/v1/chat/completions?sig=s3cret"
    async with hostile_endpoint(
        {"a": http(status, b"", {"location": location}), "b": target}
    ) as root:
        result, calls = await _call({}, root)
    assert target.reached == 0
    assert type(result) is NodeError
    assert str(result) == (
        f"node 'answer': model 'gpt-4o-mini' at {root}/a/v1: the endpoint redirected the call "
        f"({status}) to {root}/b/v1/chat/completions, and moat follows only 307 and 308 "
        f"redirects (up to 20) for a chat completion: set the model's `base_url` to {root}/b/v1 "
        "(after 1 attempt)"
    )
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)]
