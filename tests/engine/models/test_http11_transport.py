"""The lean HTTP/1.1 transport the `openai` provider uses for plain-HTTP endpoints, against
a scripted server on loopback: bodies by length, chunked and to the close, keep-alive
reuse, stale connections, timeouts and connection failures as httpx2's own errors."""

from __future__ import annotations

import gzip
import os
import resource
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import httpx2
import pytest

from engine.models._http11 import Http11Transport, use_lean_transport


@dataclass
class Scripted:
    """A server answering each request with the next reply of `replies` (bytes, or a
    callable given the connection number); it records requests and connections."""

    replies: list[bytes | Callable[[int], bytes]]
    close_after_reply: bool = False
    delay_s: float = 0.0
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive()
                self.requests.append((number, head + b"\r\n\r\n" + buffer[:length]))
                buffer = buffer[length:]
                await anyio.sleep(self.delay_s)
                reply = self.replies.pop(0)
                await stream.send(reply(number) if callable(reply) else reply)
                if self.close_after_reply:
                    return


@asynccontextmanager
async def scripted(**kw: object) -> AsyncIterator[Scripted]:
    server = Scripted(**kw)  # type: ignore[arg-type]
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        yield server
        tg.cancel_scope.cancel()


def _ok(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@asynccontextmanager
async def client(timeout: float = 5.0) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=Http11Transport(), timeout=timeout) as c:
        yield c


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_keep_alive_connections_are_reused_and_the_body_is_sent_whole() -> None:
    async with scripted(replies=[_ok(b'{"n": 1}'), _ok(b'{"n": 2}')]) as server, client() as c:
        url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
        first = await c.post(url, json={"a": "é"})
        second = await c.post(url, content=b"xyz", headers={"X-Moat-Call": "k"})
    assert (first.status_code, first.json(), second.json()) == (200, {"n": 1}, {"n": 2})
    assert server.connections == 1
    [(_, one), (_, two)] = server.requests
    assert one.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert one.endswith(b'\r\n\r\n{"a":"\xc3\xa9"}')
    assert b"\r\nX-Moat-Call: k\r\n" in two and two.endswith(b"\r\n\r\nxyz")


@pytest.mark.anyio
async def test_a_chunked_body_is_decoded_and_the_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    async with scripted(replies=[chunked, _ok(b"next")]) as server, client() as c:
        url = f"http://127.0.0.1:{server.port}/"
        first = await c.get(url)
        second = await c.get(url)
    assert first.content == b"Wikipedia in \r\n\r\nchunks."
    assert second.content == b"next" and server.connections == 1


@pytest.mark.anyio
async def test_connection_close_and_a_body_to_the_close_open_a_new_connection() -> None:
    to_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    async with (
        scripted(replies=[to_close, _ok(b"b")], close_after_reply=True) as server,
        client() as c,
    ):
        url = f"http://127.0.0.1:{server.port}/"
        first = await c.get(url)
        second = await c.get(url)
    assert (first.content, second.content) == (b"all of it", b"b")
    assert server.connections == 2


@pytest.mark.anyio
async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    # the reply claims keep-alive, but the server closes: the next request must go on a new
    # connection, sent once (not written to the dead one and retried)
    async with (
        scripted(replies=[_ok(b"a"), _ok(b"b")], close_after_reply=True) as server,
        client() as c,
    ):
        url = f"http://127.0.0.1:{server.port}/"
        await c.get(url)
        await anyio.sleep(0.05)
        second = await c.get(url)
    assert second.content == b"b"
    assert [number for number, _ in server.requests] == [1, 2]


@pytest.mark.anyio
async def test_errors_and_statuses_come_back_as_httpx2_would_give_them() -> None:
    refused = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n{}"
    async with scripted(replies=[refused]) as server, client() as c:
        answer = await c.get(f"http://127.0.0.1:{server.port}/")
    assert (answer.status_code, answer.headers["retry-after"]) == (429, "3")

    async with scripted(replies=[_ok(b"late")], delay_s=1.0) as server, client(0.2) as c:
        with pytest.raises(httpx2.ReadTimeout):
            await c.get(f"http://127.0.0.1:{server.port}/")

    async with scripted(replies=[b"garbage\r\n\r\n"]) as server, client() as c:
        with pytest.raises(httpx2.RemoteProtocolError):
            await c.get(f"http://127.0.0.1:{server.port}/")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    async with client() as c:
        with pytest.raises(httpx2.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/")


@pytest.mark.anyio
async def test_a_cancelled_call_closes_its_connection() -> None:
    async with scripted(replies=[_ok(b"late"), _ok(b"b")], delay_s=0.3) as server, client() as c:
        url = f"http://127.0.0.1:{server.port}/"
        with anyio.move_on_after(0.05):
            await c.get(url)
        answer = await c.get(url)
    assert answer.content == b"b" and server.connections == 2


def test_only_plain_http_without_a_proxy_uses_the_lean_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert use_lean_transport("http://127.0.0.1:8000/v1")
    assert not use_lean_transport("https://api.openai.com/v1")
    assert not use_lean_transport(None)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert not use_lean_transport("http://vllm.internal:8000/v1")
    monkeypatch.setenv("NO_PROXY", "vllm.internal")
    assert use_lean_transport("http://vllm.internal:8000/v1")


@pytest.mark.anyio
async def test_connections_are_reused_when_descriptors_are_past_1024() -> None:
    # a busy server holds over a thousand client connections: the idle check must not
    # rely on select(), which refuses descriptors past 1024 (every call would reconnect)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard if hard != resource.RLIM_INFINITY else 4096) < 1200:
        pytest.skip("needs 1,200 file descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async with scripted(replies=[_ok(b"a"), _ok(b"b")]) as server, client() as c:
            url = f"http://127.0.0.1:{server.port}/"
            await c.get(url)
            second = await c.get(url)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert second.content == b"b" and server.connections == 1


@pytest.mark.anyio
async def test_a_compressed_body_is_decoded_as_httpx2_would() -> None:
    body = gzip.compress(b'{"choices": []}')
    reply = _ok(body, b"Content-Encoding: gzip", b"Content-Type: application/json")
    async with scripted(replies=[reply]) as server, client() as c:
        answer = await c.get(f"http://127.0.0.1:{server.port}/")
    assert answer.json() == {"choices": []}
