"""An official `openai` client wired in-process to a `MoatServer`'s ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
