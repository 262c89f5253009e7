"""`moat sim-server`: the `sim` models behind a real OpenAI-compatible HTTP endpoint.

Any OpenAI client can point at it (`base_url=http://127.0.0.1:PORT/v1`) and talk to a
simulated model offline: `POST /v1/chat/completions` and `GET /v1/models`. It is a small
HTTP/1.1 server on anyio sockets (keep-alive, `Content-Length` bodies, JSON), with no
dependency beyond moat's own.

Models: `sim-small`, `sim-medium`, `sim-large` (or just `small`, ...); any other name maps
to a profile by its look (`*mini*`, `*small*`, `*nano*`, `*haiku*`, `*flash*`, `*8b*` ->
small; `*large*`, `gpt-4o`, `gpt-4.1`, `gpt-5`, `*opus*`, `*70b*`, `*405b*` -> large;
anything else -> medium). `response_format` `json_object` and `json_schema` are honoured;
`seed` seeds the answer; an extra body field `_labels` carries hidden labels and the
header `X-Moat-Task` (sent by moat's `openai` provider; or `X-Sim-Task`, or a body field
`_task`) the task. moat's `openai` provider also sends `X-Moat-Call` (see
`engine.models._sim_call`): the request, node, cycle, attempt, seed and labels of the call
and where the request's own text is in the messages, so the answer is byte-identical to
the embedded provider's and a graph decides the same on either path. Without it, the
request's text is the last user message.

Every answer is labelled simulated: `"system_fingerprint": "moat-sim"` and the header
`X-Moat-Simulated: true`.

Fault injection for tests, by request header `X-Sim-Fault`:

- `rate_limit`: 429 with `Retry-After` (seconds, default 1; override with the header
  `X-Sim-Retry-After`, also sent as `retry-after-ms`);
- `error`: 500;
- `slow`: the answer takes `slow_s` seconds (default 30): long enough to time out or
  cancel;
- `malformed`: 200 with a body that is not JSON;
- `FAULT-once:KEY` (e.g. `error-once:a1`): the fault happens only the first time KEY is
  seen by this server, so a retry succeeds.

The server notices a client that hangs up while its answer is still being prepared and
counts it in `SimServer.dropped_connections` (and sets `SimServer.connection_dropped`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from engine.errors import SpecError
from engine.graph.spec import ModelSpec
from engine.models._sim_call import CALL_HEADER, CallContext, parse_call_header, request_text
from engine.models.base import ProviderRequest, ProviderResponse
from engine.models.sim import SIM_PROFILES, SimProvider
from engine.plugin.context import RequestInfo

__all__ = ["SimServer", "port_number", "profile_for_model", "run_server", "serve"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
_SMALL_MARKS = ("mini", "small", "nano", "haiku", "flash", "8b")
_LARGE_MARKS = ("large", "gpt-4o", "gpt-4.1", "gpt-5", "opus", "70b", "405b")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


def profile_for_model(model: str) -> str:
    """The sim profile (`small`, `medium`, `large`) that serves a requested model name."""
    name = model.lower().removeprefix("sim-")
    if name in SIM_PROFILES:
        return name
    if any(mark in name for mark in _SMALL_MARKS):
        return "small"
    if any(mark in name for mark in _LARGE_MARKS):
        return "large"
    return "medium"


class _BadRequest(Exception):
    """The bytes on the wire are not an HTTP request this server understands."""


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    headers: Mapping[str, str]


class _Connection:
    """Reads HTTP/1.1 requests off one socket, keeping bytes that arrive early."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive()
        except _GONE:
            return False
        self.buffer += data
        return True

    async def read_request(self) -> _Request | None:
        """The next request, or None when the client closed the connection cleanly."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > _MAX_HEAD:
                raise _BadRequest("request head too large")
            if not await self._fill():
                if self.buffer:
                    raise _BadRequest("connection closed mid-request")
                return None
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, path, _version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadRequest(f"bad request line {lines[0]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest("chunked request bodies are not supported; send Content-Length")
        length = _content_length(headers.get("content-length", ""))
        if length > _MAX_BODY:
            raise _BadRequest("request body too large")
        self.buffer = bytearray(rest)
        while len(self.buffer) < length:
            if not await self._fill():
                raise _BadRequest("connection closed mid-body")
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return _Request(method.upper(), path, headers, body)

    async def send(self, response: _Response, *, keep_alive: bool) -> None:
        """Write one response."""
        reason = _REASONS.get(response.status, "Unknown")
        head = [f"HTTP/1.1 {response.status} {reason}"]
        headers = {
            "content-type": "application/json",
            "content-length": str(len(response.body)),
            "connection": "keep-alive" if keep_alive else "close",
            "x-moat-simulated": "true",
            **response.headers,
        }
        head += [f"{k}: {v}" for k, v in headers.items()]
        await self.stream.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)


def _json_response(status: int, value: Any, headers: Mapping[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(value).encode(), headers or {})


def _error(
    status: int, message: str, kind: str, headers: Mapping[str, str] | None = None
) -> _Response:
    return _json_response(
        status, {"error": {"message": message, "type": kind, "code": None}}, headers
    )


class SimServer:
    """An OpenAI-compatible HTTP server answering with the `sim` provider.

    Args:
        time_scale: multiplies the simulated latencies (0 answers at once).
        slow_s: how long a `slow` fault makes the answer take, in seconds.

    Attributes:
        host: the bound address, once serving.
        port: the bound port, once serving (useful with port 0).
        requests: HTTP requests received.
        dropped_connections: clients that hung up while their answer was being prepared.
    """

    def __init__(self, *, time_scale: float = 1.0, slow_s: float = 30.0) -> None:
        self.time_scale = time_scale
        self.slow_s = slow_s
        self.host = ""
        self.port = 0
        self.requests = 0
        self.dropped_connections = 0
        self._seen_keys: set[str] = set()
        self._providers: dict[tuple[str, int], SimProvider] = {}
        self._events: dict[str, anyio.Event] = {}

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server (`http://HOST:PORT/v1`)."""
        return f"http://{self.host}:{self.port}/v1"

    def _event(self, name: str) -> anyio.Event:
        if name not in self._events:
            self._events[name] = anyio.Event()
        return self._events[name]

    @property
    def connection_dropped(self) -> anyio.Event:
        """Set once a client hangs up mid-answer."""
        return self._event("dropped")

    @property
    def request_started(self) -> anyio.Event:
        """Set once the first chat completion starts being prepared."""
        return self._event("started")

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[SimServer] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `host:port` until cancelled; reports `self` through `task_status`.

        Raises:
            SpecError: the address cannot be listened on (see `listen`).
        """
        listener = await self.listen(host, port)
        task_status.started(self)
        await self.serve_on(listener)

    async def listen(self, host: str, port: int) -> anyio.abc.Listener[anyio.abc.SocketStream]:
        """Bind `host:port` (port 0: any free port) and note the bound address.

        Raises:
            SpecError: the port is in use, needs privileges, or the host is not local;
                the message says how to pick another.
        """
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as exc:
            raise SpecError(_listen_failure(host, port, exc)) from None
        self.host = host
        self.port = int(listener.extra(SocketAttribute.local_port))
        return listener

    async def serve_on(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Answer the connections of a listener from `listen` until cancelled; closes it."""
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            conn = _Connection(stream)
            try:
                while True:
                    request = await conn.read_request()
                    if request is None:
                        return
                    self.requests += 1
                    response = await self._watched(conn, functools.partial(self._answer, request))
                    if response is None:
                        return
                    await conn.send(response, keep_alive=request.keep_alive)
                    if not request.keep_alive:
                        return
            except _BadRequest as exc:
                with anyio.move_on_after(1):
                    await conn.send(
                        _error(400, str(exc), "invalid_request_error"), keep_alive=False
                    )
            except (*_GONE, OSError):
                return

    async def _watched(
        self, conn: _Connection, work: Callable[[], Awaitable[_Response]]
    ) -> _Response | None:
        """Run `work` while watching the socket; None if the client hung up meanwhile."""
        result: _Response | None = None
        dropped = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal dropped
                if await conn._fill():
                    return  # pipelined bytes are kept for the next request
                dropped = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            result = await work()
            tg.cancel_scope.cancel()
        if dropped:
            self.dropped_connections += 1
            self.connection_dropped.set()
            return None
        return result

    async def _answer(self, request: _Request) -> _Response:
        """The response to one request; a failure answers 500, it never stops the server."""
        try:
            return await self._route(request)
        except Exception as exc:  # one bad request must not take every client down
            message = f"sim-server failed to answer: {type(exc).__name__}: {exc}"
            return _error(500, message, "server_error")

    async def _route(self, request: _Request) -> _Response:
        path = request.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            if request.method != "GET":
                return _error(405, "use GET", "invalid_request_error")
            data = [
                {"id": f"sim-{name}", "object": "model", "created": 0, "owned_by": "moat-sim"}
                for name in SIM_PROFILES
            ]
            return _json_response(200, {"object": "list", "data": data})
        if path in ("/v1/chat/completions", "/chat/completions"):
            if request.method != "POST":
                return _error(405, "use POST", "invalid_request_error")
            return await self._chat(request)
        return _error(404, f"no route {request.method} {path}", "invalid_request_error")

    def _fault(self, headers: Mapping[str, str]) -> str | None:
        value = headers.get("x-sim-fault", "").strip().lower()
        if not value:
            return None
        kind, once, key = value.partition("-once:")
        if once:
            if key in self._seen_keys:
                return None
            self._seen_keys.add(key)
        return kind

    async def _chat(self, request: _Request) -> _Response:
        self.request_started.set()
        fault = self._fault(request.headers)
        if fault == "rate_limit":
            try:
                after = max(0.0, float(request.headers.get("x-sim-retry-after", "1")))
            except ValueError:
                return _error(400, "X-Sim-Retry-After: give seconds", "invalid_request_error")
            return _error(
                429,
                "simulated rate limit",
                "rate_limit_error",
                {"retry-after": f"{after:g}", "retry-after-ms": f"{after * 1000:g}"},
            )
        if fault == "error":
            return _error(500, "simulated server error", "server_error")
        if fault == "slow":
            await anyio.sleep(self.slow_s)
        try:
            body = json.loads(request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            call = self._call(body, request.headers)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            return _error(400, f"bad chat completion request: {reason}", "invalid_request_error")
        seed: int = body["seed"] if _is_int(body.get("seed")) else 0
        answer = await self._provider(call.model, seed).complete(call)
        if fault == "malformed":
            return _Response(200, b'{"id": "chatcmpl-sim", "choices": [{"message": ', {})
        return _json_response(200, _completion_body(call, answer))

    def _provider(self, model: str, seed: int) -> SimProvider:
        profile = profile_for_model(model)
        key = (profile, seed)
        if key not in self._providers:
            spec = ModelSpec(provider="sim", profile=profile, seed=seed, time_scale=self.time_scale)
            self._providers[key] = SimProvider(spec)
        return self._providers[key]

    def _call(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> ProviderRequest:
        """The provider call a chat completion body asks for.

        Raises:
            ValueError: a field is missing or of the wrong shape; the message names it.
        """
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("`model` must name a model, e.g. sim-small")
        messages = _messages(body.get("messages"))
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        schema, json_mode = _response_format(body.get("response_format"))
        context = _context(body, headers, digest)
        info = RequestInfo(
            id=context.request_id,
            run_id="sim-server",
            seq=0,
            tenant="sim-server",
            # the provider finds this text in the messages again: the same request text
            input={"prompt": request_text(messages, context.span)},
            labels=context.labels,
            seed=context.seed,
        )
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        temperature = body.get("temperature")
        if max_tokens is not None and not (_is_int(max_tokens) and max_tokens > 0):
            raise ValueError("`max_tokens` must be a positive integer")
        if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
            raise ValueError("`temperature` must be a number from 0 to 2")
        return ProviderRequest(
            model=model,
            messages=messages,
            request=info,
            node_id=context.node_id,
            cycle=context.cycle,
            attempt=context.attempt,
            schema=schema,
            json_mode=json_mode,
            task=headers.get("x-moat-task") or headers.get("x-sim-task") or body.get("_task"),
            max_tokens=max_tokens,
            temperature=temperature,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _messages(raw: object) -> list[dict[str, str]]:
    """The chat as `{role, content}` texts (content parts: their text)."""
    if not isinstance(raw, list) or not raw or not all(isinstance(m, Mapping) for m in raw):
        raise ValueError("`messages` must be a non-empty list of {role, content} objects")
    return [
        {"role": str(m.get("role", "user")), "content": _content_text(m.get("content"))}
        for m in raw
    ]


def _response_format(raw: object) -> tuple[Mapping[str, Any] | None, bool]:
    """(the JSON Schema asked for, whether any JSON object is asked for)."""
    if raw is None:
        return None, False
    if not isinstance(raw, Mapping):
        raise ValueError('`response_format` must be an object, e.g. {"type": "json_object"}')
    if raw.get("type") != "json_schema":
        return None, raw.get("type") == "json_object"
    spec = raw.get("json_schema") or {}
    schema = (spec.get("schema") if isinstance(spec, Mapping) else spec) or {"type": "object"}
    if not isinstance(schema, Mapping):
        raise ValueError("`response_format.json_schema.schema` must be a JSON Schema object")
    return schema, False


def _context(body: Mapping[str, Any], headers: Mapping[str, str], digest: str) -> CallContext:
    """The call's context: sent by moat's `openai` provider, else guessed from the body."""
    sent = headers.get(CALL_HEADER.lower())
    if sent:
        return parse_call_header(sent)
    labels, seed = body.get("_labels"), body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ValueError("`seed` must be an integer")
    return CallContext(
        request_id=str(body.get("user") or f"http-{digest}"),
        seed=seed or 0,
        node_id="http",
        cycle=0,
        attempt=0,
        labels=labels if isinstance(labels, Mapping) else {},
    )


def _content_length(value: str) -> int:
    """The `Content-Length` header as a byte count (none: 0).

    Raises:
        _BadRequest: not a non-negative integer.
    """
    value = value.strip()
    if not value:
        return 0
    if not value.isdigit():
        raise _BadRequest(f"bad Content-Length {value!r}")
    return int(value)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return "" if content is None else str(content)


def _completion_body(call: ProviderRequest, answer: ProviderResponse) -> dict[str, Any]:
    digest = hashlib.sha256(answer.text.encode()).hexdigest()[:24]
    truncated = call.max_tokens is not None and answer.output_tokens >= call.max_tokens
    return {
        "id": f"chatcmpl-sim-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "system_fingerprint": "moat-sim",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "length" if truncated else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
        },
    }


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    time_scale: float = 1.0,
    slow_s: float = 30.0,
    task_status: anyio.abc.TaskStatus[SimServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the sim models on `host:port` until cancelled.

    Use it from a task group: `server = await tg.start(serve, "127.0.0.1", 0)` returns the
    running `SimServer` (its `port`, `base_url` and counters).
    """
    server = SimServer(time_scale=time_scale, slow_s=slow_s)
    await server.serve(host, port, task_status=task_status)


def port_number(text: str) -> int:
    """`--port` as a TCP port: 0 (any free port) to 65535.

    Raises:
        argparse.ArgumentTypeError: not an integer in range; the message says what is.
    """
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port: use 1-65535, or 0 for any free port"
        )
    return port


def _listen_failure(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is in use (another sim-server?). Stop what "
            "holds it, or pick another port: --port N, or --port 0 for any free port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need privileges). "
            "Use a port above 1023, or --port 0 for any free port"
        )
    reason = exc.strerror or str(exc)
    return f"cannot listen on {where}: {reason}. Check --host (a local address such as 127.0.0.1)"


def run_server(port: int, host: str = "127.0.0.1") -> None:
    """Blocking entry point of `moat sim-server`: serve until Ctrl-C.

    Prints the address it serves at (with the port chosen when `port` is 0) on stdout,
    so scripts can read it.

    Raises:
        SpecError: the address cannot be listened on (the port is in use, ...).
    """

    async def _main() -> None:
        server = SimServer()
        listener = await server.listen(host, port)
        print(server.base_url, flush=True)
        print(
            f"moat sim-server: SIMULATED OpenAI-compatible models at {server.base_url} "
            f"({', '.join(f'sim-{p}' for p in SIM_PROFILES)}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        await server.serve_on(listener)

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_main)
