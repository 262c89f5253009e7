"""`moat serve` as a real uvicorn process on loopback: the official sync client and its
streaming on every shipped graph, a client that hangs up recorded `cancelled`, and
`--no-commit-wait`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai

from engine.store.store import Store
from tests.engine.serve.test_serve import PROMPTS, SHIPPED, echo_graph
from tests.engine.serve.test_serve_hostile import answering
from tests.support.fast_graphs import fast_copy


@contextmanager
def served(*args: str) -> Iterator[str]:
    """`moat serve ARGS --port 0` in its own process; its base URL. Stopped with SIGTERM."""
    with subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:"), proc.stderr.read()
            yield base_url
            proc.terminate()
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_sync_client_and_its_streaming_get_every_shipped_graph_s_answer(
    tmp_path: Path,
) -> None:
    graphs = [str(fast_copy(name, tmp_path, time_scale=0)) for name in SHIPPED]
    db = tmp_path / "moat.db"
    answers: dict[str, tuple[str, str]] = {}
    with (
        served(*graphs, "--db", str(db)) as base_url,
        openai.OpenAI(base_url=base_url, api_key="any", max_retries=0) as oai,
    ):
        for name in SHIPPED:
            messages: list[openai.types.chat.ChatCompletionMessageParam] = [
                {"role": "user", "content": PROMPTS[name]}
            ]
            reply = oai.chat.completions.create(model=name, messages=messages)
            chunks = list(oai.chat.completions.create(model=name, messages=messages, stream=True))
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            answers[name] = (reply.choices[0].message.content or "", streamed)
    for name, (whole, streamed) in answers.items():
        assert whole and streamed, name
    with Store.open(db, readonly=True) as store:
        stored = store.query("SELECT status, COUNT(*) AS n FROM requests GROUP BY status")
    assert [(r["status"], r["n"]) for r in stored] == [("ok", 2 * len(SHIPPED))]


def test_a_client_that_hangs_up_is_recorded_cancelled_with_its_model_call(
    tmp_path: Path,
) -> None:
    graph = echo_graph(tmp_path, scale=5.0)  # the model call takes seconds
    db = tmp_path / "moat.db"
    with served(str(graph), "--db", str(db)) as base_url:
        host, port = base_url.removeprefix("http://").split("/")[0].split(":")
        body = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]}'
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: moat\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.5)  # the model call is under way
        deadline = time.monotonic() + 20
        requests: list[dict[str, object]] = []
        while not requests and time.monotonic() < deadline:
            time.sleep(0.1)
            with Store.open(db, readonly=True) as store:
                requests = [dict(r) for r in store.query("SELECT id, status FROM requests")]
        with Store.open(db, readonly=True) as store:
            calls = store.query("SELECT request_id, status FROM llm_calls")
    assert [r["status"] for r in requests] == ["cancelled"]
    assert [(c["request_id"], c["status"]) for c in calls] == [(requests[0]["id"], "cancelled")]


def test_without_waiting_for_the_commit_answers_are_still_all_recorded(tmp_path: Path) -> None:
    graph = echo_graph(tmp_path)
    db = tmp_path / "moat.db"
    with (
        served(str(graph), "--db", str(db), "--no-commit-wait") as base_url,
        openai.OpenAI(base_url=base_url, api_key="any", max_retries=0) as oai,
    ):
        ids = []
        for n in range(5):
            raw = oai.chat.completions.with_raw_response.create(
                model="echo", messages=[{"role": "user", "content": f"q{n}"}]
            )
            ids.append(raw.headers["x-moat-request-id"])
    with Store.open(db, readonly=True) as store:  # the server has stopped: all is flushed
        stored = {r["id"] for r in store.query("SELECT id FROM requests WHERE status = 'ok'")}
    assert set(ids) == stored


def test_the_sync_client_retrieves_a_served_graph_and_a_slashed_path_is_answered(
    tmp_path: Path,
) -> None:
    graph = echo_graph(tmp_path)
    with (
        served(str(graph), "--db", str(tmp_path / "moat.db")) as base_url,
        openai.OpenAI(base_url=base_url, api_key="any", max_retries=0) as oai,
    ):
        model = oai.models.retrieve("echo")
        try:
            oai.models.retrieve("gpt-4o")
        except openai.NotFoundError as exc:
            unknown = exc.body
        slashed = oai.with_options(base_url=base_url + "/").post(
            "/chat/completions/",
            body={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            cast_to=httpx2.Response,
        )
    assert (model.id, model.object, model.owned_by) == ("echo", "model", "moat")
    assert isinstance(unknown, dict) and unknown["code"] == "model_not_found"
    assert slashed.status_code == 200 and slashed.json()["model"] == "echo"


def _raw_chat(base_url: str, model: str, content: str) -> tuple[list[bytes], dict[str, Any]]:
    """A chat completion over a bare socket: the response's header lines as they came on
    the wire, and its body."""
    address = urlsplit(base_url)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]})
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(head.encode() + body.encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    lines, _, text = answer.partition(b"\r\n\r\n")
    return lines.split(b"\r\n"), json.loads(text)


def test_a_decision_with_a_line_break_leaves_percent_encoded_on_the_wire(
    tmp_path: Path,
) -> None:
    """A decision that is not printable ASCII goes in its header percent-encoded (UTF-8):
    none of its line breaks reaches the wire to end the header or start another. A line
    break written into a graph's expression source reads as a space, in a quoted string
    too (as everywhere in an expression): that decision holds none, in its header as in
    the body's `moat.decision`."""
    written_in_graph = r'''"'ok\r\nSet-Cookie: lit=1'"'''  # (YAML turns \r\n into CR LF)
    for name, decision in (("dec", "input.prompt"), ("lit", written_in_graph)):
        (tmp_path / f"{name}.yaml").write_text(answering(name, f"decision: {decision}"))
    graphs = (str(tmp_path / "dec.yaml"), str(tmp_path / "lit.yaml"))
    with served(*graphs, "--db", str(tmp_path / "moat.db")) as base_url:
        sent, sent_body = _raw_chat(base_url, "dec", "ok\r\nSet-Cookie: pwned=1\n\u2603")
        written, written_body = _raw_chat(base_url, "lit", "hi")
    assert b"x-moat-decision: ok%0D%0ASet-Cookie: pwned=1%0A%E2%98%83" in sent
    assert sent_body["moat"]["decision"] == "ok\r\nSet-Cookie: pwned=1\n\u2603"
    assert b"x-moat-decision: ok  Set-Cookie: lit=1" in written
    assert written_body["moat"]["decision"] == "ok  Set-Cookie: lit=1"
    for line in sent + written:
        assert not line.lower().startswith(b"set-cookie")
