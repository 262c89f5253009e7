"""The served connections' transport: a response's head and body leave in one `send`, as
soon as the response is complete."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
import pytest

from engine.serve.listen import _Coalesced, _Server, bind, config
from engine.serve.protocol import bounded_heads
from engine.serve.sim_app import SimServer
from engine.serve.sim_app import serve as serve_sim


class _Transport:
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name == "sockname" else default


def _turn() -> Any:
    return asyncio.sleep(0)


def test_what_one_turn_writes_leaves_as_one_send() -> None:
    async def main() -> list[list[bytes]]:
        inner = _Transport()
        outer = _Coalesced(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        outer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        outer.write(b"{}")
        assert inner.sent == []  # held until the end of the turn
        assert outer.get_write_buffer_size() == 40
        await _turn()
        first = list(inner.sent)
        outer.write(b"data: 1\n\n")  # a streamed chunk of a later turn: a send of its own
        await _turn()
        return [first, inner.sent[1:]]

    first, later = asyncio.run(main())
    assert first == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert later == [b"data: 1\n\n"]


def test_close_sends_what_was_written_first_and_abort_drops_it() -> None:
    async def main() -> tuple[_Transport, _Transport]:
        loop = asyncio.get_running_loop()
        closed, aborted = _Transport(), _Transport()
        for inner in (closed, aborted):
            outer = _Coalesced(inner, loop)  # type: ignore[arg-type]
            outer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            if inner is closed:
                outer.close()
            else:
                outer.abort()
        await _turn()  # the held write's callback finds nothing left to send
        return closed, aborted

    closed, aborted = asyncio.run(main())
    assert closed.sent == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and closed.closed
    assert aborted.sent == [] and aborted.aborted


def test_writes_to_a_closing_connection_are_dropped_and_the_rest_is_the_transport_s() -> None:
    async def main() -> tuple[_Transport, Any]:
        inner = _Transport()
        outer = _Coalesced(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        outer.write(b"late")
        inner.closed = True  # the client went away before the end of the turn
        await _turn()
        return inner, outer.get_extra_info("sockname")

    inner, sockname = asyncio.run(main())
    assert inner.sent == []
    assert sockname == ("127.0.0.1", 8000)


def test_a_complete_response_leaves_before_the_turn_ends() -> None:
    """The app finishes its response and then holds the loop (as the rest of a busy turn
    would): the client has the whole response without waiting for the turn to end."""
    client_has_it = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": _LENGTH_2})
        await send({"type": "http.response.body", "body": b"{}"})
        # the loop stays here until the client has the answer (or 10 s pass)
        seen.append(client_has_it.wait(10))

    seen: list[bool] = []
    received: list[bytes] = []

    def client(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            data = b""
            while not data.endswith(b"{}"):
                data += conn.recv(4096)
            received.append(data)
            client_has_it.set()

    async def main() -> None:
        sock = bind("127.0.0.1", 0)
        server = _Server(config(app, grace_s=1))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        thread = threading.Thread(target=client, args=(sock.getsockname()[1],))
        thread.start()
        while not seen:
            await asyncio.sleep(0.01)
        server.should_exit = True
        await serving
        sock.close()
        thread.join()

    asyncio.run(main())
    assert seen == [True]
    assert received[0].startswith(b"HTTP/1.1 200 OK\r\n") and received[0].endswith(b"\r\n\r\n{}")


_LENGTH_2 = [(b"content-length", b"2"), (b"content-type", b"application/json")]


def test_while_serving_threads_switch_every_half_millisecond_and_after_as_before() -> None:
    """The store writer's thread wins the GIL back from a busy event loop within 0.5 ms
    (a commit gives it up at every SQLite call); the process's setting is restored. (In a
    process of its own: serving also freezes the collector's view of the heap.)"""
    script = """
import os, signal, sys
from engine.serve.listen import bind, run_app

async def app(scope, receive, send):
    raise AssertionError("nothing is requested")

def ready():
    print(sys.getswitchinterval())
    os.kill(os.getpid(), signal.SIGTERM)  # stop before serving anything

before = sys.getswitchinterval()
sock = bind("127.0.0.1", 0)
run_app(app, sock, grace_s=1, on_ready=ready)
print(sys.getswitchinterval() == before)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["0.0005", "True"]


# -- request heads: bounded, whatever the HTTP parser would buffer ----------------------------


async def _echo_sizes(scope: Any, receive: Any, send: Any) -> None:
    """Answers with the number of headers and of body bytes it got."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = f"{len(scope['headers'])} {size}".encode()
    length = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": length})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serving(app: Any, grace_s: float = 1, **options: Any) -> Iterator[int]:
    """`app` on moat's uvicorn server in a thread of its own; its port."""
    sock = bind("127.0.0.1", 0)
    server = _Server(config(app, grace_s=grace_s), **options)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def exchange(port: int, *parts: bytes, until_closed: bool = False) -> bytes:
    """Send `parts` on a new connection (stopping if the server closes it); what it answers:
    its first response, or all until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        with suppress(BrokenPipeError, ConnectionResetError):  # closed by it
            for part in parts:
                conn.sendall(part)
        received = b""
        with suppress(ConnectionResetError):  # what came before the reset counts
            while chunk := conn.recv(65536):
                received += chunk
                if not until_closed and _whole(received):
                    break
    return received


def _whole(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def test_a_request_head_over_64_kib_is_a_431_in_openai_s_shape_and_the_connection_closes() -> None:
    start = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: "
    with serving(_echo_sizes) as port:
        one_huge = exchange(port, start, *[b"a" * 65536] * 64, b"\r\n\r\n")
        long_path = exchange(port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        after = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    for answer in (one_huge, long_path):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 ")
        assert b"connection: close" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "request_header_too_large"
        assert error["message"].startswith("the request line and headers are over 65536 bytes")
    assert after.startswith(b"HTTP/1.1 200 ") and after.endswith(b"2 0")


def test_more_than_100_request_headers_are_a_431_naming_the_limit() -> None:
    many = b"".join(b"X-%d: v\r\n" % n for n in range(20_000))
    with serving(_echo_sizes) as port:
        refused = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n", many, b"\r\n")
        taken = exchange(port, b"GET / HTTP/1.1\r\n", many[: many.index(b"X-99:")], b"\r\n")
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert "more than 100 headers" in json.loads(body)["error"]["message"]
    assert taken.startswith(b"HTTP/1.1 200 ") and taken.endswith(b"99 0")


def test_a_body_sent_with_its_head_is_not_counted_as_head() -> None:
    body = b"x" * (1 << 20)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
    last = head + b"Connection: close\r\n\r\n" + body
    with serving(_echo_sizes) as port:  # two requests on one connection
        answer = exchange(port, head + b"\r\n" + body + last, until_closed=True)
    assert answer.count(b"HTTP/1.1 200 ") == 2
    assert answer.endswith(b"3 1048576") and b"\r\n\r\n2 1048576HTTP/1.1" in answer


def test_the_sim_server_answers_a_chunked_body_over_its_limit_413_and_closes() -> None:
    server = SimServer(time_scale=0, max_body_bytes=1 << 16)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
    with serving(server.app) as port:
        answer = exchange(port, head, *[chunk] * 64, until_closed=True)
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head_part
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_a_body_that_stops_arriving_is_a_408_and_a_slow_steady_one_is_read() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
    with serving(_echo_sizes, read_idle_s=1.0) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(head + b"12345")
            started = time.monotonic()
            stalled = b""
            while chunk := conn.recv(65536):
                stalled += chunk
            waited = time.monotonic() - started
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(head)
            for byte in b"0123456789":  # a byte every 0.15 s: 1.5 s in all, never 1 s idle
                time.sleep(0.15)
                conn.sendall(bytes([byte]))
            steady = conn.recv(65536)
    head_part, _, body = stalled.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head_part
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout"
    assert error["message"].startswith("no part of the request body came for 1 s")
    assert 0.9 < waited < 6
    assert steady.startswith(b"HTTP/1.1 200 ") and steady.endswith(b"2 10")


def test_a_connection_whose_head_stops_arriving_is_closed() -> None:
    """Idle from the start, or half a head: either would hold a descriptor for as long
    as the client liked (uvicorn's keep-alive timeout starts only after a response)."""
    with serving(_echo_sizes, read_idle_s=0.5) as port:
        waits = []
        for sent in (b"", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le"):
            with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
                conn.sendall(sent)
                started = time.monotonic()
                assert conn.recv(65536) == b""  # closed, with nothing to say
                waits.append(time.monotonic() - started)
        answered = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert all(0.4 < wait < 5 for wait in waits)
    assert answered.startswith(b"HTTP/1.1 200 ")


def test_a_head_trickled_in_is_closed_once_it_is_not_whole_in_time_and_the_next_is_read() -> None:
    """A byte of head every 0.1 s is never idle for 0.5 s, but would hold the connection
    for as long as the client liked: the whole head must come within the limit."""
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 200
    with serving(_echo_sizes, read_idle_s=0.5) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            started = time.monotonic()
            sent = 0
            try:
                for byte in head:
                    conn.sendall(bytes([byte]))
                    sent += 1
                    time.sleep(0.1)
            except OSError:  # the server closed the connection under the sender
                pass
            conn.settimeout(5)
            try:
                rest = conn.recv(65536)
            except OSError:
                rest = b""
            waited = time.monotonic() - started
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # whole within the limit
            time.sleep(0.3)
            conn.sendall(b"X-Late: 1\r\n\r\n")
            answered = conn.recv(65536)
    assert rest == b"" and sent < len(head)
    assert 0.4 < waited < 5
    assert answered.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    "sent",
    [
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ],
    ids=["not-http", "bad-length", "two-lengths"],
)
def test_a_request_that_is_not_http_is_a_400_in_openai_s_shape(sent: bytes) -> None:
    with serving(_echo_sizes) as port:
        answer = exchange(port, sent, until_closed=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http")
    assert error["message"].startswith("the request is not valid HTTP/1.1")


class _Counted:
    """`_echo_sizes` with the statuses the protocol tells it it sent itself."""

    def __init__(self) -> None:
        self.refused: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await _echo_sizes(scope, receive, send)

    def count_refused(self, status: int) -> None:
        self.refused.append(status)


_GZIPPED = gzip.compress(b'{"model": "m", "messages": []}')
_CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_GZIPPED), _GZIPPED)


@pytest.mark.parametrize(
    "codings",
    [
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: GZIP\r\n",
    ],
    ids=["one-header", "two-headers", "gzip-alone"],
)
def test_a_transfer_coding_other_than_chunked_is_a_501_and_the_connection_closes(
    codings: bytes,
) -> None:
    """llhttp decodes `chunked` only, and read `gzip, chunked` as if it were `chunked`:
    the app got the gzipped bytes as the body. The request after it is never read."""
    app = _Counted()
    sent = b"POST / HTTP/1.1\r\nHost: x\r\n" + codings + b"\r\n" + _CHUNKED
    after = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with serving(app) as port:
        answer = exchange(port, sent + after, until_closed=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501 ") and b"connection: close" in head.lower()
    error = json.loads(body)["error"]  # one answer, and nothing after it
    assert (error["type"], error["code"]) == (
        "invalid_request_error",
        "unsupported_transfer_encoding",
    )
    assert error["message"].startswith("the request's Transfer-Encoding names gzip:")
    assert app.refused == [501]


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(_CHUNKED),
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(_CHUNKED),
        b"Content-Length: %d\r\nTransfer-Encoding: gzip, chunked\r\n" % len(_CHUNKED),
    ],
    ids=["te-first", "cl-first", "unknown-coding"],
)
def test_a_request_with_transfer_encoding_and_content_length_is_a_400_and_closes(
    framing: bytes,
) -> None:
    """Two ways to frame one body: a proxy that framed it by the other would take what
    this server reads as the next request for part of this one (request smuggling)."""
    app = _Counted()
    sent = b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + _CHUNKED
    after = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with serving(app) as port:
        answer = exchange(port, sent + after, until_closed=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "invalid_http"
    assert app.refused == [400]


_HANDSHAKE = (
    b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def test_the_sim_server_answers_a_websocket_handshake_in_openai_s_shape_and_closes() -> None:
    """uvicorn answered a handshake itself, in plain text (403, or 400); moat's servers
    have no WebSocket routes and answer it as the plain HTTP request it also is. What came
    after it on the connection is not read."""
    after = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    with serving(SimServer(time_scale=0).app) as port:
        answer = exchange(port, _HANDSHAKE + after, until_closed=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ") and b"connection: close" in head.lower()
    error = json.loads(body)["error"]  # one answer, and nothing after it
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("no route GET /v1/realtime;")


@pytest.mark.parametrize(
    ("protocol", "settings"),
    [("websocket", b""), ("h2c", b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n")],
    ids=["websocket", "h2c"],
)
def test_a_request_asking_to_switch_protocols_with_a_body_is_a_400_and_closes(
    protocol: str, settings: bytes
) -> None:
    """llhttp reads no body of a request that asks to switch protocols: the app saw an
    empty body (a 400 saying the body is not JSON), and the body's bytes were lost, or
    read as the next request."""
    app = _Counted()
    body = b'{"model": "m"}'
    head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: %s\r\n" % (
        protocol.encode()
    )
    sent = head + settings + b"Content-Length: %d\r\n\r\n" % len(body) + body
    with serving(app) as port:
        answer = exchange(port, sent, until_closed=True)
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower()
    error = json.loads(text)["error"]
    assert error["code"] == "unsupported_upgrade"
    assert error["message"].startswith(f"the request asks to switch to {protocol} ")
    assert app.refused == [400]


def test_an_in_process_sim_server_reads_requests_within_the_same_bounds() -> None:
    """`SimServer.serve` (what tests and benchmarks start beside them) is the server `moat
    sim-server` runs: a head over the limit is a 431 and it still answers after."""

    async def main() -> tuple[bytes, bytes]:
        async with anyio.create_task_group() as tg:
            server = await tg.start(serve_sim, "127.0.0.1", 0)
            huge = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
            refused = await anyio.to_thread.run_sync(
                lambda: exchange(server.port, huge, until_closed=True)
            )
            models = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            answered = await anyio.to_thread.run_sync(
                lambda: exchange(server.port, models, until_closed=True)
            )
            tg.cancel_scope.cancel()
        return refused, answered

    refused, answered = anyio.run(main)
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["error"]["code"] == "request_header_too_large"
    assert answered.startswith(b"HTTP/1.1 200 ") and b"sim-" in answered


# -- heads read by someone else's HTTP layer (Ray Serve's proxy) ------------------------------


def _asgi(app: Any, headers: list[tuple[bytes, bytes]], path: bytes = b"/v1/models") -> list[Any]:
    """The messages `app` sends for one GET with `headers`."""
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path.decode(), "raw_path": path,
             "query_string": b"", "headers": headers}  # fmt: skip
    anyio.run(bounded_heads(app), scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("headers", "path", "limit"),
    [
        ([(b"x-%d" % n, b"v") for n in range(101)], b"/", "more than 100 headers"),
        ([(b"x-big", b"a" * 70_000)], b"/", "over 65536 bytes"),
        ([(b"host", b"x")], b"/" + b"a" * 70_000, "over 65536 bytes"),
    ],
    ids=["fields", "bytes", "long-path"],
)
def test_an_app_behind_bounded_heads_refuses_what_moat_s_protocol_refuses(
    headers: list[tuple[bytes, bytes]], path: bytes, limit: str
) -> None:
    sent = _asgi(_echo_sizes, headers, path)
    assert sent[0]["status"] == 431 and (b"connection", b"close") in sent[0]["headers"]
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "request_header_too_large" and limit in error["message"]


def test_an_app_behind_bounded_heads_answers_a_head_within_the_bounds() -> None:
    sent = _asgi(_echo_sizes, [(b"x-%d" % n, b"v" * 600) for n in range(100)])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"100 0"


def test_ray_serve_replicas_serve_the_app_behind_bounded_heads() -> None:
    serving_module = pytest.importorskip("engine.cluster.serving")
    replica = object.__new__(serving_module._Replica)
    replica.server = type("Server", (), {"app": staticmethod(_echo_sizes)})()
    app = replica.__serve_build_asgi_app__()
    assert _asgi(app, [(b"x-%d" % n, b"v") for n in range(101)])[0]["status"] == 431
