"""An answer body is read within the size limit on both of the `openai` provider's routes.

The direct route (plain HTTP on asyncio) and the official client's route (trio here; TLS
endpoints and proxies everywhere) must both refuse a body past `MAX_RESPONSE_BYTES`, once
decoded, whatever its status, instead of reading it into memory; and both must still read
an ordinary compressed answer.
"""

from __future__ import annotations

import gzip
import json
import zlib

import anyio
import anyio.abc
import pytest

from engine.models import _answer_limit, _direct_http
from engine.models.base import ResponseLost, Unavailable
from engine.plugin.context import Completion
from tests.engine.models.test_openai_hostile import _call, _reserved
from tests.support.hostile_openai import Reply, completion, http

BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
LIMIT = 4096


@pytest.fixture(autouse=True)
def _small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_direct_http, "MAX_RESPONSE_BYTES", LIMIT)
    monkeypatch.setattr(_answer_limit, "MAX_RESPONSE_BYTES", LIMIT)


async def _endless(stream: anyio.abc.SocketStream) -> None:
    """A 200 whose chunked body never ends."""
    await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    await stream.send(b"transfer-encoding: chunked\r\n\r\n")
    while True:
        await stream.send(b"400\r\n" + b" " * 0x400 + b"\r\n")


def _encoded(coding: str, body: bytes, status: int = 200) -> bytes:
    if coding == "gzip":
        data = gzip.compress(body)
    elif coding == "deflate":
        data = zlib.compress(body)
    else:  # raw deflate, without the zlib header, as some servers send it
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data, coding = packer.compress(body) + packer.flush(), "deflate"
    return http(status, data, {"content-encoding": coding})


BOMB = b" " * (50 * LIMIT) + b"{}"
"""Fifty times the limit of spaces: a few hundred bytes once compressed."""


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        http(200, b" " * (2 * LIMIT) + b"{}"),
        _endless,
        _encoded("gzip", BOMB),
        _encoded("deflate", BOMB),
        http(500, b"<html>" + b"x" * (2 * LIMIT) + b"</html>", content_type="text/html"),
    ],
    ids=["declared-too-long", "endless", "gzip-bomb", "deflate-bomb", "huge-error-page"],
)
async def test_a_body_past_the_limit_is_lost_on_either_route(reply: Reply) -> None:
    with anyio.fail_after(5):
        result, calls, base_url = await _call(reply)
    assert isinstance(result, ResponseLost)
    assert (
        f"model 'gpt-4o-mini' at {base_url}: the answer's body passed 0 MiB and was not read"
        in (str(result))
    )
    assert [c.status for c in calls] == ["error"]
    assert calls[0].cost_usd == pytest.approx(_reserved(calls))  # it may have been billed


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_a_compressed_answer_within_the_limit_is_read(coding: str) -> None:
    result, calls, _ = await _call(_encoded(coding, json.dumps(completion()).encode()))
    assert isinstance(result, Completion) and result.text == "hi"
    assert [c.status for c in calls] == ["ok"]


@BACKENDS
@pytest.mark.anyio
async def test_a_compressed_error_page_is_still_its_status() -> None:
    page = json.dumps({"error": {"message": "overloaded"}}).encode()
    result, calls, _ = await _call(_encoded("gzip", page, status=503))
    assert type(result) is Unavailable  # (a TransientError retried after its Retry-After)
    assert "server error: Error code: 503 - overloaded" in str(result)
    assert [(c.status, c.cost_usd) for c in calls] == [("error", 0.0)]


@BACKENDS
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "what"),
    [
        ({"content-encoding": "br"}, "the answer came encoded as 'br', which was not asked for"),
        ({"content-encoding": "gzip"}, "the answer's gzip body does not decode"),
    ],
)
async def test_a_body_in_a_coding_not_asked_for_or_broken_is_lost(
    headers: dict[str, str], what: str
) -> None:
    result, calls, base_url = await _call(http(200, b"\x1f\x8bnot really", headers))
    assert isinstance(result, ResponseLost)
    assert f"model 'gpt-4o-mini' at {base_url}: {what}" in str(result)
    assert [c.status for c in calls] == ["error"]
