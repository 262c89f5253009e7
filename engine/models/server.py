"""The `sim` models as an OpenAI-compatible service, without the HTTP: `moat sim-server`.

`engine.serve.sim_app` puts this behind HTTP (Starlette on uvicorn, the stack `moat serve`
uses); everything else a sim-server does is here, free of any protocol, so the models
package keeps no web dependency: the routes, the answers, the errors in OpenAI's shape and
the fault injection.

Any OpenAI client can point at a sim-server (`base_url=http://127.0.0.1:PORT/v1`) and talk
to a simulated model offline: `POST /v1/chat/completions`, `GET /v1/models` and `GET
/v1/models/{model}` (any model name: every name is served, by the profile it maps to).

Models: `sim-small`, `sim-medium`, `sim-large` (or just `small`, ...); any other name maps
to a profile by its look (`*mini*`, `*small*`, `*nano*`, `*haiku*`, `*flash*`, `*8b*` ->
small; `*large*`, `gpt-4o`, `gpt-4.1`, `gpt-5`, `*opus*`, `*70b*`, `*405b*` -> large;
anything else -> medium). `response_format` `json_object` and `json_schema` are honoured;
`stream: true` sends the same answer as OpenAI's server-sent chunks;
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
  seen by this service, so a retry succeeds.

Any other fault is a 400 naming the faults, so a misspelt one is not silently no fault.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.graph.spec import ModelSpec
from engine.models._sim_call import CALL_HEADER, CallContext, parse_call_header, request_text
from engine.models.base import ProviderRequest, ProviderResponse
from engine.models.chat_fields import (
    ChatRequestError,
    chat_field_problem,
    chat_turns,
    decode_chat_body,
)
from engine.models.sim import SIM_PROFILES, SimProvider
from engine.plugin.context import RequestInfo

__all__ = [
    "FAULTS",
    "SIMULATED_HEADERS",
    "SimReply",
    "SimService",
    "error_reply",
    "profile_for_model",
]

_SMALL_MARKS = ("mini", "small", "nano", "haiku", "flash", "8b")
_LARGE_MARKS = ("large", "gpt-4o", "gpt-4.1", "gpt-5", "opus", "70b", "405b")
FAULTS = ("error", "malformed", "rate_limit", "slow")
"""The faults `X-Sim-Fault` may ask for."""
SIMULATED_HEADERS = {"content-type": "application/json", "x-moat-simulated": "true"}
"""The headers of every reply: JSON, and labelled simulated."""


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


@dataclass(frozen=True, slots=True)
class SimReply:
    """One answer of the service: an HTTP status, a JSON body and the reply's own headers
    (the protocol adds `SIMULATED_HEADERS`)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def _json_reply(status: int, value: Any, headers: Mapping[str, str] | None = None) -> SimReply:
    return SimReply(status, json.dumps(value).encode(), headers or {})


def error_reply(
    status: int,
    message: str,
    kind: str,
    headers: Mapping[str, str] | None = None,
    code: str | None = None,
    param: str | None = None,
) -> SimReply:
    """An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return _json_reply(status, {"error": error}, headers)


def _bad_request(exc: ChatRequestError) -> SimReply:
    """The 400 of a chat completion request OpenAI would refuse, naming the field."""
    message = f"bad chat completion request: {exc.message}"
    return error_reply(400, message, "invalid_request_error", code=exc.code, param=exc.param)


def _wrong_method(method: str, path: str, allowed: str) -> SimReply:
    """The 405 of a route asked with another method than the one it takes."""
    shown = path if len(path) <= 120 else path[:117] + "..."
    return error_reply(
        405,
        f"{method[:20]} {shown}: method not allowed; use {allowed}",
        "invalid_request_error",
        {"allow": allowed},
        code="method_not_allowed",
    )


class SimService:
    """What a sim-server answers, request by request, whatever carries the requests.

    Args:
        time_scale: multiplies the simulated latencies (0 answers at once); read at each
            request, so it may change while serving.
        slow_s: how long a `slow` fault makes the answer take, in seconds.
        latency_s: when set, every chat completion takes exactly this long instead of its
            simulated latency (load tests measure what a server adds to a known latency).
    """

    def __init__(
        self, *, time_scale: float = 1.0, slow_s: float = 30.0, latency_s: float | None = None
    ) -> None:
        self.time_scale = time_scale
        self.slow_s = slow_s
        self.latency_s = latency_s
        self._seen_keys: set[str] = set()
        self._providers: dict[tuple[str, int, float], SimProvider] = {}

    async def answer(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> SimReply:
        """The reply to one request; a failure answers 500, it never stops the server.

        `headers` must be found by lower-case name.
        """
        try:
            return await self.route(method.upper(), path, headers, body)
        except Exception as exc:  # one bad request must not take every client down
            message = f"sim-server failed to answer: {type(exc).__name__}: {exc}"
            return error_reply(500, message, "server_error")

    async def route(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> SimReply:
        """The reply of the route `path` names (404 for none, 405 for the wrong method)."""
        sent, path = path, path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            if method != "GET":
                return _wrong_method(method, sent, "GET")
            data = [_model_object(f"sim-{name}") for name in SIM_PROFILES]
            return _json_reply(200, {"object": "list", "data": data})
        model = _model_path(path)
        if model is not None:
            if method != "GET":
                return _wrong_method(method, sent, "GET")
            if not model.strip():
                return error_reply(
                    404, "name a model: GET /v1/models/sim-small", "invalid_request_error"
                )
            return _json_reply(200, _model_object(model))
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                return _wrong_method(method, sent, "POST")
            return await self.chat(headers, body)
        routes = "POST /v1/chat/completions, GET /v1/models and GET /v1/models/MODEL"
        message = f"no route {method} {sent}; the sim-server serves {routes}"
        return error_reply(404, message, "invalid_request_error")

    def _fault(self, headers: Mapping[str, str]) -> str | None:
        """The fault the request asks for (the header's kind, which may be no known fault),
        None for none (or a `-once` fault already seen)."""
        value = headers.get("x-sim-fault", "").strip().lower()
        if not value:
            return None
        kind, once, key = value.partition("-once:")
        if once:
            if key in self._seen_keys:
                return None
            self._seen_keys.add(key)
        return kind

    async def chat(self, headers: Mapping[str, str], raw: bytes) -> SimReply:
        """A chat completion, with the fault the headers ask for."""
        compressed = _compressed(headers)
        if compressed is not None:
            return compressed
        fault = self._fault(headers)
        faulted = _fault_reply(fault, headers)
        if faulted is not None:
            return faulted
        if fault == "slow":
            await anyio.sleep(self.slow_s)
        try:
            body = decode_chat_body(raw or b"{}", headers.get("content-type"))
            if not isinstance(body, dict):
                raise ChatRequestError("the body must be a JSON object", code="invalid_json")
            call = self._call(body, headers)
            stream = _stream_options(body)
        except ChatRequestError as exc:
            return _bad_request(exc)
        except RecursionError:
            message = "bad chat completion request: the JSON is nested too deeply"
            return error_reply(400, message, "invalid_request_error", code="invalid_json")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            message = f"bad chat completion request: {_reason(exc)}"
            return error_reply(400, message, "invalid_request_error", code="invalid_value")
        seed: int = body["seed"] if _is_int(body.get("seed")) else 0
        if self.latency_s is None:
            answer = await self._provider(call.model, seed).complete(call)
        else:  # the simulated latency gives way to the fixed one
            answer = await self._provider(call.model, seed, instant=True).complete(call)
            await anyio.sleep(self.latency_s)
        if fault == "malformed":
            return SimReply(200, b'{"id": "chatcmpl-sim", "choices": [{"message": ')
        completion = _completion_body(call, answer)
        if stream is not None:
            events = _event_stream(completion, include_usage=stream)
            return SimReply(200, events, {"content-type": "text/event-stream"})
        return _json_reply(200, completion)

    def _provider(self, model: str, seed: int, *, instant: bool = False) -> SimProvider:
        profile = profile_for_model(model)
        scale = 0.0 if instant else self.time_scale
        key = (profile, seed, scale)
        if key not in self._providers:
            spec = ModelSpec.model_validate(
                {"provider": "sim", "profile": profile, "seed": seed, "time_scale": scale}
            )
            self._providers[key] = SimProvider(spec)
        return self._providers[key]

    def _call(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> ProviderRequest:
        """The provider call a chat completion body asks for.

        Raises:
            ChatRequestError: a field is missing or of the wrong shape; it names the field.
        """
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ChatRequestError("`model` must name a model, e.g. sim-small", "model")
        # (what a provider takes: content parts other than text are left out of the text)
        messages = chat_turns(body.get("messages"), text_only=False)
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
        problem = chat_field_problem(body)
        if problem is not None:
            raise ChatRequestError(problem[1], problem[0])
        choices, task = body.get("n"), body.get("_task")
        if choices is not None and (not _is_int(choices) or choices != 1):
            raise ChatRequestError("`n` must be 1: the sim answers with one choice", "n")
        if task is not None and not isinstance(task, str):
            raise ChatRequestError("`_task` must be a string, the task's name", "_task")
        # either name may carry the limit, or be null (unset): the stricter one sent holds
        limits = [body.get("max_completion_tokens"), body.get("max_tokens")]
        max_tokens = min((n for n in limits if n is not None), default=None)
        temperature = body.get("temperature")
        return ProviderRequest(
            model=model,
            messages=messages,
            request=info,
            node_id=context.node_id,
            cycle=context.cycle,
            attempt=context.attempt,
            schema=schema,
            json_mode=json_mode,
            task=headers.get("x-moat-task") or headers.get("x-sim-task") or task,
            max_tokens=max_tokens,
            temperature=temperature,
        )


def _compressed(headers: Mapping[str, str]) -> SimReply | None:
    """The 415 of a compressed body (as `moat serve` answers it), else None."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    message = (
        f"the request body is sent with Content-Encoding: {encoding[:40]}; the sim-server "
        "reads the JSON as it is: send it without a Content-Encoding"
    )
    return error_reply(415, message, "invalid_request_error", code="unsupported_content_encoding")


def _fault_reply(fault: str | None, headers: Mapping[str, str]) -> SimReply | None:
    """The reply a fault decides without the body (a rate limit, an error, a 400 for a
    fault that is none), else None."""
    if fault is not None and fault not in FAULTS:
        faults = ", ".join(FAULTS)
        message = f"X-Sim-Fault: no fault {fault!r}; faults: {faults} (FAULT-once:KEY: once)"
        return error_reply(400, message, "invalid_request_error", code="invalid_header")
    if fault == "rate_limit":
        after = _seconds(headers.get("x-sim-retry-after", "1"))
        if after is None:
            message = "X-Sim-Retry-After: give a number of seconds of at least 0, e.g. 1.5"
            return error_reply(400, message, "invalid_request_error", code="invalid_header")
        return error_reply(
            429,
            "simulated rate limit",
            "rate_limit_error",
            {"retry-after": f"{after:g}", "retry-after-ms": f"{after * 1000:g}"},
        )
    if fault == "error":
        return error_reply(500, "simulated server error", "server_error")
    return None


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "moat-sim"}


def _model_path(path: str) -> str | None:
    """The model of a `/v1/models/{model}` path, else None."""
    for prefix in ("/v1/models/", "/models/"):
        if path.startswith(prefix):
            return path.removeprefix(prefix)
    return None


def _seconds(text: str) -> float | None:
    """`text` as a finite number of seconds of at least 0, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < math.inf else None


def _reason(exc: Exception) -> str:
    """What is wrong with a request, from the error reading it raised."""
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        digits = sys.get_int_max_str_digits()
        return f"the body has a number with more than {digits} digits"
    return str(exc)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _response_format(raw: object) -> tuple[Mapping[str, Any] | None, bool]:
    """(the JSON Schema asked for, whether any JSON object is asked for)."""
    if raw is None:
        return None, False
    if not isinstance(raw, Mapping):
        raise ChatRequestError(
            '`response_format` must be an object, e.g. {"type": "json_object"}', "response_format"
        )
    if raw.get("type") != "json_schema":
        return None, raw.get("type") == "json_object"
    spec = raw.get("json_schema") or {}
    schema = (spec.get("schema") if isinstance(spec, Mapping) else spec) or {"type": "object"}
    if not isinstance(schema, Mapping):
        param = "response_format.json_schema.schema"
        raise ChatRequestError(f"`{param}` must be a JSON Schema object", param)
    return schema, False


def _context(body: Mapping[str, Any], headers: Mapping[str, str], digest: str) -> CallContext:
    """The call's context: sent by moat's `openai` provider, else guessed from the body."""
    sent = headers.get(CALL_HEADER.lower())
    if sent:
        try:
            return parse_call_header(sent)
        except ValueError as exc:
            raise ChatRequestError(str(exc), code="invalid_header") from exc
    labels, seed = body.get("_labels"), body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ChatRequestError("`seed` must be an integer", "seed")
    return CallContext(
        request_id=str(body.get("user") or f"http-{digest}"),
        seed=seed or 0,
        node_id="http",
        cycle=0,
        attempt=0,
        labels=labels if isinstance(labels, Mapping) else {},
    )


def _stream_options(body: Mapping[str, Any]) -> bool | None:
    """None for an answer in one piece; for `stream: true`, whether the usage is asked for
    (`stream_options.include_usage`)."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ChatRequestError("`stream` must be true or false", "stream")
    if not stream:
        return None
    options = body.get("stream_options") or {}
    return isinstance(options, Mapping) and bool(options.get("include_usage"))


def _event_stream(completion: Mapping[str, Any], *, include_usage: bool) -> bytes:
    """A completion as OpenAI's server-sent chunks, sent at once: the role and the text,
    the finish reason, the usage when asked for, then `[DONE]`."""
    base = {key: completion[key] for key in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = completion["choices"][0]

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk(dict(choice["message"]), None), chunk({}, choice["finish_reason"])]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    events = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return events + b"data: [DONE]\n\n"


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
