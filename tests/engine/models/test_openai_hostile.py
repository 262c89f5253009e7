"""The `openai` provider against hostile OpenAI-compatible endpoints.

Each test points a model at a loopback endpoint that answers wrongly on purpose (bodies
that are not chat completions, absurd usage, odd Retry-After values, ...) and checks what
the node sees and what `llm_calls` records: an error naming the model, the endpoint and
what was wrong, retried or not as the model's settings say, and a cost that is never
below what the endpoint may have billed. Both HTTP routes are exercised: aiohttp on
asyncio, the official client's own on trio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from engine.errors import MoatError, TransientError
from engine.events import LlmCall
from engine.graph.spec import ModelSpec, Price
from engine.models import CallScope, Gateway
from engine.models.base import ResponseLost
from engine.models.openai_provider import ClientRegistry, OpenAIProvider
from engine.plugin.context import Completion, RequestInfo
from tests.support.hostile_openai import Reply, hostile_endpoint, http

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
    result, calls, _ = await _call(http(200, body))
    assert isinstance(result, ResponseLost)
    assert "model 'gpt-4o-mini'" in str(result) and "unreadable response body" in str(result)
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
