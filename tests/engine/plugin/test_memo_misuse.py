"""`ctx.memo(key, factory)` misused fails the node saying what to write: a factory that
returns a value instead of an awaitable, a key that cannot name a value. What a factory
raises itself fails the node as raised, and nothing is stored under its key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import pytest
from pydantic import BaseModel

from engine import MemorySink, Node, NodeContext, Runner, load_graph_text
from engine.plugin.registry import Registry


def make_five() -> int:
    return 5


async def five() -> int:
    return 5


async def raises_type_error() -> int:
    raise TypeError("the factory's own mistake")


class Memo(Node):
    """Memoises under the class's `key` with its `factory`, twice."""

    type_name = "memo_user"
    key: ClassVar[Any] = "k"
    factory: ClassVar[Callable[[], Any]] = five

    class Config(BaseModel):
        pass

    class Output(BaseModel):
        value: Any = None
        reused: bool = False

    async def run(self, config: BaseModel, ctx: NodeContext) -> BaseModel:
        cls = type(self)
        await ctx.memo(cls.key, cls.factory)
        value, reused = await ctx.memo(cls.key, cls.factory)
        return self.Output(value=value, reused=reused)


GRAPH = "moat: 1\nname: m\nnodes:\n  m: {type: memo_user}\noutput:\n  v: m.value\n  r: m.reused\n"


async def _answer(key: Any, factory: Callable[[], Any]) -> Any:
    Memo.key, Memo.factory = key, factory  # type: ignore[misc]
    graph = load_graph_text(GRAPH, registry=Registry([Memo]))
    async with Runner(graph, sink=MemorySink()) as runner:
        return await runner.run({}, request_id="r-000000")


@pytest.mark.parametrize(
    ("key", "factory", "said"),
    [
        (
            "k",
            make_five,
            "node 'm': ctx.memo: the factory 'make_five' returned a value, not an awaitable; "
            "write it `async def make_five(): ...` (a blocking one goes in "
            "`await anyio.to_thread.run_sync(...)`)",
        ),
        (
            "k",
            lambda: 5,
            "node 'm': ctx.memo: the factory '<lambda>' returned a value, not an awaitable; "
            "write it `async def make(): ...`",
        ),
        (
            {"a": 1},
            five,
            "node 'm': ctx.memo: the key must be a text naming the value, not dict {'a': 1}",
        ),
        ("k", raises_type_error, "node 'm': TypeError: the factory's own mistake"),
    ],
)
def test_a_misused_memo_fails_the_node_saying_what_to_write(
    key: Any, factory: Callable[[], Any], said: str
) -> None:
    result = anyio.run(_answer, key, factory)
    assert result.status == "failed"
    assert result.error.startswith(said), result.error


@pytest.mark.parametrize(("key", "factory"), [("k", five), (("tuple", 1), lambda: five())])
def test_a_memo_used_as_meant_computes_once_and_reuses(
    key: Any, factory: Callable[[], Any]
) -> None:
    result = anyio.run(_answer, key, factory)
    assert (result.status, result.output) == ("ok", {"v": 5, "r": True})
