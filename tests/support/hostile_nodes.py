"""A node plugin written by an adversary: `run` raises odd things, returns odd values and
misuses the side channels, as `mode` says. The runtime must fail only that node."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from engine import Node, NodeContext


class Rogue(BaseException):
    """A `BaseException` of a plugin's own."""


class Unprintable(Exception):
    """An exception whose text cannot be had: `__str__` and `__repr__` raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ exploded")


class Loud(Exception):
    """An exception whose text is whatever the test put in it (megabytes, control bytes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class Touchy:
    """A value whose comparisons, hash and text all raise."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ exploded")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__ exploded")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ exploded")

    __str__ = __repr__


def cyclic() -> dict[str, Any]:
    """A mapping that holds itself."""
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


def nested(depth: int) -> Any:
    """A list nested `depth` deep."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def meddle(value: Any) -> None:
    """Change every dict and list in `value` in place, all the way down."""
    if isinstance(value, list):
        for item in value:
            meddle(item)
        value.append("meddled")
    elif isinstance(value, dict):
        for item in value.values():
            meddle(item)
        value["meddled"] = True


RAISES: dict[str, Callable[[], BaseException]] = {
    "exit": lambda: SystemExit(3),
    "generator_exit": GeneratorExit,
    "rogue": lambda: Rogue("went rogue"),
    "base_group": lambda: BaseExceptionGroup("mixed", [ValueError("a"), Rogue("b")]),
    "group": lambda: ExceptionGroup("several", [ValueError("a"), KeyError("b")]),
    "unprintable": Unprintable,
    "megabytes": lambda: Loud("x" * 5_000_000),
    "control": lambda: Loud("one\ntwo\x1b[31mred\x00\r"),
    "stop_async": StopAsyncIteration,
    "recursion": lambda: RecursionError("maximum recursion depth exceeded"),
    "memory": MemoryError,
    "interrupt": KeyboardInterrupt,
}
"""What `mode: raise_<name>` raises."""

VALUES: dict[str, Callable[[], Any]] = {
    "set": lambda: {3, 1, 2},
    "bytes": lambda: b"\xff\x00",
    "nan": lambda: float("nan"),
    "inf": lambda: [float("inf"), float("-inf")],
    "cyclic": cyclic,
    "deep": lambda: nested(100_000),
    "touchy": Touchy,
    "object": object,
    "tuple_keys": lambda: {(1, 2): "pair"},
}
"""What `mode: value_<name>` returns as `Output.value`."""


class Hostile(Node):
    """Misbehaves as `mode` says; `mode: ok` returns `fine`."""

    type_name = "hostile"
    event_types = ("HOSTILE",)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        mode: str = "ok"
        payload: Any = None

    class Output(BaseModel):
        value: Any = None

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        mode = config.mode
        await anyio.sleep(0)
        if mode.startswith("raise_"):
            raise RAISES[mode.removeprefix("raise_")]()
        if mode.startswith("value_"):
            return self.Output(value=VALUES[mode.removeprefix("value_")]())
        if mode == "return_coroutine":  # `return self.helper()` without its `await`
            return self._helper()  # type: ignore[return-value]
        if mode.startswith("return_"):
            return {"none": None, "dict": {"value": 1}, "str": "fine"}[mode[7:]]  # type: ignore[return-value]
        if mode == "meddle_input":  # what it was given, then changes it all the way down
            seen = json.dumps(ctx.request.input, sort_keys=True)
            meddle(ctx.request.input)
            return self.Output(value=seen)
        await self._keep_or_late(mode, ctx)
        if mode.startswith("emit_"):
            payload = VALUES[mode.removeprefix("emit_")]()
            ctx.emit("HOSTILE", decision="odd", inputs={"v": payload}, payload={"v": payload})
        elif mode.startswith("trace_"):
            ctx.trace("HOSTILE_TRACE", {"v": VALUES[mode.removeprefix("trace_")]()})
        elif mode.startswith("after_"):
            ctx.after_success(self._callback(mode.removeprefix("after_"), ctx))
        elif mode == "given":
            ctx.emit("HOSTILE", payload={"v": config.payload})
        elif mode == "block":
            time.sleep(0.3)  # blocks the event loop: no runtime can preempt it
        return self.Output(value="fine" if mode == "ok" else mode)

    async def _helper(self) -> Output:
        return self.Output(value="fine")

    async def _keep_or_late(self, mode: str, ctx: NodeContext) -> None:
        """`keep`: keep the context past its run; `late_<call>`: use the one kept."""
        if mode == "keep":
            self.kept = ctx
        elif mode.startswith("late_"):
            await self._late(mode.removeprefix("late_"))

    async def _late(self, call: str) -> None:
        """Use the context of an earlier request's run, as `call` says."""
        kept = self.kept
        assert kept is not None

        async def factory() -> int:
            return 1

        if call == "emit":
            kept.emit("HOSTILE", payload={"v": 1})
        elif call == "trace":
            kept.trace("HOSTILE_TRACE", {"v": 1})
        elif call == "memo":
            await kept.memo("k", factory)
        elif call == "model":
            kept.model("small")

    def _callback(self, kind: str, ctx: NodeContext) -> Callable[[], Awaitable[None]]:
        """An `after_success` callback that raises, hangs or registers itself again."""

        async def callback() -> None:
            self.called.append(kind)
            if kind == "again":
                ctx.after_success(callback)
            elif kind == "hang":
                await anyio.sleep_forever()
            elif kind in RAISES:
                raise RAISES[kind]()

        return callback

    def __init__(self) -> None:
        self.called: list[str] = []
        self.kept: NodeContext | None = None
