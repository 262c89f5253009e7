"""Traffic shaping of `moat serve`: per-tenant rate and concurrency limits answer 429 with
`Retry-After`, and the global in-flight cap queues a bounded number, refusing the rest."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.serve import ApiError, MoatServer, ShapingLimits
from engine.serve.shaping import Shaper
from tests.engine.serve.test_serve import echo_graph
from tests.support.serve_client import http

pytestmark = pytest.mark.anyio

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_tenant_over_its_rate_gets_a_429_with_retry_after(tmp_path: Path) -> None:
    server = MoatServer([echo_graph(tmp_path)], db=None)
    clock = Clock()
    server.shaper = Shaper(ShapingLimits(rate=0.5, burst=2), clock=clock)
    async with server, http(server) as web:
        acme = [(await web.post("/chat/completions", json={**CHAT, "user": "acme"})) for _ in "123"]
        other = await web.post("/chat/completions", json={**CHAT, "user": "globex"})
        clock.now += 2.0  # one token back at 0.5/s
        again = await web.post("/chat/completions", json={**CHAT, "user": "acme"})
    assert [r.status_code for r in acme] == [200, 200, 429]
    refused = acme[2]
    assert refused.headers["retry-after"] == "2"
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "'acme'" in error["message"]
    assert other.status_code == 200 and again.status_code == 200


async def test_a_tenant_over_its_concurrency_gets_a_429_while_others_are_served(
    tmp_path: Path,
) -> None:
    # the first request takes a second or two of simulated model time: long enough for the
    # others to arrive while it is in flight (they are sent as soon as it is). The deadline
    # is far: a call in the sim's latency tail takes several times the usual, and this test
    # is about the limit, not the deadline.
    graph = echo_graph(tmp_path, scale=1.0, deadline=120_000)
    server = MoatServer([graph], db=None, limits=ShapingLimits(tenant_concurrency=1))
    statuses: dict[str, int] = {}
    async with server, http(server) as web:

        async def send(name: str, user: str) -> None:
            response = await web.post("/chat/completions", json={**CHAT, "user": user})
            statuses[name] = response.status_code
            if response.status_code == 429:
                statuses["retry-after"] = int(response.headers["retry-after"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, "first", "acme")
            while server.shaper.active("acme") == 0:
                await anyio.sleep(0.005)
            await send("second", "acme")
            assert server.shaper.active("acme") == 1  # the first is still in flight
            tg.start_soon(send, "other", "globex")
    assert statuses == {"first": 200, "second": 429, "retry-after": 1, "other": 200}


async def test_past_the_in_flight_cap_requests_wait_then_the_rest_get_a_503() -> None:
    shaper = Shaper(ShapingLimits(max_inflight=2, max_queue=1))
    release = anyio.Event()
    admitted: list[str] = []

    async def hold(name: str) -> None:
        async with shaper.admit(name):
            admitted.append(name)
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, "a")
        tg.start_soon(hold, "b")
        tg.start_soon(hold, "c")  # waits: the cap is 2
        while shaper.waiting == 0:
            await anyio.sleep(0)
        with pytest.raises(ApiError) as caught:
            async with shaper.admit("d"):
                pass
        assert admitted == ["a", "b"]
        release.set()
    assert admitted == ["a", "b", "c"]
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
    assert shaper.active("a") == shaper.active("c") == 0 and shaper.waiting == 0


async def test_a_refused_request_holds_no_slot() -> None:
    shaper = Shaper(ShapingLimits(rate=1.0, burst=1, tenant_concurrency=1), clock=Clock())
    async with shaper.admit("acme"):
        pass
    with pytest.raises(ApiError):
        async with shaper.admit("acme"):
            pass
    assert shaper.active("acme") == 0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 5), min_size=1, max_size=60),
)
def test_a_tenant_never_gets_more_than_its_burst_plus_its_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = Clock()
    shaper = Shaper(ShapingLimits(rate=rate, burst=burst), clock=clock)
    start, admitted = clock.now, 0
    for gap in gaps:
        clock.now += gap
        try:
            shaper._take_token("acme")
            admitted += 1
        except ApiError as error:
            assert error.status == 429 and int(error.headers["Retry-After"]) >= 1
    assert admitted <= burst + rate * (clock.now - start) + 1e-9
    if all(gap * rate >= 1.001 for gap in gaps[1:]):
        assert admitted == len(gaps)  # a tenant within its rate is never refused


def test_the_rate_of_a_bounded_number_of_tenants_is_tracked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("engine.serve.shaping.MAX_BUCKETS", 3)
    clock = Clock()
    shaper = Shaper(ShapingLimits(rate=1.0, burst=1), clock=clock)
    for n in range(50):  # an open server takes any `user` as the tenant
        shaper._take_token(f"user-{n}")
    assert len(shaper._buckets) == 3
    with pytest.raises(ApiError):
        shaper._take_token("user-49")  # a recent tenant is still limited
