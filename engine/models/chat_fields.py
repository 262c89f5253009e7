"""OpenAI's chat completion requests, read and checked as OpenAI checks them, for servers
that take requests in its format: `moat serve` and `moat sim-server`.

Neither uses most of the fields (a graph's policy chooses the models and their settings;
the simulated models ignore sampling), but a client that sends one wrongly should learn it
from them as it would from OpenAI, rather than in production. Pure functions on bytes and
JSON values, with no HTTP framework in them; each server answers its own error from the
problem found (`ChatRequestError`, or the `(param, message)` of `chat_field_problem`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

from engine.requests import show_value

__all__ = ["ROLES", "ChatRequestError", "chat_field_problem", "chat_turns", "decode_chat_body"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
"""The roles of OpenAI's chat messages."""


class ChatRequestError(ValueError):
    """A chat completion request OpenAI would refuse: a 400 in its error shape.

    Args:
        message: what is wrong and how to fix it.
        param: the request field at fault (`messages[2].role`), None for the whole body.
        code: OpenAI's short machine-readable code.
    """

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# -- the body ---------------------------------------------------------------------------


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each once (JSON readers differ on which of two counts:
    a proxy in front may read the first `model` where the server would read the last)."""
    data = dict(pairs)
    if len(data) == len(pairs):
        return data
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ChatRequestError(
                f"the request body has the key {show_value(key)} twice in one object; JSON "
                "readers differ on which one counts, so send each key once",
                key[:100],
                "invalid_json",
            )
        seen.add(key)
    return data  # (not reached: a key was there twice)


def _not_json(constant: str) -> Any:
    """`NaN`, `Infinity` and `-Infinity`, which Python's reader takes and JSON has not."""
    raise ChatRequestError(
        f"the request body is not valid JSON: {constant} is not a JSON number (JSON has no "
        "NaN or Infinity); send a finite number, or null",
        code="invalid_json",
    )


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent, refused if no 64-bit float holds it
    (`1e999` would read as infinity)."""
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ChatRequestError(
            f"the request body is not valid JSON: the number {shown} is out of range (past "
            "a 64-bit float, it would read as Infinity, which JSON has not); send a finite "
            "number",
            code="invalid_json",
        )
    return value


def decode_chat_body(raw: bytes, content_type: str | None = None) -> Any:
    """The JSON of a request body, read one way only: standard JSON (no NaN or Infinity),
    each key once per object.

    Args:
        content_type: the body's Content-Type, named when a body that is not JSON was
            sent as something else (a form, say).

    Raises:
        ChatRequestError: the body is not such JSON (code `invalid_json`).
    """
    try:
        return json.loads(
            raw, object_pairs_hook=_unique, parse_constant=_not_json, parse_float=_finite
        )
    except ChatRequestError:
        raise
    except json.JSONDecodeError as exc:
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        kind = (content_type or "").split(";", 1)[0].strip().lower()
        if kind and "json" not in kind:
            where += f"; it was sent as {kind[:60]}: send a JSON object as application/json"
        raise ChatRequestError(f"the request body is not JSON{where}", code="invalid_json") from exc
    except RecursionError as exc:
        raise ChatRequestError(
            "the request body's JSON is nested too deeply", code="invalid_json"
        ) from exc
    except ValueError as exc:  # not UTF-8, or an integer past Python's digit limit
        if "digits" in str(exc):
            digits = sys.get_int_max_str_digits()
            raise ChatRequestError(
                f"the request body has a number with more than {digits} digits; "
                "send numbers JSON readers take (at most 64-bit integers)",
                code="invalid_json",
            ) from exc
        raise ChatRequestError(
            "the request body is not UTF-8 JSON: send the JSON encoded as UTF-8",
            code="invalid_json",
        ) from exc


# -- the messages -----------------------------------------------------------------------


def _content_text(content: Any, at: str, text_only: bool) -> str:
    """A message's text: a string, or the text parts of a list of content parts (`at`: the
    content's field, e.g. `messages[2].content`)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts: list[str] = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind != "text" and (text_only or not isinstance(kind, str)):
                what = "a text part" if text_only else "a content part with a `type`"
                why = ": a graph takes text only" if text_only else ""
                raise ChatRequestError(
                    f'{at}[{i}] must be {what}, {{"type": "text", "text": ...}}{why}',
                    f"{at}[{i}]",
                )
            if kind != "text":  # an image, say: the text parts are the message's text
                continue
            part_text = part.get("text")
            if not isinstance(part_text, str):
                raise ChatRequestError(f"{at}[{i}].text must be a string", f"{at}[{i}].text")
            texts.append(part_text)
        text = "\n".join(texts)
    else:
        raise ChatRequestError(f"{at} must be a string or a list of text parts", at)
    if not text.isascii():
        try:  # a lone surrogate (JSON's "\ud800") is no text a model could read
            text.encode()
        except UnicodeEncodeError:
            raise ChatRequestError(
                f"{at} has a lone surrogate (\\ud800-\\udfff), not text", at
            ) from None
    return text


def _turn(message: Any, at: str, text_only: bool) -> dict[str, str]:
    if not isinstance(message, Mapping):
        raise ChatRequestError(
            f"`messages` must hold message objects: {at} is not an object with `role` and "
            "`content`",
            at,
        )
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a list or object: unhashable
        choices = ", ".join(sorted(ROLES))
        raise ChatRequestError(
            f"{at}.role must be one of {choices}, not {show_value(role)}", f"{at}.role"
        )
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise ChatRequestError(f"{at}.name must be a string, not {show_value(name)}", f"{at}.name")
    content = message.get("content")
    if content is None:
        # an assistant turn that called tools may have no text; every other turn has one
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return {"role": role, "content": ""}
        raise ChatRequestError(
            f"{at}.content is missing: a {role} message needs its text (only an assistant "
            "message with `tool_calls` may have none)",
            f"{at}.content",
            "missing_required_parameter",
        )
    return {"role": role, "content": _content_text(content, f"{at}.content", text_only)}


def chat_turns(messages: Any, *, text_only: bool = True) -> list[dict[str, str]]:
    """`messages` as `{role, content}` turns with each content as text, checked as OpenAI
    checks them (a role it knows, a content each message but a tool-calling assistant's
    has, text that is text).

    Args:
        text_only: refuse content parts other than text (an image, say); else they are
            left out of the text.

    Raises:
        ChatRequestError: naming the message field at fault (`messages[2].content`).
    """
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("`messages` must be a non-empty list of messages", "messages")
    return [_turn(message, f"messages[{i}]", text_only) for i, message in enumerate(messages)]


def _number(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high


def _whole(low: float, high: float = float("inf")) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _stop(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value)


def _objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, Mapping) for item in value)


def _typed(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("type"), str)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _object(value: Any) -> bool:
    return isinstance(value, Mapping)


def _string(value: Any) -> bool:
    return isinstance(value, str)


_BIAS = _number(-100, 100)


def _logit_bias(value: Any) -> bool:
    return isinstance(value, Mapping) and all(_BIAS(bias) for bias in value.values())


_FIELDS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (_number(0, 2), "a number from 0 to 2"),
    "top_p": (_number(0, 1), "a number from 0 to 1"),
    "presence_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "frequency_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "max_tokens": (_whole(1, 2**31 - 1), "a whole number from 1 to 2147483647"),
    "max_completion_tokens": (_whole(1, 2**31 - 1), "a whole number from 1 to 2147483647"),
    "seed": (_whole(-(2**63), 2**63 - 1), "a whole number of 64 bits"),
    "stop": (_stop, "a string or a list of at most 4 strings"),
    "logprobs": (_boolean, "true or false"),
    "top_logprobs": (_whole(0, 20), "a whole number from 0 to 20"),
    "tools": (_objects, "a list of tool objects"),
    "tool_choice": (lambda v: isinstance(v, str | Mapping), 'a string ("auto", ...) or an object'),
    "parallel_tool_calls": (_boolean, "true or false"),
    "response_format": (_typed, 'an object with a `type`, e.g. {"type": "text"}'),
    "stream_options": (_object, 'an object, e.g. {"include_usage": true}'),
    "metadata": (_object, "an object"),
    "logit_bias": (_logit_bias, "an object of token ids to numbers from -100 to 100"),
    "store": (_boolean, "true or false"),
    "prediction": (_typed, 'an object with a `type`, e.g. {"type": "content", ...}'),
    "reasoning_effort": (_string, 'a string, e.g. "low"'),
    "verbosity": (_string, 'a string, e.g. "low"'),
    "service_tier": (_string, 'a string, e.g. "auto"'),
    "prompt_cache_key": (_string, "a string"),
    "safety_identifier": (_string, "a string"),
}
"""Each field's check and what it must be, in OpenAI's words where it has them. Fields
neither server uses are checked too: a client sending `store: "yes"` should learn it here,
not from OpenAI in production."""


def chat_field_problem(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field of a chat completion body (in the body's order) OpenAI would
    refuse, as `(param, message)` (e.g. `("temperature", "`temperature` must be a number
    from 0 to 2, not 'hot'")`), or None. `model`, `messages`, `n`, `stream` and `user` are
    the caller's to check (what each server takes of them differs)."""
    for name, value in body.items():  # (a body has a few keys, `_FIELDS` many)
        field = _FIELDS.get(name)
        if field is not None and value is not None and not field[0](value):
            return name, f"`{name}` must be {field[1]}, not {show_value(value)}"
    options = body.get("stream_options")
    if options is not None:
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            param = "stream_options.include_usage"
            return param, f"`{param}` must be true or false, not {show_value(usage)}"
        if body.get("stream") is not True:
            message = "`stream_options` is for a streamed answer: send it with `stream: true`"
            return "stream_options", message
    return None
