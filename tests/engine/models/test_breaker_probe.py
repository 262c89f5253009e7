"""A half-open breaker lets exactly one probe through, whatever the calls still in flight do.

Calls admitted while the breaker was closed can outlive its opening: they may fail, be
cancelled or answer while the probe is out. Only the probe decides whether the breaker
closes or opens again, and no second probe passes while one is in flight.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import CircuitOpen, MoatError, TransientError
from engine.events import EventType
from engine.graph.spec import ModelSpec, Price
from engine.models import CallScope, Gateway, ProviderRequest, ProviderResponse
from engine.models.breaker import BreakerState, CircuitBreaker
from engine.plugin.context import RequestInfo

MOCK_CLOCK = [("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})]
SPEC = ModelSpec(
    provider="openai", model="fake", base_url="http://unused", price=Price(input=1, output=2),
    max_retries=0,
)  # fmt: skip


class Scripted:
    """A provider doing what the prompt says: `fail`, `ok`, `hang`, or `WHAT after S`
    (wait S seconds, then fail or answer)."""

    name = "openai"

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        what, _, after = call.messages[-1]["content"].partition(" after ")
        if what == "hang":
            await anyio.sleep_forever()
        await anyio.sleep(float(after or 0))
        if what == "fail":
            raise TransientError("model 'm': server error: 500")
        return ProviderResponse(text="fine", provider_model="fake", input_tokens=1, output_tokens=1)

    async def aclose(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.types: list[str] = []

    def __call__(self, event_type: str, **_: Any) -> int:
        self.types.append(str(event_type))
        return len(self.types)


def _scope(events: Events) -> CallScope:
    info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    return CallScope(request=info, node_id="answer", emit=events)


async def _ask(gateway: Gateway, events: Events, prompt: str) -> str:
    try:
        await gateway.client("m", _scope(events)).complete(prompt=prompt)
    except CircuitOpen:
        return "refused"
    except MoatError:
        return "failed"
    return "ok"


def _gateway() -> Gateway:
    return Gateway(
        {"m": SPEC}, providers={"m": Scripted()}, breaker_threshold=2, breaker_cooldown_s=10
    )


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_a_call_of_before_the_opening_cancelled_during_the_probe_lets_no_second_probe() -> (
    None
):
    events = Events()
    async with _gateway() as gateway, anyio.create_task_group() as tg:
        stale = anyio.CancelScope()

        async def before_the_opening() -> None:
            with stale:
                await _ask(gateway, events, "hang")

        tg.start_soon(before_the_opening)
        assert [await _ask(gateway, events, "fail") for _ in range(2)] == ["failed", "failed"]
        await anyio.sleep(10)
        tg.start_soon(_ask, gateway, events, "ok after 5")  # the probe, out for 5 s
        await anyio.sleep(1)
        stale.cancel()
        await anyio.sleep(1)
        assert await _ask(gateway, events, "ok") == "refused"
        await anyio.sleep(5)
        assert gateway.breakers["m"].state is BreakerState.CLOSED
    assert events.types == [
        EventType.CIRCUIT_OPENED,
        EventType.CIRCUIT_HALF_OPEN,
        EventType.CIRCUIT_CLOSED,
    ]


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
async def test_a_late_failure_of_before_the_opening_leaves_the_verdict_to_the_probe() -> None:
    events = Events()
    async with _gateway() as gateway, anyio.create_task_group() as tg:
        tg.start_soon(_ask, gateway, events, "fail after 12")  # fails during the probe
        assert [await _ask(gateway, events, "fail") for _ in range(2)] == ["failed", "failed"]
        await anyio.sleep(10)
        assert await _ask(gateway, events, "ok after 5") == "ok"  # the probe
        assert gateway.breakers["m"].state is BreakerState.CLOSED
    assert events.types == [
        EventType.CIRCUIT_OPENED,
        EventType.CIRCUIT_HALF_OPEN,
        EventType.CIRCUIT_CLOSED,
    ]


@settings(max_examples=50, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["call", "fail", "succeed", "abandon", "wait"]), st.integers(0, 9)
        ),
        max_size=60,
    )
)
def test_never_more_than_one_probe_in_flight(steps: list[tuple[str, int]]) -> None:
    """Any interleaving of admissions and of the outcomes of the calls in flight."""
    now = [0.0]
    breaker = CircuitBreaker("m", threshold=2, cooldown_s=5.0)
    in_flight: list[bool] = []  # whether each call in flight is the probe
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(anyio, "current_time", lambda: now[0])
        for step, pick in steps:
            if step == "wait":
                now[0] += pick
            elif step == "call":
                with contextlib.suppress(CircuitOpen):
                    in_flight.append(breaker.before_call())
            elif in_flight:
                probe = in_flight.pop(pick % len(in_flight))
                if step == "fail":
                    breaker.on_failure("down", probe=probe)
                elif step == "succeed":
                    breaker.on_success()
                else:
                    breaker.on_abandon(probe=probe)
            assert sum(in_flight) <= 1, "two probes in flight at once"
            if any(in_flight):
                assert breaker.state is BreakerState.HALF_OPEN
