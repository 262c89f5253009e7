"""The prepared route to a plain-HTTP endpoint keeps its connections alive and reads answers
as HTTP/1.1 allows them: by length, chunked, to the connection's end, compressed, after an
interim answer. It never reuses a connection the endpoint closed, and never sends a header
that would break the request's framing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import openai
import pytest

from engine.models import _direct_http
from engine.models._direct_http import DirectRoute
from engine.models.base import ConnectFailed, ProviderTimeout, ResponseLost
from tests.support.hostile_openai import completion

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

ANSWER = json.dumps(completion()).encode()
Serve = Callable[[anyio.abc.SocketStream, int], Awaitable[bool]]
"""Answers the `n`th request of a connection (from 0); False to close the connection."""


async def _read_request(stream: anyio.abc.SocketStream, buffered: bytearray) -> bytes | None:
    """Read one request: its body; None at the end of input."""
    while b"\r\n\r\n" not in buffered:
        try:
            buffered += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += await stream.receive()
    buffered[:] = rest[length:]
    return rest[:length]


@asynccontextmanager
async def endpoint(
    serve: Serve, bodies: list[Any] | None = None
) -> AsyncIterator[tuple[str, list[int]]]:
    """An endpoint on loopback answering with `serve`; its base URL and, per connection it
    accepted, how many requests that connection carried. The requests' JSON bodies are
    appended to `bodies` as they arrive."""
    connections: list[int] = []

    async def handle(stream: anyio.abc.SocketStream) -> None:
        index = len(connections)
        connections.append(0)
        buffered = bytearray()
        async with stream:
            while (body := await _read_request(stream, buffered)) is not None:
                if bodies is not None:
                    bodies.append(json.loads(body))
                connections[index] += 1
                if not await serve(stream, connections[index] - 1):
                    return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        yield f"http://127.0.0.1:{port}/v1", connections
        tg.cancel_scope.cancel()


def answer(body: bytes = ANSWER, head: str = "") -> Serve:
    """Every request answered 200 with `body` and a length, kept alive."""

    async def serve(stream: anyio.abc.SocketStream, n: int) -> bool:
        await stream.send(
            f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        return True

    return serve


async def post(base_url: str, *, timeout: float = 10.0, calls: int = 1) -> list[Any]:
    """`calls` chat completions in turn over one route: each answer's status and JSON."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", timeout=timeout)
    route = DirectRoute(client)
    try:
        answers = []
        for _ in range(calls):
            with anyio.fail_after(10):
                status, _, content = await route.post("model 'm'", "/chat/completions", {}, None)
            answers.append((status, json.loads(content)))
        return answers
    finally:
        await route.aclose()
        await client.close()


async def test_calls_in_turn_share_one_connection_kept_alive() -> None:
    async with endpoint(answer()) as (url, connections):
        answers = await post(url, calls=3)
    assert answers == [(200, completion())] * 3
    assert connections == [3]


async def test_a_connection_the_endpoint_closed_while_idle_is_not_reused() -> None:
    async def once_then_close(stream: anyio.abc.SocketStream, n: int) -> bool:
        await answer()(stream, n)  # kept alive, as far as the answer says
        return False  # and then closed, as an idle timeout does

    async with endpoint(once_then_close) as (url, connections):
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-test")
        route = DirectRoute(client)
        try:
            first = await route.post("m", "/chat/completions", {}, None)
            await anyio.sleep(0.2)  # the close reaches the client
            second = await route.post("m", "/chat/completions", {}, None)
        finally:
            await route.aclose()
    assert first[0] == second[0] == 200
    assert connections == [1, 1]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
        % (len(gzip.compress(ANSWER)), gzip.compress(ANSWER)),
        b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER),
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(ANSWER), ANSWER),
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + ANSWER,
    ],
    ids=["gzip", "interim-answer-first", "chunked", "to-the-connections-end"],
)
async def test_an_answer_is_read_however_http_delimits_it(reply: bytes) -> None:
    async def serve(stream: anyio.abc.SocketStream, n: int) -> bool:
        await stream.send(reply)
        return b"connection: close" not in reply

    async with endpoint(serve) as (url, _):
        assert await post(url, calls=2) == [(200, completion())] * 2


async def test_no_answer_within_the_read_timeout_is_a_timeout() -> None:
    async def never(stream: anyio.abc.SocketStream, n: int) -> bool:
        await anyio.sleep(30)
        return False

    async with endpoint(never) as (url, _):
        with pytest.raises(ProviderTimeout, match="did not answer in time"):
            await post(url, timeout=0.3)


async def test_an_endpoint_nobody_listens_on_is_no_connection() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # (the port is free again: nothing listens)
    with pytest.raises(ConnectFailed, match="could not connect"):
        await post(f"http://127.0.0.1:{port}/v1")


async def test_a_header_that_would_break_the_request_is_refused_before_sending() -> None:
    async with endpoint(answer()) as (url, connections):
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-test")
        route = DirectRoute(client)
        try:
            with pytest.raises(ValueError, match="line break"):
                await route.post("m", "/chat/completions", {}, {"x-moat-task": "a\r\nx-evil: 1"})
        finally:
            await route.aclose()
    assert connections == []


async def test_headers_the_route_cannot_frame_leave_the_endpoint_to_the_clients_route() -> None:
    from engine.models.openai_provider import ClientRegistry

    headers = {"x-team": "data ✓"}  # not Latin-1: no HTTP/1.1 header can carry it as is
    with pytest.raises(ValueError, match="Latin-1"):
        DirectRoute(openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k",
                                       default_headers=headers))  # fmt: skip
    registry = ClientRegistry()
    client = registry.acquire("http://127.0.0.1:9/v1", "k", headers)
    try:
        assert registry.route(client) is None
    finally:
        await registry.release(client)


# -- the pool: at most _MAX_CONNECTIONS an endpoint (one here), then calls wait their turn


def held_until(release: anyio.Event) -> Serve:
    """Answers the first request once `release` is set, the others at once (kept alive)."""

    async def serve(stream: anyio.abc.SocketStream, n: int) -> bool:
        if n == 0:
            await release.wait()
        return await answer()(stream, n)

    return serve


@asynccontextmanager
async def one_connection_route(
    url: str, monkeypatch: pytest.MonkeyPatch, pool: float = 10.0
) -> AsyncIterator[DirectRoute]:
    monkeypatch.setattr(_direct_http, "_MAX_CONNECTIONS", 1)
    client = openai.AsyncOpenAI(
        base_url=url, api_key="sk-test", timeout=openai.Timeout(10.0, pool=pool)
    )
    route = DirectRoute(client)
    try:
        yield route
    finally:
        await route.aclose()
        await client.close()


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.01)


def waiting(route: DirectRoute) -> int:
    """How many calls wait for a connection (the route's own queue: no call says so)."""
    return sum(not handed.done() for handed in route._waiting)


async def test_a_connection_given_back_goes_to_the_call_that_waited_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`b` waits for the one connection while `a` holds it; `c` asks the moment `a` has its
    answer, before `b` has run again: the connection is `b`'s, and `c` waits its turn."""
    release, bodies = anyio.Event(), []
    async with (
        endpoint(held_until(release), bodies) as (url, connections),
        one_connection_route(url, monkeypatch) as route,
    ):

        async def call(name: str) -> None:
            await route.post("m", "/chat/completions", {"call": name}, None)

        async def a_then_c() -> None:
            await call("a")
            await call("c")  # (no turn of the event loop in between)

        async with anyio.create_task_group() as tg:
            tg.start_soon(a_then_c)
            await _until(lambda: len(bodies) == 1)  # `a` holds the connection
            tg.start_soon(call, "b")
            await _until(lambda: waiting(route) == 1)  # `b` waits for it
            release.set()
    assert [body["call"] for body in bodies] == ["a", "b", "c"]
    assert connections == [3]


async def test_a_call_waits_for_a_connection_at_most_the_pool_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = anyio.Event()
    async with (
        endpoint(held_until(release)) as (url, connections),
        one_connection_route(url, monkeypatch, pool=0.3) as route,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(route.post, "m", "/chat/completions", {}, None)
        await _until(lambda: connections == [1])
        started = anyio.current_time()
        with pytest.raises(ConnectFailed, match="all 1 connections stayed busy"):
            await route.post("model 'm'", "/chat/completions", {}, None)
        assert 0.25 <= anyio.current_time() - started < 2
        release.set()


async def test_the_place_of_a_broken_connection_goes_to_the_call_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = anyio.Event()

    async def first_connection_breaks(stream: anyio.abc.SocketStream, n: int) -> bool:
        if not release.is_set():
            await release.wait()
            return False  # closed without an answer
        return await answer()(stream, n)

    async with (
        endpoint(first_connection_breaks) as (url, connections),
        one_connection_route(url, monkeypatch) as route,
    ):
        outcomes: list[Any] = []

        async def call() -> None:
            try:
                outcomes.append((await route.post("m", "/chat/completions", {}, None))[0])
            except ResponseLost:
                outcomes.append("lost")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await _until(lambda: connections == [1])
            tg.start_soon(call)
            await _until(lambda: waiting(route) == 1)
            release.set()
    assert outcomes == ["lost", 200]
    assert connections == [1, 1]


async def test_a_call_cancelled_while_waiting_leaves_no_place_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = anyio.Event()
    async with (
        endpoint(held_until(release)) as (url, connections),
        one_connection_route(url, monkeypatch) as route,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(route.post, "m", "/chat/completions", {}, None)
            await _until(lambda: connections == [1])
            with anyio.move_on_after(0.1):  # gives up waiting
                await route.post("m", "/chat/completions", {}, None)
            release.set()
        with anyio.fail_after(2):  # the one connection serves the next call at once
            status, _, _ = await route.post("m", "/chat/completions", {}, None)
    assert status == 200
    assert connections == [2]


async def test_a_connection_handed_to_a_call_cancelled_in_that_moment_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`b`'s task is cancelled right after `a` handed it the connection, before it could
    use it: the connection goes on to the next call instead of being lost with `b`."""
    release = anyio.Event()
    async with (
        endpoint(held_until(release)) as (url, connections),
        one_connection_route(url, monkeypatch) as route,
    ):
        b: list[asyncio.Task[Any]] = []  # (started once `a` holds the connection)

        async def a_then_cancel_b() -> None:
            await route.post("m", "/chat/completions", {}, None)
            b[0].cancel()  # (no turn of the event loop since the hand-over)

        async with anyio.create_task_group() as tg:
            tg.start_soon(a_then_cancel_b)
            await _until(lambda: connections == [1])  # `a` holds the connection
            b.append(asyncio.ensure_future(route.post("m", "/chat/completions", {}, None)))
            await _until(lambda: waiting(route) == 1)  # `b` waits for it
            release.set()
        with pytest.raises(asyncio.CancelledError):
            await b[0]
        with anyio.fail_after(2):
            status, _, _ = await route.post("m", "/chat/completions", {}, None)
    assert status == 200
    assert connections == [2]
