"""A chat request as a graph's input: the graph's `serve.input` mapping or the default
one, and the field of the chat request that an invalid input came from."""

from __future__ import annotations

import re
from typing import Any

from engine.errors import EvaluationError
from engine.expr.expression import compile_expr
from engine.expr.wording import quoted
from engine.graph.compiled import Graph
from engine.serve.wire import ApiError, ChatRequest


def _graph_input(graph: Graph, chat: ChatRequest, tenant: str) -> dict[str, Any]:
    """The graph's input: its `serve.input` mapping, else the default one; `tenant` is
    set when the graph's input declares it.

    Raises:
        ApiError: 400 when a mapping expression cannot evaluate on this request.
    """
    mapping = graph.spec.serve.input if graph.spec.serve is not None else None
    if not mapping:
        data = dict(chat.input)
    else:
        scope = chat.scope(tenant)
        data = {}
        for field, source in mapping.items():
            try:
                data[field] = compile_expr(source).evaluate(scope)
            except EvaluationError as exc:
                raise ApiError(
                    400,
                    f"graph {graph.name!r} maps `messages` to its input with "
                    f"serve.input.{field}, which this request cannot give: {exc}",
                    param="messages",
                    code="invalid_input",
                ) from exc
    if "tenant" in graph.input_schema.get("properties", {}):
        data["tenant"] = tenant
    return data


_INPUT_FIELD = re.compile(r"^request: input ([A-Za-z_]\w*)")
"""The input property whose value the graph's input check refused."""


def _input_error(error: str | None, graph: Graph) -> str | None:
    """An invalid input's message, naming the graph's `serve.input` expression when the
    value refused came from it (the client sent a valid request: the value is the
    mapping's, e.g. `rules: user` gave none to a graph that wants text)."""
    mapping = graph.spec.serve.input if graph.spec.serve is not None else None
    found = _INPUT_FIELD.match(error or "")
    if not mapping or found is None or found[1] not in mapping:
        return error
    field = found[1]
    source = quoted(str(mapping[field]))
    return (
        f"graph {graph.name!r} sets input.{field} with serve.input.{field}: {source}, "
        f"whose value for this request its input refuses: {error}"
    )


_INPUT_AT = re.compile(r"^request: input (prompt|history/(\d+))\b")
"""Where the graph's input check found a request's problem, in a default mapping's
input (the last user message is `prompt`, the turns before it `history`)."""


def _input_param(error: str | None, chat: ChatRequest, graph: Graph) -> str:
    """The field of the chat request that an invalid input came from: `messages[2].content`
    where the default mapping says which message it was, else `messages`."""
    found = _INPUT_AT.match(error or "")
    if found is None or (graph.spec.serve is not None and graph.spec.serve.input):
        return "messages"
    index = int(found[2]) if found[2] is not None else len(chat.input.get("history") or ())
    return f"messages[{index}].content"
