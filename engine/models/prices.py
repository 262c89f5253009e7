"""The shipped price table: dollars per million tokens of common hosted models, with its date.

A model with no `price:` in its spec is priced from this table, so `budget.cost_usd` binds
on `--model large=openai:gpt-4o-mini` without editing the graph. A model found neither in
its spec nor here is *unpriced*: its calls would cost $0 and no cost budget could bind, so
`Pipeline` refuses to run such a graph with a cost budget unless told to
(`moat run --allow-unpriced`, or a `price:` in the graph).

Prices are the providers' standard (non-batch, uncached) per-token rates, compiled on
`PRICES_AS_OF` from `PRICES_SOURCES`. Discounts (cached input, batch) are not applied, so a
charge is never below the bill. Long-context rates (`LONG_CONTEXT`: Gemini 2.5 Pro and
Claude Sonnet 4 / 4.5 prompts over 200K tokens) apply to a call whose input goes past the
threshold: reserved when the input bound does, charged when the reported usage does.
Prices change; an explicit `price:` always wins (and is flat).

Names are matched after lower-casing, dropping a gateway's `vendor/` prefix
(`openai/gpt-4o-mini`, `anthropic/claude-sonnet-4`) and a trailing snapshot date or
`-latest` (`gpt-4o-mini-2024-07-18`, `claude-3-5-haiku-20241022`), except where a dated
snapshot has a price of its own (`gpt-4o-2024-05-13`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from engine.graph.spec import ModelSpec, Price

__all__ = [
    "LONG_CONTEXT",
    "PRICES",
    "PRICES_AS_OF",
    "PRICES_SOURCES",
    "SIM_MODELS",
    "SIM_SERVER_PRICES",
    "is_priced",
    "table_price",
]

PRICES_AS_OF = "2026-12-02"
"""When the table was compiled."""
PRICES_SOURCES = (
    "https://platform.openai.com/docs/pricing",
    "https://docs.anthropic.com/en/docs/about-claude/pricing",
    "https://ai.google.dev/gemini-api/docs/pricing",
)
"""Where the prices were read."""

_TABLE: dict[str, tuple[float, float]] = {
    # OpenAI
    "gpt-5": (1.25, 10.00),
    "gpt-5.1": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-05-13": (5.00, 15.00),
    "chatgpt-4o-latest": (5.00, 15.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o1-pro": (150.00, 600.00),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o3-pro": (20.00, 80.00),
    "o4-mini": (1.10, 4.40),
    # Anthropic (through OpenAI-compatible gateways)
    "claude-opus-4-5": (5.00, 25.00),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-opus-4": (15.00, 75.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-haiku": (0.25, 1.25),
    # Google (Gemini's OpenAI-compatible endpoint); prompts up to 200K tokens
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
}

PRICES: Mapping[str, Price] = {
    name: Price(input=inp, output=out) for name, (inp, out) in sorted(_TABLE.items())
}
"""Dollars per million tokens by model name."""

LONG_CONTEXT: Mapping[str, tuple[int, Price]] = {
    "gemini-2.5-pro": (200_000, Price(input=2.50, output=15.00)),
    "claude-sonnet-4": (200_000, Price(input=6.00, output=22.50)),
    "claude-sonnet-4-5": (200_000, Price(input=6.00, output=22.50)),
}
"""Per model, the prompt size past which a call is billed at a higher price, and that price."""

SIM_MODELS: Mapping[str, str] = {
    "small": "gpt-4.1-nano",
    "medium": "gpt-4.1-mini",
    "large": "gpt-4.1",
}
"""The real model each `sim` profile is modelled on, and billed as (from this table, at
`PRICES_AS_OF`): one vendor's family released together (OpenAI, "Introducing GPT-4.1 in
the API", 2025-04-14), so prices, speeds and the published benchmark scores the profiles'
capabilities come from (`engine.models.sim`) describe the same three models. The small to
large price ratio is 20x (input and output alike)."""
SIM_SERVER_PRICES: Mapping[str, Price] = {
    f"sim-{profile}": PRICES[model] for profile, model in SIM_MODELS.items()
}
"""The prices of the models `moat sim-server` serves (`sim-small`, ...), by model name."""

_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def table_price(model: str | None, input_tokens: int = 0) -> Price | None:
    """The table's price of `model` (a provider's model name) for a call of `input_tokens`
    prompt tokens, or None when the model is not listed."""
    key = _key(model)
    if key is None:
        return None
    threshold, long_price = LONG_CONTEXT.get(key, (None, None))
    if threshold is not None and input_tokens > threshold:
        return long_price
    return PRICES[key]


def _key(model: str | None) -> str | None:
    """The table's name for `model`, or None."""
    if not model:
        return None
    name = model.strip().lower()
    for candidate in (name, name.rsplit("/", 1)[-1]):
        if candidate in PRICES:
            return candidate
    bare = _SNAPSHOT.sub("", name.rsplit("/", 1)[-1])
    return bare if bare in PRICES else None


def is_priced(spec: ModelSpec) -> bool:
    """Whether calls to `spec` have a price: its own `price:`, `sim`'s, or the table's."""
    return (
        spec.price is not None
        or spec.provider == "sim"
        or spec.model in SIM_SERVER_PRICES
        or table_price(spec.model) is not None
    )
