"""The served connections' transport: a response's head and body leave in one `send`, as
soon as the response is complete."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from typing import Any

from engine.serve.listen import _Coalesced, _Server, bind, config


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
