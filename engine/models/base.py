"""The contract between the gateway and a provider: one normalised call in, one answer out.

The gateway does everything that is the same for every provider (budget, retries, circuit
breaker, redaction, recording); a provider only turns a `ProviderRequest` into a
`ProviderResponse` or raises one of moat's errors:

- `RateLimited` for 429s (with `retry_after_s` when known),
- `ProviderTimeout` when the provider did not answer in time,
- `TransientError` for anything else worth retrying (5xx, dropped connections),
- `NodeError` for failures a retry cannot fix (bad request, bad key).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.context import RequestInfo
from engine.errors import TransientError

__all__ = [
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "ProviderTimeout",
    "estimate_tokens",
]


class ProviderTimeout(TransientError, TimeoutError):
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
    """0 for the first attempt, 1 for the first retry, ..."""
    schema: Mapping[str, Any] | None = None
    json_mode: bool = False
    task: str | None = None
    max_tokens: int | None = None
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


class Provider(Protocol):
    """A model provider the gateway can call."""

    name: str
    """`sim` or `openai` (the `provider` column of `llm_calls`)."""

    async def complete(self, call: ProviderRequest) -> ProviderResponse:
        """Make one attempt; raise moat errors (see the module docstring) on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...


def estimate_tokens(text: str) -> int:
    """A provider-independent token estimate: about four characters per token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0
