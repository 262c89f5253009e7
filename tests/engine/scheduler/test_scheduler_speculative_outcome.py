"""What a speculative run's `outcome` says: `used` only for a result the request used.

A run that failed (or timed out) has no result to use: demanded or not, nothing of it
reached the answer, so `moat stats` must not count it among the speculative work used.
Demanded, it reads `none` as any failed run does; nobody demanded, it is `discarded`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.sched_nodes import backends, graph, run, run_of

anyio_backend = backends("asyncio", "trio-mock")

FAILING_SPECULATION = """
moat: 1
name: failing-speculation
nodes:
  slow: {type: work, with: {ms: 50, value: 1}}
  spec: {type: work, speculative: true, optional: true, with: {ms: 10, fail: error}}
output:
  both: "%(both)s"
"""


@pytest.mark.anyio
@pytest.mark.parametrize(
    "both",
    ["[slow.value, spec.value]", "[slow.value, spec.value] if slow.value else none"],
    ids=["demanded while it runs", "demanded once it failed"],
)
async def test_a_demanded_speculative_run_that_failed_is_not_recorded_used(
    anyio_backend: Any, both: str
) -> None:
    result, sink = await run(graph(FAILING_SPECULATION % {"both": both}))
    assert result.output == {"both": [1, None]}  # optional: its failure reads none
    spec = run_of(sink, "spec")
    assert (spec.status.value, spec.speculative, spec.outcome.value) == ("failed", True, "none")
    about_spec = [e.event_type for e in sink.events() if e.stage == "spec"]
    assert "SPECULATIVE_JOIN_REQUIRED" in about_spec
    assert "SPECULATIVE_RESULT_USED" not in about_spec
    assert "SPECULATIVE_RESULT_DISCARDED" not in about_spec


@pytest.mark.anyio
async def test_a_demanded_speculative_run_that_succeeded_is_recorded_used(
    anyio_backend: Any,
) -> None:
    text = FAILING_SPECULATION.replace("fail: error", "value: 2")
    text %= {"both": "[slow.value, spec.value] if slow.value else none"}
    result, sink = await run(graph(text))
    assert result.output == {"both": [1, 2]}
    spec = run_of(sink, "spec")
    assert (spec.status.value, spec.speculative, spec.outcome.value) == ("succeeded", True, "used")
    about_spec = [e.event_type for e in sink.events() if e.stage == "spec"]
    assert about_spec.count("SPECULATIVE_RESULT_USED") == 1


@pytest.mark.anyio
async def test_a_speculative_run_that_failed_unwanted_is_discarded(anyio_backend: Any) -> None:
    result, sink = await run(graph(FAILING_SPECULATION % {"both": "slow.value"}))
    assert result.output == {"both": 1}
    spec = run_of(sink, "spec")
    assert (spec.status.value, spec.outcome.value) == ("failed", "discarded")
