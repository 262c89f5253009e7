"""An official `openai` client wired in-process to a `MoatServer`'s ASGI app, and the raw
ASGI pieces for driving an app by hand (a client that hangs up, say)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai

from engine.serve import MoatServer

BASE = "http://moat.test/v1"


def http(server: MoatServer) -> httpx2.AsyncClient:
    """A plain HTTP client on the app (for raw status codes and bodies)."""
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=server.app), base_url=BASE)


@asynccontextmanager
async def client(server: MoatServer, api_key: str = "any") -> AsyncIterator[openai.AsyncOpenAI]:
    """The official async client, retries off so error statuses come straight back."""
    async with (
        http(server) as transport,
        openai.AsyncOpenAI(
            base_url=BASE, api_key=api_key, http_client=transport, max_retries=0
        ) as oai,
    ):
        yield oai


def chat_scope() -> dict[str, Any]:
    """The ASGI scope of a `POST /v1/chat/completions` with a JSON body."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "server": ("moat.test", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [(b"content-type", b"application/json")],
    }


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def hanging_up_after(
    part: bytes,
) -> tuple[Receive, Send, list[dict[str, Any]]]:
    """`receive` and `send` of a client that sends `part` of a body, more to come, then
    hangs up; and the list of what the app sent it."""
    messages = iter(
        [
            {"type": "http.request", "body": part, "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return receive, send, sent
