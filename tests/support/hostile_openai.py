"""A hostile OpenAI-compatible endpoint on loopback: raw HTTP bytes, or any misbehaviour.

`hostile_endpoint(replies)` listens on a free port in the test's own event loop (asyncio or
trio) and answers `POST /{name}/v1/chat/completions` with `replies[name]`: the exact bytes
of an HTTP response (`http(...)` builds them, however wrong), or a coroutine given the
socket to misbehave on (drip bytes, never answer, reset mid-body). Each connection answers
one request, then closes, so nothing a reply does leaks into the next call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

__all__ = ["Reply", "completion", "hostile_endpoint", "http"]

Reply = bytes | Callable[[anyio.abc.SocketStream], Awaitable[None]]
"""What one path answers: raw response bytes, or a coroutine writing to the socket."""


def completion(**fields: Any) -> dict[str, Any]:
    """A well-formed chat completion saying "hi" for 7 + 2 tokens; `fields` replace its own."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "served-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }
    return {**body, **fields}


def http(
    status: int = 200,
    body: bytes | Any = b"",
    headers: Mapping[str, str] | None = None,
    *,
    content_type: str | None = "application/json",
) -> bytes:
    """The bytes of one HTTP/1.1 response; a `body` that is not bytes is sent as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields = {"content-length": str(len(data)), "connection": "close", **(headers or {})}
    if content_type is not None:
        fields["content-type"] = content_type
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode() + b"\r\n" + data


async def _read_request(stream: anyio.abc.SocketStream) -> str:
    """Read one request (head and body); its path."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(rest) < length:
        rest += await stream.receive()
    return lines[0].split()[1]


@asynccontextmanager
async def hostile_endpoint(replies: Mapping[str, Reply]) -> AsyncIterator[str]:
    """Serve `replies` on loopback; yields the root URL (append `/{name}/v1`)."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                path = await _read_request(stream)
                reply = replies[path.split("/")[1]]
                if isinstance(reply, bytes):
                    await stream.send(reply)
                else:
                    await reply(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the client hung up first

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()
