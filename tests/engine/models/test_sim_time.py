"""Simulated time and billing: prefill, correlated tails, fresh retries, partial output billed."""

from __future__ import annotations

import statistics
from typing import Any

import anyio
import pytest
import trio.testing

from engine.errors import SpecError
from engine.graph.loader import load_graph_text
from engine.graph.spec import ModelSpec
from engine.models import Gateway, ProviderRequest, SimProvider
from engine.models._sim_time import (
    SLOW_MINUTE_RATE,
    minute_slowness,
    request_slowness,
)
from engine.models.gateway import CallScope
from engine.plugin.context import RequestInfo

MOCK = [("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})]


def _info(rid: str = "r1") -> RequestInfo:
    return RequestInfo(id=rid, run_id="run", seq=0, tenant="t", input={"prompt": "hi"})


def _spec(profile: str = "large", **kw: Any) -> ModelSpec:
    return ModelSpec(provider="sim", profile=profile, **kw)  # type: ignore[arg-type]


async def _latency(text: str, rid: str = "r1", attempt: int = 0, node: str = "n") -> float:
    call = ProviderRequest(
        model="m",
        messages=[{"role": "user", "content": text}],
        request=_info(rid),
        node_id=node,
        cycle=0,
        attempt=attempt,
        task="answer",
    )
    latency = (await SimProvider(_spec(time_scale=0)).complete(call)).latency_ms
    assert latency is not None
    return latency


@pytest.mark.anyio
async def test_prefill_grows_with_the_prompt() -> None:
    # the same request and output; only the prompt grows (a long context before it)
    short = [await _latency("Explain tides", f"r{i}") for i in range(20)]
    long = [await _latency("context " * 20_000 + "Explain tides", f"r{i}") for i in range(20)]
    assert statistics.median(long) > statistics.median(short) + 500  # ~40k tokens of prefill


@pytest.mark.anyio
async def test_a_retry_draws_its_latency_afresh() -> None:
    first = [await _latency("Explain tides", f"r{i}", attempt=0) for i in range(10)]
    retry = [await _latency("Explain tides", f"r{i}", attempt=1) for i in range(10)]
    assert all(a != b for a, b in zip(first, retry, strict=True))


def test_calls_of_one_request_share_their_slowness_and_requests_differ() -> None:
    factors = [request_slowness(1, f"r{i}") for i in range(2000)]
    assert request_slowness(1, "r7") == request_slowness(1, "r7")
    assert statistics.pstdev(factors) > 0.2
    assert max(factors) > 2.0  # a heavy tail: some requests are slow on every call
    assert statistics.median(factors) == pytest.approx(1.0, abs=0.05)


def test_some_provider_minutes_are_slow_for_every_call_in_them() -> None:
    minutes = [minute_slowness(1, "large", 60.0 * m + 5) for m in range(4000)]
    slow = [f for f in minutes if f > 1.0]
    assert len(slow) / len(minutes) == pytest.approx(SLOW_MINUTE_RATE, abs=0.015)
    assert minute_slowness(1, "large", 61.0) == minute_slowness(1, "large", 119.0)


@pytest.mark.parametrize("anyio_backend", MOCK)
@pytest.mark.anyio
async def test_a_cancelled_sim_call_is_billed_the_output_it_generated() -> None:
    gateway = Gateway({"m": _spec("large", time_scale=1.0)})
    scope = CallScope(request=_info(), node_id="answer")
    with anyio.move_on_after(2.0):  # ~0.75 s to the first token, then ~68 tokens a second
        await gateway.client("m", scope).complete(prompt="Explain tides " * 50, max_tokens=400)
    (call,) = scope.calls
    assert call.status == "cancelled"
    assert 0 < call.output_tokens < 150
    price = gateway.price("m")
    prompt_only = call.input_tokens * price.input / 1e6
    assert call.cost_usd == pytest.approx(prompt_only + call.output_tokens * price.output / 1e6)
    assert call.cost_usd > prompt_only


@pytest.mark.parametrize("scale", [".inf", "-1", ".nan"])
def test_a_time_scale_that_is_no_finite_factor_is_refused_when_the_graph_loads(
    scale: str,
) -> None:
    """An infinite scale would make every `sim` call sleep until a timeout cut it off."""
    text = (
        "moat: 1\nname: g\nmodels:\n"
        f"  m: {{provider: sim, profile: small, time_scale: {scale}}}\n"
        "nodes:\n  a: {type: model, with: {model: m, prompt: hi}}\n"
    )
    with pytest.raises(SpecError, match=r"g\.yaml:4.*time_scale"):
        load_graph_text(text, "g.yaml")
