"""`moat sim-server` under careless and hostile clients: a clear 4xx, and it keeps serving.

Broken HTTP (a bad request line or `Content-Length`) is refused by uvicorn's parser with a
plain 400; a well-formed request with a bad body gets a 400 in OpenAI's error shape that
names the problem.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

import anyio
import pytest

from engine.models.server import SimReply, SimService
from engine.serve.sim_app import SimServer

pytestmark = pytest.mark.anyio

GOOD = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}


HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n"


def _post(body: object, headers: str = "") -> bytes:
    data = json.dumps(body).encode()
    return f"{HEAD}Content-Length: {len(data)}\r\n{headers}\r\n".encode() + data


def _chunked(body: bytes, size: int) -> bytes:
    """A request whose body is sent in chunks of `size` bytes (no Content-Length)."""
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts)
    return f"{HEAD}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"


async def _raw_exchange(server: SimServer, raw: bytes) -> tuple[int, bytes, bytes]:
    """Send raw bytes on a fresh connection; the status, head and body of the answer."""
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        await stream.send(raw)
        data = b""
        with anyio.fail_after(10):
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


async def _exchange(server: SimServer, raw: bytes) -> tuple[int, dict[str, object]]:
    """Send raw bytes on a fresh connection; the status and JSON body of the answer."""
    status, _, body = await _raw_exchange(server, raw)
    return status, json.loads(body)


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    async with anyio.create_task_group() as tg:
        running: SimServer = await tg.start(SimServer(time_scale=0).serve, "127.0.0.1", 0)
        yield running
        tg.cancel_scope.cancel()


BROKEN_HTTP = {
    "content-length-text": f"{HEAD}Content-Length: abc\r\n\r\n".encode(),
    "content-length-negative": f"{HEAD}Content-Length: -5\r\n\r\n".encode(),
    "request-line": b"HELLO\r\n\r\n",
    "chunk-size-text": f"{HEAD}Transfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n".encode(),
}


@pytest.mark.parametrize("case", sorted(BROKEN_HTTP))
async def test_broken_http_is_a_400_and_the_server_stays_up(server: SimServer, case: str) -> None:
    status, _, _ = await _raw_exchange(server, BROKEN_HTTP[case])
    assert status == 400
    status, body = await _exchange(server, _post(GOOD))
    assert status == 200 and body["object"] == "chat.completion"


HOSTILE = {
    "body-array": (_post([]), "JSON object"),
    "body-not-json": (
        f"{HEAD}Content-Length: 2\r\n\r\n".encode() + b"\xff\xfe",
        "bad chat completion request",
    ),
    "no-model": (_post({"messages": GOOD["messages"]}), "`model`"),
    "messages-text": (_post({**GOOD, "messages": "hi"}), "`messages`"),
    "messages-of-text": (_post({**GOOD, "messages": ["hi"]}), "`messages`"),
    "messages-empty": (_post({**GOOD, "messages": []}), "`messages`"),
    "seed-text": (_post({**GOOD, "seed": "abc"}), "`seed`"),
    "max-tokens-text": (_post({**GOOD, "max_tokens": "lots"}), "`max_tokens`"),
    "max-tokens-negative": (_post({**GOOD, "max_tokens": -3}), "`max_tokens`"),
    "temperature-text": (_post({**GOOD, "temperature": "hot"}), "`temperature`"),
    "response-format-text": (_post({**GOOD, "response_format": "json"}), "`response_format`"),
    "schema-text": (
        _post({**GOOD, "response_format": {"type": "json_schema", "json_schema": {"schema": 1}}}),
        "json_schema.schema",
    ),
    "call-header-garbled": (_post(GOOD, "X-Moat-Call: %7Bnot\r\n"), "X-Moat-Call"),
    "retry-after-text": (
        _post(GOOD, "X-Sim-Fault: rate_limit\r\nX-Sim-Retry-After: soon\r\n"),
        "X-Sim-Retry-After",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_malformed_request_is_a_400_naming_the_problem_and_the_server_stays_up(
    server: SimServer, case: str
) -> None:
    raw, named = HOSTILE[case]
    status, body = await _exchange(server, raw)
    assert status == 400
    error = body["error"]
    assert isinstance(error, dict) and named in str(error["message"])
    status, body = await _exchange(server, _post(GOOD))
    assert status == 200 and body["object"] == "chat.completion"


class _FailingOnce(SimService):
    """A service whose first answer hits a bug."""

    failed = False

    async def route(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> SimReply:
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom")
        return await super().route(method, path, headers, body)


async def test_a_bug_answering_one_request_is_a_500_not_a_dead_server() -> None:
    failing = SimServer(service=_FailingOnce(time_scale=0))
    async with anyio.create_task_group() as tg:
        server: SimServer = await tg.start(failing.serve, "127.0.0.1", 0)
        status, body = await _exchange(server, _post(GOOD))
        assert status == 500 and "RuntimeError: boom" in str(body["error"])
        status, _ = await _exchange(server, _post(GOOD))
        assert status == 200
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("size", [1, 7, 4096])
async def test_a_chunked_body_is_read_whole_and_answered_as_the_same_body_sent_at_once(
    server: SimServer, size: int
) -> None:
    body = {**GOOD, "seed": 11, "messages": [{"role": "user", "content": "chunked " * 40}]}
    status, chunked = await _exchange(server, _chunked(json.dumps(body).encode(), size))
    assert status == 200 and chunked["object"] == "chat.completion"
    status, whole = await _exchange(server, _post(body))
    assert status == 200
    assert chunked["choices"] == whole["choices"] and chunked["usage"] == whole["usage"]


async def test_every_answer_is_labelled_simulated(server: SimServer) -> None:
    for raw in (
        _post(GOOD),
        _post([]),
        b"GET /nowhere HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n",
    ):
        _, head, _ = await _raw_exchange(server, raw)
        assert b"x-moat-simulated: true" in head.lower()
        assert b"content-type: application/json" in head.lower()


async def test_unknown_routes_and_methods_answer_in_openai_s_shape(server: SimServer) -> None:
    cases = {
        b"GET /v1/nowhere HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n": (
            404,
            "no route GET",
        ),
        b"GET /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n": (
            405,
            "use POST",
        ),
        _post(GOOD).replace(b"/v1/chat/completions", b"/v1/models"): (405, "use GET"),
    }
    for raw, (expected, words) in cases.items():
        status, body = await _exchange(server, raw)
        error = body["error"]
        assert status == expected and isinstance(error, dict) and words in str(error["message"])


async def test_a_fixed_latency_replaces_the_simulated_one() -> None:
    async with anyio.create_task_group() as tg:
        # at this scale the small profile alone would take 80 ms x 20 = 1.6 s at least
        fixed = SimServer(time_scale=20, latency_s=0.3)
        server: SimServer = await tg.start(fixed.serve, "127.0.0.1", 0)
        start = anyio.current_time()
        status, body = await _exchange(server, _post(GOOD))
        took = anyio.current_time() - start
        tg.cancel_scope.cancel()
    assert status == 200 and body["object"] == "chat.completion"
    assert 0.3 <= took < 1.5


@pytest.mark.parametrize(
    "limits",
    [
        {"max_completion_tokens": None, "max_tokens": 5},
        {"max_tokens": None, "max_completion_tokens": 5},
        {"max_completion_tokens": 50, "max_tokens": 5},
        {"max_tokens": 50, "max_completion_tokens": 5},
        {"max_tokens": 5},
    ],
)
async def test_an_answer_never_bills_past_an_output_limit_it_was_sent(
    limits: Mapping[str, int | None],
) -> None:
    """A null limit is no limit (as OpenAI reads it), so the other one holds; two limits,
    the stricter one: the usage never passes a limit the client sent."""
    prompt = "Write a long essay on the history of Rome and of its emperors, " * 3
    body = {"model": "sim-small", "messages": [{"role": "user", "content": prompt}], **limits}
    reply = await SimService(time_scale=0).answer(
        "POST", "/v1/chat/completions", {}, json.dumps(body).encode()
    )
    answer = json.loads(reply.body)
    assert reply.status == 200, answer
    assert answer["usage"]["completion_tokens"] == 5
    assert answer["choices"][0]["finish_reason"] == "length"
