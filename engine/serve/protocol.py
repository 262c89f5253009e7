"""The HTTP/1.1 connection of moat's servers: uvicorn's protocol, with bounded request
heads, requests that cannot hold a connection (or the drain) forever, and its own errors
in OpenAI's shape.

uvicorn's `h11` protocol refuses a head over 16 KiB (h11's `max_incomplete_event_size`),
but the `httptools` one that uvicorn picks whenever httptools is installed (the `serve`
extra installs it) has no limit at all: llhttp hands every header to uvicorn, which keeps
them in a list, and a client could send megabytes of headers, or hundreds of thousands of
them, each a Python callback and a linear scan for every header the app looks up. Here a
request line and headers over `HEAD_BYTES`, or more than `HEAD_FIELDS` headers, get a 431
in OpenAI's error shape and the connection is closed, as Node (16 KiB), nginx and gunicorn
(100 fields) refuse them.

The head is measured by the bytes fed to the parser while it is in a head: a chunk that
would take the head past the limit is fed only up to the limit, and if the head has not
ended there, it is over. (After a pipelined request, the rest of the read that ended it
is not counted: the next head may then run over by at most that read.)

On SIGTERM uvicorn closes idle connections and waits up to the grace period for every
request it has read the head of, including one whose client has stalled halfway through
its body: the drain then lasted the whole `--grace` and ended in a plain-text 500. A
request whose body is still arriving has not started (moat's apps read the whole body
first), so at shutdown it gets a 503 in OpenAI's shape at once and its connection closes;
the client may send it again, to this server's successor. Requests whose body is whole
finish as before.

uvicorn has no timeout on reading a request either (its keep-alive timeout starts only
after a response): a client that connects and sends nothing, or half a head, or half a
body, and goes quiet held its connection (and, for a body, its task) for as long as it
stayed connected, and enough of them would take every file descriptor. Once nothing of
a request has come for `READ_IDLE_S` (60 s, nginx's `client_body_timeout`), or its head
has not come whole within as long since its first byte (nginx's `client_header_timeout`:
a head trickled a byte at a time would otherwise hold the connection for days), the
connection closes: with a 408 in OpenAI's shape when the request's head is whole (an app
was reading its body), without a word otherwise (as uvicorn closes an idle keep-alive
connection). A slow body that keeps coming is read to its end.

llhttp decodes one transfer coding, `chunked`, and reads `Transfer-Encoding: gzip, chunked`
as if it said `chunked` alone: the app got a body still gzipped (or in any coding the
client named) and took it for the request. A request whose `Transfer-Encoding` names any
other coding gets a 501 in OpenAI's shape and its connection closes (RFC 9112, section
6.1; h11 refuses such a request itself, with its 400). One with both `Transfer-Encoding`
and `Content-Length`, which two parsers could frame two ways (request smuggling), is
llhttp's 400 and closes its connection (RFC 9112, section 6.3).

moat's servers switch to no other protocol (uvicorn runs with `ws="none"`): a request
that asks to (`Connection: upgrade`, a WebSocket handshake) is answered over HTTP/1.1 as
its route answers it, in OpenAI's shape, as RFC 9110 (section 7.8) lets a server do,
and uvicorn has nothing to warn about. llhttp reads no body of such a request, and
uvicorn drops what came after its head in the same read: the answer closes the
connection, and a request that asks to switch and has a body gets a 400 (its app would
have seen an empty body).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from engine.serve.wire import ApiError, error_body

__all__ = ["HEAD_BYTES", "HEAD_FIELDS", "READ_IDLE_S", "bounded_heads", "protocol_class"]

HEAD_BYTES = 64 * 1024
"""Most bytes of a request line and its headers (h11's default is 16 KiB; nginx's 32)."""
HEAD_FIELDS = 100
"""Most headers of a request (gunicorn's `limit_request_fields`)."""
READ_IDLE_S = 60.0
"""Seconds a request (its head or its body) may go without a byte arriving, and a head
may take in all."""


def protocol_class(
    protocol: type[Any],
    *,
    read_idle_s: float = READ_IDLE_S,
    on_refused: Callable[[int], None] | None = None,
) -> type[Any]:
    """uvicorn's `protocol` class with requests being read watched (`read_idle_s`: seconds
    one may stall) and, for the httptools one, bounded request heads (h11 bounds heads
    itself); `on_refused` is called with the status of every answer the protocol itself
    sends (a server's metrics count them)."""
    mixins: tuple[type[Any], ...] = (_Reading,)
    if hasattr(protocol, "on_headers_complete"):  # httptools: llhttp's callbacks
        mixins += (_BoundedHead,)
    settings = {"read_idle_s": read_idle_s, "on_refused": staticmethod(on_refused or _uncounted)}
    return type("Moat" + protocol.__name__, (*mixins, protocol), settings)


def _uncounted(status: int) -> None:
    """No metrics to count a refusal in."""


def _head_error(what: str) -> ApiError:
    """The 431 of a request whose line and headers `what` (are over, have more than)."""
    return ApiError(
        431,
        f"the request line and headers {what}, the most this server reads; "
        "send fewer or shorter headers",
        code="request_header_too_large",
    )


def bounded_heads(app: Any) -> Any:
    """`app` (ASGI) answering a 431 in OpenAI's shape to a request with more than
    `HEAD_FIELDS` headers or a request line and headers over `HEAD_BYTES`, as moat's own
    protocol does before any app runs. For servers whose HTTP layer is not moat's: Ray
    Serve's proxy parses a request's head whole, however large, before its replica sees
    it; the replica then refuses it as `moat serve` would."""

    async def bounded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            what = None
            if len(headers) > HEAD_FIELDS:
                what = f"have more than {HEAD_FIELDS} headers"
            else:
                path = scope.get("raw_path") or scope.get("path", "").encode()
                line = len(path) + len(scope.get("query_string") or b"")
                size = line + sum(len(name) + len(value) + 4 for name, value in headers)
                if size > HEAD_BYTES:
                    what = f"are over {HEAD_BYTES} bytes"
            if what is not None:
                body = json.dumps(error_body(_head_error(what))).encode()
                head = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": 431, "headers": head})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return bounded


def _close_with(transport: Any, error: ApiError, counted: Callable[[int], None]) -> None:
    """Answer `error` in OpenAI's shape and close the connection (`counted` is told its
    status): an app reading the request sees its client leave (`http.disconnect`). A
    connection already closing has had its answer (the parser may still be reading what
    came after the request it refused, and refuse that too): nothing is sent or counted."""
    if transport.is_closing():
        return
    counted(error.status)
    body = json.dumps(error_body(error)).encode()
    status = f"{error.status} {HTTPStatus(error.status).phrase}"
    transport.write(
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n" % status.encode()
        + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    transport.close()


class _Reading:
    """Requests being read: closed once nothing of them has come for `read_idle_s`; at
    shutdown, one whose body is still arriving gets a 503 rather than a wait; bytes that
    are no HTTP a 400 in OpenAI's shape (uvicorn's is plain text)."""

    transport: Any
    cycle: Any
    loop: Any
    read_idle_s = READ_IDLE_S
    on_refused: Callable[[int], None] = staticmethod(_uncounted)
    _idle: Any = None
    """The timer watching the request being read, while one is."""
    _last = 0.0
    """When a part of that request last came (the loop's clock)."""
    _head_since: float | None = None
    """When the first byte of the head being read came (None: no head under way)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._last = self.loop.time()  # a connection is made to send a request
        self._idle = self.loop.call_later(self.read_idle_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        reading_head = self._reading_head()
        if reading_head and self._head_since is None and not self.transport.is_closing():
            self._head_since = self.loop.time()
        elif not reading_head:
            self._head_since = None
        if reading_head or self._arriving():
            self._last = self.loop.time()
            if self._idle is None:
                self._idle = self.loop.call_later(self.read_idle_s, self._check_idle)
        elif self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _reading_head(self) -> bool:
        """True while no request is being answered: the next one's head is awaited."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def _arriving(self) -> bool:
        """True while the request being read has started and its body is not whole."""
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_started

    def _check_idle(self) -> None:
        self._idle = None
        reading_head, arriving = self._reading_head(), self._arriving()
        if not (reading_head or arriving) or self.transport.is_closing():
            return
        if self.transport.get_protocol() is not self:  # upgraded: no longer HTTP's
            return
        now = self.loop.time()
        quiet = now - self._last
        if reading_head and self._head_since is not None:  # a head must come whole in time
            quiet = max(quiet, now - self._head_since)
        if quiet < self.read_idle_s:  # a part came since: look again when it would be late
            self._idle = self.loop.call_later(self.read_idle_s - quiet, self._check_idle)
        elif arriving:
            error = ApiError(
                408,
                f"no part of the request body came for {self.read_idle_s:g} s; send the "
                "request again, its body without pauses",
                code="request_timeout",
            )
            _close_with(self.transport, error, self.on_refused)
        else:  # no request yet, or half a head (or one trickling in): nobody to answer
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses, in OpenAI's shape."""
        error = ApiError(
            400,
            "the request is not valid HTTP/1.1: check its request line, its headers and "
            "its Content-Length or chunked framing",
            code="invalid_http",
        )
        _close_with(self.transport, error, self.on_refused)

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn's warning that it cannot switch a request's protocol (and its advice
        to install a WebSocket library): moat's servers switch to none by design, and
        answer the request over HTTP/1.1."""

    def shutdown(self) -> None:
        if not self._arriving():
            super().shutdown()  # type: ignore[misc]
            return
        error = ApiError(
            503,
            "the server is shutting down and did not take this request, whose body was "
            "still arriving; send it again",
            type="server_error",
            code="shutting_down",
        )
        _close_with(self.transport, error, self.on_refused)


def _unframed(headers: list[tuple[bytes, bytes]]) -> ApiError | None:
    """The 501 of a request head whose `Transfer-Encoding` names a coding other than
    `chunked` (`headers`: names in lower case); None for any other head."""
    codings = [
        coding.strip(b" \t").lower()
        for name, value in headers
        if name == b"transfer-encoding"
        for coding in value.split(b",")
    ]
    unknown = [c.decode("latin-1") for c in codings if c and c != b"chunked"]
    if not unknown:
        return None
    return ApiError(
        501,
        f"the request's Transfer-Encoding names {', '.join(unknown)}: this server decodes "
        "no transfer coding but chunked; send the body with Content-Length, or with "
        "`Transfer-Encoding: chunked` alone",
        code="unsupported_transfer_encoding",
    )


def _upgrading_body(headers: list[tuple[bytes, bytes]]) -> ApiError | None:
    """The 400 of a request that asks to switch protocols and has a body (llhttp leaves
    the body of such a request unread); None when it has none."""
    fields = dict(headers)
    length = fields.get(b"content-length", b"0").strip(b" \t").lstrip(b"0")
    if b"transfer-encoding" not in fields and not length:
        return None
    asked = fields.get(b"upgrade", b"").decode("latin-1") or "another protocol"
    return ApiError(
        400,
        f"the request asks to switch to {asked} (Connection: upgrade) and has a body: this "
        "server speaks HTTP/1.1 only and reads no body of such a request; send it without "
        "its Upgrade header",
        code="unsupported_upgrade",
    )


class _BoundedHead:
    """The head limits, the body's framing and requests that ask to switch protocols,
    mixed in before uvicorn's httptools protocol (whose methods `super()` reaches)."""

    transport: Any
    parser: Any
    cycle: Any
    headers: list[tuple[bytes, bytes]]
    on_refused: Callable[[int], None]
    _head: int | None = 0
    """Bytes of the current request head fed to the parser; None in a body."""
    _fields = 0
    _ended = 0
    """Requests whose message has ended on this connection."""
    _refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        while self._head is not None and len(data) > HEAD_BYTES - self._head:
            room = HEAD_BYTES - self._head
            ended = self._ended
            super().data_received(data[:room])  # type: ignore[misc]
            if self._refused or self.transport.is_closing():
                return
            if self._head is not None and self._ended == ended:  # still the same head
                self._refuse(_head_error(f"are over {HEAD_BYTES} bytes"))
                return
            data = data[room:]
        if self._refused:
            return
        head, ended = self._head, self._ended
        super().data_received(data)  # type: ignore[misc]
        if head is not None and self._head is not None and self._ended == ended:
            self._head += len(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > HEAD_FIELDS:
            self._refuse(_head_error(f"have more than {HEAD_FIELDS} headers"))
        elif not self._refused:
            super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        upgrade = self.parser.should_upgrade()  # (Connection: upgrade, or CONNECT)
        error = _unframed(self.headers) or (_upgrading_body(self.headers) if upgrade else None)
        if error is not None:
            self._refuse(error)
            return
        self._head = None
        super().on_headers_complete()  # type: ignore[misc]
        if upgrade:  # what came after its head in the same read is lost: close after it
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)  # type: ignore[misc]

    def on_message_complete(self) -> None:
        if not self._refused:
            self._head, self._fields = 0, 0
            self._ended += 1
            super().on_message_complete()  # type: ignore[misc]

    def _refuse(self, error: ApiError) -> None:
        """Answer `error` and close the connection (the parser may still be feeding: every
        callback after this does nothing)."""
        if self._refused:
            return
        self._refused = True
        _close_with(self.transport, error, self.on_refused)
