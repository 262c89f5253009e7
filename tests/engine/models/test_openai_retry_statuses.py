"""Which HTTP statuses of an OpenAI-compatible endpoint are retried, and when.

A 503 (Service Unavailable) says when to come back in its Retry-After, as a 429 does:
the retry waits for it (seconds or an HTTP date), never past the request's deadline nor
longer than a call waits. A 408 (Request Timeout: the server gave up waiting for the
request) is transient like a 5xx. Neither generated anything, so neither is billed. Both
HTTP routes are exercised: the prepared direct route on asyncio, the official client's on
trio.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import anyio
import pytest

from engine.errors import MoatError, TransientError
from engine.events import LlmCall, MemorySink
from engine.graph.loader import load_graph_text
from engine.graph.spec import ModelSpec, Price
from engine.models import CallScope, Gateway
from engine.models.gateway import RETRY_AFTER_CAP_S
from engine.models.openai_provider import ClientRegistry, OpenAIProvider, status_error
from engine.plugin.context import RequestInfo
from engine.scheduler.runner import Runner
from tests.support.hostile_openai import Reply, hostile_endpoint, http

BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


async def _call(
    reply: Reply, *, retries: int = 1, deadline_s: float | None = None
) -> tuple[Any, list[LlmCall], float]:
    """One gateway call of a model served by `reply`: the answer or the error raised, the
    recorded attempts and the seconds the call took."""
    async with hostile_endpoint({"m": reply}) as root:
        model = ModelSpec(
            provider="openai",
            model="gpt-4o-mini",
            base_url=f"{root}/m/v1",
            max_retries=retries,
            price=Price(input=1.0, output=2.0),
        )
        info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
        deadline = None if deadline_s is None else anyio.current_time() + deadline_s
        scope = CallScope(request=info, node_id="answer", deadline=deadline)
        provider = OpenAIProvider(model, registry=ClientRegistry(), api_key="sk-test")
        async with Gateway({"m": model}, providers={"m": provider}) as gateway:
            started = anyio.current_time()
            with anyio.fail_after(10):
                try:
                    result: Any = await gateway.client("m", scope).complete(
                        prompt="x", max_tokens=10
                    )
                except MoatError as exc:
                    result = exc
            took = anyio.current_time() - started
    return result, scope.calls, took


def _unavailable(retry_after: str) -> bytes:
    return http(503, {"error": {"message": "overloaded"}}, {"retry-after": retry_after})


@BACKENDS
@pytest.mark.anyio
async def test_a_503_waits_its_retry_after_in_seconds_before_the_retry() -> None:
    result, calls, took = await _call(_unavailable("1"))
    assert isinstance(result, TransientError)
    assert "server error: Error code: 503 - overloaded (after 2 attempts)" in str(result)
    assert took >= 1.0
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)] * 2
    assert getattr(result, "retry_after_s", None) == 1.0  # (a node's `retries:` waits too)


@BACKENDS
@pytest.mark.anyio
async def test_a_503_waits_until_its_retry_after_date() -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    result, calls, took = await _call(_unavailable(when))
    assert isinstance(result, TransientError)
    assert took >= 0.9  # (an HTTP date counts whole seconds)
    assert len(calls) == 2


@BACKENDS
@pytest.mark.anyio
async def test_a_503_asking_for_a_longer_wait_than_a_call_waits_ends_the_call_at_once() -> None:
    result, calls, took = await _call(_unavailable("99999999"))
    assert isinstance(result, TransientError)
    assert f"longer than the {RETRY_AFTER_CAP_S:g} s a call waits (after 1 attempt)" in str(result)
    assert took < 2 and len(calls) == 1


@BACKENDS
@pytest.mark.anyio
async def test_a_503_never_waits_past_the_request_deadline() -> None:
    result, calls, took = await _call(_unavailable("5"), deadline_s=3)
    assert isinstance(result, TransientError)
    assert "(after 1 attempt)" in str(result)
    assert took < 2 and len(calls) == 1


@BACKENDS
@pytest.mark.anyio
async def test_a_408_is_retried_and_billed_nothing() -> None:
    result, calls, _ = await _call(http(408, {"error": {"message": "request timeout"}}))
    assert isinstance(result, TransientError)
    assert "Error code: 408 - request timeout (after 2 attempts)" in str(result)
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)] * 2


@pytest.mark.parametrize("status", [408, 500, 502, 503])
def test_transient_statuses_carry_their_retry_after(status: int) -> None:
    error = status_error("model 'm'", status, {"Retry-After": "3"}, f"Error code: {status}")
    assert isinstance(error, TransientError)
    assert getattr(error, "retry_after_s", None) == (3.0 if status in (408, 503) else None)


NODE_GRAPH = """\
moat: 1
name: node-retry
models:
  m: {{provider: openai, model: gpt-4o-mini, base_url: "{base_url}", max_retries: 0,
      price: {{input: 1.0, output: 2.0}}}}
input: {{type: object, required: [prompt], properties: {{prompt: {{type: string}}}}}}
nodes:
  answer:
    type: model
    retries: 1
    with: {{model: m, prompt: "{{{{ input.prompt }}}}", max_tokens: 10}}
output: {{answer: answer.text}}
"""


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 503])
async def test_a_node_retry_never_waits_a_retry_after_the_call_refused(status: int) -> None:
    """A Retry-After longer than a call waits ends the call at once; the node's `retries:`
    must not then sleep it (a day, a year) either: the node retries after its own backoff,
    and the request ends."""
    reply = http(status, {"error": {"message": "go away"}}, {"retry-after": "99999999"})
    sink = MemorySink()
    async with hostile_endpoint({"m": reply}) as root:
        graph = load_graph_text(NODE_GRAPH.format(base_url=f"{root}/m/v1"), "retry.yaml")
        async with Runner(graph, sink=sink) as runner:
            with anyio.fail_after(10):
                result = await runner.run({"prompt": "hi"}, request_id="r1")
    assert result.status == "failed"
    assert f"longer than the {RETRY_AFTER_CAP_S:g} s a call waits" in (result.error or "")
    assert [c.status for c in sink.llm_calls("r1")] == ["error", "error"]
