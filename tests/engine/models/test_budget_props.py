"""Budget invariants: what a request may still spend is right at every moment, and nothing
is spent past the limit, whatever the interleaving of reservations and settlements.

`request.remaining_usd` is `RequestBudget.remaining_usd`; the gateway reserves before
every attempt and settles after it, concurrently for every node and speculative call of a
request, so the budget sees any interleaving of the operations drawn here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import anyio
import pytest
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import BudgetExceeded, MoatError
from engine.events import LlmCall
from engine.graph.spec import FaultRates, ModelSpec
from engine.models import CallScope, Gateway, RequestBudget, Reservation
from engine.models.openai_provider import ClientRegistry, OpenAIProvider
from engine.plugin.context import RequestInfo
from engine.serve.sim_app import SimServer

MOCK_CLOCK = [("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})]

AMOUNTS = st.floats(0.0, 0.01, allow_nan=False) | st.sampled_from([0.1, 0.2, 0.3, 1e-7, 3e-6])
"""Dollars: drawn at random, and the decimal fractions binary floats cannot hold."""


@settings(max_examples=50, deadline=None)
@given(
    limit=st.floats(0.001, 0.05) | st.sampled_from([0.3, 0.6, 1.0]),
    ops=st.lists(
        st.tuples(st.sampled_from(["reserve", "settle", "release"]), AMOUNTS, st.integers(0, 9)),
        max_size=60,
    ),
)
def test_remaining_is_the_limit_less_spend_and_holds_at_every_step(
    limit: float, ops: list[tuple[str, float, int]]
) -> None:
    budget = RequestBudget(limit)
    held: list[tuple[Reservation, float]] = []  # each with the share of it charged
    for op, amount, pick in ops:
        if op == "reserve":
            if budget.can_afford(amount):
                held.append((budget.reserve(amount), amount))
            else:
                with pytest.raises(BudgetExceeded):
                    budget.reserve(amount)
        elif held:
            reservation, reserved = held.pop(pick % len(held))
            if op == "settle":  # an answer costs at most what it reserved
                budget.settle(reservation, reserved * (pick / 9))
            else:
                budget.release(reservation)
        in_flight = math.fsum(amount for _, amount in held)
        assert budget.reserved_usd == pytest.approx(in_flight, abs=1e-15)
        assert budget.spent_usd + budget.reserved_usd <= limit + 1e-12
        assert budget.remaining_usd == max(0.0, limit - budget.spent_usd - budget.reserved_usd)
    for reservation, _ in held:
        budget.release(reservation)
    # with nothing in flight, exactly nothing is reserved: what remains is the limit less
    # the spend, to the last bit (not less by the dust of the amounts added and taken back)
    assert budget.reserved_usd == 0.0
    assert budget.remaining_usd == max(0.0, limit - budget.spent_usd)


CALLS = st.lists(
    st.tuples(
        st.integers(1, 60),  # prompt words
        st.none() | st.integers(1, 400),  # max_tokens
        st.none() | st.floats(0.0, 3.0),  # when the caller gives up (cancels), in seconds
    ),
    min_size=1,
    max_size=12,
)


async def _spend_concurrently(
    gateway: Gateway, model: str, limit: float, calls: list[tuple[int, int | None, float | None]]
) -> None:
    """Make `calls` at once for one request; check the budget while they run and after."""
    budget = RequestBudget(limit)
    info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    rows: list[LlmCall] = []
    seen: list[tuple[float, float]] = []

    async def one(i: int, words: int, max_tokens: int | None, give_up: float | None) -> None:
        scope = CallScope(request=info, node_id=f"n{i}", budget=budget, calls=rows)
        with anyio.move_on_after(math.inf if give_up is None else give_up):
            with contextlib.suppress(MoatError):
                await gateway.client(model, scope).complete(
                    prompt="tell me more " * words, max_tokens=max_tokens
                )

    async def watch() -> None:
        while True:
            seen.append((budget.spent_usd, budget.reserved_usd))
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as outer:
        outer.start_soon(watch)
        async with anyio.create_task_group() as tg:
            for i, call in enumerate(calls):
                tg.start_soon(one, i, *call)
        outer.cancel_scope.cancel()
    assert all(spent + reserved <= limit + 1e-12 for spent, reserved in seen)
    assert math.fsum(r.cost_usd for r in rows) <= limit + 1e-12
    assert budget.spent_usd == pytest.approx(math.fsum(r.cost_usd for r in rows), abs=1e-15)
    assert budget.reserved_usd == 0.0
    assert budget.remaining_usd == max(0.0, limit - budget.spent_usd)
    assert {r.status for r in rows} <= {"ok", "error", "timeout", "cancelled", "refused"}


@pytest.mark.parametrize("anyio_backend", MOCK_CLOCK)
@pytest.mark.anyio
@settings(max_examples=25, deadline=None)
@given(limit=st.floats(0.001, 0.04), calls=CALLS)
async def test_concurrent_cancelled_and_failing_sim_calls_never_overspend(
    limit: float, calls: list[tuple[int, int | None, float | None]]
) -> None:
    faults = FaultRates(error=0.2, rate_limit=0.1, timeout=0.1)
    spec = ModelSpec(provider="sim", profile="large", faults=faults, timeout_s=2.0)
    async with Gateway({"m": spec}, breaker_threshold=1000) as gateway:
        await _spend_concurrently(gateway, "m", limit, calls)


@pytest.fixture(scope="module")
def sim_server_url() -> Iterator[str]:
    """`moat sim-server`'s app on loopback, in a thread, its answers 100 times faster."""
    server = SimServer(time_scale=0.01)
    sock = server.listen("127.0.0.1", 0)
    with anyio.from_thread.start_blocking_portal() as portal:
        future = portal.start_task_soon(server.serve_on, sock)
        yield server.base_url
        future.cancel()


@pytest.mark.anyio
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=st.floats(0.001, 0.04), calls=CALLS)
async def test_concurrent_cancelled_calls_to_the_sim_server_never_overspend(
    sim_server_url: str, limit: float, calls: list[tuple[int, int | None, float | None]]
) -> None:
    # the callers give up after 1/30 of the drawn time: within the answers' own time
    calls = [(w, m, None if t is None else t / 30) for w, m, t in calls]
    spec = ModelSpec(provider="openai", model="sim-large", base_url=sim_server_url, timeout_s=0.06)
    provider = OpenAIProvider(spec, registry=ClientRegistry(), api_key="sk-test")
    async with Gateway({"m": spec}, providers={"m": provider}, breaker_threshold=1000) as gateway:
        await _spend_concurrently(gateway, "m", limit, calls)
