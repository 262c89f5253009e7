"""The request lifecycle around scheduling: isolation, cleanup, records, budgets, the API."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from engine.events import MemorySink, NodeRun, OrchestrationEvent, RequestRecord
from engine.scheduler.runner import (
    LazyNode,
    LazyNodeCancelled,
    LazyNodeFailed,
    LazyNodeNotFinished,
    PolicyPin,
    RequestResult,
    Runner,
    run_request,
)
from tests.support.sched_nodes import backends, events, graph, impl, mock_trio, run, run_of, runs

anyio_backend = backends("asyncio", "trio-mock")

TWO_FAILURES = """
moat: 1
name: two-failures
nodes:
  left: {type: work, with: {ms: 10, fail: error}}
  right: {type: work, with: {ms: 20, fail: error}}
output:
  both: "[left.value, right.value]"
"""


@pytest.mark.anyio
async def test_failing_branches_fail_the_request_without_an_exception_group(
    anyio_backend: Any,
) -> None:
    g = graph(TWO_FAILURES)
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        first = await runner.run({}, request_id="a")
        second = await runner.run({}, request_id="b")
    assert (first.status.value, first.error) == (
        "failed",
        "node 'left': ValueError: left broke on attempt 1",
    )
    assert second.status.value == "failed"
    assert [(r.node, r.status.value, r.error) for r in sink.node_runs("a")] == [
        ("left", "failed", "node 'left': ValueError: left broke on attempt 1"),
        ("right", "failed", "node 'right': ValueError: right broke on attempt 1"),
    ]


@pytest.mark.anyio
async def test_a_failed_input_fails_its_consumer_and_names_the_root(anyio_backend: Any) -> None:
    g = graph(
        """
        moat: 1
        name: chain
        nodes:
          root: {type: work, with: {ms: 5, fail: error}}
          middle: {type: work, with: {value: "{{ root.value }}"}}
          top: {type: work, optional: true, with: {value: "{{ middle.value }}"}}
        output:
          top: top
          fallback: "'ok'"
        """
    )
    result, sink = await run(g)
    assert result.output == {"top": None, "fallback": "ok"}  # `top` is optional
    assert [(r.node, r.status.value, r.error) for r in sink.node_runs()] == [
        ("root", "failed", "node 'root': ValueError: root broke on attempt 1"),
        ("middle", "failed", "node 'root': ValueError: root broke on attempt 1"),
        ("top", "failed", "node 'root': ValueError: root broke on attempt 1"),
    ]
    failed = [e for e in sink.events() if e.event_type == "NODE_FAILED"]
    assert [(e.stage, e.decision, tuple(e.reason_codes)) for e in failed] == [
        ("root", "fail", ("ValueError",)),
        ("middle", "fail", ("input_failed",)),
        ("top", "optional", ("input_failed",)),
    ]


LONG_SPECULATION = """
moat: 1
name: long-speculation
nodes:
  quick: {type: work, with: {ms: 100, value: quick}}
  draft: {type: work, speculative: true, with: {ms: 10000, value: draft}}
output:
  answer: quick.value
"""


@pytest.mark.anyio
async def test_nothing_is_left_running_after_the_runner_exits(anyio_backend: Any) -> None:
    g = graph(LONG_SPECULATION)
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner, anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(lambda i=i: runner.run({}, request_id=f"r{i}"))
    draft = impl(g, "draft")
    assert (draft.started, draft.cancelled, draft.finished) == (20, 20, 0)
    assert len(sink.requests()) == 20
    for i in range(20):
        records = [r for r in sink.items if getattr(r, "request_id", None) == f"r{i}"]
        assert run_of_request(records, "draft").status.value == "cancelled"
    last_index = {r.id: sink.items.index(r) for r in sink.requests()}
    for item_index, item in enumerate(sink.items):
        if isinstance(item, NodeRun | OrchestrationEvent):
            assert item_index < last_index[item.request_id]


@pytest.mark.anyio
async def test_a_runner_cancelled_from_outside_cancels_its_background_work(
    anyio_backend: Any,
) -> None:
    g = graph(LONG_SPECULATION)
    sink = MemorySink()
    with anyio.move_on_after(0.05) as outer:
        async with Runner(g, sink=sink) as runner, anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(lambda i=i: runner.run({}, request_id=f"r{i}"))
    assert outer.cancelled_caught
    draft, quick = impl(g, "draft"), impl(g, "quick")
    assert (draft.started, draft.cancelled, draft.finished) == (5, 5, 0)
    assert (quick.started, quick.cancelled, quick.finished) == (5, 5, 0)
    assert {r.status.value for r in sink.node_runs() if r.node == "draft"} == {"cancelled"}


def run_of_request(records: list[Any], node: str) -> NodeRun:
    (found,) = [r for r in records if isinstance(r, NodeRun) and r.node == node]
    return found


SLOW_CANCEL = """
moat: 1
name: slow-cancel
nodes:
  quick: {type: work, with: {ms: 100, value: quick}}
  draft:
    type: work
    speculative: true
    with: {ms: 600, value: draft, linger_ms: 200}
output:
  answer: quick.value
"""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
async def test_the_response_does_not_wait_for_cleanup(anyio_backend: Any) -> None:
    g = graph(SLOW_CANCEL)
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        started = anyio.current_time()
        result = await runner.run({}, request_id="r1")
        returned_after = anyio.current_time() - started
        assert not sink.requests()  # the request record waits for the cleanup
    assert returned_after == pytest.approx(0.1)
    assert result.latency_ms == pytest.approx(100)
    assert run_of(sink, "draft").duration_ms == pytest.approx(300)  # it took 200 ms to stop
    assert isinstance(sink.items[-1], RequestRecord)


@pytest.mark.anyio
async def test_lazy_node_is_a_future(anyio_backend: Any) -> None:
    g = graph(LONG_SPECULATION)
    from engine.scheduler.frame import Frame

    req = SimpleNamespace(frame=None)  # a frame only registers itself with its request
    frame = Frame(req, None, g.scope, None, 0, {})  # type: ignore[arg-type]
    cell = frame.cell("quick")
    assert isinstance(cell, LazyNode)
    assert repr(cell) == "<LazyNode pending 'quick'>"
    assert cell.status is LazyNode.Status.PENDING
    with pytest.raises(LazyNodeNotFinished):
        _ = cell.value
    cell.claim()
    assert repr(cell) == "<LazyNode running 'quick'>"
    cell.finish("v", cell.run_status or _succeeded())
    assert (cell.status, cell.value, cell.exception) == (LazyNode.Status.FINISHED, "v", None)
    await cell.wait()

    failed = frame.cell("draft")
    assert failed is not None
    failed.claim()
    failed.fail(ValueError("boom"), "draft", _succeeded())
    with pytest.raises(LazyNodeFailed) as info:
        _ = failed.value
    assert isinstance(info.value.__cause__, ValueError)
    assert isinstance(failed.exception, ValueError)

    cancelled = Frame(req, None, g.scope, None, 0, {}).cell("draft")  # type: ignore[arg-type]
    assert cancelled is not None
    cancelled.claim()
    cancelled.cancelled()
    with pytest.raises(LazyNodeCancelled):
        _ = cancelled.value


def _succeeded() -> Any:
    from engine.events import NodeStatus

    return NodeStatus.SUCCEEDED


SERVICES = """
moat: 1
name: services
nodes:
  first: {type: emit, with: {key: principles}}
  second: {type: emit, with: {key: principles}}
  fail: {type: work, when: input.fail, with: {fail: error}}
output:
  values: "[first.value, second.value]"
  reused: "[first.reused, second.reused]"
  failed: "fail.value if input.fail else none"
"""


@pytest.mark.anyio
async def test_node_services_memo_events_and_after_success(anyio_backend: Any) -> None:
    g = graph(SERVICES)
    with capture_logs() as logs:
        result, sink = await run(g, {"fail": False})
    assert [
        (log["event"], log["run_id"], log["request_id"], log["node"], log["reused"])
        for log in logs
        if log["event"] == "emit.done"
    ] == [("emit.done", "run", "r1", "first", False), ("emit.done", "run", "r1", "second", True)]
    assert result.output == {
        "values": ["memo-principles", "memo-principles"],
        "reused": [False, True],
        "failed": None,
    }
    node_events = [(e.event_type, e.stage, e.component) for e in sink.events()]
    assert ("CACHE_MISS", "first", "emit") in node_events
    assert ("RESULT_REUSED", "second", "scheduler") in node_events
    assert impl(g, "first").stored == ["r1"]
    assert impl(g, "second").stored == ["r1"]

    failed, _ = await run(g, {"fail": True})
    assert failed.status.value == "failed"
    assert impl(g, "first").stored == ["r1"]  # callbacks run only after success


@pytest.mark.anyio
async def test_request_scope_policy_pin_and_tenant(anyio_backend: Any) -> None:
    g = graph(
        """
        moat: 1
        name: scope
        policy: policy.yaml
        budget: {deadline_ms: 5000, cost_usd: 0.5}
        nodes:
          echo: {type: work, with: {value: "{{ request.tenant }}"}}
        output:
          id: request.id
          tenant: echo.value
          degraded: request.degraded
          remaining_ms: request.remaining_ms
          remaining_usd: request.remaining_usd
          threshold: policy.threshold
        """
    )
    pins = iter([PolicyPin("p", 7, {"threshold": 0.5}), PolicyPin("p", 8, {"threshold": 0.9})])
    sink = MemorySink()
    async with Runner(g, sink=sink, policy=lambda: next(pins), run_id="run9") as runner:
        first = await runner.run({"tenant": "acme"})
        second = await runner.run({}, tenant="other", seq=3)
    assert first.output is not None and second.output is not None
    assert (first.request_id, first.output["tenant"], first.output["threshold"]) == (
        "run9-1",
        "acme",
        0.5,
    )
    assert first.output["remaining_usd"] == 0.5
    assert 0 < first.output["remaining_ms"] <= 5000
    assert (second.output["tenant"], second.policy_version, second.seq) == ("other", 8, 3)
    pinned = [e for e in sink.events() if e.event_type == "POLICY_PINNED"]
    assert [(e.stage, e.sequence, dict(e.payload or {})) for e in pinned] == [
        ("request", 1, {"policy": "p", "version": 7}),
        ("request", 1, {"policy": "p", "version": 8}),
    ]
    record = sink.requests()[1]
    assert (record.seq, record.tenant, record.policy_version) == (3, "other", 8)
    assert second.to_json_line() == {
        "request_id": "run9-2",
        "status": "ok",
        "output": second.output,
        "latency_ms": round(second.latency_ms, 3),
        "cost_usd": 0.0,
        "policy_version": 8,
        "error": None,
    }


@pytest.mark.anyio
async def test_events_are_sequenced_per_request(anyio_backend: Any) -> None:
    g = graph(LONG_SPECULATION)
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        await runner.run({}, request_id="a")
        await runner.run({}, request_id="b")
    for request_id in ("a", "b"):
        sequences = [e.sequence for e in sink.events(request_id)]
        assert sequences == list(range(1, len(sequences) + 1))


STRATEGY = """
moat: 1
name: strategy
policy: policy.yaml
nodes:
  risk: {type: work, with: {ms: 50, value: "{{ input.risk }}"}}
  fast: {type: work, speculative: policy.speculate, with: {ms: 40, value: fast}}
  hedge:
    type: work
    speculative: risk.value < 0.5
    with: {ms: 100, value: hedged}
  audit: {type: work, with: {ms: 200, value: audited}}
output:
  fast: "fast.value if input.use_fast else none"
  audit: audit.value
  hedge: "hedge.value if audit.value == 'audited' else none"
"""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
async def test_speculative_expressions_choose_a_strategy(anyio_backend: Any) -> None:
    g = graph(STRATEGY)
    policy = PolicyPin("p", 1, {"speculate": False})
    sink = MemorySink()
    async with Runner(g, sink=sink, policy=policy) as runner:
        result = await runner.run(
            {"risk": 0.2, "use_fast": True, "use_hedge": True}, request_id="a"
        )
    strategies = [
        (e.stage, e.decision) for e in sink.events("a") if e.event_type == "STRATEGY_SELECTED"
    ]
    assert strategies == [("fast", "on_demand"), ("hedge", "speculative")]
    assert result.output == {"fast": "fast", "audit": "audited", "hedge": "hedged"}
    # `fast` ran on demand beside the audit; the hedge started when risk resolved (50 ms)
    # and was done (150 ms) before the audit (200 ms) let the output read it
    assert result.latency_ms == pytest.approx(200)
    assert run_of(sink, "hedge").speculative is True
    assert run_of(sink, "fast").speculative is False


ASK = """
moat: 1
name: ask
models:
  small: {provider: sim, profile: small}
budget: {cost_usd: BUDGET}
nodes:
  gate: {type: work, with: {ms: 20, value: "{{ input.use }}"}}
  answer: {type: ask, speculative: true, with: {prompt: "{{ input.prompt }}"}}
output:
  text: "answer.text if gate.value else 'no'"
"""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
async def test_llm_calls_get_the_outcome_of_their_node(anyio_backend: Any) -> None:
    g = graph(ASK.replace("BUDGET", "1.0"))
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        used = await runner.run({"use": True, "prompt": "hi"}, request_id="used")
        cancelled = await runner.run({"use": False, "prompt": "hi"}, request_id="cancelled")
    assert used.output is not None and used.output["text"]
    assert used.cost_usd > 0
    assert cancelled.output == {"text": "no"}
    [used_call] = sink.llm_calls("used")
    assert (used_call.call_kind.value, used_call.call_outcome.value) == ("speculative", "used")
    [cancelled_call] = sink.llm_calls("cancelled")
    assert (cancelled_call.call_kind.value, cancelled_call.call_outcome.value) == (
        "speculative",
        "cancelled",
    )
    assert [r.outcome.value for r in sink.node_runs("cancelled") if r.node == "answer"] == [
        "cancelled"
    ]


FLAKY_ASK = (  # half the attempts fail, three retries
    ASK.replace("profile: small}", "profile: small, max_retries: 3, faults: {error: 0.5}}")
    .replace("BUDGET", "1.0")
    .replace("speculative: true", "speculative: SPECULATIVE")
)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
@pytest.mark.parametrize("speculative", ["true", "false"])
async def test_a_failed_attempt_is_never_recorded_as_used_or_discarded(
    anyio_backend: Any, speculative: str
) -> None:
    g = graph(FLAKY_ASK.replace("SPECULATIVE", speculative))
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        for i in range(30):
            await runner.run({"use": i % 3 != 0, "prompt": f"q{i}"}, request_id=f"r{i}")
    calls = sink.llm_calls()
    outcomes = {(c.status, c.call_outcome.value) for c in calls}
    assert ("error", "none") in outcomes  # (half the attempts fail: some did)
    assert ("ok", "used") in outcomes
    for call in calls:
        if call.status == "error":
            # nothing came of it to use; a cancelled node's rows all say cancelled
            assert call.call_outcome.value in ("none", "cancelled"), call


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
async def test_a_cost_budget_refusal_is_a_node_failure(anyio_backend: Any) -> None:
    g = graph(ASK.replace("BUDGET", "0.0000001"))
    result, sink = await run(g, {"use": True, "prompt": "hi"})
    assert result.status.value == "failed"
    assert result.error is not None
    assert result.error.startswith("node 'answer': BudgetExceeded: model 'small': the call could")
    assert "BUDGET_COST_EXCEEDED" in [e.event_type for e in sink.events()]


@pytest.mark.anyio
async def test_an_invalid_config_is_a_node_failure_with_a_clear_message(
    anyio_backend: Any,
) -> None:
    g = graph(
        """
        moat: 1
        name: config
        nodes:
          sleepy: {type: work, with: {ms: "{{ input.ms }}"}}
        output:
          value: sleepy.value
        """
    )
    result, _ = await run(g, {"ms": "soon"})
    assert result.status.value == "failed"
    assert result.error == (
        "node 'sleepy': invalid `with:` for a 'work' node: ms: Input should be a number, "
        "unable to parse string as a number, got a string ('soon')"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("flag", [True, False])
async def test_true_or_false_made_at_run_time_is_no_number(anyio_backend: Any, flag: bool) -> None:
    """The checker refuses `ms: true` written in the graph; the same value made by an
    expression is refused at run time, never read as 1 or 0. A key that takes any value
    keeps it."""
    g = graph(
        """
        moat: 1
        name: config
        nodes:
          sleepy: {type: work, with: {ms: "{{ input.ms }}", value: "{{ input.ms }}"}}
          keeps: {type: work, with: {value: "{{ [input.ms] }}"}}
        output:
          value: "sleepy.value if input.sleep else none"
          kept: keeps.value
        """
    )
    result, _ = await run(g, {"ms": flag, "sleep": True})
    assert result.status.value == "failed"
    assert result.error == (
        f"node 'sleepy': invalid `with:` for a 'work' node: ms: Input should be a number, "
        f"got {str(flag).lower()}"
    )
    result, _ = await run(g, {"ms": flag, "sleep": False})
    assert result.output == {"value": None, "kept": [flag]}
    result, _ = await run(g, {"ms": 2, "sleep": True})
    assert result.output == {"value": 2, "kept": [2]}


@pytest.mark.anyio
async def test_run_request_and_runner_misuse(anyio_backend: Any) -> None:
    g = graph(LONG_SPECULATION.replace("10000", "10"))
    result = await run_request(g, {}, request_id="solo")
    assert isinstance(result, RequestResult)
    assert (result.request_id, result.output) == ("solo", {"answer": "quick"})
    with pytest.raises(RuntimeError, match="async with Runner"):
        await Runner(g).run({})


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [mock_trio()])
async def test_deadline_cancels_speculative_work_too(anyio_backend: Any) -> None:
    g = graph(
        """
        moat: 1
        name: deadline-spec
        budget: {deadline_ms: 100}
        nodes:
          slow: {type: work, with: {ms: 300, value: slow}}
          draft: {type: work, speculative: true, with: {ms: 300, value: draft}}
        output:
          answer: "slow.value + draft.value"
        """
    )
    result, sink = await run(g)
    assert result.status.value == "deadline_exceeded"
    assert sorted(runs(sink)) == [
        ("draft", 0, "cancelled", True, "cancelled", 1),
        ("slow", 0, "cancelled", False, "cancelled", 1),
    ]
    assert run_of(sink, "draft").duration_ms == pytest.approx(100)
    assert ("BUDGET_DEADLINE_EXCEEDED", "request") in events(sink)


@pytest.mark.anyio
@pytest.mark.parametrize("first", ["a_judge", "z_judge"])  # demanded before or after `review`
@pytest.mark.parametrize("fail", [False, True])
async def test_a_node_and_its_only_input_demanded_together_run_once_in_order(
    anyio_backend: Any, first: str, fail: bool
) -> None:
    failing = ", fail: error" if fail else ""
    g = graph(
        f"""
        moat: 1
        name: pair
        nodes:
          {first}: {{type: work, with: {{ms: 10, value: 3{failing}}}}}
          review: {{type: work, with: {{value: "{{{{ {first}.value * 2 }}}}"}}}}
        output:
          both: "{first}.value + review.value"
        """
    )
    result, sink = await run(g)
    assert [(r.node, r.status.value) for r in sink.node_runs()] == [
        (first, "failed" if fail else "succeeded"),
        ("review", "failed" if fail else "succeeded"),
    ]
    if fail:
        assert result.status.value == "failed"
        assert result.error == f"node '{first}': ValueError: {first} broke on attempt 1"
    else:
        assert result.output == {"both": 9}
        assert impl(g, first).started == 1
    assert [e.event_type for e in sink.events()].count("RESULT_REUSED") == 1


THREE_TOGETHER = """
moat: 1
name: three-together
budget: {deadline_ms: DEADLINE}
nodes:
  a: {type: work, with: {ms: 300, value: a}}
  b: {type: work, with: {ms: 300, value: b}}
  c: {type: work, with: {ms: 300, value: c}}
output:
  all: "a.value + b.value + c.value"
"""


@pytest.mark.anyio
async def test_a_deadline_cancels_every_node_demanded_together(anyio_backend: Any) -> None:
    g = graph(THREE_TOGETHER.replace("DEADLINE", "100"))
    result, sink = await run(g)
    assert result.status.value == "deadline_exceeded"
    assert sorted(runs(sink)) == [
        ("a", 0, "cancelled", False, "cancelled", 1),
        ("b", 0, "cancelled", False, "cancelled", 1),
        ("c", 0, "cancelled", False, "cancelled", 1),
    ]
    for node in "abc":
        work = impl(g, node)
        assert (work.started, work.cancelled, work.finished) == (1, 1, 0)
        assert run_of(sink, node).duration_ms == pytest.approx(100, abs=50)


@pytest.mark.anyio
async def test_nodes_demanded_together_run_side_by_side_and_once(anyio_backend: Any) -> None:
    g = graph(THREE_TOGETHER.replace("DEADLINE", "5000"))
    started = anyio.current_time()
    result, sink = await run(g)
    assert result.output == {"all": "abc"}
    assert anyio.current_time() - started < 0.6  # side by side, not 0.9 s one after another
    assert sorted(runs(sink)) == [
        ("a", 0, "succeeded", False, "used", 1),
        ("b", 0, "succeeded", False, "used", 1),
        ("c", 0, "succeeded", False, "used", 1),
    ]


@pytest.mark.anyio
async def test_a_caller_cancelling_cancels_the_nodes_its_request_demanded_together(
    anyio_backend: Any,
) -> None:
    g = graph(THREE_TOGETHER.replace("DEADLINE", "5000"))
    sink = MemorySink()
    async with Runner(g, sink=sink) as runner:
        with anyio.move_on_after(0.05) as scope:
            await runner.run({}, request_id="gone", record_cancelled=True)
        assert scope.cancelled_caught
    assert sorted((r.node, r.status.value) for r in sink.node_runs("gone")) == [
        ("a", "cancelled"),
        ("b", "cancelled"),
        ("c", "cancelled"),
    ]
    assert [r.status.value for r in sink.requests()] == ["cancelled"]
    for node in "abc":
        work = impl(g, node)
        assert (work.started, work.cancelled, work.finished) == (1, 1, 0)
