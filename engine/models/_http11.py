"""A lean HTTP/1.1 transport for the `openai` client's calls to plain-HTTP endpoints.

The official client sends every request through httpx2, whose default transport (httpcore2's
connection pool over h11, a pure-Python protocol state machine) costs about a millisecond
of CPU per call: more than the rest of a request through `moat serve`. Self-hosted
endpoints (vLLM, Ollama, llama.cpp, `moat sim-server`) are mostly reached over plain HTTP
on a local network or loopback, where that cost is the bottleneck. This transport plugs
into the client through its documented `http_client=` hook and speaks the small subset of
HTTP/1.1 a chat call needs: one write per request, keep-alive connections reused, a body
read by `Content-Length`, chunked or to the close. Everything above it (the client's
headers, auth, timeouts, status errors) is unchanged.

It is used only for `http://` endpoints that no proxy variable of the environment routes
elsewhere (`use_lean_transport`); TLS, proxies and HTTP/2 stay with httpx2's own transport.

A response is read whole before it is returned: the provider's calls are not streamed (a
streamed call would still work, but arrive all at once at its end).

Connections: an idle connection that became readable (the server closed it, or sent
something unasked) is dropped before reuse, never written to, so a request is sent once;
a connection whose exchange did not finish (an error, a cancellation) is closed, so
cancelling a call aborts it at the server. Timeouts come from the request's `timeout`
extension as httpx2 sets it (`connect`, `write`, `read` per receive) and raise httpx2's
own exception types, as do connection failures (`ConnectError`), so the client maps them
exactly as it maps its default transport's.
"""

from __future__ import annotations

import contextlib
import math
import select
import urllib.request
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import httpx2

__all__ = ["Http11Transport", "use_lean_transport"]

_MAX_HEAD = 64 * 1024
"""The most bytes a response's status line and headers may take."""
_MAX_IDLE = 100
"""Idle connections kept per host (the client's default keep-alive limit)."""
_RECEIVE = 65536


def use_lean_transport(base_url: str | None) -> bool:
    """Whether calls to `base_url` may use `Http11Transport`: plain HTTP, no proxy."""
    if not base_url:
        return False
    url = httpx2.URL(base_url)
    if url.scheme != "http" or not url.host:
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(url.host))


class _Connection:
    """One keep-alive TCP connection and the bytes read past the last response."""

    __slots__ = ("buffer", "socket", "stream")

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self.buffer = bytearray()

    def is_stale(self) -> bool:
        """An idle connection with something to read: closed by the server (or broken)."""
        if self.buffer:
            return True
        try:  # poll(), not select(): a busy server's descriptors are past select's 1024
            watch = select.poll()
            watch.register(self.socket.fileno(), select.POLLIN)
            return bool(watch.poll(0))
        except (OSError, ValueError):
            return True

    async def receive(self, request: httpx2.Request, scope: anyio.CancelScope, read: float) -> None:
        """Append the next bytes from the server; EOF raises `RemoteProtocolError`."""
        scope.deadline = anyio.current_time() + read
        try:
            chunk = await self.stream.receive(_RECEIVE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            message = "server disconnected without sending a complete response"
            raise httpx2.RemoteProtocolError(message, request=request) from exc
        self.buffer += chunk


class Http11Transport(httpx2.AsyncBaseTransport):
    """An httpx2 transport for plain HTTP/1.1 with keep-alive; see the module docstring."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send `request` and read its whole response."""
        url = request.url
        if url.scheme != "http":
            raise httpx2.UnsupportedProtocol(f"lean transport: {url.scheme} URL", request=request)
        timeouts = _timeouts(request.extensions.get("timeout"))
        key = (url.host, url.port or 80)
        connection = await self._idle_connection(key) or await _connect(key, request, timeouts)
        done = False
        try:
            await _send(connection, request, timeouts["write"])
            status, headers, body, keep = await _read_response(connection, request, timeouts)
            done = True
        finally:
            if not done:
                await _close(connection)
        if keep and not self._closed:
            await self._park(key, connection)
        else:
            await _close(connection)
        return httpx2.Response(
            status,
            headers=headers,
            content=body,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.is_stale():
                return connection
            await _close(connection)
        return None

    async def _park(self, key: tuple[str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= _MAX_IDLE:
            await _close(connection)
        else:
            idle.append(connection)

    async def aclose(self) -> None:
        """Close every idle connection; later responses close theirs."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await _close(connection)


def _timeouts(raw: Any) -> dict[str, float | None]:
    raw = raw if isinstance(raw, Mapping) else {}
    return {name: raw.get(name) for name in ("connect", "read", "write")}


async def _send(connection: _Connection, request: httpx2.Request, timeout: float | None) -> None:
    """The whole request in one write."""
    data = _head(request) + await request.aread()
    try:
        with anyio.fail_after(timeout):
            await connection.stream.send(data)
    except TimeoutError:
        raise httpx2.WriteTimeout("timed out sending", request=request) from None
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
        raise httpx2.WriteError(f"connection lost while sending: {exc!r}", request=request) from exc


async def _connect(
    key: tuple[str, int], request: httpx2.Request, timeouts: Mapping[str, float | None]
) -> _Connection:
    try:
        with anyio.fail_after(timeouts["connect"]):
            stream = await anyio.connect_tcp(key[0], key[1])
    except TimeoutError:
        raise httpx2.ConnectTimeout("timed out connecting", request=request) from None
    except OSError as exc:
        raise httpx2.ConnectError(str(exc), request=request) from exc
    return _Connection(stream)


async def _close(connection: _Connection) -> None:
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(OSError, anyio.BrokenResourceError):
            await connection.stream.aclose()


def _head(request: httpx2.Request) -> bytes:
    """The request line and headers, with `Content-Length` for the (read) body."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    has_length = False
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            continue  # the body is sent whole, with its length
        has_length = has_length or lowered == b"content-length"
        lines.append(name + b": " + value)
    if not has_length and request.method not in ("GET", "HEAD"):
        lines.append(b"Content-Length: %d" % len(request.content))
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


async def _read_response(
    connection: _Connection, request: httpx2.Request, timeouts: Mapping[str, float | None]
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """(status, headers, body, whether the connection may be reused)."""
    read = timeouts["read"] if timeouts["read"] is not None else math.inf
    with anyio.CancelScope() as scope:
        while True:  # 1xx answers are skipped
            status, headers, keep, length, chunked = await _read_head(
                connection, request, scope, read
            )
            if status >= 200:
                break
        if request.method == "HEAD" or status in (204, 304):
            body = b""
        elif chunked:
            body = await _read_chunked(connection, request, scope, read)
        elif length is not None:
            while len(connection.buffer) < length:
                await connection.receive(request, scope, read)
            body = bytes(connection.buffer[:length])
            del connection.buffer[:length]
        else:
            body = await _read_to_close(connection, scope, read)
            keep = False
    if scope.cancelled_caught:
        raise httpx2.ReadTimeout("timed out reading", request=request)
    return status, headers, body, keep and not connection.buffer


async def _read_head(
    connection: _Connection, request: httpx2.Request, scope: anyio.CancelScope, read: float
) -> tuple[int, list[tuple[bytes, bytes]], bool, int | None, bool]:
    buffer = connection.buffer
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > _MAX_HEAD:
            raise httpx2.RemoteProtocolError("response head too large", request=request)
        await connection.receive(request, scope, read)
    head = bytes(buffer[:end]).split(b"\r\n")
    del buffer[: end + 4]
    parts = head[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx2.RemoteProtocolError(f"bad status line {head[0][:80]!r}", request=request)
    keep = parts[0] == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    headers: list[tuple[bytes, bytes]] = []
    for line in head[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx2.RemoteProtocolError(f"bad header line {line[:80]!r}", request=request)
        name, value = name.strip(), value.strip()
        headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" and value.isdigit():
            length = int(value)
        elif lowered == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lowered == b"connection":
            tokens = value.lower()
            keep = b"keep-alive" in tokens if not keep else b"close" not in tokens
    return int(parts[1]), headers, keep, length, chunked


async def _read_chunked(
    connection: _Connection, request: httpx2.Request, scope: anyio.CancelScope, read: float
) -> bytes:
    buffer = connection.buffer
    body = bytearray()
    while True:
        while (end := buffer.find(b"\r\n")) < 0:
            await connection.receive(request, scope, read)
        size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise httpx2.RemoteProtocolError("bad chunk size", request=request) from None
        del buffer[: end + 2]
        if size == 0:
            while (end := buffer.find(b"\r\n")) != 0:  # trailers, then the blank line
                if end > 0:
                    del buffer[: end + 2]
                else:
                    await connection.receive(request, scope, read)
            del buffer[:2]
            return bytes(body)
        while len(buffer) < size + 2:
            await connection.receive(request, scope, read)
        body += buffer[:size]
        del buffer[: size + 2]


async def _read_to_close(connection: _Connection, scope: anyio.CancelScope, read: float) -> bytes:
    while True:
        scope.deadline = anyio.current_time() + read
        try:
            connection.buffer += await connection.stream.receive(_RECEIVE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            body = bytes(connection.buffer)
            connection.buffer.clear()
            return body
