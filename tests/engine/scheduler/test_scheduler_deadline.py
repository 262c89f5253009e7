"""A deadline's `partial` answer and the records agree on what was used.

With `partial: true`, the outputs that can be evaluated when the deadline passes are
answered. A speculative result one of them reads is part of the answer: it is joined and
used, never recorded as discarded.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.sched_nodes import backends, events, graph, run, runs

anyio_backend = backends("trio-mock", "asyncio")

PARTIAL_FROM_SPECULATION = """
moat: 1
name: partial-from-speculation
budget: {deadline_ms: 60, partial: true}
nodes:
  check: {type: work, with: {ms: 10, value: 1}}
  draft: {type: work, speculative: true, with: {ms: 20, value: drafted}}
  slow: {type: work, with: {ms: 1000, value: slow}}
output:
  full: slow.value
  quick: "draft.value if check.value else 'none'"
"""


@pytest.mark.anyio
async def test_a_speculative_result_a_partial_answer_reads_is_recorded_used(
    anyio_backend: Any,
) -> None:
    result, sink = await run(graph(PARTIAL_FROM_SPECULATION))
    assert (result.status.value, result.output) == ("partial", {"quick": "drafted"})
    assert sorted(runs(sink)) == [
        ("check", 0, "succeeded", False, "used", 1),
        ("draft", 0, "succeeded", True, "used", 1),
        ("slow", 0, "cancelled", False, "cancelled", 1),
    ]
    assert [e for e in events(sink) if e[1] in ("draft", "request")] == [
        ("SPECULATIVE_STARTED", "draft"),
        ("SPECULATIVE_JOIN_REQUIRED", "draft"),
        ("SPECULATIVE_RESULT_USED", "draft"),
        ("BUDGET_DEADLINE_EXCEEDED", "request"),
    ]
