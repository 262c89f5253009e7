"""`prev` in loops: what it holds, that it is demanded, and that a loop keeps one cycle.

`prev` is none in cycle 1; from cycle 2 on it maps every body node to what it gave in the
previous cycle: its output if that cycle needed it and it finished, none when it was
skipped, short-circuited, cancelled, failed (optional), never needed, or speculative work
nobody used. A body node read as `prev.X` anywhere in the loop is needed by every cycle
that another follows, so it always ran there.
"""

from __future__ import annotations

import gc
import textwrap
import weakref
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from engine import Node, NodeContext
from engine.events import MemorySink
from engine.graph.loader import load_graph, load_graph_text
from engine.plugin.registry import Registry
from engine.scheduler.runner import Runner
from nodes.critic import CriticNode
from nodes.model import ModelNode
from tests.support.sched_nodes import DATA, Work, backends, graph, mock_trio, run, runs

anyio_backend = backends("asyncio", "trio-mock")


@pytest.mark.anyio
async def test_prev_reads_the_last_cycle_even_when_nothing_else_demands_the_body(
    anyio_backend: Any,
) -> None:
    g = graph(
        """
        moat: 1
        name: total
        nodes:
          add:
            type: loop
            max_cycles: 3
            nodes:
              total: {type: work, with: {value: "{{ (prev.total.value if prev else 0) + 10 }}"}}
            output: {value: total.value}
        output: {value: add.value}
        """
    )
    result, sink = await run(g)
    assert (result.status.value, result.output) == ("ok", {"value": 30})
    assert runs(sink) == [
        ("total", 1, "succeeded", False, "used", 1),
        ("total", 2, "succeeded", False, "used", 1),
        ("total", 3, "succeeded", False, "used", 1),
        ("add", 0, "succeeded", False, "used", 1),
    ]


WHAT_PREV_HOLDS = """
moat: 1
name: what-prev-holds
nodes:
  l:
    type: loop
    max_cycles: 2
    nodes:
      ran: {type: work, with: {value: "{{ cycle * 10 }}"}}
      gated: {type: work, when: "cycle > 5", with: {value: gated}}
      broken: {type: work, optional: true, with: {fail: error, value: broken}}
      slow: {type: work, speculative: true, with: {ms: 1000, value: slow}}
      quick: {type: work, speculative: true, with: {value: quick}}
      idle: {type: work, with: {value: idle}}
      seen:
        type: work
        with:
          ms: 1
          value: "{{ [prev, prev.ran, prev.gated, prev.broken] if prev else none }}"
    output:
      seen: seen.value
output:
  seen: l.seen
"""


@pytest.mark.anyio
async def test_prev_holds_the_outputs_the_last_cycle_needed_and_none_for_the_rest(
    anyio_backend: Any,
) -> None:
    result, sink = await run(graph(WHAT_PREV_HOLDS))
    assert result.status.value == "ok", result.error
    whole, ran, gated, broken = result.output["seen"]
    assert whole == {
        "ran": {"value": 10},  # needed (read as prev.ran) and finished
        "gated": None,  # needed, but its guard skipped it
        "broken": None,  # needed, optional, failed
        "slow": None,  # speculative, not needed: cancelled
        "quick": None,  # speculative, finished, not needed: discarded
        "idle": None,  # never needed: never ran
        "seen": None,  # needed only in the last cycle
    }
    assert (ran, gated, broken) == ({"value": 10}, None, None)
    assert sorted(runs(sink)) == [
        ("broken", 1, "failed", False, "none", 1),
        ("gated", 1, "skipped", False, "none", 0),
        ("l", 0, "succeeded", False, "used", 1),
        ("quick", 1, "succeeded", True, "discarded", 1),
        ("quick", 2, "succeeded", True, "discarded", 1),
        ("ran", 1, "succeeded", False, "used", 1),
        ("seen", 2, "succeeded", False, "used", 1),
        ("slow", 1, "cancelled", True, "cancelled", 1),
        ("slow", 2, "cancelled", True, "cancelled", 1),
    ]


@pytest.mark.anyio
async def test_a_speculative_body_node_read_through_prev_is_joined_not_cancelled(
    anyio_backend: Any,
) -> None:
    g = graph(
        """
        moat: 1
        name: speculative-prev
        nodes:
          l:
            type: loop
            max_cycles: 3
            nodes:
              count:
                type: work
                speculative: true
                with: {ms: 50, value: "{{ (prev.count.value if prev else 0) + 1 }}"}
              report: {type: work, with: {value: "{{ prev.count.value * 100 if prev else 0 }}"}}
            output: {report: report.value}
        output: {report: l.report}
        """
    )
    result, sink = await run(g)
    assert (result.status.value, result.output) == ("ok", {"report": 200})
    assert [r for r in runs(sink) if r[0] == "count"] == [
        ("count", 1, "succeeded", True, "used", 1),
        ("count", 2, "succeeded", True, "used", 1),
        ("count", 3, "cancelled", True, "cancelled", 0),  # not needed by the last cycle
    ]


@pytest.mark.anyio
async def test_nested_loops_each_read_their_own_prev(anyio_backend: Any) -> None:
    g = graph(
        """
        moat: 1
        name: nested
        nodes:
          outer:
            type: loop
            max_cycles: 3
            nodes:
              base: {type: work, with: {value: "{{ (prev.inner.value if prev else 0) * 10 }}"}}
              inner:
                type: loop
                max_cycles: 2
                nodes:
                  step:
                    type: work
                    with: {value: "{{ (prev.step.value if prev else base.value) + 1 }}"}
                output: {value: step.value}
            output: {value: inner.value, cycles: cycle}
        output: {value: outer.value, cycles: outer.cycles}
        """
    )
    result, sink = await run(g)
    # outer 1: base 0, step 1, 2; outer 2: base 20, step 21, 22; outer 3: base 220 -> 222
    assert (result.status.value, result.output) == ("ok", {"value": 222, "cycles": 3})
    assert [(r[0], r[1]) for r in runs(sink) if r[0] in ("base", "inner")] == [
        ("base", 1),
        ("inner", 1),
        ("base", 2),
        ("inner", 2),
        ("base", 3),
        ("inner", 3),
    ]
    assert [r[1] for r in runs(sink) if r[0] == "step"] == [1, 2, 1, 2, 1, 2]


# -- a loop keeps only the previous cycle --------------------------------------------------


class Blob:
    """A large value that can be watched for being freed."""

    __slots__ = ("__weakref__", "data")

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)


class Grow(Node):
    """Returns a fresh large value each cycle and notes which earlier ones are still alive."""

    type_name = "grow"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int
        size: int

    class Output(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        n: int
        blob: Blob

    def __init__(self) -> None:
        self.blobs: dict[int, weakref.ref[Blob]] = {}
        self.alive: dict[int, list[int]] = {}
        """Per cycle, the earlier cycles whose value was still reachable when it ran."""

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        alive = [c for c, ref in self.blobs.items() if ref() is not None]
        if len(alive) > 1:  # (a full collection costs a lot here: only when it may matter)
            gc.collect()
            alive = [c for c, ref in self.blobs.items() if ref() is not None]
        self.alive[ctx.cycle] = alive
        blob = Blob(config.size)
        self.blobs[ctx.cycle] = weakref.ref(blob)
        return self.Output(n=config.n, blob=blob)


@pytest.mark.anyio
@pytest.mark.parametrize("until", [None, "grow.n < 0"])
async def test_a_long_loop_keeps_only_the_previous_cycles_values(
    anyio_backend: Any, until: str | None
) -> None:
    cycles = 30
    text = f"""
        moat: 1
        name: long
        nodes:
          l:
            type: loop
            max_cycles: {cycles}
            {"until: " + repr(until) if until else ""}
            nodes:
              grow: {{type: grow, with: {{n: "{{{{ (prev.grow.n if prev else 0) + 1 }}}}",
                                        size: 1000000}}}}
              side: {{type: work, speculative: true, with: {{value: 1}}}}
            output: {{n: grow.n}}
        output: {{n: l.n}}
        """
    g = load_graph_text(
        textwrap.dedent(text), "long.yaml", registry=Registry([Work, Grow]), base_dir=DATA
    )
    result, _ = await run(g)
    assert (result.status.value, result.output) == ("ok", {"n": cycles})
    grow = g.nodes["l"].loop.body.nodes["grow"].impl  # type: ignore[union-attr]
    # when cycle N runs, cycle N-1's value is `prev`; everything older is garbage
    assert grow.alive == {c: [c - 1] if c > 1 else [] for c in range(1, cycles + 1)}


# -- the flagship's revision sees the critique ---------------------------------------------

FLAGSHIP = Path(__file__).parents[3] / "graphs" / "governed-answer.yaml"


class RecordingModel(ModelNode):
    """The built-in `model` node, noting the prompt of every run by (node, cycle)."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: dict[tuple[str, int], str] = {}

    async def run(self, config: Any, ctx: NodeContext) -> Any:
        self.prompts[ctx.node_id, ctx.cycle] = str(config.prompt)
        return await super().run(config, ctx)


class RecordingCritic(CriticNode):
    """The built-in `critic` node, noting the rationale of every run by (node, cycle)."""

    def __init__(self) -> None:
        super().__init__()
        self.rationales: dict[tuple[str, int], str] = {}

    async def run(self, config: Any, ctx: NodeContext) -> Any:
        out = await super().run(config, ctx)
        self.rationales[ctx.node_id, ctx.cycle] = out.rationale
        return out


def recording_registry() -> Registry:
    """The installed node types, with `model` and `critic` replaced by recording ones."""
    installed = Registry.default()
    override = {"model": RecordingModel, "critic": RecordingCritic}
    registry = Registry()
    for name in installed.names():
        cls = installed.get(name)
        assert cls is not None
        registry.add(override.get(name, cls))
    return registry


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
async def test_the_flagships_revision_prompt_carries_the_last_critique(anyio_backend: Any) -> None:
    g = load_graph(FLAGSHIP, registry=recording_registry())
    # the policy that revises at cycle 2 (the shipped one takes its second sample there)
    g.policy["deliberation"] = {**g.policy["deliberation"], "second_sample": False}
    body = g.nodes["deliberate"].loop.body.nodes  # type: ignore[union-attr]
    revised, critique = body["revised"].impl, body["critique"].impl
    assert isinstance(revised, RecordingModel) and isinstance(critique, RecordingCritic)
    # a request the sim takes through two cycles (found once by running the workload)
    prompt = (
        "What does this Python code print?\n```python\nx = 8\nsteps = 0\nwhile x > 1:\n"
        "    x = x // 2 if x % 2 == 0 else 3 * x + 1\n    steps += 1\nprint(steps)\n``` "
        "Give the final answer on its own last line as `Answer: <value>`."
    )
    labels = {
        "kind": "code", "harmful": False, "difficulty": 0.467, "category": "code",
        "item": "Q-64ac5db9", "pii": False, "expected": 3, "check": "number",
    }  # fmt: skip
    async with Runner(g, sink=MemorySink()) as runner:
        result = await runner.run(
            {"prompt": prompt, "tenant": "initech"}, request_id="flagship-3", labels=labels
        )
    assert (result.status.value, result.output["cycles"]) == ("ok", 2), result
    for cycle in (2,):
        rationale = critique.rationales["critique", cycle - 1]
        assert rationale and rationale != "none"
        prompt = revised.prompts["revised", cycle]
        assert f"Critique: {rationale}\n" in prompt, prompt
