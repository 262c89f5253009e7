"""The HTTP/1.1 connection of moat's servers: uvicorn's protocol, with bounded request
heads and a drain that does not wait for bodies still arriving.

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
"""

from __future__ import annotations

import json
from typing import Any

from engine.serve.wire import ApiError, error_body

__all__ = ["HEAD_BYTES", "HEAD_FIELDS", "protocol_class"]

HEAD_BYTES = 64 * 1024
"""Most bytes of a request line and its headers (h11's default is 16 KiB; nginx's 32)."""
HEAD_FIELDS = 100
"""Most headers of a request (gunicorn's `limit_request_fields`)."""


def protocol_class(protocol: type[Any]) -> type[Any]:
    """uvicorn's `protocol` class with a drain that does not wait for bodies and, for the
    httptools one, bounded request heads (h11 bounds heads itself)."""
    mixins: tuple[type[Any], ...] = (_Draining,)
    if hasattr(protocol, "on_headers_complete"):  # httptools: llhttp's callbacks
        mixins += (_BoundedHead,)
    return type("Moat" + protocol.__name__, (*mixins, protocol), {})


def _error_response(status: str, error: ApiError) -> bytes:
    """A whole HTTP/1.1 response carrying `error` in OpenAI's shape, closing the
    connection."""
    body = json.dumps(error_body(error)).encode()
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n" % status.encode() + (
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )


class _Draining:
    """Shutdown without waiting for requests whose body is still arriving."""

    transport: Any
    cycle: Any

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started:
            # the app sees the client leave (`http.disconnect`) and stops reading
            error = ApiError(
                503,
                "the server is shutting down and did not take this request, whose body was "
                "still arriving; send it again",
                type="server_error",
                code="shutting_down",
            )
            self.transport.write(_error_response("503 Service Unavailable", error))
            self.transport.close()
            return
        super().shutdown()  # type: ignore[misc]


class _BoundedHead:
    """The head limits, mixed in before uvicorn's httptools protocol (whose methods
    `super()` reaches)."""

    transport: Any
    _head: int | None = 0
    """Bytes of the current request head fed to the parser; None in a body."""
    _fields = 0
    _ended = 0
    """Requests whose message has ended on this connection."""
    _refused = False

    def data_received(self, data: bytes) -> None:
        while self._head is not None and len(data) > HEAD_BYTES - self._head:
            room = HEAD_BYTES - self._head
            ended = self._ended
            super().data_received(data[:room])  # type: ignore[misc]
            if self._refused or self.transport.is_closing():
                return
            if self._head is not None and self._ended == ended:  # still the same head
                self._refuse(f"are over {HEAD_BYTES} bytes")
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
            self._refuse(f"have more than {HEAD_FIELDS} headers")
        elif not self._refused:
            super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        if not self._refused:
            self._head = None
            super().on_headers_complete()  # type: ignore[misc]

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)  # type: ignore[misc]

    def on_message_complete(self) -> None:
        if not self._refused:
            self._head, self._fields = 0, 0
            self._ended += 1
            super().on_message_complete()  # type: ignore[misc]

    def _refuse(self, what: str) -> None:
        """Answer 431 and close the connection (the parser may still be feeding: every
        callback after this does nothing)."""
        self._refused = True
        error = ApiError(
            431,
            f"the request line and headers {what}, the most this server reads; "
            "send fewer or shorter headers",
            code="request_header_too_large",
        )
        self.transport.write(_error_response("431 Request Header Fields Too Large", error))
        self.transport.close()
