"""A node type whose `run` cannot be called as moat calls it, `run(config, ctx)`, is
refused when it is registered, at its graph's `plugins:` line, instead of failing every
request with a TypeError about positional arguments."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from engine import MemorySink, Node, Runner, load_graph_text
from engine.cli import main
from engine.errors import PluginError
from engine.plugin.registry import Registry


class Out(BaseModel):
    value: int = 0


def node_type(run: Any) -> type[Node]:
    return type(
        "Careless", (Node,), {"type_name": "careless", "Config": Out, "Output": Out, "run": run}
    )


async def without_ctx(self: Any, config: Any) -> Out:
    return Out(value=1)


async def with_a_required_extra(self: Any, config: Any, ctx: Any, extra: Any) -> Out:
    return Out(value=1)


async def ctx_by_keyword_only(self: Any, config: Any, *, ctx: Any) -> Out:
    return Out(value=1)


async def static_with_self(self: Any, config: Any, ctx: Any) -> Out:
    return Out(value=1)


async def fine(self: Any, config: Any, ctx: Any) -> Out:
    return Out(value=1)


async def fine_with_a_default(self: Any, config: Any, ctx: Any, extra: int = 1) -> Out:
    return Out(value=extra)


async def fine_static(config: Any, ctx: Any) -> Out:
    return Out(value=1)


async def fine_any(*args: Any) -> Out:
    return Out(value=1)


def wrapped(run: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(run)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await run(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    ("run", "shown"),
    [
        (without_ctx, "(self, config)"),
        (with_a_required_extra, "(self, config, ctx, extra)"),
        (ctx_by_keyword_only, "(self, config, *, ctx)"),
        (staticmethod(static_with_self), "(self, config, ctx)"),
        (wrapped(without_ctx), "(self, config)"),
    ],
)
def test_a_run_that_cannot_take_config_and_ctx_is_refused_when_registered(
    run: Any, shown: str
) -> None:
    with pytest.raises(PluginError) as caught:
        Registry([node_type(run)])
    assert caught.value.reason.endswith(
        f".Careless.run{shown} cannot be called as moat calls it, `run(config, ctx)`; write "
        "`async def run(self, config, ctx)` (any other parameter needs a default)"
    )


GRAPH = "moat: 1\nname: g\nnodes:\n  a: {type: careless}\noutput:\n  v: a.value\n"


async def _answer(cls: type[Node]) -> Any:
    graph = load_graph_text(GRAPH, registry=Registry([cls]))
    async with Runner(graph, sink=MemorySink()) as runner:
        return await runner.run({}, request_id="r-000000")


@pytest.mark.parametrize(
    "run",
    [
        fine,
        fine_with_a_default,
        staticmethod(fine_static),
        classmethod(fine),
        fine_any,
        wrapped(fine),
    ],
)
def test_a_run_that_takes_config_and_ctx_in_any_spelling_is_registered_and_runs(
    run: Any,
) -> None:
    result = anyio.run(_answer, node_type(run))
    assert (result.status, result.output) == ("ok", {"v": 1})


def test_a_plugin_module_whose_run_misses_ctx_is_refused_at_its_graph_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "no_ctx_nodes.py").write_text(
        "from pydantic import BaseModel\nfrom engine import Node\n\n\n"
        "class Out(BaseModel):\n    value: int = 0\n\n\n"
        "class NoCtx(Node):\n    type_name = 'no_ctx'\n    Config = Out\n    Output = Out\n\n"
        "    async def run(self, config):\n        return Out()\n"
    )
    graph = tmp_path / "g.yaml"
    graph.write_text(
        "moat: 1\nname: g\nplugins: [no_ctx_nodes]\nnodes:\n  a: {type: no_ctx}\n"
        "output:\n  v: a.value\n"
    )
    assert main(["check", str(graph)]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (
        f"error: {graph}:3:11: no_ctx_nodes.NoCtx.run(self, config) cannot be called as moat "
        "calls it, `run(config, ctx)`; write `async def run(self, config, ctx)` (any other "
        "parameter needs a default)"
    )
