"""A Pipeline used carelessly: a node that raises `CancelledError` itself, a pipeline used
from another thread or after it closed, a cancelled one-off request, inputs that are not
objects. Each gets a clear answer or error; nothing hangs, and no run is left `running`."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from engine.api import Pipeline, run_sync
from engine.events import RequestStatus

pytestmark = pytest.mark.anyio

GRAPH = """\
moat: 1
name: misuse
plugins: [tests.support.sched_nodes]
input: {type: object, properties: {bad: {type: boolean}, quits: {type: boolean}}}
nodes:
  good: {type: work, with: {ms: 5, value: fine}}
  bad: {type: work, with: {ms: 5, fail: cancelled}}
  slow: {type: work, with: {ms: 5000, value: late}}
  quits: {type: work, with: {ms: 5, fail: exit}}
output:
  v: >-
    quits.value if input.quits else
    (slow.value if input.slow else (bad.value if input.bad else good.value))
"""


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "misuse.yaml"
    path.write_text(GRAPH)
    return path


def _runs(db: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, requests_total, requests_done FROM runs").fetchall()


async def test_a_node_raising_cancelled_error_itself_fails_only_its_own_request(
    graph: Path, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    async with Pipeline(graph, db=db) as pipe:
        records = []
        summary = await pipe.run_batch(
            [{"bad": n == 1} for n in range(4)], concurrency=4, on_record=records.append
        )
        alone = await pipe.run({"bad": True})
    assert not summary.interrupted and summary.done == 4
    assert sorted((r.seq, r.status) for r in records) == [
        (0, RequestStatus.OK), (1, RequestStatus.FAILED), (2, RequestStatus.OK),
        (3, RequestStatus.OK),
    ]  # fmt: skip
    assert alone.status is RequestStatus.FAILED
    assert alone.error is not None and alone.error.startswith("node 'bad': raised CancelledError")
    with sqlite3.connect(db) as conn:
        failed = conn.execute("SELECT node, status FROM node_runs WHERE status != 'succeeded'")
        assert failed.fetchall() == [("bad", "failed"), ("bad", "failed")]
    assert sorted(_runs(db)) == [("finished", 1, 1), ("finished", 4, 4)]


async def test_a_cancelled_one_off_request_leaves_its_run_interrupted_not_running(
    graph: Path, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    async with Pipeline(graph, db=db) as pipe:
        with anyio.move_on_after(0.2) as scope:
            await pipe.run({"slow": True}, record_cancelled=True)
        assert scope.cancelled_caught
        assert _runs(db) == [("interrupted", 1, 1)]


async def test_a_pipeline_used_from_another_threads_event_loop_says_so_instead_of_hanging(
    graph: Path,
) -> None:
    outcome: list[BaseException | str] = []

    async def elsewhere(pipe: Pipeline) -> None:
        await pipe.run({})

    def other_thread(pipe: Pipeline) -> None:
        try:
            anyio.run(elsewhere, pipe)
            outcome.append("answered")
        except BaseException as exc:
            outcome.append(exc)

    async with Pipeline(graph, db=None) as pipe:
        thread = threading.Thread(target=other_thread, args=(pipe,), daemon=True)
        thread.start()
        await anyio.to_thread.run_sync(thread.join, 10)
        assert (await pipe.run({})).output == {"v": "fine"}  # its own loop still answers
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError)
    assert "opened in another thread's event loop" in str(outcome[0])


async def test_requests_that_are_not_objects_are_answered_invalid_input(graph: Path) -> None:
    async with Pipeline(graph, db=None) as pipe:
        for value in ("a string", 42, None, [1, 2], b"{}"):
            result = await pipe.run(value)  # type: ignore[arg-type]
            assert result.status is RequestStatus.INVALID_INPUT, value
        with pytest.raises(ValueError, match="at least 1"):
            await pipe.run_batch([{}], concurrency=0)


async def test_a_pipeline_that_is_not_open_says_so(graph: Path) -> None:
    pipe = Pipeline(graph, db=None)
    with pytest.raises(RuntimeError, match="is not open"):
        await pipe.run({})
    async with pipe:
        pass
    with pytest.raises(RuntimeError, match="was closed"):
        await pipe.run({})
    with pytest.raises(RuntimeError, match="was closed"):
        await pipe.run_batch([{}])


def test_run_sync_answers_every_input_in_order_and_records_its_run(
    graph: Path, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    results = run_sync(graph, [{}, "not an object", {"bad": True}, {}], db=db, concurrency=2)
    assert [r.status for r in results] == [
        RequestStatus.OK, RequestStatus.INVALID_INPUT, RequestStatus.FAILED, RequestStatus.OK,
    ]  # fmt: skip
    assert [r.request_id[-6:] for r in results] == ["000000", "000001", "000002", "000003"]
    assert _runs(db) == [("finished", 4, 4)]


async def test_a_node_that_calls_exit_fails_its_request_not_the_batch(graph: Path) -> None:
    async with Pipeline(graph, db=None) as pipe:
        records = []
        summary = await pipe.run_batch(
            [{"quits": n == 0} for n in range(3)], concurrency=3, on_record=records.append
        )
    assert not summary.interrupted
    assert sorted((r.seq, r.status) for r in records) == [
        (0, RequestStatus.FAILED), (1, RequestStatus.OK), (2, RequestStatus.OK),
    ]  # fmt: skip
    failed = next(r for r in records if r.seq == 0)
    assert failed.error == (
        "node 'quits': called exit() (3); a node reports a failure by raising an exception"
    )


async def test_a_tenant_that_names_no_partition_is_refused(graph: Path) -> None:
    async with Pipeline(graph, db=None) as pipe:
        for tenant in ("", "t" * 257, 5):
            with pytest.raises(ValueError, match="a tenant is a string of 1 to 256"):
                await pipe.run({}, tenant=tenant)  # type: ignore[arg-type]
        assert (await pipe.run({}, tenant="acme")).output == {"v": "fine"}


STUBBORN = """\
moat: 1
name: stubborn
plugins: [tests.support.sched_nodes]
budget: {deadline_ms: 300}
input: {type: object, properties: {timeout: {type: boolean}}}
nodes:
  bounded: {type: stubborn, timeout_ms: 50, with: {ms: 5000, value: late}}
  unbounded: {type: stubborn, with: {ms: 5000, value: late}}
output:
  v: bounded.value if input.timeout else unbounded.value
"""


@pytest.mark.parametrize(
    ("data", "status", "error", "node_status"),
    [
        ({"timeout": True}, RequestStatus.FAILED, "node 'bounded': attempt 1 ran", "timed_out"),
        ({"timeout": False}, RequestStatus.DEADLINE_EXCEEDED, "deadline_ms=300 passed", None),
    ],
)
async def test_a_value_returned_after_a_timeout_or_deadline_is_not_an_answer(
    tmp_path: Path,
    data: dict[str, bool],
    status: RequestStatus,
    error: str,
    node_status: str | None,
) -> None:
    """A node that catches its cancellation and returns something (a plugin wrapping its
    call in `except BaseException`) is still past its timeout or the request's deadline."""
    path = tmp_path / "stubborn.yaml"
    path.write_text(STUBBORN)
    async with Pipeline(path, db=None) as pipe:
        result = await pipe.run(data)
        runs = [r for r in pipe.memory.items if type(r).__name__ == "NodeRun"]
    assert result.status is status
    assert result.output is None
    assert result.error is not None and error in result.error
    if node_status is not None:
        assert [(r.node, r.status) for r in runs] == [("bounded", node_status)]


LATE_PARTIAL = """\
moat: 1
name: late-partial
plugins: [tests.support.sched_nodes]
budget: {deadline_ms: 200, partial: true}
nodes:
  quick: {type: stubborn, with: {ms: 1, value: quick}}
  late: {type: stubborn, with: {ms: 600, value: "{{ quick.value }} and late", block: BLOCK}}
output:
  quick: quick.value
  late: late.value
"""


@pytest.mark.parametrize("block", [False, True], ids=["swallows-cancellation", "blocks"])
async def test_a_value_that_came_after_the_deadline_is_not_part_of_a_partial_answer(
    tmp_path: Path, block: bool
) -> None:
    """With `partial: true`, only what resolved before the deadline is the answer: a node
    that caught the deadline's cancellation, or blocked the loop past it, and then
    returned is a timed-out run, never an output."""
    path = tmp_path / "late.yaml"
    path.write_text(LATE_PARTIAL.replace("BLOCK", str(block).lower()))
    async with Pipeline(path, db=None) as pipe:
        result = await pipe.run({})
        runs = {r.node: r for r in pipe.memory.items if type(r).__name__ == "NodeRun"}
    assert result.status is RequestStatus.PARTIAL
    assert result.output == {"quick": "quick"}
    assert result.error is not None
    assert re.fullmatch(
        r"deadline_ms=200 passed after \d+ ms; outputs not resolved: late", result.error
    )
    assert (runs["late"].status, runs["late"].outcome) == ("timed_out", "none")
    assert (runs["quick"].status, runs["quick"].outcome) == ("succeeded", "used")
