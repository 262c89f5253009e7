"""The `openai` provider's two routes say the same thing to an endpoint and hear the same back.

On asyncio a direct plain-HTTP endpoint is called over the provider's prepared route
(connections of its own, responses read with httptools); on trio the same endpoint goes
through the official client's own request pipeline. A recording endpoint on loopback (a
thread of the stdlib's HTTP server) sees both: the same headers (the client's auth, defaults
and platform headers), the same body, and only `moat sim-server`'s models get moat's own
headers. Errors come back mapped alike.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from engine.errors import NodeError, RateLimited, TransientError
from engine.graph.spec import ModelSpec
from engine.models._sim_call import locate_request
from engine.models.base import ProviderRequest, ProviderResponse, ProviderTimeout
from engine.models.openai_provider import ClientRegistry, OpenAIProvider
from engine.plugin.context import RequestInfo

_ANSWER = {
    "model": "served-model",
    "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2},
}
_ERRORS = {
    "429": (429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after": "2"}),
    "500": (500, {"error": {"message": "boom"}}, {}),
    "504": (504, "upstream timed out", {}),
    "404": (404, {"error": {"message": "no such model"}}, {}),
}
"""Per path prefix: the status, body and headers of an error answer."""
_TRANSPORT_ONLY = {"connection", "x-stainless-async"}
"""Headers that differ by route for a reason: httpx2 names keep-alive, which is HTTP/1.1's
default anyway; the client reports the event loop it runs on."""


@contextmanager
def recording_endpoint() -> Iterator[tuple[str, list[tuple[dict[str, str], Any]]]]:
    """An OpenAI-compatible endpoint that records each request's headers and body; its
    root URL (append `/ok/v1`, or an `_ERRORS` key and `/v1`) and the records."""
    seen: list[tuple[dict[str, str], Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            seen.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            status, answer, headers = _ERRORS.get(self.path.split("/")[1], (200, _ANSWER, {}))
            out = json.dumps(answer).encode() if not isinstance(answer, str) else answer.encode()
            self.send_response(status)
            for name, value in {"content-type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _call(base_url: str, model: str, backend: str) -> ProviderResponse | Exception:
    """One call of `model` at `base_url` on `backend`: the answer, or the error raised."""

    async def call() -> ProviderResponse | Exception:
        spec = ModelSpec(provider="openai", model=model, base_url=base_url)
        provider = OpenAIProvider(spec, registry=ClientRegistry(), api_key="sk-test")
        info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
        request = ProviderRequest(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            request=info,
            node_id="answer",
            cycle=0,
            attempt=0,
            max_tokens=5,
            task="risk",
        )
        try:
            return await provider.complete(request)
        except Exception as exc:
            return exc
        finally:
            await provider.aclose()

    return anyio.run(call, backend=backend)


def test_both_routes_send_the_clients_headers_and_body(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with recording_endpoint() as (root, seen):
        answers = [_call(f"{root}/ok/v1", "gpt-4o-mini", b) for b in ("asyncio", "trio")]
    (direct, direct_body), (client, client_body) = seen
    assert answers[0] == answers[1] and isinstance(answers[0], ProviderResponse)
    assert answers[0].text == "hi" and answers[0].provider_model == "served-model"
    assert (
        direct_body
        == client_body
        == {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
        }
    )
    assert direct["authorization"] == "Bearer sk-test"
    assert direct["x-stainless-async"] == "async:asyncio"
    assert client["x-stainless-async"] == "async:trio"
    assert {k: v for k, v in direct.items() if k not in _TRANSPORT_ONLY} == {
        k: v for k, v in client.items() if k not in _TRANSPORT_ONLY
    }


def test_moat_headers_go_to_the_sim_servers_models_only() -> None:
    with recording_endpoint() as (root, seen):
        for model in ("gpt-4o-mini", "llama-3-8b", "sim-small", "sim-large"):
            for backend in ("asyncio", "trio"):
                _call(f"{root}/ok/v1", model, backend)
    sent = [sorted(h for h in headers if h.startswith("x-moat-")) for headers, _ in seen]
    assert sent == [[]] * 4 + [["x-moat-call", "x-moat-task"]] * 4
    call = json.loads(seen[-1][0]["x-moat-call"])
    assert call == {"request": "r1", "seed": 0, "node": "answer", "cycle": 0, "attempt": 0,
                    "span": [0, 0, 2]}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "kind", "message"),
    [
        ("429", RateLimited, "model 'gpt-4o-mini': rate limited: Error code: 429 - slow down"),
        ("500", TransientError, "model 'gpt-4o-mini': server error: Error code: 500 - boom"),
        ("504", ProviderTimeout, "model 'gpt-4o-mini': gateway timeout: Error code: 504"),
        ("404", NodeError, "model 'gpt-4o-mini': request refused: Error code: 404 - no such"),
    ],
)
def test_error_answers_map_alike_on_both_routes(
    path: str, kind: type[Exception], message: str
) -> None:
    with recording_endpoint() as (root, _):
        errors = [_call(f"{root}/{path}/v1", "gpt-4o-mini", b) for b in ("asyncio", "trio")]
    for error in errors:
        assert type(error) is kind
        assert str(error).startswith(message.replace(":", f" at {root}/{path}/v1:", 1))
    assert str(errors[0]) == str(errors[1])
    if isinstance(errors[0], RateLimited) and isinstance(errors[1], RateLimited):
        assert errors[0].retry_after_s == errors[1].retry_after_s == pytest.approx(2.0)


def test_the_request_is_located_without_a_pii_scan_when_it_is_there_verbatim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The call header's span needs the redacted form of the request only when the
    request is not in the latest message as is (a graph that redacted it)."""
    import engine.models._sim_call as sim_call

    def no_scan(value: str) -> Any:
        raise AssertionError(f"scanned {value!r}")

    monkeypatch.setattr(sim_call, "_forms", no_scan)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: hi?"}]
    assert locate_request(messages, {"prompt": "hi?"}) == (1, 3, 6)
