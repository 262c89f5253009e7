"""The chat API's HTTP edges in OpenAI's shape: a request body read within its limit and
decoded, and errors and streamed answers as responses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from engine.events import RequestStatus, strict_json
from engine.models.chat_fields import ChatRequestError, decode_chat_body
from engine.scheduler.runner import RequestResult
from engine.serve.wire import ApiError, ChatRequest, error_body, moat_headers, stream_chunks


def _model_object(name: str) -> dict[str, Any]:
    """A served graph as OpenAI's model object."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "moat"}


_PATH_SHOWN = 120
"""Characters of an unknown path an error repeats (a client may send kilobytes of it)."""


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) in OpenAI's shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    path = request.url.path
    shown = path if len(path) <= _PATH_SHOWN else path[: _PATH_SHOWN - 3] + "..."
    message = f"{request.method[:20]} {shown}: {detail}"
    if status == 404:
        message += "; moat serves POST /v1/chat/completions and GET /v1/models[/MODEL]"
    allow = next((v for k, v in headers.items() if k.lower() == "allow"), None)
    if status == 405 and allow:
        methods = sorted(m.strip() for m in allow.split(","))  # (Starlette's order varies)
        message += f"; {shown} takes {' or '.join(methods)}"
    return _error_response(ApiError(status, message, code=f"http_{status}", headers=headers))


def _error_response(error: ApiError) -> Response:
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


def _client_closed() -> ApiError:
    """The status of a request whose client went away (nginx's 499: nobody reads it, but
    the metrics count it apart from moat's own errors)."""
    return ApiError(499, "the client closed the request", code="client_closed")


def _too_large(limit: int, graph: str | None) -> ApiError:
    whose = f"the limit of graph {graph!r}" if graph else "the most any served graph takes"
    return ApiError(
        413,
        f"the request body is over {limit} bytes, {whose} (`limits.max_request_bytes`)",
        code="request_too_large",
        headers={"connection": "close"},  # uvicorn then reads no more of the body
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is over `limit` bytes (never held), and
    with a 415 if it is compressed (it would read as bytes that are not JSON)."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(
            415,
            f"the request body is sent with Content-Encoding: {encoding[:40]}; moat serve "
            "reads the JSON as it is: send it without a Content-Encoding",
            code="unsupported_content_encoding",
            headers={"connection": "close"},  # its body is not read
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, None)
    chunks: list[bytes] = []
    size = 0
    while True:  # the ASGI messages themselves: Starlette's stream generator costs more
        message = await request.receive()
        if message["type"] == "http.disconnect":  # gone before its request was whole
            raise _client_closed()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, None)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _decode(raw: bytes, content_type: str | None = None) -> Any:
    """The JSON of a request body (`decode_chat_body`; `content_type`: its Content-Type).

    Raises:
        ApiError: 400 `invalid_json` saying what is wrong with it.
    """
    try:
        return decode_chat_body(raw, content_type)
    except ChatRequestError as exc:
        raise ApiError(400, exc.message, param=exc.param, code=exc.code) from exc


_STATUS_ERRORS: Mapping[RequestStatus, tuple[int, str, str]] = {
    RequestStatus.INVALID_INPUT: (400, "invalid_request_error", "invalid_input"),
    RequestStatus.FAILED: (500, "server_error", "request_failed"),
    RequestStatus.DEADLINE_EXCEEDED: (504, "timeout", "deadline_exceeded"),
}


def _raise_for_status(
    result: RequestResult, param: str = "messages", invalid: str | None = None
) -> None:
    """The HTTP error of a request that has no answer: 400 (`param`: the field at fault;
    `invalid`: what is wrong with the input, else the request's error), 500 or 504."""
    mapped = _STATUS_ERRORS.get(result.status)
    if mapped is None:
        return
    status, kind, code = mapped
    rid = result.request_id
    if result.status == RequestStatus.INVALID_INPUT:
        message = f"{invalid or result.error} (request {rid})"
    elif result.status == RequestStatus.DEADLINE_EXCEEDED:
        message = f"request {rid} passed the graph's deadline; `moat report {rid}` says where"
    else:  # no internals: the node's error stays in the store
        message = f"request {rid} failed; `moat report {rid}` says why"
    raise ApiError(
        status,
        message,
        type=kind,
        param=param if status == 400 else None,
        code=code,
        headers=moat_headers(result),
    )


def _sse(
    result: RequestResult,
    chat: ChatRequest,
    tokens: tuple[int, int, int],
    headers: dict[str, str],
) -> Response:
    """The decided answer as server-sent events in OpenAI's chunk format."""

    async def events() -> AsyncIterator[bytes]:
        for chunk in stream_chunks(result, chat.model, tokens, chat.include_usage):
            yield b"data: " + strict_json(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache"},
    )
