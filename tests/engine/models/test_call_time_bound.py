"""A remote model call ends in bounded time even when nothing sets a timeout.

The HTTP clients' read timeout counts the time between two bytes, so an endpoint that
drips its answer a byte every few seconds never trips it: with no `timeout_s` on the
model, no `timeout_ms` on the node and no request deadline, such a call ran forever. Each
attempt of a remote call is now bounded by `DEFAULT_CALL_TIMEOUT_S` when its model sets
no `timeout_s` (a model's own `timeout_s` replaces it), and ends with an error that says
so and how to allow longer. The `sim` provider's timing is its own: it is never bounded.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
from trio.testing import MockClock

from engine.errors import MoatError
from engine.events import LlmCall
from engine.graph.spec import FaultRates, ModelSpec, Price
from engine.models import CallScope, Gateway, gateway
from engine.models.base import ProviderTimeout
from engine.models.openai_provider import ClientRegistry, OpenAIProvider
from engine.plugin.context import RequestInfo
from tests.support.hostile_openai import hostile_endpoint

pytestmark = pytest.mark.anyio
BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


async def _drip(stream: anyio.abc.SocketStream) -> None:
    """A 200 whose body comes a byte every 50 ms, and never ends."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 99999\r\n\r\n"
    await stream.send(head)
    while True:
        await stream.send(b" ")
        await anyio.sleep(0.05)


def _scope() -> CallScope:
    info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    return CallScope(request=info, node_id="answer")


async def _call(model: ModelSpec, provider: Any = None) -> tuple[Any, list[LlmCall], float]:
    """One gateway call of `model`: the answer or the error, the attempts, the seconds."""
    scope = _scope()
    providers = {"m": provider} if provider is not None else None
    async with Gateway({"m": model}, providers=providers) as gw:
        started = anyio.current_time()
        with anyio.fail_after(40):
            try:
                result: Any = await gw.client("m", scope).complete(prompt="x", max_tokens=10)
            except MoatError as exc:
                result = exc
        took = anyio.current_time() - started
    return result, scope.calls, took


def _dripping(root: str, **spec: Any) -> tuple[ModelSpec, OpenAIProvider]:
    model = ModelSpec(
        provider="openai",
        model="gpt-4o-mini",
        base_url=f"{root}/m/v1",
        max_retries=0,
        price=Price(input=1.0, output=2.0),
        **spec,
    )
    return model, OpenAIProvider(model, registry=ClientRegistry(), api_key="sk-test")


@BACKENDS
async def test_a_dripping_answer_is_cut_off_by_the_default_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway, "DEFAULT_CALL_TIMEOUT_S", 0.5)
    async with hostile_endpoint({"m": _drip}) as root:
        result, calls, took = await _call(*_dripping(root))
    assert isinstance(result, ProviderTimeout)
    assert str(result) == (
        "node 'answer': model 'm': no complete answer within 0.5 s, the bound on a remote "
        "call whose model sets no `timeout_s` (the endpoint stalled, or sends its answer "
        "too slowly); set `timeout_s:` on the model to allow longer (after 1 attempt)"
    )
    assert 0.5 <= took < 3
    assert [(c.status, c.output_tokens) for c in calls] == [("timeout", 10)]  # may be billed


@BACKENDS
async def test_a_model_timeout_s_replaces_the_default_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway, "DEFAULT_CALL_TIMEOUT_S", 0.2)
    async with hostile_endpoint({"m": _drip}) as root:
        result, calls, took = await _call(*_dripping(root, timeout_s=0.8))
    assert isinstance(result, ProviderTimeout)
    assert "model 'm': no answer within timeout_s=0.8" in str(result)
    assert 0.8 <= took < 3
    assert [c.status for c in calls] == ["timeout"]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


async def test_the_sim_keeps_its_own_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `timeout` fault hangs 30 simulated seconds, then fails by itself: no bound for
    remote calls cuts it short."""
    monkeypatch.setattr(gateway, "DEFAULT_CALL_TIMEOUT_S", 0.5)
    model = ModelSpec(provider="sim", profile="small", max_retries=0, faults=FaultRates(timeout=1))
    result, calls, took = await _call(model)
    assert isinstance(result, ProviderTimeout)
    assert "sim: simulated timeout after 30 s" in str(result)
    assert took == pytest.approx(30.0)
    assert [c.status for c in calls] == ["timeout"]
