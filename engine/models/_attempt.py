"""One model call as the gateway normalises it, and the bookkeeping and charge of each attempt.

`Attempt` carries what an attempt reserved (the input bound, the output limit and their
cost) and what it is charged, by one of three rules the gateway picks (its module
docstring says when): the reported usage, the whole reservation, or the prompt alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import NodeError, shown
from engine.events import now
from engine.graph.spec import Price
from engine.models.base import ProviderResponse

__all__ = ["Attempt", "Call", "call_problem", "chat_messages", "chat_text"]

_OVERRUN_TOLERANCE = 1e-9
"""Relative slack for float rounding before a charge counts as past its reservation."""
MAX_OUTPUT_TOKENS = 2**31 - 1
"""The largest `max_tokens` a call may ask for (what OpenAI-compatible servers accept)."""


@dataclass(slots=True)
class Call:
    """One model call, as a node asked for it (the chat already normalised).

    Not frozen (a frozen dataclass costs several times more to build, and one is built
    for every call), but treated as immutable.
    """

    messages: Sequence[Mapping[str, str]]
    schema: Mapping[str, Any] | None
    json_mode: bool
    task: str | None
    max_tokens: int | None
    temperature: float | None
    speculative: bool = False
    """Made on a bet the node may lose (`complete(speculative=True)`)."""


@dataclass(slots=True)
class Attempt:
    """Bookkeeping of one attempt, turned into an `LlmCall` however the attempt ends."""

    prompt_text: str
    prompt_hash: str
    input_tokens: int
    """The most input tokens the provider can bill (what is reserved)."""
    output_limit: int = 0
    """The most output tokens the provider may produce (reserved, and sent)."""
    reserved_usd: float = 0.0
    """What the attempt reserved against each budget."""
    charged_input: int = 0
    charged_output: int = 0
    cost_usd: float = 0.0
    """What the attempt is charged (0 until a charge rule applies)."""
    started_at: float = field(default_factory=now)
    clock: float | None = None
    status: str = "error"
    error: str | None = None
    response: ProviderResponse | None = None
    latency_ms: float = 0.0
    related_event_id: int | None = None
    speculative: bool = False
    """The call was made on a bet (recorded as `call_kind` speculative)."""
    logged: Any = None
    """The `LlmCall` the attempt became, once recorded (what `NodeContext.discard` marks)."""

    def charge_usage(self, input_tokens: int, output_tokens: int, price: Price) -> None:
        """Charge the tokens the provider reported, at `price`."""
        self.charged_input, self.charged_output = input_tokens, output_tokens
        self.cost_usd = (input_tokens * price.input + output_tokens * price.output) / 1e6

    def charge_reservation(self) -> None:
        """Charge everything reserved: the most the provider may have billed."""
        self.charged_input, self.charged_output = self.input_tokens, self.output_limit
        self.cost_usd = self.reserved_usd

    def charge_prompt(self, price: Price, output_tokens: int = 0) -> None:
        """Charge the prompt and the `output_tokens` generated before a cancel (a cancelled
        `sim` attempt, whose progress is known)."""
        self.charged_input, self.charged_output = self.input_tokens, output_tokens
        self.cost_usd = (self.input_tokens * price.input + output_tokens * price.output) / 1e6

    @property
    def overran(self) -> bool:
        """Whether the charge went past the reservation (a non-compliant endpoint)."""
        return self.cost_usd > self.reserved_usd * (1 + _OVERRUN_TOLERANCE)


def call_problem(
    schema: object, task: object, max_tokens: object, temperature: object
) -> str | None:
    """What is wrong with a call's settings, saying what they must be; None when nothing.

    A node plugin may pass anything: a value that would fail far from the node (a
    negative reservation, a float overflow, a provider's traceback) is refused up front.
    """
    if max_tokens is not None and (
        isinstance(max_tokens, bool)  # (a bool is no count, a float no whole number)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= MAX_OUTPUT_TOKENS
    ):
        return (
            f"`max_tokens` must be a whole number from 1 to {MAX_OUTPUT_TOKENS}, not "
            f"{shown(max_tokens)}; pass the longest answer to allow, or None for the default"
        )
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature < math.inf
    ):
        return (
            f"`temperature` must be a number of at least 0, not {shown(temperature)}; "
            "pass e.g. 0.2, or None for the model's default"
        )
    if schema is not None and type(schema) is not dict and not isinstance(schema, Mapping):
        return (
            f"`schema` must be a JSON Schema object (a mapping), not {shown(schema)}; "
            'pass e.g. {"type": "object", "properties": {...}}'
        )
    if task is not None and type(task) is not str:
        return f"`task` must be a name such as 'answer' or 'risk', not {shown(task)}"
    return None


def chat_messages(
    prompt: str | None,
    messages: Sequence[Mapping[str, str]] | None,
    system: str | None,
    node_id: str,
    request_id: str,
) -> list[dict[str, str]]:
    """The chat a call sends: the system message first, then `messages`, then `prompt`.

    Raises:
        NodeError: there is no message but the system one.
    """
    chat: list[dict[str, str]] = []
    if system:
        chat.append({"role": "system", "content": _text(system)})
    for i, m in enumerate(messages or ()):
        if not isinstance(m, Mapping):
            raise NodeError(
                f"`messages[{i}]` is {shown(m)}, not a mapping; pass `messages` as a list of "
                '{"role": ..., "content": ...} mappings, or the text as `prompt=`',
                node_id=node_id,
                request_id=request_id,
            )
        chat.append({"role": _text(m.get("role", "user")), "content": _text(m.get("content", ""))})
    if prompt is not None:
        chat.append({"role": "user", "content": _text(prompt)})
    if not any(m["role"] != "system" for m in chat):
        raise NodeError(
            "a model call needs `prompt=` or `messages=` (got neither)",
            node_id=node_id,
            request_id=request_id,
        )
    return chat


def chat_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The chat as one text (what is hashed, and stored when the policy allows)."""
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)


def _text(value: object) -> str:
    """`value` as text that can be encoded: JSON input may carry lone surrogates
    (`"\\ud800"`), which no provider, hash or store accepts; they become U+FFFD."""
    text = str(value)
    if text.isascii():  # no surrogate to replace (and `isascii` reads a flag)
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
