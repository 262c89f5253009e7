"""A prepared route to one plain-HTTP OpenAI-compatible endpoint: keep-alive HTTP/1.1 on asyncio.

For a plain-HTTP endpoint that no proxy routes elsewhere (self-hosted models, `moat
sim-server`), on asyncio, moat's `openai` provider posts chat completions over connections
of its own instead of the official client's request pipeline, whose per call work (option
copies, URL joins and parses, header merges into httpx2 models, a uuid, the transport
adapter) cost more CPU than the rest of a request through `moat serve`. aiohttp, which
carried this route before, still did per call what the route needs once (the URL parsed,
the headers merged into multidicts, a cookie jar, redirects, payload objects, trace hooks):
164 against 72 us of CPU a call (bench/RESULTS.md, "moat serve under load"). The HTTP is not
parsed here: httptools (llhttp, the parser uvicorn serves with) reads each answer's status
line, headers and body, length-delimited or chunked. What this module adds is the framing
of one POST, a bounded pool of keep-alive connections, and timeouts.

What is sent is still the official client's: the URL is its `base_url` joined with the
path, and the headers are its `auth_headers` and `default_headers` (the key, the
organization and project, `OPENAI_CUSTOM_HEADERS`, the caller's own headers, the
`User-Agent` and `X-Stainless-*` platform headers) merged as the client merges them, read
once when the route is made, plus the retry count and read timeout it adds per request and
the `Accept-Encoding` its HTTP library sends (gzip and deflate answers are decoded). Its
timeouts apply: connect (to open a connection), read (no byte of the answer for that long)
and pool (waiting for one of the route's 1,000 connections: calls that find them all busy
are served in the order they came, each within one pool timeout). What comes back is mapped by
the provider exactly as on the client's route: the status errors through
`engine.models.openai_provider.status_error`, the transport's errors here, with the same
billing rule (a connection never made is `ConnectFailed`; one that broke after the request
may have reached the endpoint is `ResponseLost`, charged). Cancelling the calling task
closes the connection at once, so the endpoint sees the request aborted.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - the route is asyncio's own (the provider picks it on asyncio)
import json
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import httptools
import httpx2
import openai

from engine.models._answer_limit import MAX_RESPONSE_BYTES, Inflate, too_large
from engine.models._redirects import (
    FOLLOWED,
    MAX_REDIRECTS,
    REDIRECTS,
    redirect_error,
    redirect_location,
)
from engine.models.base import ConnectFailed, ProviderTimeout, ResponseLost, connect_reason

__all__ = ["DirectRoute", "sdk_headers"]

_MAX_CONNECTIONS = 1000
_KEEPALIVE_S = 2.5
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


def _header_lines(headers: Mapping[str, str]) -> bytes:
    """`headers` as request header lines.

    Raises:
        ValueError: a name or value would break the request's framing (a line break, a
            colon in a name) or is not Latin-1 text.
    """
    lines = []
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
            raise ValueError(f"HTTP header {name!r}: {value!r} cannot be sent (a line break)")
        lines.append(f"{name}: {value}\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"HTTP headers must be Latin-1 text ({exc})") from None


class _TooLarge(Exception):
    """The answer's body passed `MAX_RESPONSE_BYTES` (`post` says so, naming the model)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the endpoint, answering one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.closed = False
        self.complete = False
        self.keep_alive = False
        self.headed = False
        self.last_read = 0.0
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection is of no further use
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(ResponseLost("the endpoint switched protocols instead of answering"))
        except httptools.HttpParserError as exc:
            self.fail(ResponseLost(f"unreadable HTTP answer ({exc})"))

    def eof_received(self) -> bool:
        return False  # close the connection (its answer, if delimited by the close, is done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headed and self._ends_at_close():
            self.on_message_complete()  # a body delimited by the connection's end
        else:
            reason = f" ({exc})" if exc else ""
            self.fail(ResponseLost(f"connection lost after sending{reason}"))

    # -- httptools ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: the connection is out of step
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        seen = self.headers.get(key)
        self.headers[key] = text if seen is None else f"{seen}, {text}"

    def on_headers_complete(self) -> None:
        self.headed = True
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            self.fail(_TooLarge())

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.size += len(body)
        if self.size > MAX_RESPONSE_BYTES:
            self.fail(_TooLarge())
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (`103 Early Hints`): the answer follows
            self.headers, self.body, self.size, self.headed = {}, [], 0, False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # (only known in the callback)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((status, self.headers, b"".join(self.body)))

    # -- the route's side --------------------------------------------------------------

    def _ends_at_close(self) -> bool:
        """Whether the answer's body runs to the connection's end (no length, not chunked)."""
        return (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
        )

    def send(self, request: bytes) -> asyncio.Future[tuple[int, dict[str, str], bytes]]:
        """Send one request; the future of its answer."""
        assert self.transport is not None
        self.headers, self.body, self.size = {}, [], 0
        self.complete = self.keep_alive = self.headed = False
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        self.last_read = time.monotonic()
        self.transport.write(request)
        return waiter

    def fail(self, error: Exception) -> None:
        """End the request in flight with `error` and drop the connection."""
        self.complete = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def reusable(self) -> bool:
        return not self.closed and self.complete and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class DirectRoute:
    """Chat completions to one endpoint over a pool of keep-alive connections (asyncio).

    Args:
        client: the official client whose configuration the route sends; it must be
            made inside the running asyncio event loop that will use the route.
    """

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._connect_s, self._read_s, self._pool_s = _timeouts(client.timeout)
        url = client.base_url  # (as the client parsed it: percent-encoded, IDNA host)
        self.base_url = str(url).rstrip("/")
        self.headers = sdk_headers(client)
        self._host = url.host
        self._port = url.port or 80
        self._prefix = url.raw_path.rstrip(b"/")
        netloc = url.netloc.decode("ascii")
        self._root = f"{url.scheme}://{netloc}"
        self._origin = url.origin
        sent = {"host": netloc, **self.headers, "accept-encoding": "gzip, deflate"}
        self._head = _header_lines(sent)
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiting: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def post(
        self, who: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST `body` as JSON to `path` under the base URL: the status, headers (by their
        lower-case names) and body.

        A 307 or 308 redirect within the endpoint's origin is followed
        (`engine.models._redirects`).

        Raises:
            NodeError: the endpoint redirected the call to another origin, or by a redirect
                that is not followed (nothing was sent there).
            ConnectFailed: no connection could be made (nothing was sent).
            ResponseLost: the connection broke after it was made, the answer could not be
                read, or no answer came in the read timeout (`ProviderTimeout`): the
                endpoint may bill the call.
        """
        data = json.dumps(body, separators=(",", ":")).encode()
        extra = _header_lines(headers) if headers else b""
        target = self._prefix + path.encode("ascii")
        hops = 0
        while True:
            status, answer_headers, content = await self._exchange(who, target, data, extra)
            location = None
            if status in REDIRECTS:
                url = httpx2.URL(self._root + target.decode("ascii"))
                location = redirect_location(url, status, answer_headers)
            if location is None:
                return status, answer_headers, content
            cross = location.origin != self._origin
            if cross or status not in FOLLOWED or hops == MAX_REDIRECTS:
                raise redirect_error(who, status, location, cross=cross)
            hops += 1
            target = location.raw_path  # (its query included)

    async def _exchange(
        self, who: str, target: bytes, data: bytes, extra: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One POST of `data` to `target` (path and query): the answer, as `post` says."""
        request = b"".join(
            (
                b"POST ",
                target,
                b" HTTP/1.1\r\n",
                self._head,
                extra,
                b"content-length: %d\r\n\r\n" % len(data),
                data,
            )
        )
        conn = await self._connection(who)
        try:
            answer = conn.send(request)
            status, answer_headers, content = await self._answer(conn, answer)
        except _TooLarge:
            raise _too_large(who) from None
        except ProviderTimeout:
            raise ProviderTimeout(f"{who}: the endpoint did not answer in time") from None
        except ResponseLost as exc:
            raise ResponseLost(f"{who}: {exc}") from None
        finally:
            self._give_back(conn)
        coding = answer_headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            content = _decoded(who, coding, content)
        return status, answer_headers, content

    async def aclose(self) -> None:
        """Close the route's connections."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def _connection(self, who: str) -> _Connection:
        """An idle connection kept alive, else a new one; while all are busy, the first
        connection given back or closed, in the order the calls came (one pool timeout)."""
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < _KEEPALIVE_S:
                return conn
            self._drop(conn)
        if self._open < _MAX_CONNECTIONS:
            self._open += 1
        else:
            handed = await self._wait_for_a_connection(who)
            if handed is not None and not handed.closed:
                return handed
            if handed is not None:  # closed while handed over: its place is this call's
                handed.close()
        return await self._connect(who)

    async def _connect(self, who: str) -> _Connection:
        """A new connection, in a place of the pool already counted as this call's."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self._host, self._port), self._connect_s
            )
        except (OSError, TimeoutError) as exc:
            self._release()
            reason = connect_reason(exc) or str(exc)
            raise ConnectFailed(f"{who}: could not connect ({reason})") from exc
        except BaseException:
            self._release()
            raise
        return conn

    async def _wait_for_a_connection(self, who: str) -> _Connection | None:
        """Wait, at most the pool timeout, for a connection given back (it is handed to this
        call) or for a place another one left (None: this call opens a connection there)."""
        loop = asyncio.get_running_loop()
        handed: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiting.append(handed)
        timer = None
        if self._pool_s is not None:
            busy = ConnectFailed(
                f"{who}: could not connect (all {_MAX_CONNECTIONS} connections stayed busy)"
            )

            def give_up() -> None:
                if not handed.done():
                    handed.set_exception(busy)

            timer = loop.call_later(self._pool_s, give_up)
        try:
            return await handed
        except asyncio.CancelledError:  # what was handed over in the meantime goes on
            if handed.done() and not handed.cancelled() and handed.exception() is None:
                conn = handed.result()
                if conn is None:
                    self._release()
                else:
                    self._give_back(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _answer(
        self, conn: _Connection, answer: asyncio.Future[tuple[int, dict[str, str], bytes]]
    ) -> tuple[int, dict[str, str], bytes]:
        """The answer, or `ProviderTimeout` once no byte came for the read timeout."""
        read = self._read_s
        if read is None:
            return await answer
        loop = asyncio.get_running_loop()

        def check() -> None:  # (a timer re-armed, not reset on every read)
            left = conn.last_read + read - time.monotonic()
            if left > 0:
                conn.timer = loop.call_later(left, check)
            else:
                conn.fail(ProviderTimeout("no answer in time"))

        conn.timer = loop.call_later(read, check)
        try:
            return await answer
        finally:
            conn.timer.cancel()

    def _give_back(self, conn: _Connection) -> None:
        """Hand the connection to the first call waiting for one, or keep it for the next
        call; close it after a cancelled or broken call, or an answer the endpoint ends
        with the connection."""
        if conn.reusable() and not self._closed:
            conn.waiter = None
            conn.idle_since = time.monotonic()
            if not self._hand_over(conn):
                self._idle.append(conn)
            return
        if conn.waiter is not None and not conn.waiter.done():
            conn.waiter.cancel()  # (the call was cancelled: nobody reads its outcome)
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._release()

    def _release(self) -> None:
        """A connection's place in the pool is free: the first call waiting takes it."""
        if not self._hand_over(None):
            self._open -= 1

    def _hand_over(self, conn: _Connection | None) -> bool:
        """Hand `conn` (None: a free place in the pool) to the first call still waiting;
        False when no call waits."""
        waiting = self._waiting
        while waiting:
            handed = waiting.popleft()
            if not handed.done():
                handed.set_result(conn)
                return True
        return False


def _decoded(who: str, coding: str, content: bytes) -> bytes:
    """A gzip or deflate body decoded, within `MAX_RESPONSE_BYTES` (as the client's
    route decodes it as it arrives, `Inflate`).

    Raises:
        ResponseLost: another coding, a body that does not decode, or one that decodes
            past the limit.
    """
    try:
        inflate = Inflate(coding)
        plain = inflate.feed(content, MAX_RESPONSE_BYTES + 1)
    except ResponseLost as exc:
        raise ResponseLost(f"{who}: {exc}") from None
    if len(plain) > MAX_RESPONSE_BYTES or inflate.unread:
        raise _too_large(who)
    return plain


def _too_large(who: str) -> ResponseLost:
    return ResponseLost(f"{who}: {too_large(MAX_RESPONSE_BYTES)}")
