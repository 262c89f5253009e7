"""A plugin module with a node whose `Config` names a type that is never defined (checker tests)."""

from __future__ import annotations

from pydantic import BaseModel

from engine import Node, NodeContext


class Unfinished(Node):
    """Its config refers to a model its author forgot to define."""

    type_name = "unfinished"

    class Config(BaseModel):
        settings: Settings | None = None  # type: ignore[name-defined]  # noqa: F821

    class Output(BaseModel):
        value: int = 0

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        return self.Output()
