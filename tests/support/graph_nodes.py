"""Small node types for loader and checker tests (registered through a test Registry)."""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from engine import Node, NodeContext
from engine.plugin.registry import Registry


class Echo(Node):
    """Returns its text and value."""

    type_name = "echo"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = ""
        value: Any = None
        delay_ms: float = 0

    class Output(BaseModel):
        text: str
        value: Any = None

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        if config.delay_ms:
            await anyio.sleep(config.delay_ms / 1000)
        return self.Output(text=config.text, value=config.value)


class Review(Node):
    """Reviews a text with a model."""

    type_name = "review"
    model_keys = ("model",)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: str = "small"
        text: str = ""
        threshold: float = Field(default=0.5, ge=0, le=1)

    class Output(BaseModel):
        action: str = "proceed"
        hard: bool = False
        score: float = 0.0
        violations: list[str] = []
        rationale: str = ""

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        return self.Output(score=config.threshold)


class Count(Node):
    """Counts to n."""

    type_name = "count"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int

    class Output(BaseModel):
        n: int

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        return self.Output(n=config.n)


def registry() -> Registry:
    """A registry with only the test node types."""
    return Registry([Echo, Review, Count])
