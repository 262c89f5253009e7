"""`moat sim-server` under careless and hostile clients: a clear 4xx, and it keeps serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest

from engine.models.server import SimServer, _Request, _Response

pytestmark = pytest.mark.anyio

GOOD = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}


def _post(body: object, headers: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {len(data)}\r\n{headers}\r\n"
    return head.encode() + data


async def _exchange(server: SimServer, raw: bytes) -> tuple[int, dict[str, object]]:
    """Send raw bytes on a fresh connection; the status and JSON body of the answer."""
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        await stream.send(raw)
        data = b""
        with anyio.fail_after(10):
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    async with anyio.create_task_group() as tg:
        running: SimServer = await tg.start(SimServer(time_scale=0).serve, "127.0.0.1", 0)
        yield running
        tg.cancel_scope.cancel()


HOSTILE = {
    "content-length-text": (
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "Content-Length",
    ),
    "content-length-negative": (
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        "Content-Length",
    ),
    "body-array": (_post([]), "JSON object"),
    "body-not-json": (
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe",
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
    "request-line": (b"HELLO\r\n\r\n", "bad request line"),
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


class _FailingOnce(SimServer):
    """A server whose first answer hits a bug."""

    failed = False

    async def _route(self, request: _Request) -> _Response:
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom")
        return await super()._route(request)


async def test_a_bug_answering_one_request_is_a_500_not_a_dead_server() -> None:
    async with anyio.create_task_group() as tg:
        server: SimServer = await tg.start(_FailingOnce(time_scale=0).serve, "127.0.0.1", 0)
        status, body = await _exchange(server, _post(GOOD))
        assert status == 500 and "RuntimeError: boom" in str(body["error"])
        status, _ = await _exchange(server, _post(GOOD))
        assert status == 200
        tg.cancel_scope.cancel()
