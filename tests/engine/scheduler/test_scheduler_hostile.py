"""A misbehaving node plugin fails its own node, never the request's task, the batch or
the records: whatever `run` raises, its node run and request are recorded as failed with
an error that names the node and fits on one line."""

from __future__ import annotations

import gc
import json
import warnings
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from engine.events import MemorySink, RequestStatus, strict_json
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph_text
from engine.plugin.registry import Registry
from engine.scheduler.request import AFTER_SUCCESS_S, ERROR_CHARS
from engine.scheduler.runner import RequestResult, Runner
from tests.support.hostile_nodes import RAISES, VALUES, Hostile
from tests.support.sched_nodes import mock_trio

pytestmark = pytest.mark.anyio

GRAPH = """\
moat: 1
name: hostile
input: {type: object, properties: {mode: {type: string}, payload: {}}}
nodes:
  h: {type: hostile, with: {mode: "{{ input.mode }}", payload: "{{ input.payload }}"}}
output:
  v: h.value
"""


def graph(text: str = GRAPH) -> Graph:
    return load_graph_text(text, "hostile.yaml", registry=Registry([Hostile]))


async def batch(g: Graph, *inputs: dict[str, Any]) -> tuple[list[RequestResult], MemorySink]:
    """Answer `inputs` concurrently in one runner, as a batch does."""
    sink = MemorySink()
    results: list[RequestResult] = []
    async with Runner(g, sink=sink) as runner, anyio.create_task_group() as tg:
        for n, value in enumerate(inputs):

            async def one(value: dict[str, Any] = value, n: int = n) -> None:
                results.append(await runner.run(value, request_id=f"r{n}", seq=n))

            tg.start_soon(one)
    return sorted(results, key=lambda r: r.seq), sink


def assert_one_line(error: str | None) -> str:
    assert error is not None and error.startswith("node 'h': ")
    assert error.isprintable(), error
    assert len(error) < ERROR_CHARS + 300
    return error


@pytest.mark.parametrize("kind", sorted(set(RAISES) - {"interrupt"}))
async def test_whatever_run_raises_fails_its_own_node_and_request_only(kind: str) -> None:
    results, sink = await batch(graph(), {"mode": "ok"}, {"mode": f"raise_{kind}"}, {"mode": "ok"})
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    error = assert_one_line(results[1].error)
    (run,) = [r for r in sink.node_runs("r1")]
    assert run.status == "failed" and run.error == error
    assert [r.status for r in sink.requests()].count(RequestStatus.FAILED) == 1
    assert "NODE_FAILED" in sink.event_types("r1")


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("generator_exit", "raised GeneratorExit"),
        ("rogue", "raised Rogue: went rogue"),
        ("base_group", "raised BaseExceptionGroup: mixed (2 sub-exceptions)"),
        ("exit", "called exit() (3)"),
        ("unprintable", "Unprintable: Unprintable"),
        ("control", r"Loud: one\ntwo\x1b[31mred\x00\r"),
    ],
)
async def test_the_error_says_what_the_node_raised(kind: str, said: str) -> None:
    results, _ = await batch(graph(), {"mode": f"raise_{kind}"})
    assert said in assert_one_line(results[0].error)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("none", "run() returned NoneType, expected Hostile.Output"),
        ("dict", "run() returned dict, expected Hostile.Output"),
        ("str", "run() returned str, expected Hostile.Output"),
        (
            "coroutine",
            "run() returned coroutine (an `await` is missing: `return await ...`), "
            "expected Hostile.Output",
        ),
    ],
)
async def test_a_run_returning_something_else_than_its_output_fails_saying_what(
    kind: str, said: str
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, sink = await batch(graph(), {"mode": f"return_{kind}"}, {"mode": "ok"})
        gc.collect()  # a coroutine left as it was returned warns when collected
    assert [r.status for r in results] == ["failed", "ok"]
    assert results[0].error == f"node 'h': {said}"
    assert [(r.node, r.status) for r in sink.node_runs("r0")] == [("h", "failed")]
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


@pytest.mark.parametrize("call", ["emit", "trace", "memo", "model"])
async def test_a_context_used_after_its_request_ended_is_refused_and_adds_nothing_to_it(
    call: str,
) -> None:
    sink = MemorySink()
    async with Runner(graph(), sink=sink) as runner:
        kept = await runner.run({"mode": "keep"}, request_id="r0")
        recorded = list(sink.items)
        late = await runner.run({"mode": f"late_{call}"}, request_id="r1")
    assert kept.status == "ok"
    assert late.status == "failed"
    assert late.error == (
        f"node 'h': ctx.{call}() called after request 'r0' had ended; a NodeContext serves "
        "only the run it was given to: use it while run() runs, or in an `after_success` "
        "callback"
    )
    assert [r for r in sink.items if getattr(r, "request_id", None) == "r0"] == [
        r for r in recorded if getattr(r, "request_id", None) == "r0"
    ]


async def test_an_exception_of_megabytes_is_cut_to_a_line() -> None:
    results, sink = await batch(graph(), {"mode": "raise_megabytes"})
    error = assert_one_line(results[0].error)
    assert error.endswith(f"... ({5_000_000 - ERROR_CHARS} more characters)")
    assert sink.node_runs()[0].error == error


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=3000))
def test_any_exception_text_becomes_one_printable_bounded_line(text: str) -> None:
    from engine.scheduler.request import describe_error
    from tests.support.hostile_nodes import Loud

    error = describe_error("h", Loud(text))
    assert error.startswith("node 'h': Loud: ")
    assert error.isprintable() or not text.isprintable()  # (other categories stay as they are)
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in error)
    assert len(error) <= len("node 'h': Loud: ") + ERROR_CHARS + 40


WHOLE = GRAPH.replace("  v: h.value", "  v: h")


@pytest.mark.parametrize("whole", [False, True], ids=["field", "model"])
@pytest.mark.parametrize("kind", sorted(VALUES))
async def test_an_output_value_is_written_as_json_or_fails_its_request_saying_why(
    kind: str, whole: bool
) -> None:
    results, sink = await batch(
        graph(WHOLE if whole else GRAPH), {"mode": "ok"}, {"mode": f"value_{kind}"}, {"mode": "ok"}
    )
    assert [r.status for r in results[::2]] == ["ok", "ok"]
    odd = results[1]
    if kind in ("cyclic", "deep", "touchy"):
        assert odd.status == "failed"
        assert odd.error is not None
        assert odd.error.startswith(
            "output 'v' (from node 'h'): its value cannot be written as JSON"
        )
    else:
        assert odd.status == "ok", odd.error
    json.loads(strict_json(odd.to_json_line()))  # a line any strict JSON reader takes
    assert len(sink.requests()) == 3


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.sets(st.integers(), max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(
            st.text(max_size=5) | st.integers() | st.tuples(st.integers()), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_like)
def test_generated_output_values_always_make_one_strict_json_line(value: Any) -> None:
    class Given(Hostile):
        type_name = "given_value"

        async def run(self, config: Any, ctx: Any) -> Any:
            return self.Output(value=value)

    for expr in ("h.value", "h"):
        g = load_graph_text(
            GRAPH.replace("type: hostile", "type: given_value").replace("h.value", expr),
            "given.yaml",
            registry=Registry([Given]),
        )
        results, sink = anyio.run(batch, g, {"mode": "ok"})
        assert results[0].status == "ok", results[0].error
        line = json.loads(strict_json(results[0].to_json_line()))
        assert line["status"] == "ok" and sink.requests()[0].output == results[0].output


@pytest.mark.parametrize("anyio_backend", [mock_trio()])
@pytest.mark.parametrize("kind", ["again", "hang", "exit", "rogue", "unprintable", "megabytes"])
async def test_an_after_success_callback_that_misbehaves_is_logged_and_the_batch_ends(
    kind: str,
) -> None:
    g = graph()
    with capture_logs() as logs:
        results, sink = await batch(g, {"mode": "ok"}, {"mode": f"after_{kind}"}, {"mode": "ok"})
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    assert len(sink.requests()) == 3  # recorded, after the callbacks (which ran once)
    assert g.scope.nodes["h"].impl.called == [kind]
    (warning,) = [log for log in logs if log["event"] == "after_success.failed"]
    assert warning["request_id"] == "r1"
    error = warning["error"]
    assert error.isprintable() and len(error) < ERROR_CHARS + 100
    if kind == "hang":
        assert error == f"still running after {AFTER_SUCCESS_S:g} s: cancelled"
    if kind == "again":
        assert "after_success() called once the request had ended" in error


async def test_a_node_blocking_the_loop_past_its_timeout_is_a_timeout_that_says_so() -> None:
    g = graph(GRAPH.replace("type: hostile,", "type: hostile, timeout_ms: 50,"))
    results, sink = await batch(g, {"mode": "block"})
    assert results[0].status == "failed"
    error = assert_one_line(results[0].error)
    assert "attempt 1 ran past timeout_ms=50 while blocking the event loop" in error
    assert sink.node_runs()[0].status == "timed_out"
