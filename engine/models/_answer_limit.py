"""Answer bodies read within a size limit on the official client's route, as on the direct one.

The `openai` provider reads TLS endpoints, proxied ones and every endpoint under trio
through the official client's HTTP client, which would read any body whole into memory:
an endpoint that sends gigabytes, never stops sending, or sends a small gzip body that
inflates a thousandfold would fill the process's memory. `bound_answers` fits that client
with a response hook that reads every body (answers, error pages, redirects) through
`_BoundedBody`: at most `MAX_RESPONSE_BYTES` once decoded, in the content codings moat
asks for (`Accept-Encoding: gzip, deflate`, as on the direct route,
`engine.models._direct_http`). Past the limit, or in a coding not asked for, the read
fails with `ResponseLost`: the endpoint said it answered, so the call may be billed.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator

import httpx2

from engine.models.base import ResponseLost

__all__ = ["ACCEPTED_CODINGS", "MAX_RESPONSE_BYTES", "Inflate", "bound_answers", "too_large"]

MAX_RESPONSE_BYTES = 32 * 2**20
"""The largest answer body read (a chat completion is kilobytes): an endpoint that sends
more, or never stops sending, loses the call rather than filling the process's memory."""
ACCEPTED_CODINGS = "gzip, deflate"
"""The content codings asked for (`Accept-Encoding`), whichever decoders are installed."""
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""The codings read, as zlib's window bits."""
_DRAIN_READS = 64
"""Reads of a dropped connection's buffered data before its readers end (one, mostly)."""


def too_large(limit: int) -> str:
    """What a call that met a body past `limit` bytes says (after the model's name)."""
    return (
        f"the answer's body passed {limit // 2**20} MiB and was not read (a chat completion "
        "is kilobytes): check the endpoint's base_url"
    )


def bound_answers(client: httpx2.AsyncClient) -> httpx2.AsyncClient:
    """`client`, asking for `ACCEPTED_CODINGS` only and reading every body it receives
    within `MAX_RESPONSE_BYTES` (a response hook; the client is returned for chaining)."""
    client.headers["accept-encoding"] = ACCEPTED_CODINGS
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "response": [*hooks["response"], _bound]}
    return client


async def _bound(response: httpx2.Response) -> None:
    """Read `response`'s body through `_BoundedBody`, which decodes it itself."""
    stream = response.stream
    if not isinstance(stream, httpx2.AsyncByteStream):  # (an async client's always is)
        return
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        del response.headers["content-encoding"]  # decoded here, not again by the client
    response.stream = _BoundedBody(stream, coding)


class _BoundedBody(httpx2.AsyncByteStream):
    """A response body, decoded and cut off at `MAX_RESPONSE_BYTES`."""

    def __init__(self, raw: httpx2.AsyncByteStream, coding: str) -> None:
        self._raw = raw
        self._coding = coding

    async def __aiter__(self) -> AsyncIterator[bytes]:
        limit = MAX_RESPONSE_BYTES
        inflate = Inflate(self._coding) if self._coding not in ("", "identity") else None
        size = 0
        raw = self._raw.__aiter__()
        async for chunk in raw:
            plain = inflate.feed(chunk, limit + 1 - size) if inflate is not None else chunk
            size += len(plain)
            if size > limit or (inflate is not None and inflate.unread):
                await self._abandon(raw)
                raise ResponseLost(too_large(limit))
            if plain:
                yield plain
        if inflate is not None:
            tail = inflate.flush()
            if size + len(tail) > limit:
                raise ResponseLost(too_large(limit))
            if tail:
                yield tail

    async def aclose(self) -> None:
        await self._raw.aclose()

    async def _abandon(self, raw: AsyncIterator[bytes]) -> None:
        """Drop the connection, then let the reads under way end on it: the client's own
        readers are nested generators that are not all closed when left mid-body, so they
        are run to their end (an error, on the closed connection) rather than left to the
        garbage collector, which would warn."""
        await self.aclose()
        with contextlib.suppress(Exception):
            for _ in range(_DRAIN_READS):
                await raw.__anext__()


class Inflate:
    """A gzip or deflate body decoded as it arrives (deflate with or without its zlib
    header, as servers send it)."""

    def __init__(self, coding: str) -> None:
        bits = _WBITS.get(coding)
        if bits is None:
            raise ResponseLost(f"the answer came encoded as {coding!r}, which was not asked for")
        self._coding = coding
        self._inflate = zlib.decompressobj(bits)
        self._started = False

    @property
    def unread(self) -> bool:
        """Whether input is left that the last `feed` had no room to decode."""
        return bool(self._inflate.unconsumed_tail)

    def feed(self, chunk: bytes, room: int) -> bytes:
        """`chunk` decoded, at most `room` bytes of it."""
        try:
            plain = self._inflate.decompress(chunk, max(room, 1))
        except zlib.error:
            if self._coding != "deflate" or self._started:
                raise ResponseLost(f"the answer's {self._coding} body does not decode") from None
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate
            self._started = True
            return self.feed(chunk, room)
        self._started = True
        return plain

    def flush(self) -> bytes:
        try:
            return self._inflate.flush()
        except zlib.error:
            raise ResponseLost(f"the answer's {self._coding} body does not decode") from None
