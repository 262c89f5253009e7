"""Golden runs: a YAML graph, its input, and the expected output, node runs and events.

One case per scheduling rule (architecture: Scheduling semantics). Node runs are
`(node, cycle, status, speculative, outcome, attempts)` in the order they were recorded;
events are the scheduler's `(event_type, stage)` in sequence order. Every case runs on
asyncio and on trio with a mock clock, where `latency_ms` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.sched_nodes import backends, events, graph, run, runs

anyio_backend = backends("asyncio", "trio-mock")


@dataclass
class Golden:
    """One golden run (in the style of haystack's `PipelineRunData`)."""

    id: str
    graph: str
    input: dict[str, Any]
    output: dict[str, Any] | None
    node_runs: list[tuple[str, int, str, bool, str, int]]
    events: list[tuple[str, str]] = field(default_factory=list)
    status: str = "ok"
    latency_ms: float | None = None
    """Exact simulated latency, checked under the mock clock."""
    error: str | None = None
    ordered: bool = True
    """False when nodes finish at the same instant (their record order is a tie)."""


CACHED = """
moat: 1
name: lazy
nodes:
  cached: {type: work, with: {ms: 10, value: {hit: "{{ input.hit }}", text: from-cache}}}
  final: {type: work, with: {ms: 50, value: from-model}}
output:
  text: "cached.value.text if cached.value.hit else final.value"
"""

PARALLEL = """
moat: 1
name: parallel
nodes:
  a: {type: work, with: {ms: 300, value: 1}}
  b: {type: work, with: {ms: 300, value: 2}}
  c: {type: work, with: {ms: 300, value: 3}}
output:
  total: a.value + b.value + c.value
"""

CONDITIONAL_PARALLEL = """
moat: 1
name: conditional-parallel
nodes:
  a: {type: work, with: {ms: 300, value: 1}}
  b: {type: work, with: {ms: 300, value: 2}}
  x: {type: work, with: {ms: 300, value: 10}}
  sum: {type: work, with: {value: "{{ (a.value if input.flag else b.value) + x.value }}"}}
output:
  total: sum.value
  direct: "(a.value if input.flag else b.value) + x.value"
"""

REUSE = """
moat: 1
name: reuse
nodes:
  base: {type: work, with: {ms: 10, value: 2}}
  double: {type: work, with: {value: "{{ base.value * 2 }}"}}
  triple: {type: work, with: {ms: 5, value: "{{ base.value * 3 }}"}}
output:
  sum: double.value + triple.value
  base: base.value
"""

GUARD = """
moat: 1
name: guard
nodes:
  extra:
    type: work
    when: input.deep
    with: {ms: 20, value: deep}
output:
  answer: "extra.value if extra else 'shallow'"
"""

DRAFT = """
moat: 1
name: draft
nodes:
  risk: {type: work, with: {ms: 100, value: "{{ input.action }}"}}
  draft:
    type: work
    speculative: true
    with: {ms: "{{ input.draft_ms }}", value: drafted}
output:
  answer: "'refused' if risk.value == 'refuse' else draft.value"
"""

SHORT_CIRCUIT = """
moat: 1
name: short-circuit
nodes:
  risk: {type: work, with: {ms: 100, value: "{{ input.action }}"}}
  audit: {type: work, with: {ms: 300, value: audited}}
  draft:
    type: work
    speculative: true
    when: risk.value != 'refuse'
    with: {ms: 600, value: drafted}
output:
  audit: audit.value
  answer: "'refused' if risk.value == 'refuse' else draft.value"
"""

OPTIONAL = """
moat: 1
name: optional
nodes:
  extra: {type: work, optional: true, with: {ms: 10, fail: error}}
  base: {type: work, with: {ms: 20, value: base}}
output:
  answer: "extra.value if extra else base.value"
"""

FAILING = """
moat: 1
name: failing
nodes:
  boom: {type: work, with: {ms: 10, fail: error}}
  slow: {type: work, with: {ms: 50, value: 1}}
output:
  answer: boom.value
  other: slow.value
"""

RETRY = """
moat: 1
name: retry
nodes:
  flaky:
    type: work
    retries: 2
    with: {ms: 10, value: ok, fail: "{{ input.fail }}", fail_times: 2}
output:
  value: flaky.value
"""

TIMEOUT = """
moat: 1
name: timeout
nodes:
  slow:
    type: work
    timeout_ms: 100
    retries: 1
    optional: "{{ input.optional }}"
    with: {ms: 500, value: late}
output:
  value: "slow.value if slow else 'gave up'"
"""

DEADLINE = """
moat: 1
name: deadline
budget: {deadline_ms: 150, partial: PARTIAL}
nodes:
  quick: {type: work, with: {ms: 50, value: quick}}
  slow: {type: work, with: {ms: 400, value: slow}}
output:
  quick: quick.value
  slow: slow.value
"""

SPEC = "SPECULATIVE"

CASES = [
    Golden(
        "lazy-hit-skips-final",
        CACHED,
        {"hit": True},
        {"text": "from-cache"},
        [("cached", 0, "succeeded", False, "used", 1)],
        latency_ms=10,
    ),
    Golden(
        "lazy-miss-runs-final",
        CACHED,
        {"hit": False},
        {"text": "from-model"},
        [
            ("cached", 0, "succeeded", False, "used", 1),
            ("final", 0, "succeeded", False, "used", 1),
        ],
        latency_ms=60,
    ),
    Golden(
        "certain-deps-run-in-parallel",
        PARALLEL,
        {},
        {"total": 6},
        [
            ("a", 0, "succeeded", False, "used", 1),
            ("b", 0, "succeeded", False, "used", 1),
            ("c", 0, "succeeded", False, "used", 1),
        ],
        latency_ms=300,
        ordered=False,
    ),
    Golden(
        # `x` is read on every path, but only after the branch: it is demanded together
        # with the branch taken (`a`), not before it, so the two run at once
        "conditional-expressions-keep-certain-nodes-concurrent",
        CONDITIONAL_PARALLEL,
        {"flag": True},
        {"total": 11, "direct": 11},
        [
            ("a", 0, "succeeded", False, "used", 1),
            ("sum", 0, "succeeded", False, "used", 1),
            ("x", 0, "succeeded", False, "used", 1),
        ],
        [("RESULT_REUSED", "a"), ("RESULT_REUSED", "x")],
        latency_ms=300,
        ordered=False,
    ),
    Golden(
        "memoised-and-reused",
        REUSE,
        {},
        {"sum": 10, "base": 2},
        [
            ("base", 0, "succeeded", False, "used", 1),
            ("double", 0, "succeeded", False, "used", 1),
            ("triple", 0, "succeeded", False, "used", 1),
        ],
        [("RESULT_REUSED", "base"), ("RESULT_REUSED", "base")],
        latency_ms=15,
    ),
    Golden(
        "guard-false-skips",
        GUARD,
        {"deep": False},
        {"answer": "shallow"},
        [("extra", 0, "skipped", False, "none", 0)],
        [("GATE_DECISION", "extra")],
        latency_ms=0,
    ),
    Golden(
        "guard-true-runs",
        GUARD,
        {"deep": True},
        {"answer": "deep"},
        [("extra", 0, "succeeded", False, "used", 1)],
        [("GATE_DECISION", "extra")],
        latency_ms=20,
    ),
    Golden(
        "speculative-used",
        DRAFT,
        {"action": "proceed", "draft_ms": 80},
        {"answer": "drafted"},
        [
            ("risk", 0, "succeeded", False, "used", 1),
            ("draft", 0, "succeeded", True, "used", 1),
        ],
        [
            (f"{SPEC}_STARTED", "draft"),
            (f"{SPEC}_JOIN_REQUIRED", "draft"),
            (f"{SPEC}_RESULT_USED", "draft"),
        ],
        latency_ms=100,  # the draft ran beside the risk check
    ),
    Golden(
        "speculative-discarded",
        DRAFT,
        {"action": "refuse", "draft_ms": 40},
        {"answer": "refused"},
        [
            ("risk", 0, "succeeded", False, "used", 1),
            ("draft", 0, "succeeded", True, "discarded", 1),
        ],
        [
            (f"{SPEC}_STARTED", "draft"),
            (f"{SPEC}_JOIN_SKIPPED", "draft"),
            (f"{SPEC}_RESULT_DISCARDED", "draft"),
        ],
        latency_ms=100,
    ),
    Golden(
        "speculative-cancelled-at-cleanup",
        DRAFT,
        {"action": "refuse", "draft_ms": 600},
        {"answer": "refused"},
        [
            ("risk", 0, "succeeded", False, "used", 1),
            ("draft", 0, "cancelled", True, "cancelled", 1),
        ],
        [
            (f"{SPEC}_STARTED", "draft"),
            (f"{SPEC}_JOIN_SKIPPED", "draft"),
            ("BRANCH_CANCEL_ATTEMPTED", "draft"),
            ("BRANCH_CANCELLED", "draft"),
        ],
        latency_ms=100,  # not 600: the response does not wait for the draft
    ),
    Golden(
        "short-circuit-cancels-running-branch",
        SHORT_CIRCUIT,
        {"action": "refuse"},
        {"audit": "audited", "answer": "refused"},
        [
            ("risk", 0, "succeeded", False, "used", 1),
            ("draft", 0, "cancelled", True, "cancelled", 1),
            ("audit", 0, "succeeded", False, "used", 1),
        ],
        [
            (f"{SPEC}_STARTED", "draft"),
            ("RESULT_REUSED", "risk"),
            ("GATE_DECISION", "draft"),
            ("SHORT_CIRCUIT_TRIGGERED", "draft"),
            ("BRANCH_CANCEL_ATTEMPTED", "draft"),
            ("BRANCH_CANCELLED", "draft"),
        ],
        latency_ms=300,
    ),
    Golden(
        "short-circuit-guard-true-joins",
        SHORT_CIRCUIT,
        {"action": "proceed"},
        {"audit": "audited", "answer": "drafted"},
        [
            ("risk", 0, "succeeded", False, "used", 1),
            ("audit", 0, "succeeded", False, "used", 1),
            ("draft", 0, "succeeded", True, "used", 1),
        ],
        [
            (f"{SPEC}_STARTED", "draft"),
            ("RESULT_REUSED", "risk"),
            ("GATE_DECISION", "draft"),
            (f"{SPEC}_JOIN_REQUIRED", "draft"),
            (f"{SPEC}_RESULT_USED", "draft"),
        ],
        latency_ms=600,
    ),
    Golden(
        "optional-failure-is-none",
        OPTIONAL,
        {},
        {"answer": "base"},
        [
            ("extra", 0, "failed", False, "none", 1),
            ("base", 0, "succeeded", False, "used", 1),
        ],
        [("NODE_FAILED", "extra")],
        latency_ms=30,
    ),
    Golden(
        "failure-fails-the-request",
        FAILING,
        {},
        None,
        [
            ("boom", 0, "failed", False, "none", 1),
            ("slow", 0, "succeeded", False, "used", 1),
        ],
        [("NODE_FAILED", "boom")],
        status="failed",
        error="node 'boom': ValueError: boom broke on attempt 1",
        latency_ms=50,
    ),
    Golden(
        "transient-errors-are-retried",
        RETRY,
        {"fail": "transient"},
        {"value": "ok"},
        [("flaky", 0, "succeeded", False, "used", 3)],
        [("NODE_RETRY", "flaky"), ("NODE_RETRY", "flaky")],
    ),
    Golden(
        "other-errors-are-not-retried",
        RETRY,
        {"fail": "error"},
        None,
        [("flaky", 0, "failed", False, "none", 1)],
        [("NODE_FAILED", "flaky")],
        status="failed",
        error="node 'flaky': ValueError: flaky broke on attempt 1",
        latency_ms=10,
    ),
    Golden(
        "timeouts-are-retried-then-fail",
        TIMEOUT.replace('"{{ input.optional }}"', "false"),
        {},
        None,
        [("slow", 0, "timed_out", False, "none", 2)],
        [
            ("NODE_TIMEOUT", "slow"),
            ("NODE_RETRY", "slow"),
            ("NODE_TIMEOUT", "slow"),
            ("NODE_FAILED", "slow"),
        ],
        status="failed",
        error="node 'slow': attempt 2 ran past timeout_ms=100",
    ),
    Golden(
        "optional-timeout-is-none",
        TIMEOUT.replace('"{{ input.optional }}"', "true"),
        {},
        {"value": "gave up"},
        [("slow", 0, "timed_out", False, "none", 2)],
        [
            ("NODE_TIMEOUT", "slow"),
            ("NODE_RETRY", "slow"),
            ("NODE_TIMEOUT", "slow"),
            ("NODE_FAILED", "slow"),
        ],
    ),
    Golden(
        "hard-deadline-exceeded",
        DEADLINE.replace("PARTIAL", "false"),
        {},
        None,
        [
            ("quick", 0, "succeeded", False, "used", 1),
            ("slow", 0, "cancelled", False, "cancelled", 1),
        ],
        [("BUDGET_DEADLINE_EXCEEDED", "request")],
        status="deadline_exceeded",
        error="deadline_ms=150 passed after 150 ms; outputs not resolved: quick, slow",
        latency_ms=150,
    ),
    Golden(
        "hard-deadline-partial",
        DEADLINE.replace("PARTIAL", "true"),
        {},
        {"quick": "quick"},
        [
            ("quick", 0, "succeeded", False, "used", 1),
            ("slow", 0, "cancelled", False, "cancelled", 1),
        ],
        [("BUDGET_DEADLINE_EXCEEDED", "request")],
        status="partial",
        error="deadline_ms=150 passed after 150 ms; outputs not resolved: slow",
        latency_ms=150,
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_golden_run(case: Golden, anyio_backend: Any) -> None:
    result, sink = await run(graph(case.graph), case.input)
    assert (result.status.value, result.output) == (case.status, case.output)
    assert result.error == case.error or (
        case.error is not None
        and result.error is not None
        and result.error.split(" passed after")[0] == case.error.split(" passed after")[0]
    )
    assert (runs(sink) if case.ordered else sorted(runs(sink))) == case.node_runs
    assert events(sink) == case.events
    mocked = isinstance(anyio_backend, tuple)
    if mocked and case.latency_ms is not None:
        assert result.latency_ms == pytest.approx(case.latency_ms, abs=1e-6)
    assert sink.items[-1] == sink.requests()[0]  # the request record comes last
