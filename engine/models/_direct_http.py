"""A prepared route to one plain-HTTP OpenAI-compatible endpoint: aiohttp, the client's headers.

For a plain-HTTP endpoint that no proxy routes elsewhere (self-hosted models, `moat
sim-server`), on asyncio, moat's `openai` provider posts chat completions through an
aiohttp session of its own instead of the official client's request pipeline, whose per
call work (option copies, URL joins and parses, header merges into httpx2 models, a
uuid, the transport adapter between httpx2 and aiohttp) cost more CPU than the rest of a
request through `moat serve` (bench/RESULTS.md, "moat serve under load").

What is sent is still the official client's: the URL is its `base_url` joined with the
path, and the headers are its `auth_headers` and `default_headers` (the key, the
organization and project, `OPENAI_CUSTOM_HEADERS`, the caller's own headers, the
`User-Agent` and `X-Stainless-*` platform headers) merged as the client merges them, read
once when the route is made, plus the retry count and read timeout it adds per request.
Its timeouts (connect, read, pool) and connection limits apply as in its aiohttp client.
What comes back is mapped by the provider exactly as on the client's route: the status
errors through `engine.models.openai_provider.status_error`, the transport's errors here,
with the same billing rule (a connection never made is `ConnectFailed`; one that broke
after the request may have reached the endpoint is `ResponseLost`, charged).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import openai

from engine.models.base import ConnectFailed, ProviderTimeout, ResponseLost

__all__ = ["DirectRoute", "sdk_headers", "transport_error"]

_MAX_CONNECTIONS = 1000
_KEEPALIVE_S = 2.5
MAX_RESPONSE_BYTES = 32 * 2**20
"""The largest answer body read (a chat completion is kilobytes): an endpoint that sends
more, or never stops sending, loses the call rather than filling the process's memory."""
"""The official client's defaults for its own HTTP clients (connections, keep-alive)."""


def sdk_headers(client: openai.AsyncOpenAI) -> dict[str, str]:
    """The headers the official client sends with every request, as it merges them:
    case-insensitively, later sources winning, `Omit` markers removing a header."""
    merged: dict[str, tuple[str, str]] = {}
    for source in (client.auth_headers, client.default_headers):
        for name, value in source.items():
            if isinstance(value, str):
                merged[name.lower()] = (name, value)
            else:  # `Omit()`: the header is removed
                merged.pop(name.lower(), None)
    headers = dict(merged.values())
    headers["x-stainless-retry-count"] = "0"  # the gateway retries, never the client
    read = _timeouts(client.timeout)[1]
    if read is not None:
        headers["x-stainless-read-timeout"] = str(read)
    return headers


def _timeouts(timeout: Any) -> tuple[float | None, float | None, float | None]:
    """(connect, read, pool) seconds of the client's timeout (a number, None or an httpx
    `Timeout`)."""
    if timeout is None or isinstance(timeout, int | float):
        return timeout, timeout, timeout
    return timeout.connect, timeout.read, timeout.pool


class DirectRoute:
    """Chat completions to one endpoint through one aiohttp session (asyncio only).

    Args:
        client: the official client whose configuration the route sends; it must be
            made inside the running asyncio event loop that will use the route.
    """

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        connect, read, pool = _timeouts(client.timeout)
        self.base_url = str(client.base_url).rstrip("/")
        self.headers = sdk_headers(client)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, keepalive_timeout=_KEEPALIVE_S),
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=pool, sock_connect=connect, sock_read=read
            ),
        )

    async def post(
        self, who: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST `body` as JSON to `path` under the base URL: the status, headers and body.

        Raises:
            ConnectFailed: no connection could be made (nothing was sent).
            ResponseLost: the connection broke after it was made, or no answer came in
                the read timeout (`ProviderTimeout`): the endpoint may bill the call.
        """
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self._session.post(
                self.base_url + path, data=data, headers=headers
            ) as reply:
                size = reply.content_length
                if size is not None and size <= MAX_RESPONSE_BYTES:
                    return reply.status, reply.headers, await reply.read()
                return reply.status, reply.headers, await _capped(who, reply, size)
        except aiohttp.ClientError as exc:
            raise transport_error(who, exc) from exc
        except TimeoutError as exc:  # an aiohttp that raises the bare kind
            raise ProviderTimeout(f"{who}: the endpoint did not answer in time") from exc

    async def aclose(self) -> None:
        """Close the session and its connections."""
        await self._session.close()


def transport_error(who: str, exc: aiohttp.ClientError) -> Exception:
    """moat's error for an aiohttp failure: a connection never made is not billed; a
    connection that broke once made, or an answer that never came, may be."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ConnectFailed(f"{who}: could not connect ({exc})")
    if isinstance(exc, aiohttp.ServerTimeoutError):  # the read timeout
        return ProviderTimeout(f"{who}: the endpoint did not answer in time")
    return ResponseLost(f"{who}: connection lost after sending ({exc})")


async def _capped(who: str, reply: aiohttp.ClientResponse, declared: int | None) -> bytes:
    """The body of an answer with no length or one past `MAX_RESPONSE_BYTES`, read while
    it stays within it.

    Raises:
        ResponseLost: the body is larger (the endpoint may still bill the call).
    """
    chunks: list[bytes] = []
    size = 0
    if declared is None or declared <= MAX_RESPONSE_BYTES:
        async for chunk in reply.content.iter_any():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                break
            chunks.append(chunk)
        else:
            return b"".join(chunks)
    raise ResponseLost(
        f"{who}: the answer's body passed {MAX_RESPONSE_BYTES // 2**20} MiB and was not read "
        "(a chat completion is kilobytes): check the endpoint's base_url"
    )
