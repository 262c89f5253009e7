"""`moat serve`'s app: the official `openai` client gets every shipped graph's answer, the
moat headers and extension field, and OpenAI-shaped errors with the right status codes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from engine.serve import KeyRing, MoatServer, hash_key, load_keys
from engine.serve.wire import CHUNK_CHARS, answer_text
from engine.store.store import Store
from tests.support.fast_graphs import GRAPHS, fast_copy
from tests.support.serve_client import chat_scope, client, http

pytestmark = pytest.mark.anyio

SHIPPED = sorted(p.stem for p in GRAPHS.glob("*.yaml"))
PROMPTS = {
    "baseline": "What is a Roth IRA?",
    "cascade": "How do I reset my password?",
    "extract": "Order 4471 arrived broken, please refund. - Ana",
    "governed-answer": "How do I reset my password?",
}

ECHO = """
moat: 1
name: echo
models:
  small: {{provider: sim, profile: small, time_scale: {scale}}}
input:
  type: object
  required: [prompt]
  properties:
    prompt: {{type: string, minLength: 1}}
    history: {{type: array}}
    tenant: {{type: string, default: public}}
limits: {{max_request_bytes: {max_bytes}}}
budget: {{deadline_ms: {deadline}, partial: false}}
nodes:
  answer: {{type: model, with: {{model: small, prompt: "{{{{ input.prompt }}}}"}}}}
output:
  answer: "input.prompt + ' | turns: ' + str(len(input.history or [])) + ' | ' + input.tenant"
  text: answer.text
"""


def echo_graph(
    dest: Path, *, scale: float = 0, deadline: int = 10_000, max_bytes: int = 1 << 20
) -> Path:
    """A graph whose answer shows the prompt, the number of earlier turns and the tenant."""
    path = dest / "echo.yaml"
    path.write_text(ECHO.format(scale=scale, deadline=deadline, max_bytes=max_bytes))
    return path


@pytest.fixture
async def shipped(tmp_path: Path) -> AsyncIterator[MoatServer]:
    graphs = [fast_copy(name, tmp_path, time_scale=0) for name in SHIPPED]
    async with MoatServer(graphs, db=tmp_path / "moat.db") as server:
        yield server


async def settled(server: MoatServer, name: str) -> None:
    """Wait until the graph's answered requests are recorded and committed."""
    pipe = server.graphs[name].pipe
    await pipe.settle()
    pipe.flush()


def rows(db: Path, sql: str) -> list[dict[str, Any]]:
    with Store.open(db, readonly=True) as store:
        return [dict(r) for r in store.query(sql)]


@pytest.mark.parametrize("name", SHIPPED)
async def test_the_openai_client_gets_each_shipped_graph_s_answer(
    shipped: MoatServer, name: str, tmp_path: Path
) -> None:
    async with client(shipped) as oai:
        raw = await oai.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": PROMPTS[name]}]
        )
    reply = raw.parse()
    moat = (reply.model_extra or {})["moat"]
    # the answer is the graph's recorded output
    await settled(shipped, name)
    rid = moat["request_id"]
    (row,) = rows(tmp_path / "moat.db", f"SELECT * FROM requests WHERE id = '{rid}'")
    output = row["output"]  # the store decodes `output_json`
    assert moat["output"] == output and set(output) == set(shipped.graphs[name].pipe.graph.output)
    assert reply.choices[0].message.content == answer_text(output)
    assert reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant"
    assert reply.model == name
    assert moat["status"] == row["status"] == "ok"
    assert raw.headers["x-moat-request-id"] == rid
    assert raw.headers["x-moat-status"] == "ok"
    assert float(raw.headers["x-moat-cost-usd"]) == pytest.approx(row["cost_usd"], abs=1e-8)
    assert raw.headers.get("x-moat-policy-version") == (
        None if row["policy_version"] is None else str(row["policy_version"])
    )
    assert moat["decision"] == output.get("decision")
    # the shipped graphs answer on the simulated models, and the answer says so
    assert moat["simulated"] is True and raw.headers["x-moat-simulated"] == "true"
    assert reply.usage is not None and reply.usage.total_tokens == (
        reply.usage.prompt_tokens + reply.usage.completion_tokens
    )


async def test_usage_sums_the_request_s_llm_calls(shipped: MoatServer, tmp_path: Path) -> None:
    async with client(shipped) as oai:
        reply = await oai.chat.completions.create(
            model="baseline", messages=[{"role": "user", "content": PROMPTS["baseline"]}]
        )
    rid = (reply.model_extra or {})["moat"]["request_id"]
    served = shipped.graphs["baseline"].pipe
    served.flush()
    calls = rows(
        tmp_path / "moat.db",
        f"SELECT input_tokens, output_tokens FROM llm_calls WHERE request_id = '{rid}'",
    )
    assert calls and reply.usage is not None
    assert reply.usage.prompt_tokens == sum(c["input_tokens"] for c in calls)
    assert reply.usage.completion_tokens == sum(c["output_tokens"] for c in calls)


async def test_models_lists_the_served_graphs(shipped: MoatServer) -> None:
    async with client(shipped) as oai:
        models = await oai.models.list()
    assert [m.id for m in models.data] == SHIPPED


async def test_a_server_session_is_one_run_per_graph_with_its_requests(
    shipped: MoatServer, tmp_path: Path
) -> None:
    async with client(shipped) as oai:
        for _ in range(3):
            await oai.chat.completions.create(
                model="cascade", messages=[{"role": "user", "content": "hi"}], user="acme"
            )
    await settled(shipped, "cascade")
    run_id = shipped.graphs["cascade"].run_id
    stored = rows(
        tmp_path / "moat.db", f"SELECT seq, tenant FROM requests WHERE run_id = '{run_id}'"
    )
    assert sorted(r["seq"] for r in stored) == [0, 1, 2]
    assert {r["tenant"] for r in stored} == {"acme"}


async def test_earlier_turns_are_the_history_and_the_last_user_message_the_prompt(
    tmp_path: Path,
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, client(server) as oai:
        reply = await oai.chat.completions.create(model="echo", messages=messages, user="bo")
    assert reply.choices[0].message.content == "second | turns: 3 | bo"


# -- errors ------------------------------------------------------------------------------


async def test_an_unknown_graph_is_a_404_listing_the_served_ones(shipped: MoatServer) -> None:
    async with client(shipped) as oai:
        with pytest.raises(openai.NotFoundError) as caught:
            await oai.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "served: baseline, cascade, extract, governed-answer" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "echo", "messages": []}, "messages", "non-empty list"),
        (
            {"model": "echo", "messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
            "must be one of",
        ),
        (
            {"model": "echo", "messages": [{"role": "system", "content": "x"}]},
            "messages",
            "no user message",
        ),
        (
            {"model": "echo", "messages": [{"role": "user", "content": 3}]},
            "messages[0].content",
            "string or a list",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "served graph"),
        ({"model": "echo", "n": 2, "messages": [{"role": "user", "content": "x"}]}, "n", "be 1"),
        ({"model": "echo", "n": "1", "messages": [{"role": "user", "content": "x"}]}, "n", "be 1"),
        (
            {"model": "echo", "messages": [{"role": "user", "content": ""}]},
            "messages[0].content",
            "input prompt",
        ),
    ],
)
async def test_invalid_input_is_a_400_naming_the_field(
    tmp_path: Path, body: dict[str, Any], param: str, words: str
) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


@pytest.mark.parametrize(
    "raw",
    [b'{"model": ', b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000],
    ids=["cut", "utf16", "deep"],
)
async def test_a_body_that_is_not_json_is_a_400(tmp_path: Path, raw: bytes) -> None:
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", content=raw)
        after = await web.post(
            "/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "x"}]},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert after.status_code == 200


async def test_a_body_nested_past_the_parser_says_so(tmp_path: Path) -> None:
    raw = b'{"model": "echo", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", content=raw)
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]


async def test_n_of_one_is_answered_as_without_it(tmp_path: Path) -> None:
    body = {"model": "echo", "n": 1, "messages": [{"role": "user", "content": "x"}]}
    async with MoatServer([echo_graph(tmp_path)], db=None) as server, http(server) as web:
        response = await web.post("/chat/completions", json=body)
    assert response.status_code == 200
    assert len(response.json()["choices"]) == 1


async def test_a_body_over_the_graph_s_size_limit_is_a_413(tmp_path: Path) -> None:
    graph = echo_graph(tmp_path, max_bytes=200)
    async with MoatServer([graph], db=None) as server, client(server) as oai:
        await oai.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.APIStatusError) as caught:
            await oai.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "x" * 300}]
            )
    assert caught.value.status_code == 413
    assert "max_request_bytes" in caught.value.message


async def test_a_request_past_its_deadline_is_a_504_with_its_id(tmp_path: Path) -> None:
    graph = echo_graph(tmp_path, scale=1.0, deadline=1)
    async with MoatServer([graph], db=None) as server, client(server) as oai:
        with pytest.raises(openai.APIStatusError) as caught:
            await oai.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 504
    assert caught.value.response.headers["x-moat-status"] == "deadline_exceeded"
    assert caught.value.response.headers["x-moat-request-id"] in caught.value.message


FAILING = """
moat: 1
name: broken
models:
  flaky: {provider: sim, profile: small, time_scale: 0, max_retries: 0, faults: {error: 1.0}}
input: {type: object, required: [prompt], properties: {prompt: {type: string}}}
nodes:
  answer: {type: model, with: {model: flaky, prompt: "{{ input.prompt }}"}}
output:
  answer: answer.text
"""


async def test_a_failed_request_is_a_500_with_its_id_and_no_internals(tmp_path: Path) -> None:
    graph = tmp_path / "broken.yaml"
    graph.write_text(FAILING)
    sink_db = tmp_path / "moat.db"
    async with MoatServer([graph], db=sink_db) as server, client(server) as oai:
        with pytest.raises(openai.InternalServerError) as caught:
            await oai.chat.completions.create(
                model="broken", messages=[{"role": "user", "content": "hi"}]
            )
        await settled(server, "broken")
    rid = caught.value.response.headers["x-moat-request-id"]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["message"] == f"request {rid} failed; `moat report {rid}` says why"
    assert body["type"] == "server_error"
    stored = rows(sink_db, f"SELECT status, error FROM requests WHERE id = '{rid}'")
    assert stored[0]["status"] == "failed" and "answer" in stored[0]["error"]


async def test_the_answer_is_streamed_as_openai_chunks(shipped: MoatServer, tmp_path: Path) -> None:
    async with client(shipped) as oai:
        stream = await oai.chat.completions.create(
            model="governed-answer",
            messages=[{"role": "user", "content": PROMPTS["governed-answer"]}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    ends = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in ends] == ["stop"]
    moat = (ends[0].model_extra or {})["moat"]
    await settled(shipped, "governed-answer")
    rid = moat["request_id"]
    (row,) = rows(tmp_path / "moat.db", f"SELECT * FROM requests WHERE id = '{rid}'")
    assert text == answer_text(row["output"]) and len(text) > CHUNK_CHARS
    assert all(c.id == f"chatcmpl-{rid}" for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


async def test_a_stream_that_fails_is_an_error_status_not_a_broken_stream(
    tmp_path: Path,
) -> None:
    graph = tmp_path / "broken.yaml"
    graph.write_text(FAILING)
    async with MoatServer([graph], db=None) as server, http(server) as web:
        response = await web.post(
            "/chat/completions",
            json={
                "model": "broken",
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
            },
        )
    assert response.status_code == 500
    assert not response.headers["content-type"].startswith("text/event-stream")
    assert json.loads(response.text)["error"]["code"] == "request_failed"


async def test_health_and_readiness(tmp_path: Path) -> None:
    server = MoatServer([echo_graph(tmp_path)], db=None)
    async with http(server) as web:
        assert (await web.get("http://moat.test/readyz")).status_code == 503
        async with server:
            ready = await web.get("http://moat.test/readyz")
        assert (await web.get("http://moat.test/healthz")).json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["graphs"] == ["echo"]


# -- API keys --------------------------------------------------------------------------


async def test_with_keys_a_missing_or_unknown_key_is_a_401(tmp_path: Path) -> None:
    keys = KeyRing({hash_key("sk-acme"): "acme"})
    server = MoatServer([echo_graph(tmp_path)], db=None, keys=keys)
    async with server, http(server) as web:
        for headers in ({}, {"authorization": "Bearer sk-nope"}, {"authorization": "sk-acme"}):
            response = await web.post(
                "/chat/completions",
                json={"model": "echo", "messages": [{"role": "user", "content": "x"}]},
                headers=headers,
            )
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert (await web.get("/models")).status_code == 401
        unknown = await web.post("/chat/completions", json={"model": "secret", "messages": []})
        assert unknown.status_code == 401  # nothing about the graphs before the key


async def test_with_keys_two_authorization_headers_are_a_400_whichever_is_valid(
    tmp_path: Path,
) -> None:
    # this server read the first, a proxy that checks keys may read the last: which key
    # was checked and which one names the tenant must not be left to each reader
    keys = KeyRing({hash_key("sk-acme"): "acme"})
    server = MoatServer([echo_graph(tmp_path)], db=None, keys=keys)
    two = [("authorization", "Bearer sk-acme"), ("authorization", "Bearer sk-other")]
    body = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
    async with server, http(server) as web:
        chat = await web.post("/chat/completions", json=body, headers=two)
        models = await web.get("/models", headers=two)
        recorded = server.graphs["echo"].pipe.memory.requests()
    for response in (chat, models):
        assert response.status_code == 400
        assert response.json()["error"] == {
            "message": "the request has 2 Authorization headers; readers differ on which one "
            "counts, so send one: `Authorization: Bearer KEY`",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_authorization",
        }
    assert recorded == []


async def test_the_key_names_the_tenant_whatever_the_user_field_says(tmp_path: Path) -> None:
    keys = KeyRing({hash_key("sk-acme"): "acme", hash_key("sk-globex"): "globex"})
    server = MoatServer([echo_graph(tmp_path)], db=None, keys=keys)
    answers = []
    async with server:
        for key in ("sk-acme", "sk-globex"):
            async with client(server, api_key=key) as oai:
                reply = await oai.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "hi"}], user="mallory"
                )
                answers.append(reply.choices[0].message.content)
    assert answers == ["hi | turns: 0 | acme", "hi | turns: 0 | globex"]


def test_a_keys_file_is_read_as_hashes_mapped_to_tenants(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"# ops\nacme sha256:{hash_key('sk-1').upper()}  # rotated\n\n")
    ring = load_keys(path)
    assert ring.keys == {hash_key("sk-1"): "acme"}
    assert ring.tenant("Bearer sk-1", None) == "acme"
    assert ring.tenant("Bearer sk-2", None) is None


async def test_a_client_that_disconnects_cancels_its_request_s_model_calls_and_it_is_recorded(
    tmp_path: Path,
) -> None:
    # the model call takes about a second of simulated time; the client leaves once it
    # has started
    server = MoatServer([echo_graph(tmp_path, scale=3.0)], db=None)
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    gone = anyio.Event()
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "http.request", "body": body.encode(), "more_body": False}])

    async def receive() -> dict[str, Any]:
        message = next(messages, None)
        if message is not None:
            return message
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = chat_scope()
    async with server:
        pipe = server.graphs["echo"].pipe
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.app, scope, receive, send)
            while server.shaper.active("public") == 0:
                await anyio.sleep(0.005)
            await anyio.sleep(0.05)  # the model call is under way
            gone.set()
        assert server.shaper.active("public") == 0
        await pipe.settle()
        calls = pipe.memory.llm_calls()
        assert [c.status for c in calls] == ["cancelled"]
        (request,) = pipe.memory.requests()  # no answer was given: recorded `cancelled`
        assert request.status == "cancelled" and request.output is None
        assert request.id == calls[0].request_id
        assert request.finished_at >= calls[0].started_at
    assert not sent or sent[0]["status"] == 499


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of a Prometheus text exposition."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


async def test_metrics_count_requests_latency_cost_tokens_and_codes(shipped: MoatServer) -> None:
    async with client(shipped) as oai:
        raw = await oai.chat.completions.with_raw_response.create(
            model="baseline", messages=[{"role": "user", "content": PROMPTS["baseline"]}]
        )
        with pytest.raises(openai.NotFoundError):
            await oai.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
    reply = raw.parse()
    await settled(shipped, "baseline")
    async with http(shipped) as web:
        response = await web.get("http://moat.test/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    version = raw.headers["x-moat-policy-version"]
    ok = f'graph="baseline",policy_version="{version}",status="ok"'
    assert got[f"moat_requests_total{{{ok}}}"] == 1
    assert got[f"moat_request_latency_seconds_count{{{ok}}}"] == 1
    inf = f'graph="baseline",le="+Inf",policy_version="{version}",status="ok"'
    assert got[f"moat_request_latency_seconds_bucket{{{inf}}}"] == 1
    assert got[f"moat_request_cost_usd_sum{{{ok}}}"] == pytest.approx(
        float(raw.headers["x-moat-cost-usd"]), abs=1e-8
    )
    assert reply.usage is not None
    prompt_tokens = sum(
        value
        for key, value in got.items()
        if key.startswith('moat_llm_tokens_total{graph="baseline"') and 'type="input"' in key
    )
    assert prompt_tokens == reply.usage.prompt_tokens
    assert got['moat_http_responses_total{code="200"}'] == 1
    assert got['moat_http_responses_total{code="404"}'] == 1
    assert got["moat_requests_in_flight"] == 0
    assert got['moat_policy_active_version{graph="baseline",policy="baseline"}'] == float(version)
    assert "# TYPE moat_request_latency_seconds histogram" in response.text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_an_answer_is_sent_only_once_its_request_is_in_the_store(
    shipped: MoatServer, tmp_path: Path, stream: bool
) -> None:
    # read by another connection at once, as after a kill -9 of the server: every answered
    # request is there with its model calls, also when it had work after its answer
    async with client(shipped) as oai:
        for prompt in ("How do I reset my password?", "What is a Roth IRA?"):
            raw = await oai.chat.completions.with_raw_response.create(
                model="cascade", messages=[{"role": "user", "content": prompt}], stream=stream
            )
            rid = raw.headers["x-moat-request-id"]
            stored = rows(tmp_path / "moat.db", f"SELECT status FROM requests WHERE id = '{rid}'")
            calls = rows(
                tmp_path / "moat.db", f"SELECT id FROM llm_calls WHERE request_id = '{rid}'"
            )
            assert stored == [{"status": "ok"}]
            assert calls or (prompt == "How do I reset my password?" and stream)


async def test_a_policy_applied_while_serving_governs_the_next_requests(
    shipped: MoatServer, tmp_path: Path
) -> None:
    from engine.cli import main

    db = tmp_path / "moat.db"
    no_cache = GRAPHS.parent / "policies" / "governed-answer.no-cache.yaml"
    messages: Any = [{"role": "user", "content": PROMPTS["governed-answer"]}]
    async with client(shipped) as oai:
        before = await oai.chat.completions.with_raw_response.create(
            model="governed-answer", messages=messages
        )
        assert main(["policy", "apply", str(no_cache), "--db", str(db)]) == 0
        versions = [before.headers["x-moat-policy-version"]]
        with anyio.fail_after(10):  # the server polls the store about once a second
            while versions[-1] == versions[0]:
                await anyio.sleep(0.1)
                raw = await oai.chat.completions.with_raw_response.create(
                    model="governed-answer", messages=messages
                )
                versions.append(raw.headers["x-moat-policy-version"])
    assert int(versions[-1]) == int(versions[0]) + 1


async def test_readiness_fails_when_the_store_takes_no_writes(
    shipped: MoatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.errors import StoreError

    async with http(shipped) as web:
        assert (await web.get("http://moat.test/readyz")).status_code == 200
        store = shipped.graphs["cascade"].pipe.store
        assert store is not None

        def refuse(run_id: str, done: int) -> None:
            raise StoreError("moat.db: disk I/O error")

        monkeypatch.setattr(store, "update_run_progress", refuse)
        response = await web.get("http://moat.test/readyz")
    assert response.status_code == 503
    assert response.json()["graph"] == "cascade" and "disk I/O" in response.json()["error"]


async def test_unknown_paths_and_methods_get_openai_shaped_errors(shipped: MoatServer) -> None:
    async with http(shipped) as web:
        missing = await web.post("/completions", json={})
        wrong = await web.get("/chat/completions")
    assert missing.status_code == 404
    assert "POST /v1/chat/completions" in missing.json()["error"]["message"]
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "http_405"
    assert "POST" in wrong.headers["allow"]
