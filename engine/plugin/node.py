"""The `Node` base class every node plugin subclasses, built-in or third-party."""

from __future__ import annotations

import typing
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Generic

from pydantic import BaseModel
from typing_extensions import TypeVar

if TYPE_CHECKING:
    from engine.plugin.context import NodeContext

__all__ = ["Node"]

ConfigT = TypeVar("ConfigT", bound=BaseModel, default=Any)
OutputT = TypeVar("OutputT", bound=BaseModel, default=Any)


class Node(Generic[ConfigT, OutputT]):
    """A node type: validated `Config` in, typed `Output` out.

    Subclasses set `type_name` (the YAML `type:`), name their config and output models and
    implement `run`. The models are given as the type arguments of `Node`, so `run` is
    checked statically, or as nested classes named `Config` and `Output`; either way the
    class ends up with both as `Config` and `Output`. `Config` is validated from `with:`
    after interpolation; `Output` is what expressions can read.

    One instance is created per graph node when the graph loads, so an instance may keep
    state across the requests of that graph (a cache, learnt statistics); per-request
    state belongs in the `NodeContext`.

    Example:
        ```python
        class SleepConfig(BaseModel):
            ms: int

        class SleepOutput(BaseModel):
            slept_ms: int

        class Sleep(Node[SleepConfig, SleepOutput]):
            type_name = "sleep"

            async def run(self, config: SleepConfig, ctx: NodeContext) -> SleepOutput:
                await anyio.sleep(config.ms / 1000)
                return SleepOutput(slept_ms=config.ms)
        ```
    """

    type_name: ClassVar[str]
    """The short name graphs use in `type:`."""
    Config: ClassVar[type[BaseModel]]
    """Validates the node's `with:` mapping."""
    Output: ClassVar[type[BaseModel]]
    """The fields expressions can read from this node."""
    model_keys: ClassVar[tuple[str, ...]] = ()
    """Names of `Config` fields that hold logical model names (checked against `models:`)."""
    schema_keys: ClassVar[tuple[str, ...]] = ()
    """Names of `Config` fields that hold JSON Schemas the node applies to request or model
    text: their `pattern`s are checked like those of `input:` (`engine.graph.patterns`)."""
    event_types: ClassVar[tuple[str, ...]] = ()
    """The event names this node type records with `ctx.emit` (`UPPER_SNAKE`), beside the
    engine's own (`engine.EventType`): its part of the store's vocabulary, listed by
    `moat nodes TYPE`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _models_from_type_arguments(cls)
        legacy = cls.__dict__.get("model_fields")
        if legacy is not None:
            warnings.warn(
                f"{cls.__qualname__}.model_fields is deprecated (the name is pydantic's): "
                "rename it to model_keys",
                DeprecationWarning,
                stacklevel=2,
            )
            cls.model_keys = tuple(legacy)

    async def run(self, config: ConfigT, ctx: NodeContext) -> OutputT:
        """Do the node's work for one request (or one loop cycle)."""
        raise NotImplementedError(f"{type(self).__name__}.run is not implemented")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} type={getattr(self, 'type_name', '?')!r}>"

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring, for `moat nodes`."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def _models_from_type_arguments(cls: type[Node[Any, Any]]) -> None:
    """`class X(Node[C, O])` without nested models gets `Config = C` and `Output = O`."""
    for base in getattr(cls, "__orig_bases__", ()):
        if typing.get_origin(base) is not Node:
            continue
        for name, arg in zip(("Config", "Output"), typing.get_args(base), strict=False):
            if name not in cls.__dict__ and isinstance(arg, type) and issubclass(arg, BaseModel):
                setattr(cls, name, arg)
