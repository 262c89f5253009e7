"""`moat serve` at its edges: requests still in flight when a shutdown's grace period runs
out are answered and recorded by moat itself, a readiness probe never waits on another
process's write lock, and the optional fields OpenAI's clients send as null mean unset."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import anyio
import pytest

from engine.serve import MoatServer
from tests.engine.serve.test_serve import echo_graph, rows
from tests.support.loop_probe import write_lock_held
from tests.support.serve_client import http
from tests.support.serve_process import serving

pytestmark = pytest.mark.anyio


async def test_requests_cut_off_at_the_end_of_the_grace_period_get_503_with_their_id(
    tmp_path: Path,
) -> None:
    db = tmp_path / "moat.db"
    graph = echo_graph(tmp_path, scale=50)  # the model takes many seconds
    body = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}
    answers = []
    async with MoatServer([graph], db=db) as server:
        async with http(server) as web:

            async def ask(stream: bool) -> None:
                answers.append(
                    await web.post(
                        "http://moat.test/v1/chat/completions", json={**body, "stream": stream}
                    )
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, False)
                tg.start_soon(ask, True)
                await anyio.sleep(0.3)
                server.cut_off("its grace period of 1 s for shutting down ran out")
        await server.graphs["echo"].pipe.settle()
        server.graphs["echo"].pipe.flush()
    assert [a.status_code for a in answers] == [503, 503]
    for answer in answers:
        error = answer.json()["error"]
        assert error["code"] == "shutting_down" and error["type"] == "server_error"
        request_id = answer.headers["x-moat-request-id"]
        assert f"before request {request_id} was answered" in error["message"]
    recorded = rows(db, "SELECT id, status, error FROM requests ORDER BY id")
    assert sorted(r["id"] for r in recorded) == sorted(
        a.headers["x-moat-request-id"] for a in answers
    )
    for row in recorded:
        assert row["status"] == "cancelled"
        assert row["error"] == (
            "the server stopped before it was answered (its grace period of 1 s for shutting "
            "down ran out)"
        )


async def test_readiness_answers_at_once_while_another_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    db = tmp_path / "moat.db"
    async with MoatServer([echo_graph(tmp_path)], db=db) as server, http(server) as web:
        assert (await web.get("http://moat.test/readyz")).status_code == 200
        with write_lock_held(db, 3.0):
            started = time.monotonic()
            busy = await web.get("http://moat.test/readyz")
            again = await web.get("http://moat.test/readyz")  # the first probe's write still waits
            waited = time.monotonic() - started
        await anyio.sleep(0.2)
        ready = await web.get("http://moat.test/readyz")
    assert busy.status_code == again.status_code == 503
    assert busy.json()["status"] == "store busy" and "write lock" in busy.json()["error"]
    assert waited < 2.5
    assert ready.status_code == 200


async def test_null_stream_means_unset_and_an_empty_user_is_refused(tmp_path: Path) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        base = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        plain = await web.post(
            "http://moat.test/v1/chat/completions", json={**base, "stream": None}
        )
        empty = await web.post("http://moat.test/v1/chat/completions", json={**base, "user": ""})
    assert plain.status_code == 200 and plain.json()["object"] == "chat.completion"
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "user"


async def test_an_invalid_message_is_named_by_its_index_in_the_request(tmp_path: Path) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        empty = await web.post(
            "http://moat.test/v1/chat/completions",
            json={
                "model": "echo",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": ""},
                ],
            },
        )
    assert empty.status_code == 400
    error = empty.json()["error"]
    assert error["param"] == "messages[1].content" and error["code"] == "invalid_input"


def test_moat_serve_answers_what_its_grace_period_cut_off_and_logs_no_traceback(
    tmp_path: Path,
) -> None:
    graph = echo_graph(tmp_path, scale=50)
    db = tmp_path / "moat.db"
    body = json.dumps(
        {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}
    ).encode()
    answers: list[tuple[int, dict[str, str], bytes]] = []

    def ask(base_url: str) -> None:
        request = urllib.request.Request(
            base_url + "/chat/completions", body, {"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.append((response.status, dict(response.headers), response.read()))
        except urllib.error.HTTPError as exc:
            answers.append((exc.code, dict(exc.headers), exc.read()))

    with serving(str(graph), "--db", str(db), "--grace", "1") as (proc, base_url):
        asking = threading.Thread(target=ask, args=(base_url,))
        asking.start()
        time.sleep(0.5)  # the request is in flight (its model call takes many seconds)
        proc.send_signal(signal.SIGTERM)
        asking.join(timeout=30)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
    ((status, headers, text),) = answers
    assert status == 503 and json.loads(text)["error"]["code"] == "shutting_down"
    assert headers["x-moat-request-id"].endswith("-000000")
    assert "Traceback" not in log
    (row,) = rows(db, "SELECT status, error FROM requests")
    assert row["status"] == "cancelled" and "grace period of 1 s" in row["error"]


def test_metrics_count_the_http_layer_s_refusals_and_the_chat_path_s_405(tmp_path: Path) -> None:
    with serving(str(echo_graph(tmp_path)), "--db", str(tmp_path / "moat.db")) as (_, base_url):
        headers = {f"x-h{i}": "1" for i in range(150)}  # over the 100 a request may have
        for method, extra in (("POST", headers), ("GET", {})):
            request = urllib.request.Request(
                base_url + "/chat/completions", b"{}" if method == "POST" else None, extra
            )
            request.method = method
            try:
                urllib.request.urlopen(request, timeout=30)
            except urllib.error.HTTPError as exc:
                assert exc.code == (431 if method == "POST" else 405)
        address = urllib.parse.urlsplit(base_url)
        with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nxxxxx\r\n0\r\n\r\n"
            )
            assert conn.recv(65536).startswith(b"HTTP/1.1 501 ")
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=30) as m:
            scraped = m.read().decode()
    assert 'moat_http_responses_total{code="431"} 1.0' in scraped
    assert 'moat_http_responses_total{code="405"} 1.0' in scraped
    assert 'moat_http_responses_total{code="501"} 1.0' in scraped


def test_a_websocket_handshake_is_answered_in_openai_s_shape_and_nothing_is_logged(
    tmp_path: Path,
) -> None:
    """moat serve has no WebSocket routes: a handshake (OpenAI's Realtime API is one) is
    answered as the plain HTTP request it also is, not with uvicorn's plain-text 403 and a
    warning to install a WebSocket library."""
    handshake = (
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    answers = []
    with serving(str(echo_graph(tmp_path)), "--db", str(tmp_path / "moat.db")) as (
        proc,
        base_url,
    ):
        address = urllib.parse.urlsplit(base_url)
        for path in ("/v1/realtime", "/v1/models"):
            with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
                conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{handshake}".encode())
                answer = b""
                while chunk := conn.recv(65536):  # until the server closes the connection
                    answer += chunk
            answers.append(answer.partition(b"\r\n\r\n"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
    (realtime, _, error), (models, _, listed) = answers
    assert realtime.startswith(b"HTTP/1.1 404 ") and b"connection: close" in realtime
    assert b"content-type: application/json" in realtime
    assert json.loads(error)["error"]["message"].startswith("GET /v1/realtime: Not Found;")
    assert models.startswith(b"HTTP/1.1 200 ") and json.loads(listed)["data"][0]["id"] == "echo"
    assert "upgrade" not in log.lower() and "websocket" not in log.lower()


async def test_a_request_answered_before_the_cut_off_leaves_as_an_answer(tmp_path: Path) -> None:
    db = tmp_path / "moat.db"
    body = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}
    async with MoatServer([echo_graph(tmp_path)], db=db) as server, http(server) as web:
        assert (await web.get("http://moat.test/readyz")).status_code == 200
        answers = []

        async def ask() -> None:
            answers.append(await web.post("http://moat.test/v1/chat/completions", json=body))

        with write_lock_held(db, 1.0):  # the answer waits for its commit
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await anyio.sleep(0.3)
                server.cut_off("its grace period of 1 s for shutting down ran out")
    (answer,) = answers
    assert answer.status_code == 200
    (row,) = rows(db, "SELECT id, status FROM requests")
    assert row == {"id": answer.headers["x-moat-request-id"], "status": "ok"}
