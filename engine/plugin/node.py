"""The `Node` base class every node plugin subclasses, built-in or third-party."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from engine.plugin.context import NodeContext

__all__ = ["Node"]


class Node:
    """A node type: validated `Config` in, typed `Output` out.

    Subclasses set `type_name` (the YAML `type:`), define nested pydantic models `Config`
    (validated from `with:` after interpolation) and `Output` (what expressions can read),
    and implement `run`. One instance is created per graph node when the graph loads, so
    an instance may keep state across the requests of that graph (a cache, learnt
    statistics); per-request state belongs in the `NodeContext`.

    Example:
        ```python
        class Sleep(Node):
            type_name = "sleep"

            class Config(BaseModel):
                ms: int

            class Output(BaseModel):
                slept_ms: int

            async def run(self, config: Config, ctx: NodeContext) -> Output:
                await anyio.sleep(config.ms / 1000)
                return self.Output(slept_ms=config.ms)
        ```
    """

    type_name: ClassVar[str]
    """The short name graphs use in `type:`."""
    Config: ClassVar[type[BaseModel]]
    """Validates the node's `with:` mapping."""
    Output: ClassVar[type[BaseModel]]
    """The fields expressions can read from this node."""
    model_fields: ClassVar[tuple[str, ...]] = ()
    """Names of `Config` fields that hold logical model names (checked against `models:`)."""

    async def run(self, config: Any, ctx: NodeContext) -> BaseModel:
        """Do the node's work for one request (or one loop cycle)."""
        raise NotImplementedError(f"{type(self).__name__}.run is not implemented")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} type={getattr(self, 'type_name', '?')!r}>"

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring, for `moat nodes`."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
