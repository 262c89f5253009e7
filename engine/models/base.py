"""The contract between the gateway and a provider: one normalised call in, one answer out.

The gateway does everything that is the same for every provider (budget, retries, circuit
breaker, redaction, recording); a provider only turns a `ProviderRequest` into a
`ProviderResponse` or raises one of moat's errors:

- `RateLimited` for 429s (with `retry_after_s` when known),
- `ProviderTimeout` when the provider did not answer in time,
- `ResponseLost` when the request was sent but its answer never came (a connection dropped
  mid-call, a proxy's 504): the provider may still bill it, so the gateway charges it,
- `ConnectFailed` when no connection could be made (refused, unroutable, DNS): nothing
  was sent, so nothing is billed, and a model with a `fallback:` falls back at once,
- `Unavailable` for a 503 or a 408: the endpoint took no call for now (with
  `retry_after_s` when it said when to come back),
- `TransientError` for anything else worth retrying (5xx),
- `NodeError` for failures a retry cannot fix (bad request, bad key).
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.errors import TransientError
from engine.plugin.context import RequestInfo

__all__ = [
    "ConnectFailed",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "ProviderTimeout",
    "ResponseLost",
    "Unavailable",
    "connect_reason",
    "estimate_tokens",
    "max_input_tokens",
]

CHAT_TOKENS_PER_MESSAGE = 8
"""Chat framing per message: OpenAI's is 3 tokens (4 with a name); open models' templates
add role headers of up to ~6. Rounded up."""
CHAT_TOKENS_PER_CALL = 32
"""Chat framing per call: the reply primer (3 for OpenAI) and the begin-of-text and date
lines some open models' templates add. Rounded up."""


class ConnectFailed(TransientError):
    """No connection to the provider could be made: the endpoint is unreachable."""


def connect_reason(exc: BaseException | None) -> str | None:
    """The operating system's reason a connection could not be made, in a few words, when
    `exc` or one of its causes says it: `connection refused`, `host not found: ...`,
    `timed out`; None otherwise. (trio groups the failures of a connection's attempts, one
    an address: the first says it.)"""
    for _ in range(8):
        if isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        if exc is None:
            return None
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, socket.gaierror):
            return f"host not found: {exc.strerror or exc}"
        if isinstance(exc, TimeoutError):
            return "timed out"
        exc = exc.__cause__ or exc.__context__
    return None


class ResponseLost(TransientError):
    """The request reached the provider but no answer came back; it may have been billed."""


class Unavailable(TransientError):
    """The endpoint took no call for now (HTTP 503 Service Unavailable, or 408 Request
    Timeout: it gave up waiting for the request): nothing was generated, nothing is billed,
    and the retry waits for its Retry-After (`retry_after_s`), as a 429's does."""


class ProviderTimeout(ResponseLost, TimeoutError):
    """A provider did not answer within the call's time limit (retried like a 5xx)."""


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One attempt of one model call, as the gateway hands it to a provider."""

    model: str
    """The logical model name (a key of the graph's `models:`)."""
    messages: Sequence[Mapping[str, str]]
    """The chat, system message first when there is one; already redacted if required."""
    request: RequestInfo
    """The request the call is made for (ids, seed, hidden labels for `sim`)."""
    node_id: str
    cycle: int
    attempt: int
    """0 for the first attempt, 1 for the first retry, ...; a node's retry (`retries:`)
    goes on counting after the attempts its earlier runs may have made (run n of a node
    starts at n * (max_retries + 1)), so no two attempts of a call share a number."""
    schema: Mapping[str, Any] | None = None
    json_mode: bool = False
    task: str | None = None
    max_tokens: int | None = None
    """The most output tokens the provider may produce; the gateway always sets it (to the
    node's `max_tokens`, or the default it reserved for), so a provider must send it on."""
    temperature: float | None = None


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    """What a provider answered, before the gateway adds cost and recording."""

    text: str
    provider_model: str
    """What the provider calls the model (`gpt-4o-mini`, `sim-small`)."""
    input_tokens: int
    output_tokens: int
    latency_ms: float | None = None
    """The model's own latency when the provider knows it better than the wall clock
    (`sim` reports its simulated latency); `None` means "use the measured time"."""
    simulated: bool = False
    usage_reported: bool = True
    """False when the provider's answer carried no usable token counts; the gateway then
    charges the call's whole reservation instead of `input_tokens`/`output_tokens`."""
    finish_reason: str | None = None
    """Why the model stopped (`stop`, `length`, `content_filter`, ...), when it says."""


class Provider(Protocol):
    """A model provider the gateway can call."""

    name: str
    """`sim` or `openai` (the `provider` column of `llm_calls`, but for an answer marked
    `simulated`, which is recorded under `sim` whichever provider carried it)."""

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        """Make one attempt; raise moat errors (see the module docstring) on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...


def estimate_tokens(text: str) -> int:
    """A provider-independent token estimate: about four characters per token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def max_input_tokens(
    messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any] | None = None
) -> int:
    """The most input tokens an endpoint with an unknown tokenizer can bill for a chat.

    Byte-level BPE tokenizers (GPT, Llama 3, Qwen, Mistral's Tekken) never produce more
    tokens than UTF-8 bytes, whatever the script: characters/4 undercounts CJK (3 bytes a
    character, often a token each) and emoji by 3-12 times. The bound counts every byte of
    every role and content, the chat framing, and the JSON schema of structured output,
    which OpenAI adds to the prompt.
    """
    total = CHAT_TOKENS_PER_CALL
    for m in messages:
        role, content = str(m.get("role", "")), str(m.get("content", ""))
        total += CHAT_TOKENS_PER_MESSAGE + _utf8_len(role) + _utf8_len(content)
    if schema is not None:
        total += CHAT_TOKENS_PER_MESSAGE + _utf8_len(json.dumps(schema, ensure_ascii=False))
    return total


def _utf8_len(text: str) -> int:
    # "surrogatepass": a lone surrogate still counts (3 bytes) instead of raising
    return len(text.encode("utf-8", "surrogatepass"))
