"""The `openai` provider, exercised against the sim server over loopback HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import anyio.abc
import httpx2
import jsonschema
import openai
import pytest

from engine.errors import NodeError, RateLimited, TransientError
from engine.graph.spec import ModelSpec, Price
from engine.models import CallScope, Gateway, ProviderRequest, ProviderTimeout
from engine.models.base import ConnectFailed
from engine.models.openai_provider import (
    ClientRegistry,
    OpenAIProvider,
    direct_http,
    http_client_for,
    output_limit_field,
    parse_retry_after,
)
from engine.models.server import profile_for_model
from engine.plugin.context import RequestInfo
from engine.serve.sim_app import SimServer, serve
from tests.support.fake_openai import FakeOpenAI


@asynccontextmanager
async def sim_server(**kw: Any) -> AsyncIterator[SimServer]:
    async with anyio.create_task_group() as tg:
        server: SimServer = await tg.start(
            lambda task_status: serve("127.0.0.1", 0, time_scale=0, task_status=task_status, **kw)
        )
        yield server
        tg.cancel_scope.cancel()


def _spec(server: SimServer, **kw: Any) -> ModelSpec:
    fields: dict[str, Any] = {"model": "gpt-4o-mini", "price": Price(input=0.15, output=0.6)}
    return ModelSpec(provider="openai", base_url=server.base_url, **{**fields, **kw})


def _scope() -> CallScope:
    info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    return CallScope(request=info, node_id="answer")


@asynccontextmanager
async def gateway_for(
    server: SimServer, fault: str | None = None, **kw: Any
) -> AsyncIterator[Gateway]:
    spec = _spec(server, **kw)
    headers = {"X-Sim-Fault": fault, "X-Sim-Retry-After": "0.01"} if fault else None
    async with Gateway(
        {"m": spec}, providers={"m": OpenAIProvider(spec, headers=headers)}
    ) as gateway:
        yield gateway


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_a_call_to_an_openai_compatible_endpoint_succeeds() -> None:
    async with sim_server() as server, gateway_for(server) as gateway:
        scope = _scope()
        result = await gateway.client("m", scope).complete(prompt="Hello there", max_tokens=50)
    assert result.provider == "openai" and result.provider_model == "gpt-4o-mini"
    assert result.simulated  # the sim server labels its answers
    assert result.text and result.output_tokens > 0 and result.input_tokens > 0
    assert result.cost_usd == pytest.approx(
        (result.input_tokens * 0.15 + result.output_tokens * 0.6) / 1e6
    )
    # the call is recorded under `sim`: whoever reads the store sees a simulated answer
    assert [c.status for c in scope.calls] == ["ok"] and scope.calls[0].provider == "sim"


@pytest.mark.anyio
async def test_json_mode_and_json_schema_come_back_as_json() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["city", "score"],
    }
    async with sim_server() as server, gateway_for(server, model="sim-large") as gateway:
        structured = await gateway.client("m", _scope()).complete(
            prompt="Where?", schema=schema, task="extract"
        )
        loose = await gateway.client("m", _scope()).complete(
            prompt="Where?", json_mode=True, task="risk"
        )
    jsonschema.validate(structured.json, schema)
    assert isinstance(loose.json, dict) and "risk_score" in loose.json


@pytest.mark.anyio
async def test_a_429_with_retry_after_is_retried_then_succeeds() -> None:
    async with sim_server() as server, gateway_for(server, "rate_limit-once:a") as gateway:
        scope = _scope()
        result = await gateway.client("m", scope).complete(prompt="x")
    assert result.text
    assert [c.status for c in scope.calls] == ["error", "ok"]
    assert "rate limited" in (scope.calls[0].error or "")


@pytest.mark.anyio
async def test_a_429_maps_to_rate_limited_with_the_retry_after() -> None:
    async with sim_server() as server:
        provider = OpenAIProvider(
            _spec(server), headers={"X-Sim-Fault": "rate_limit", "X-Sim-Retry-After": "3"}
        )
        async with Gateway(
            {"m": _spec(server, max_retries=0)}, providers={"m": provider}
        ) as gateway:
            with pytest.raises(RateLimited) as caught:
                await gateway.client("m", _scope()).complete(prompt="x")
    assert caught.value.retry_after_s == pytest.approx(3.0)


@pytest.mark.anyio
async def test_a_500_is_retried_then_succeeds() -> None:
    async with sim_server() as server, gateway_for(server, "error-once:b") as gateway:
        scope = _scope()
        await gateway.client("m", scope).complete(prompt="x")
    assert [c.status for c in scope.calls] == ["error", "ok"]
    assert "server error" in (scope.calls[0].error or "")


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_a_slow_endpoint_times_out() -> None:
    async with (
        sim_server() as server,
        gateway_for(server, "slow", timeout_s=0.05, max_retries=1) as gateway,
    ):
        scope = _scope()
        with pytest.raises(ProviderTimeout, match=r"timeout_s=0\.05"):
            await gateway.client("m", scope).complete(prompt="x")
        with anyio.fail_after(5):
            while server.dropped_connections < 2:
                await anyio.sleep(0.01)
    assert [c.status for c in scope.calls] == ["timeout", "timeout"]


@pytest.mark.anyio
async def test_a_malformed_body_is_a_transient_error() -> None:
    async with sim_server() as server, gateway_for(server, "malformed", max_retries=0) as gateway:
        with pytest.raises(TransientError, match="unreadable response body"):
            await gateway.client("m", _scope()).complete(prompt="x")


@pytest.mark.anyio
async def test_a_404_is_a_client_error_and_not_retried() -> None:
    async with sim_server() as server:
        spec = _spec(server).model_copy(update={"base_url": server.base_url + "/nowhere"})
        scope = _scope()
        async with Gateway({"m": spec}) as gateway:
            with pytest.raises(NodeError, match="request refused"):
                await gateway.client("m", scope).complete(prompt="x")
    assert len(scope.calls) == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_cancelling_a_call_drops_the_connection() -> None:
    async with sim_server() as server, gateway_for(server, "slow") as gateway:
        scope = _scope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: gateway.client("m", scope).complete(prompt="x"))
            with anyio.fail_after(5):
                await server.request_started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await server.connection_dropped.wait()
    assert server.dropped_connections == 1
    assert [c.status for c in scope.calls] == ["cancelled"]


@pytest.mark.anyio
async def test_any_openai_client_can_list_and_call_the_sim_models() -> None:
    async with (
        sim_server() as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        models = await client.models.list()
        reply = await client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_object"},
            seed=3,
        )
        again = await client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_object"},
            seed=3,
        )
    assert [m.id for m in models.data] == ["sim-small", "sim-medium", "sim-large"]
    assert reply.system_fingerprint == "moat-sim" and reply.usage is not None
    assert reply.choices[0].message.content == again.choices[0].message.content
    assert server.requests == 3


def test_model_names_map_to_sim_profiles() -> None:
    assert [
        profile_for_model(n)
        for n in ("sim-large", "gpt-4o-mini", "gpt-4o", "llama-3-8b", "mystery")
    ] == [
        "large",
        "small",
        "large",
        "small",
        "medium",
    ]


def test_retry_after_headers_are_parsed() -> None:
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 50 < (parse_retry_after({"retry-after": later}) or 0) <= 60
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.anyio
async def test_providers_share_one_client_per_endpoint_and_key() -> None:
    registry = ClientRegistry()
    spec = ModelSpec(provider="openai", model="a", base_url="http://127.0.0.1:9/v1")
    first = OpenAIProvider(spec, registry=registry, api_key="k1")
    second = OpenAIProvider(spec.model_copy(update={"model": "b"}), registry=registry, api_key="k1")
    other = OpenAIProvider(spec, registry=registry, api_key="k2")
    assert len(registry) == 2
    for provider in (first, second, other):
        await provider.aclose()
    assert len(registry) == 0


def test_the_public_endpoint_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOAT_TEST_KEY", raising=False)
    spec = ModelSpec(provider="openai", model="gpt-4o", api_key_env="MOAT_TEST_KEY")
    with pytest.raises(NodeError, match="set the environment variable MOAT_TEST_KEY"):
        OpenAIProvider(spec)


@pytest.mark.anyio
async def test_the_server_answers_bad_requests_with_400() -> None:
    async with sim_server() as server:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        async with stream:
            body = b"not json"
            await stream.send(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            reply = b""
            with anyio.fail_after(5):
                while True:
                    try:
                        reply += await stream.receive()
                    except anyio.EndOfStream:
                        break
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert "bad chat completion request" in json.loads(payload)["error"]["message"]


@pytest.mark.parametrize(
    ("base_url", "model", "field"),
    [
        (None, "gpt-4o-mini", "max_completion_tokens"),
        ("https://api.openai.com/v1", "gpt-4o", "max_completion_tokens"),
        ("https://acme.openai.azure.com/openai/v1", "gpt-4o", "max_completion_tokens"),
        ("http://127.0.0.1:8000/v1", "meta-llama/Llama-3.1-8B-Instruct", "max_tokens"),
        ("http://localhost:11434/v1", "qwen2.5:7b", "max_tokens"),
        ("https://openrouter.ai/api/v1", "openai/o3-mini", "max_completion_tokens"),
        ("https://proxy.example/v1", "gpt-5-mini", "max_completion_tokens"),
    ],
)
def test_the_output_limit_goes_in_the_field_the_endpoint_reads(
    base_url: str | None, model: str, field: str
) -> None:
    assert output_limit_field(base_url, model) == field


@pytest.mark.parametrize(
    ("behaviour", "reported"), [("exact", True), ("nousage", False), ("badusage", False)]
)
@pytest.mark.anyio
async def test_an_answer_without_usable_usage_is_flagged(behaviour: str, reported: bool) -> None:
    with FakeOpenAI() as fake:
        spec = ModelSpec(provider="openai", model="gpt-4o-mini", base_url=fake.base_url(behaviour))
        provider = OpenAIProvider(spec, registry=ClientRegistry())
        try:
            response = await provider.complete(
                ProviderRequest(
                    model="m",
                    messages=[{"role": "user", "content": "hi"}],
                    request=_scope().request,
                    node_id="answer",
                    cycle=0,
                    attempt=0,
                    max_tokens=33,
                )
            )
        finally:
            await provider.aclose()
        [bill] = fake.bills
    assert response.usage_reported is reported
    assert bill.body["max_tokens"] == 33 and "max_completion_tokens" not in bill.body
    if reported:
        assert (response.input_tokens, response.output_tokens) == (bill.input_tokens, 33)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_a_connection_never_made_is_retried_and_charged_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nothing listens there
    spec = ModelSpec(
        provider="openai",
        model="gpt-4o-mini",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
    )
    scope = _scope()
    provider = OpenAIProvider(spec, registry=ClientRegistry())
    async with Gateway({"m": spec}, providers={"m": provider}) as gateway:
        with pytest.raises(TransientError, match=r"could not connect \(connection refused\)"):
            await gateway.client("m", scope).complete(prompt="x")
    assert [(c.status, c.cost_usd) for c in scope.calls] == [("error", 0)]


class _FailingRegistry(ClientRegistry):
    """Clients whose HTTP transport raises `error` on every request (a fake transport,
    injected as httpx's `MockTransport` is meant to be)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def acquire(
        self, base_url: str | None, api_key: str, headers: Mapping[str, str] | None = None
    ) -> openai.AsyncOpenAI:
        def fail(request: httpx2.Request) -> httpx2.Response:
            raise self.error

        transport = httpx2.MockTransport(fail)
        return openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport),
        )


def _refused() -> httpx2.ConnectError:
    """httpx's error for a refused connection, with the operating system's below it."""
    error = httpx2.ConnectError("All connection attempts failed")
    error.__cause__ = ConnectionRefusedError(111, "Connect call failed ('10.0.0.9', 443)")
    return error


@pytest.mark.parametrize(
    ("error", "said", "charged"),
    [
        (_refused(), "could not connect (connection refused)", False),
        (
            httpx2.ConnectError("[Errno -2] Name or service not known"),
            "could not connect ([Errno -2] Name or service not known)",
            False,
        ),
        (
            httpx2.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
            "could not connect (Request URL has an unsupported protocol 'ftp://'.)",
            False,
        ),
        (httpx2.ReadError("connection reset"), "connection lost after sending", True),
        (httpx2.RemoteProtocolError("Server disconnected"), "connection lost after sending", True),
    ],
)
@pytest.mark.anyio
async def test_a_request_that_never_left_is_charged_nothing_and_one_that_did_its_reservation(
    error: Exception, said: str, charged: bool
) -> None:
    spec = ModelSpec(
        provider="openai",
        model="gpt-4o-mini",
        base_url="https://llm.example/v1",
        max_retries=0,
        price=Price(input=0.15, output=0.6),
    )
    scope = _scope()
    provider = OpenAIProvider(spec, registry=_FailingRegistry(error))
    async with Gateway({"m": spec}, providers={"m": provider}) as gateway:
        with pytest.raises(TransientError) as caught:
            await gateway.client("m", scope).complete(prompt="x", max_tokens=10)
    assert f"model 'gpt-4o-mini' at https://llm.example/v1: {said}" in str(caught.value)
    assert isinstance(caught.value, ConnectFailed) is not charged
    [call] = scope.calls
    assert call.status == "error"
    assert (call.cost_usd > 0) is charged


@pytest.mark.parametrize(
    ("base_url", "env", "said"),
    [
        ("notaurl", None, "the endpoint 'notaurl' (from `base_url`) is not an absolute http"),
        ("", None, "the endpoint '' (from `base_url`) is empty"),
        (
            None,
            "localhost:8000/v1",
            "the endpoint 'localhost:8000/v1' (from the environment variable OPENAI_BASE_URL) "
            "is not an absolute http:// or https:// URL",
        ),
    ],
)
def test_a_provider_for_an_endpoint_that_is_no_url_is_refused_when_made(
    base_url: str | None, env: str | None, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    if env is None:
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    else:
        monkeypatch.setenv("OPENAI_BASE_URL", env)
    # (a graph's `models:` refuses such a `base_url` when read; a spec made in code
    # without validation meets the provider's own check)
    spec = ModelSpec.model_construct(provider="openai", model="gpt-4o-mini", base_url=base_url)
    registry = ClientRegistry()
    with pytest.raises(NodeError) as caught:
        OpenAIProvider(spec, registry=registry)
    assert str(caught.value).startswith(f"model 'gpt-4o-mini': {said}")
    assert len(registry) == 0  # no client was made


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_a_connection_lost_after_sending_may_be_billed_on_either_http_client() -> None:
    """The server read the request, then hung up: the provider may have run it, so the
    call is a lost response (charged its reservation), not a connection never made. On
    asyncio the call goes through aiohttp, on trio through httpx2: both say the same."""

    async def hang_up(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()  # the request (its head at least)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    spec = ModelSpec(
        provider="openai",
        model="gpt-4o-mini",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        price=Price(input=0.15, output=0.6),
    )
    scope = _scope()
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hang_up)
        provider = OpenAIProvider(spec, registry=ClientRegistry())
        async with Gateway({"m": spec}, providers={"m": provider}) as gateway:
            with pytest.raises(TransientError, match="connection lost after sending"):
                await gateway.client("m", scope).complete(prompt="x", max_tokens=10)
        tg.cancel_scope.cancel()
    ((status, cost),) = [(c.status, c.cost_usd) for c in scope.calls]
    assert status == "error" and cost > 0


def test_a_client_whose_calls_take_the_prepared_route_opens_no_aiohttp_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route carries a direct endpoint's chat completions (httptools, the `serve`
    extra, is installed with the tests): the client only lends it its settings."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    aiohttp_client = type(openai.DefaultAioHttpClient()).__name__

    async def acquired(url: str) -> tuple[bool, str]:
        registry = ClientRegistry()
        client = registry.acquire(url, "k")
        try:
            return registry.route(client) is not None, type(client._client).__name__
        finally:
            await registry.release(client)

    routed, http_client = anyio.run(acquired, "http://127.0.0.1:8000/v1", backend="asyncio")
    assert routed and http_client != aiohttp_client


def test_a_direct_plain_http_endpoint_on_asyncio_gets_the_sdks_aiohttp_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)

    async def client_for(url: str) -> object:
        return http_client_for(url)

    direct = anyio.run(client_for, "http://127.0.0.1:8000/v1", backend="asyncio")
    assert type(direct).__name__ == type(openai.DefaultAioHttpClient()).__name__
    assert anyio.run(client_for, "https://api.openai.com/v1", backend="asyncio") is None
    assert anyio.run(client_for, "http://127.0.0.1:8000/v1", backend="trio") is None
    assert http_client_for("http://127.0.0.1:8000/v1") is None  # no event loop: httpx2
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert not direct_http("http://10.0.0.5:8000/v1")
    monkeypatch.setenv("NO_PROXY", "10.0.0.5")
    assert direct_http("http://10.0.0.5:8000/v1")
