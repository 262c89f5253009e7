"""The `openai` provider: any OpenAI-compatible chat endpoint through the official async client.

One `AsyncOpenAI` client is shared per (base URL, API key) across every model and gateway
of the process (`ClientRegistry`), with the client's own retries off: the gateway retries,
so attempts are counted and recorded once. Cancellation is real: cancelling the calling
task aborts the HTTP request and drops the connection.

CPU per call matters (a call costs moat more than the rest of a request through `moat
serve`). Plain-HTTP endpoints without a proxy (self-hosted models, `moat sim-server`) are
called, when the event loop is asyncio, through a route prepared once per client
(`engine.models._direct_http`): keep-alive connections of its own sending the client's own
URL and headers, one JSON dump out and one parse back per call. Everything else (TLS endpoints,
proxies, other event loops) goes through the client's documented raw route (`client.post`
with `cast_to=Response`) on httpx2's transport, each body read within the same size limit
(`engine.models._answer_limit`); either way the few answer fields moat
reads come from one parse of the JSON body, skipping the SDK's typed transform of the
parameters and its pydantic models of the answer.

moat's own headers (`X-Moat-Call`, `X-Moat-Task`: the request, node, cycle and attempt
ids, the benchmark's hidden labels, the task) go only to `moat sim-server`'s models
(`sim-small`, `sim-medium`, `sim-large`), which need them to answer as the embedded `sim`
would; no other endpoint receives anything about a request beyond the call itself.

The output limit the gateway reserved for is always sent: as `max_completion_tokens` to
OpenAI's own API and Azure OpenAI (which deprecated `max_tokens` and refuse it for reasoning
models) and to reasoning models (`o1`, `o3`, `o4-mini`, `gpt-5`, ...) wherever they are
served; as `max_tokens` to every other OpenAI-compatible server (vLLM, Ollama, llama.cpp,
LM Studio), since some of those ignore the newer name and would generate without a limit.
An answer without usable `usage` is flagged (`usage_reported=False`) so the gateway charges
the reservation rather than a guess.

Errors map onto moat's: 429 -> `RateLimited` and 503, 408 -> `Unavailable` (Retry-After
honoured, billed nothing), timeouts, connections lost after the request was sent and
gateway timeouts (504, 524) ->
`ProviderTimeout`/`ResponseLost` (the provider may bill them), requests that never left
(the connection refused or timed out, the host not found, a URL the HTTP client cannot call)
-> `ConnectFailed`, billed nothing, 5xx -> `TransientError`, anything else (400, 401,
404, ...) -> `NodeError`. A 200 whose body cannot be read (not JSON, not UTF-8, nested past
the parser) or holds no chat completion is a `ResponseLost` too: the endpoint says it
answered, so it may bill the generation. A 200 holding an `error` object (gateways pass
upstream errors on so) is that error, mapped by the HTTP status in its `code` when it names
one.

Redirects are followed within the endpoint's own origin only: one to another origin (scheme,
host or port) is refused with a `NodeError` saying where it pointed and to set `base_url`
there, so neither the prompt nor the key leaves for a server the graph never named; so is a
301, 302 or 303, which would repeat the call as a GET without the prompt
(`engine.models._redirects`).
"""

from __future__ import annotations

import contextlib
import email.utils
import importlib.util
import json
import math
import os
import re
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
import openai
import sniffio
from openai import RequestOptions

from engine.errors import NodeError, RateLimited, TransientError
from engine.graph.spec import ModelSpec, endpoint_problem
from engine.models._answer_limit import bound_answers
from engine.models._preflight import api_key_env, endpoint
from engine.models._redirects import RedirectRefused, redirect_error, refuse_redirects
from engine.models._sim_call import call_context, call_headers
from engine.models.base import (
    ConnectFailed,
    ProviderRequest,
    ProviderResponse,
    ProviderTimeout,
    ResponseLost,
    Unavailable,
    connect_reason,
)
from engine.models.prices import SIM_SERVER_PRICES

if TYPE_CHECKING:
    from engine.models._direct_http import DirectRoute

__all__ = [
    "ClientRegistry",
    "OpenAIProvider",
    "endpoint_label",
    "output_limit_field",
    "parse_retry_after",
    "status_error",
]

_NO_KEY = "sk-no-key-needed"
"""Sent to self-hosted endpoints (vLLM, Ollama, llama.cpp) that need no key."""
_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)")
"""Models that refuse `max_tokens` and need `max_completion_tokens`."""
_GATEWAY_TIMEOUTS = (504, 524)
"""A proxy gave up waiting while the model may still be generating (and billing)."""
_RETRY_LATER = (408, 503)
"""The endpoint took no call for now (unavailable, or it gave up waiting for the request):
retried, after its Retry-After when it says one."""


def output_limit_field(base_url: str | None, model: str) -> str:
    """The request field that carries the output limit for this endpoint and model."""
    host = (urlsplit(base_url).hostname or "") if base_url else "api.openai.com"
    if host == "api.openai.com" or host.endswith(".openai.azure.com"):
        return "max_completion_tokens"
    if _REASONING_MODEL.match(model.lower()):
        return "max_completion_tokens"
    return "max_tokens"


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date);
    None when neither says a finite time."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds):  # "inf" and "nan" parse as floats too
            return max(0.0, seconds)
    raw = lowered.get("retry-after")
    if raw:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return None


def endpoint_label(base_url: str) -> str:
    """`base_url` as errors show it: without credentials, query or trailing slash."""
    url = urlsplit(base_url)
    host = url.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if url.port is not None:
        host = f"{host}:{url.port}"
    return f"{url.scheme}://{host}{url.path.rstrip('/')}"


def direct_http(base_url: str | None) -> bool:
    """Whether `base_url` is a plain-HTTP endpoint that no proxy variable routes elsewhere."""
    if not base_url:
        return False
    url = httpx2.URL(base_url)
    if url.scheme != "http" or not url.host:
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(url.host))


def _on_asyncio() -> bool:
    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def http_client_for(base_url: str | None) -> httpx2.AsyncClient | None:
    """The HTTP client for calls to `base_url`: the SDK's aiohttp-backed one for a direct
    plain-HTTP endpoint on asyncio (with aiohttp installed), else None (httpx2's default)."""
    if not direct_http(base_url) or importlib.util.find_spec("aiohttp") is None:
        return None
    return openai.DefaultAioHttpClient() if _on_asyncio() else None


def direct_route_for(base_url: str | None) -> bool:
    """Whether chat completions to `base_url` take the prepared route
    (`engine.models._direct_http`): a direct plain-HTTP endpoint, on asyncio, with
    httptools (the `serve` extra) installed."""
    return (
        direct_http(base_url)
        and importlib.util.find_spec("httptools") is not None
        and _on_asyncio()
    )


@dataclass(slots=True)
class _Shared:
    client: openai.AsyncOpenAI
    route: DirectRoute | None
    """The prepared route to a direct plain-HTTP endpoint on asyncio, else None."""
    users: int = 0


class ClientRegistry:
    """Shared `AsyncOpenAI` clients, one per (base URL, key), closed with their last user."""

    def __init__(self) -> None:
        self._shared: dict[tuple[str | None, str], _Shared] = {}

    def acquire(
        self, base_url: str | None, api_key: str, headers: Mapping[str, str] | None = None
    ) -> openai.AsyncOpenAI:
        """The shared client for `(base_url, api_key)`; pair with `release`."""
        key = (base_url, api_key + repr(sorted((headers or {}).items())))
        shared = self._shared.get(key)
        if shared is None:
            endpoint = base_url or os.environ.get("OPENAI_BASE_URL")
            direct = direct_route_for(endpoint)
            # the prepared route carries the calls of a direct endpoint: no aiohttp session
            # (a connector, a cookie jar) for a client that only lends the route its settings;
            # any other reads each body within the route's size limit
            http_client = None
            if not direct:
                http_client = refuse_redirects(
                    bound_answers(http_client_for(endpoint) or openai.DefaultAsyncHttpxClient())
                )
            client = openai.AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                default_headers=dict(headers) if headers else None,
                http_client=http_client,
            )
            route = None
            if direct:
                from engine.models._direct_http import DirectRoute

                # headers the route cannot frame (not Latin-1) stay with the client's
                # route, which says what is wrong with them when a call is made
                with contextlib.suppress(ValueError):
                    route = DirectRoute(client)
            shared = self._shared[key] = _Shared(client, route)
        shared.users += 1
        return shared.client

    def route(self, client: openai.AsyncOpenAI) -> DirectRoute | None:
        """The prepared route of a shared client, if its endpoint has one."""
        for shared in self._shared.values():
            if shared.client is client:
                return shared.route
        return None

    async def release(self, client: openai.AsyncOpenAI) -> None:
        """Give a client back; the last user closes its connections."""
        route = None
        for key, shared in list(self._shared.items()):
            if shared.client is client:
                shared.users -= 1
                if shared.users > 0:
                    return
                del self._shared[key]
                route = shared.route
                break
        if route is not None:
            await route.aclose()
        await client.close()

    def __len__(self) -> int:
        return len(self._shared)


CLIENTS = ClientRegistry()
"""The process-wide registry the providers share."""


class OpenAIProvider:
    """Calls one model of an OpenAI-compatible endpoint.

    Args:
        spec: the model's spec (`model`, `base_url`, `api_key_env`).
        headers: extra HTTP headers on every request (tests use them to inject faults).
        registry: where to get the shared client (the process-wide one by default).
        api_key: the key itself, instead of reading `spec.api_key_env` (or
            `OPENAI_API_KEY`) from the environment.

    Raises:
        NodeError: the spec names no model, no key is set for api.openai.com, or the
            endpoint is no http(s) URL.
    """

    name = "openai"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        headers: Mapping[str, str] | None = None,
        registry: ClientRegistry | None = None,
        api_key: str | None = None,
    ) -> None:
        if not spec.model:
            raise NodeError("an `openai` model needs `model:` (the provider's model name)")
        self.spec = spec
        self.model = spec.model
        env_name = api_key_env(spec)
        key = api_key or os.environ.get(env_name)
        if not key:
            if spec.base_url is None:
                raise NodeError(
                    f"model '{spec.model}': no API key; set the environment variable "
                    f"{env_name}, or point `base_url` at a self-hosted endpoint"
                )
            key = _NO_KEY
        url, source = endpoint(spec)
        problem = endpoint_problem(url)
        if problem is not None:  # the client would fail every call without sending it
            raise NodeError(
                f"model '{spec.model}': the endpoint {url!r} (from {source}) {problem}; "
                "give the endpoint's full URL, such as http://127.0.0.1:8000/v1"
            )
        base_url = spec.base_url or os.environ.get("OPENAI_BASE_URL")
        self._limit_field = output_limit_field(base_url, spec.model)
        self._sim_server = spec.model in SIM_SERVER_PRICES
        """Whether the model is one of `moat sim-server`'s, which gets moat's own headers."""
        self._registry = registry if registry is not None else CLIENTS
        self._client: openai.AsyncOpenAI | None = self._registry.acquire(
            spec.base_url, key, headers
        )
        self._route = self._registry.route(self._client)
        self._who = f"model '{spec.model}' at {endpoint_label(str(self._client.base_url))}"
        """Who answers, as errors name it: the model and its endpoint."""

    async def aclose(self) -> None:
        """Release this provider's hold on the shared client."""
        client, self._client, self._route = self._client, None, None
        if client is not None:
            await self._registry.release(client)

    def _body(self, call: ProviderRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in call.messages]}
        if call.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": dict(call.schema), "strict": False},
            }
        elif call.json_mode:
            body["response_format"] = {"type": "json_object"}
        if call.max_tokens is not None:
            body[self._limit_field] = call.max_tokens
        if call.temperature is not None:
            body["temperature"] = call.temperature
        return body

    def _headers(self, call: ProviderRequest) -> dict[str, str] | None:
        """moat's own headers, for `moat sim-server` only: they let it answer exactly as
        the embedded `sim` would; any other endpoint gets none of them."""
        if not self._sim_server:
            return None
        headers = call_headers(call_context(call))
        if call.task is not None:
            headers["X-Moat-Task"] = call.task
        return headers

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        """Make one HTTP call; errors are mapped as the module docstring says."""
        if self._client is None:
            raise NodeError(f"model '{self.model}': provider used after aclose()")
        if self._route is not None:
            body = await self._direct(self._route, call)
        else:
            body = await self._through_client(self._client, call)
        return _response(self.model, self._who, body)

    async def _direct(self, route: DirectRoute, call: ProviderRequest) -> Any:
        """The call over the prepared route; the parsed answer body."""
        status, headers, content = await route.post(
            self._who, _PATH, self._body(call), self._headers(call)
        )
        if status >= 400:
            raise status_error(self._who, status, headers, _status_message(status, content))
        return _json(self._who, content)

    async def _through_client(self, client: openai.AsyncOpenAI, call: ProviderRequest) -> Any:
        """The call through the client's documented raw route (`client.post` with
        `cast_to=Response`): its connection pool, auth, headers and error mapping, without
        its typed transform of the parameters and pydantic models of the answer."""
        headers = self._headers(call)
        options: RequestOptions = {"headers": headers} if headers else {}
        try:
            raw = await client.post(
                _PATH, cast_to=httpx2.Response, body=self._body(call), options=options
            )
        except openai.APIError as exc:
            raise _map_error(self._who, exc) from exc
        except ResponseLost as exc:  # a body past the size limit (`bound_answers`)
            raise ResponseLost(f"{self._who}: {exc}") from None
        except RedirectRefused as exc:  # a redirect refused (`refuse_redirects`)
            raise redirect_error(self._who, exc.status, exc.target, cross=exc.cross) from None
        return _json(self._who, raw.content)


def _json(who: str, content: bytes) -> Any:
    """The JSON of a 200 answer; one that cannot be read may still have been billed."""
    try:
        return _loads(content)
    except ValueError as exc:
        raise ResponseLost(f"{who}: unreadable response body ({exc})") from exc


def _loads(content: bytes) -> Any:
    """`json.loads`, with every way a body can fail to be JSON raised as `ValueError`: not
    JSON, not UTF-8, or nested deeper than the parser recurses."""
    try:
        return json.loads(content)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_PATH = "/chat/completions"


def _response(model: str, who: str, body: Any) -> ProviderResponse:
    """The answer in a chat completion body, read as leniently as the SDK's own models
    (a missing field is None, nothing is coerced); an error object or a body holding no
    completion raises (`_not_a_completion`)."""
    choice = _first_choice(body)
    if choice is None:
        raise _not_a_completion(who, body)
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) and (content is not None or not isinstance(message, dict)):
        raise _not_a_completion(who, body)
    usage = _usage(body.get("usage"))
    provider_model = body.get("model")
    finish = choice.get("finish_reason")
    return ProviderResponse(
        text=content or "",
        provider_model=provider_model
        if isinstance(provider_model, str) and provider_model
        else model,
        input_tokens=usage[0] if usage else 0,
        output_tokens=usage[1] if usage else 0,
        simulated=body.get("system_fingerprint") == "moat-sim",
        usage_reported=usage is not None,
        finish_reason=finish if isinstance(finish, str) and finish else None,
    )


def _first_choice(body: Any) -> dict[str, Any] | None:
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    return choices[0]


def _not_a_completion(who: str, body: Any) -> Exception:
    """moat's error for a 200 whose JSON is no chat completion: the error it holds (an
    error answer, billed nothing), or what is missing (it may have been billed)."""
    error = body.get("error") if isinstance(body, dict) else None
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        said = f"answered 200 with an error: {_shown(message)}"
        if type(code) is int and 400 <= code < 600:
            return status_error(who, code, {}, f"Error code: {code} ({said})")
        return TransientError(f"{who}: {said}")
    return ResponseLost(f"{who}: malformed response ({_missing(body)})")


def _missing(body: Any) -> str:
    """What keeps `body` from being a chat completion."""
    if not isinstance(body, dict):
        return f"the body is {_kind(body)}, not an object"
    choices = body.get("choices")
    if not isinstance(choices, list):
        return "no `choices`" if choices is None else f"`choices` is {_kind(choices)}"
    if not choices:
        return "`choices` is empty"
    if not isinstance(choices[0], dict):
        return f"`choices[0]` is {_kind(choices[0])}"
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return f"`choices[0].message` is {_kind(message)}"
    return f"`choices[0].message.content` is {_kind(message.get('content'))}, not text"


def _kind(value: Any) -> str:
    """`value`'s JSON kind, for a message."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "an array", dict: "an object"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _shown(value: Any, limit: int = 200) -> str:
    """`value` as text for an error message, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_MAX_USAGE_TOKENS = 2**31 - 1
"""More tokens than any model reads or writes in one call, by orders of magnitude."""


def _usage(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens when the body reports both as counts, else None.

    A lax endpoint's `usage` may be missing, partial, null or hold words, negatives or
    counts no call can reach (which no store column holds either): none of those can be
    charged as is."""
    if not isinstance(usage, dict):
        return None
    counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    if all(type(n) is int and 0 <= n <= _MAX_USAGE_TOKENS for n in counts):
        return counts  # type: ignore[return-value]
    return None


_AIOHTTP_CONNECT = ("ClientConnectorError",)
"""aiohttp's errors of a connection never made (DNS, refused, unreachable, TLS; their
subclasses too, such as `ClientConnectorDNSError`)."""
_AIOHTTP_LOST = ("ServerDisconnectedError", "ClientOSError", "ClientPayloadError")
"""aiohttp's errors of a connection that broke after it was made."""
_NEVER_SENT = ("ConnectError", "ConnectTimeout", "UnsupportedProtocol")
"""httpx's (and httpx2's) errors raised before a byte of the request went out: no
connection could be made (refused, DNS, TLS, timed out), or the URL names no protocol the
client speaks."""


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`'s chain of causes (not `exc` itself), nearest first."""
    causes: list[BaseException] = []
    seen = exc.__cause__
    while seen is not None and len(causes) < 8:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    return causes


def _kind_of(exc: BaseException, names: tuple[str, ...]) -> bool:
    """Whether `exc` is of a class named in `names`, or of a subclass of one (by name: the
    HTTP libraries are told apart without importing them)."""
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def status_error(who: str, status: int, headers: Mapping[str, str], message: str) -> Exception:
    """moat's error for an HTTP error status of the endpoint (`message` says what it said;
    `who`, the model and endpoint, as `model 'NAME' at URL`)."""
    if status == 429:
        return RateLimited(
            f"{who}: rate limited: {message}",
            retry_after_s=parse_retry_after(dict(headers)),
        )
    if status in _GATEWAY_TIMEOUTS:
        return ProviderTimeout(f"{who}: gateway timeout: {message}")
    if status in _RETRY_LATER:
        what = "server error" if status >= 500 else "request timeout"
        return Unavailable(
            f"{who}: {what}: {message}", retry_after_s=parse_retry_after(dict(headers))
        )
    if status >= 500:
        return TransientError(f"{who}: server error: {message}")
    return NodeError(f"{who}: request refused: {message}")


def _status_message(status: int, content: bytes) -> str:
    """What the official client says of an error answer: the status and, when the body is
    OpenAI's error object, its message."""
    text = f"Error code: {status}"
    try:
        body = _loads(content)
    except ValueError:
        return text
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"{text} - {message}" if isinstance(message, str) and message else text


def _map_error(who: str, exc: openai.APIError) -> Exception:
    if isinstance(exc, openai.APIConnectionError):
        return _connection_error(who, exc)
    if isinstance(exc, openai.APIStatusError):
        return status_error(who, exc.status_code, exc.response.headers, exc.message)
    if isinstance(exc, openai.APIResponseValidationError):
        return TransientError(f"{who}: malformed response: {exc.message}")
    return NodeError(f"{who}: {exc.message}")


def _connection_error(who: str, exc: openai.APIConnectionError) -> Exception:
    """A connection never made is not billed; one lost after sending may be."""
    # by name: the client's HTTP library is `httpx` or its successor `httpx2`, by version,
    # over its own transport or aiohttp's (whose errors the SDK's adapter maps coarsely:
    # a server hanging up after the request arrives as a "connect timeout", so aiohttp's
    # own error below it decides)
    causes = _causes(exc)
    if any(_kind_of(cause, _AIOHTTP_CONNECT) for cause in causes):
        return ConnectFailed(f"{who}: could not connect ({_never_sent_reason(exc, causes)})")
    if any(_kind_of(cause, _AIOHTTP_LOST) for cause in causes):
        return ResponseLost(f"{who}: connection lost after sending ({exc.message})")
    if causes and type(causes[0]).__name__ in _NEVER_SENT:
        return ConnectFailed(f"{who}: could not connect ({_never_sent_reason(exc, causes)})")
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(f"{who}: the endpoint did not answer in time")
    return ResponseLost(f"{who}: connection lost after sending ({exc.message})")


def _never_sent_reason(exc: openai.APIConnectionError, causes: list[BaseException]) -> str:
    """Why no connection was made, in a few words: the operating system's reason when one
    says it (`connection refused`, `host not found: ...`), else the HTTP library's."""
    if reason := connect_reason(exc.__cause__):
        return reason
    for cause in causes:
        text = str(cause)
        if _kind_of(cause, ("UnsupportedProtocol",)) and "protocol" not in text:
            return f"no http:// or https:// URL: {text}"  # (aiohttp's says only the URL)
        if text:
            return text
    return exc.message
