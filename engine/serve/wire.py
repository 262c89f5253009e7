"""The OpenAI chat wire format: requests to graph inputs, results to completions and chunks.

Pure functions on JSON values, with no HTTP framework in them, so the mapping is tested on
its own and the app only moves bytes. The default mapping of a chat request to a graph's
input: the last user message is `input.prompt`, the turns before it are `input.history`
(a list of `{role, content}`), and `user` names the tenant when no API key does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from engine.events import RequestStatus, strict_json
from engine.models.chat_fields import ChatRequestError, chat_field_problem, chat_turns
from engine.requests import show_value
from engine.scheduler.runner import RequestResult
from engine.serve._unsupported import unsupported_problem

__all__ = [
    "ApiError",
    "ChatRequest",
    "answer_text",
    "completion",
    "error_body",
    "moat_headers",
    "parse_chat",
    "stream_chunks",
]


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: status, message, type, the parameter and a code.

    Args:
        status: the HTTP status.
        message: what is wrong and how to fix it.
        type: OpenAI's error `type` (`invalid_request_error`, `rate_limit_error`, ...).
        param: the request field at fault, e.g. `messages[2].content`.
        code: a short machine-readable code.
        headers: extra response headers (`Retry-After`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def error_body(error: ApiError) -> dict[str, Any]:
    """OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`."""
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request, mapped to one graph input."""

    model: str
    input: dict[str, Any]
    """The default mapping: `prompt`, and `history` when there are earlier turns."""
    stream: bool
    include_usage: bool
    user: str | None
    turns: tuple[dict[str, str], ...] = ()
    """Every message, as `{role, content}` with the content as text."""

    def scope(self, tenant: str) -> dict[str, Any]:
        """The names a graph's `serve.input` expressions read (`SERVE_NAMES`)."""
        system = [t["content"] for t in self.turns if t["role"] in ("system", "developer")]
        return {
            "prompt": self.input["prompt"],
            "history": list(self.input.get("history", ())),
            "messages": list(self.turns),
            "system": "\n\n".join(system),
            "user": self.user,
            "tenant": tenant,
        }


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _turns(messages: Any) -> list[dict[str, str]]:
    try:
        return chat_turns(messages)
    except ChatRequestError as exc:
        raise _bad(exc.message, exc.param, exc.code) from exc


_TOOL_ROLES = frozenset({"tool", "function"})
"""The roles of a tool's result (`function`: its legacy name)."""
_SERVED_ROLES = "system, developer, user and assistant"


def _refuse_unanswerable(messages: list[Any], turns: list[dict[str, str]], last: int) -> None:
    """Refuse the turns a graph cannot honour (the mapping would drop them or take them
    for what they are not): an assistant turn's tool calls, a tool's result, and any turn
    after the last user message, the one answered.

    Raises:
        ApiError: 400 naming the message.
    """
    for i, message in enumerate(messages):
        role = turns[i]["role"]
        if role in _TOOL_ROLES:
            raise _bad(
                f"messages[{i}].role {show_value(role)}: a {role} message is the result of "
                "a tool the assistant called, and a graph never calls the client's tools, "
                "so it cannot honour one; send the result as text in a user message (moat "
                f"serve takes the roles {_SERVED_ROLES})",
                f"messages[{i}].role",
                "unsupported_value",
            )
        for name in ("tool_calls", "function_call"):
            if message.get(name):
                raise _bad(
                    f"messages[{i}].{name}: a graph never calls the client's tools, so it "
                    "cannot honour a conversation in which they were called; send those "
                    "turns as text (the tool's result in a user message, say)",
                    f"messages[{i}].{name}",
                    "unsupported_value",
                )
    if last + 1 < len(turns):
        i = last + 1
        raise _bad(
            f"messages[{i}] ({turns[i]['role']}) comes after the last user message, "
            f"messages[{last}]: a graph answers the last user message and cannot honour a "
            "turn after it (an assistant prefill, say); end `messages` with the user "
            "message to answer",
            f"messages[{i}]",
            "unsupported_value",
        )


def parse_chat(body: Any) -> ChatRequest:
    """Check a `/v1/chat/completions` body and map its messages to a graph input.

    Raises:
        ApiError: 400 naming the field at fault: a value OpenAI would refuse, or one
            asking for what a graph cannot give (tools, a response format, logprobs).
    """
    if not isinstance(body, Mapping):
        raise _bad("the request body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("`model` must name a served graph (GET /v1/models lists them)", "model")
    turns = _turns(body.get("messages"))
    last = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
    if last is None:
        raise _bad("`messages` has no user message to answer", "messages", "missing_user")
    _refuse_unanswerable(body["messages"], turns, last)
    data: dict[str, Any] = {"prompt": turns[last]["content"]}
    if last > 0:
        data["history"] = turns[:last]
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("`user` must be a string", "user")
    choices = body.get("n", 1)
    if choices is not None and (type(choices) is not int or choices != 1):
        raise _bad(
            f"`n` must be 1, not {show_value(choices)}: a graph decides one answer per request "
            "(send the request again for another)",
            "n",
        )
    stream = body.get("stream")
    stream = False if stream is None else stream  # (null: unset, as OpenAI takes it)
    if not isinstance(stream, bool):
        raise _bad("`stream` must be true or false", "stream")
    problem = chat_field_problem(body)
    if problem is not None:
        raise _bad(problem[1], problem[0])
    unsupported = unsupported_problem(body)  # (after the kinds: a bad one says so first)
    if unsupported is not None:
        raise _bad(unsupported[1], unsupported[0], unsupported[2])
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return ChatRequest(model, data, stream, include_usage, user, tuple(turns))


def answer_text(output: Mapping[str, Any] | None) -> str:
    """The assistant message: the graph's `answer` output, its only output, or all of its
    outputs as JSON."""
    if not output:
        return ""
    if "answer" in output:
        value = output["answer"]
    elif len(output) == 1:
        value = next(iter(output.values()))
    else:
        value = output
    if value is None:  # a partial answer whose text the deadline cut off
        return ""
    return value if isinstance(value, str) else strict_json(value)


def _decision(result: RequestResult) -> str | None:
    value = (result.output or {}).get("decision")
    return None if value is None else str(value)


def moat_fields(result: RequestResult, graph: str, simulated: bool) -> dict[str, Any]:
    """The `moat` extension field of a completion (`simulated`: a model call of the
    request was answered by the simulated `sim` provider, not a real model)."""
    return {
        "request_id": result.request_id,
        "graph": graph,
        "status": str(result.status),
        "cost_usd": result.cost_usd,
        "latency_ms": round(result.latency_ms, 3),
        "policy_version": result.policy_version,
        "decision": _decision(result),
        "simulated": simulated,
        "output": result.output,
    }


def moat_headers(result: RequestResult, *, simulated: bool = False) -> dict[str, str]:
    """The `x-moat-*` response headers (`x-moat-simulated: true` when the answer comes from
    the simulated `sim` models)."""
    headers = {
        "x-moat-request-id": result.request_id,
        "x-moat-status": str(result.status),
        "x-moat-cost-usd": f"{result.cost_usd:.8f}",
    }
    if result.policy_version is not None:
        headers["x-moat-policy-version"] = str(result.policy_version)
    decision = _decision(result)
    if decision is not None:
        headers["x-moat-decision"] = _header_value(decision)
    if simulated:
        headers["x-moat-simulated"] = "true"
    return headers


_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _header_value(text: str) -> str:
    """`text` as an HTTP header value: as is when it is printable ASCII, else
    percent-encoded as UTF-8 (a graph's decision may be any text, and a line break in a
    header would end it, or start another)."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe=_HEADER_SAFE)


def _usage(tokens: tuple[int, int, int]) -> dict[str, int]:
    return {
        "prompt_tokens": tokens[0],
        "completion_tokens": tokens[1],
        "total_tokens": tokens[0] + tokens[1],
    }


def _finish_reason(result: RequestResult) -> str:
    return "length" if result.status == RequestStatus.PARTIAL else "stop"


def completion(
    result: RequestResult, graph: str, tokens: tuple[int, int, int], created: int | None = None
) -> dict[str, Any]:
    """A `chat.completion` object for an answered request."""
    return {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": graph,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer_text(result.output)},
                "finish_reason": _finish_reason(result),
                "logprobs": None,
            }
        ],
        "usage": _usage(tokens),
        "moat": moat_fields(result, graph, tokens[2] > 0),
    }


CHUNK_CHARS = 64
"""Characters of the answer per streamed chunk."""


def stream_chunks(
    result: RequestResult, graph: str, tokens: tuple[int, int, int], include_usage: bool
) -> Iterator[dict[str, Any]]:
    """The `chat.completion.chunk` objects of a decided answer: the role, the text in
    pieces, the finish reason (with the `moat` field), then the usage when asked for."""
    created = int(time.time())
    base = {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": graph,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**base, "choices": [choice]}

    yield chunk({"role": "assistant", "content": ""})
    text = answer_text(result.output)
    for start in range(0, len(text), CHUNK_CHARS):
        yield chunk({"content": text[start : start + CHUNK_CHARS]})
    yield {**chunk({}, _finish_reason(result)), "moat": moat_fields(result, graph, tokens[2] > 0)}
    if include_usage:
        yield {**base, "choices": [], "usage": _usage(tokens)}
