"""`Pipeline.run_batch` from plain dicts, the in-memory window of a store-less pipeline, and
the runs a batch owns: started, resumed and finished exactly once by the pipeline."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.api
from engine.api import BatchSummary, Pipeline
from engine.events import RequestRecord
from engine.store.store import Store
from tests.support.fast_graphs import one_model_graph
from tests.support.loop_probe import heartbeats_during, write_lock_held

pytestmark = pytest.mark.anyio

GRAPH = """
moat: 1
name: echo
input:
  type: object
  required: [prompt]
  properties: {prompt: {type: string, minLength: 1}}
nodes:
  clean: {type: redact, with: {text: "{{ input.prompt }}"}}
output:
  text: clean.text
"""


def write_graph(folder: Path) -> Path:
    graph = folder / "echo.yaml"
    graph.write_text(GRAPH)
    return graph


async def test_a_batch_of_plain_dicts_starts_and_finishes_its_own_run(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    seen: list[RequestRecord] = []
    async with Pipeline(write_graph(tmp_path), db=db) as pipe:
        summary = await pipe.run_batch(
            [{"prompt": "a"}, {"prompt": ""}, {"prompt": None}, {"prompt": "d"}],
            concurrency=2,
            on_record=seen.append,
        )
    assert (summary.total, summary.done) == (4, 4)
    assert summary.by_status == {"ok": 2, "invalid_input": 2}
    assert sorted(r.seq for r in seen) == [0, 1, 2, 3]
    errors = {r.seq: r.error for r in seen}
    assert errors[2] == "request: input prompt: none is not of type 'string'"
    with Store.open(db, readonly=True) as store:
        run = store.require_run(summary.run_id)
        assert (run["status"], run["requests_total"], run["requests_done"]) == ("finished", 4, 4)


async def test_a_hostile_dict_is_an_invalid_input_not_a_crash(tmp_path: Path) -> None:
    deep: object = "x"
    for _ in range(2000):
        deep = [deep]
    async with Pipeline(write_graph(tmp_path), db=None) as pipe:
        summary = await pipe.run_batch(
            [{"prompt": "ok"}, {"prompt": "a", "n": deep}, {"prompt": "\udc80"}, {"prompt": "b"}]
        )
        results = {r.seq: r for r in pipe.memory.requests()}
    assert summary.by_status == {"ok": 2, "invalid_input": 2}
    assert "nested more than 64 levels deep" in str(results[1].error)
    assert (
        results[2].error == "request: input prompt has a lone surrogate (\\ud800-\\udfff), not text"
    )


async def test_a_store_less_pipeline_keeps_a_bounded_window_of_records(tmp_path: Path) -> None:
    graph = write_graph(tmp_path)
    async with Pipeline(graph, db=None, memory_records=30) as pipe:
        await pipe.run_batch([{"prompt": f"q{i}"} for i in range(40)])
        assert len(pipe.memory.items) == 30
        assert pipe.memory.items[-1] == pipe.memory.requests()[-1]  # the latest are kept
    async with Pipeline(graph, db=None) as default:
        assert default.memory.items.maxlen == 100_000


async def test_a_request_whose_record_comes_after_its_cleanup_is_still_counted(
    tmp_path: Path,
) -> None:
    # A cache hit cancels the speculative draft: the request's record is emitted only once
    # that cleanup is done, after the request itself returned.
    from tests.support.fast_graphs import fast_copy

    prompt = {"prompt": "What is VAT?"}
    async with Pipeline(fast_copy("governed-answer", tmp_path), db=tmp_path / "t.db") as pipe:
        # the graph caches only an accepted, valid answer, and the simulated models are
        # seeded per request: ask until one is stored (each try is a new run and seed)
        assert pipe.store is not None
        for _ in range(30):
            first = await pipe.run_batch([prompt])
            pipe.flush()
            stored = "SELECT 1 AS n FROM orchestration_events WHERE event_type = 'CACHE_STORED'"
            if pipe.store.query(stored):
                break
        seen: list[RequestRecord] = []
        again = await pipe.run_batch([prompt], on_record=seen.append)
    assert first.by_status == again.by_status == {"ok": 1}
    assert [r.output["decision"] for r in seen if r.output] == ["cached"]


async def test_a_single_request_run_counts_its_request(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    async with Pipeline(write_graph(tmp_path), db=db) as pipe:
        result = await pipe.run({"prompt": "hello"})
    with Store.open(db, readonly=True) as store:
        (run,) = store.list_runs()
    assert result.request_id.startswith(run["id"])
    assert (run["status"], run["requests_done"]) == ("finished", 1)


class CountingStore:
    """Wraps the pipeline's store to record every `finish_run` call."""

    def __init__(self, pipe: Pipeline) -> None:
        assert pipe.store is not None
        self.store = pipe.store
        self.finished: list[tuple[str, str]] = []
        real = self.store.finish_run

        def finish_run(run_id: str, status: str, at: float | None = None) -> None:
            self.finished.append((run_id, status))
            real(run_id, status, at)

        self.store.finish_run = finish_run  # type: ignore[method-assign]


async def test_a_run_the_batch_starts_is_finished_once_as_of_its_last_request(
    tmp_path: Path,
) -> None:
    async with Pipeline(write_graph(tmp_path), db=tmp_path / "t.db") as pipe:
        calls = CountingStore(pipe)
        batch = pipe.start_batch(3, config={"note": "kept"})
        assert pipe.store is not None
        assert pipe.store.require_run(batch.run_id)["status"] == "running"
        await pipe.run_batch([{"prompt": f"q{i}"} for i in range(3)], batch=batch)
        await anyio.sleep(0.3)  # whatever the caller does after the batch is not the run's
        assert calls.finished == [(batch.run_id, "finished")]
        run = pipe.store.require_run(batch.run_id)
        last = max(r["finished_at"] for r in pipe.store.list_requests(batch.run_id))
    assert (batch.done, batch.by_status, batch.interrupted) == (3, {"ok": 3}, False)
    assert (run["status"], run["requests_done"], run["config"]["note"]) == ("finished", 3, "kept")
    assert last <= run["finished_at"] < last + 0.25  # generous: it is 0.3 s later otherwise


async def test_a_cancelled_batch_is_finished_once_as_interrupted(tmp_path: Path) -> None:
    seen: list[RequestRecord] = []
    async with Pipeline(write_graph(tmp_path), db=tmp_path / "t.db") as pipe:
        calls = CountingStore(pipe)
        batch = pipe.start_batch(50)
        with anyio.CancelScope() as scope:

            def stop_at_the_first(record: RequestRecord) -> None:
                seen.append(record)
                scope.cancel()

            prompts = [{"prompt": f"q{i}"} for i in range(50)]
            await pipe.run_batch(prompts, batch=batch, concurrency=1, on_record=stop_at_the_first)
        assert pipe.store is not None
        run = pipe.store.require_run(batch.run_id)
    assert calls.finished == [(batch.run_id, "interrupted")]
    assert batch.interrupted and 1 <= batch.done == len(seen) < 50
    assert (run["status"], run["requests_done"]) == ("interrupted", len(seen))


async def test_a_resumed_batch_answers_the_rest_and_is_finished_once(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    prompts = [{"prompt": f"q{i}"} if i != 2 else {"prompt": ""} for i in range(5)]
    async with Pipeline(write_graph(tmp_path), db=db) as pipe:
        first = pipe.start_batch(5)
        await pipe.run_batch(prompts[:3], batch=first)  # three of five: cut short
    assert first.interrupted
    seen: list[RequestRecord] = []
    async with Pipeline(write_graph(tmp_path), db=db) as pipe:
        calls = CountingStore(pipe)
        again = pipe.start_batch(resume=first.run_id)
        assert (again.total, again.done) == (5, 3)
        await pipe.run_batch(prompts, batch=again, on_record=seen.append)
        assert pipe.store is not None
        run = pipe.store.require_run(first.run_id)
    assert sorted(r.seq for r in seen) == [3, 4]  # nothing is answered twice
    assert calls.finished == [(first.run_id, "finished")]
    assert (again.done, again.by_status, again.interrupted) == (
        5,
        {"ok": 4, "invalid_input": 1},
        False,
    )
    assert (run["status"], run["requests_done"]) == ("finished", 5)


async def test_a_batch_whose_records_could_not_be_stored_is_finished_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.errors import StoreError
    from engine.store.writer import StoreWriter

    def disk_full(*_: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    async with Pipeline(write_graph(tmp_path), db=tmp_path / "t.db") as pipe:
        calls = CountingStore(pipe)
        batch = pipe.start_batch(2)
        monkeypatch.setattr(StoreWriter, "_commit", disk_full)
        with pytest.raises(StoreError, match="database or disk is full"):
            await pipe.run_batch([{"prompt": "a"}, {"prompt": "b"}], batch=batch)
        monkeypatch.undo()
        assert pipe.store is not None
        run = pipe.store.require_run(batch.run_id)
    assert calls.finished == [(batch.run_id, "failed")]
    assert run["status"] == "failed"


async def test_a_batch_not_started_by_the_pipeline_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    async with Pipeline(write_graph(tmp_path), db=tmp_path / "t.db") as pipe:
        batch = pipe.start_batch(1)
        await pipe.run_batch([{"prompt": "a"}], batch=batch)
        with pytest.raises(ValueError, match=f"run {batch.run_id} was not started by this"):
            await pipe.run_batch([{"prompt": "b"}], batch=batch)
    assert batch.done == 1


async def test_a_batch_waits_while_its_writer_is_far_behind_and_resumes_when_it_catches_up(
    tmp_path: Path,
) -> None:
    # A writer slower than the event loop held every record it had not written: the batch
    # must not start requests while the writer is more than `WRITER_BACKLOG` records behind.
    from engine.api import WRITER_BACKLOG
    from engine.events import MemorySink

    class Behind(MemorySink):
        backlog = WRITER_BACKLOG + 1

    sink = Behind()
    items = [{"prompt": f"p{i}"} for i in range(6)]
    async with (
        Pipeline(write_graph(tmp_path), db=None, sink=sink) as pipe,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lambda: pipe.run_batch(items, concurrency=2))
        await anyio.sleep(0.2)
        assert sink.requests() == []  # nothing started while the writer is behind
        sink.backlog = WRITER_BACKLOG // 2 + 1
        await anyio.sleep(0.1)
        assert sink.requests() == []  # not yet: it resumes at half the bound
        sink.backlog = 0
    assert sorted(r.seq for r in sink.requests()) == list(range(6))


async def test_while_the_writer_is_behind_one_worker_watches_and_the_others_sleep(
    tmp_path: Path,
) -> None:
    # Every worker of a batch polling the backlog every 10 ms woke 64 tasks a tick while
    # the writer set the pace; one watches and wakes the others when there is room.
    from engine.api import WRITER_BACKLOG
    from engine.events import MemorySink

    class Behind(MemorySink):
        reads = 0
        level = WRITER_BACKLOG + 1

        @property
        def backlog(self) -> int:
            Behind.reads += 1
            return Behind.level

    sink = Behind()
    items = [{"prompt": f"p{i}"} for i in range(200)]
    async with (
        Pipeline(write_graph(tmp_path), db=None, sink=sink) as pipe,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lambda: pipe.run_batch(items, concurrency=64))
        await anyio.sleep(0.3)
        assert sink.requests() == []
        assert Behind.reads < 3 * 64 + 60  # (64 workers polling: about 64 x 30 reads)
        Behind.level = 0
    assert sorted(r.seq for r in sink.requests()) == list(range(200))


async def test_a_batch_cancelled_while_its_writer_is_behind_ends_at_once(tmp_path: Path) -> None:
    from engine.api import WRITER_BACKLOG
    from engine.events import MemorySink

    class Behind(MemorySink):
        backlog = WRITER_BACKLOG + 1

    async with Pipeline(write_graph(tmp_path), db=None, sink=Behind()) as pipe:
        with anyio.move_on_after(0.2) as scope:
            await pipe.run_batch([{"prompt": f"p{i}"} for i in range(10)], concurrency=4)
        assert scope.cancelled_caught
        # the pipeline answers again once the writer has caught up
        Behind.backlog = 0
        summary = await pipe.run_batch([{"prompt": "again"}])
        assert summary.done == 1


def test_the_store_writer_reports_its_backlog(tmp_path: Path) -> None:
    from engine.events import RequestStatus
    from engine.store.writer import StoreWriter

    with StoreWriter(tmp_path / "t.db", batch_size=1000, interval_s=60) as writer:
        for seq in range(3):
            record = RequestRecord(
                id=f"r-{seq}", run_id="r", seq=seq, status=RequestStatus.OK,
                started_at=1.0, finished_at=2.0, latency_ms=1.0, cost_usd=0.0,
                output=None, error=None,
            )  # fmt: skip
            writer.record(record)
        assert writer.backlog == 3  # the thread waits for a full batch or its interval
        writer.flush()
        assert writer.backlog == 0


SLEEPY = one_model_graph("sleepy", 0.02)


@pytest.mark.parametrize("with_store", [True, False])
async def test_a_batch_gives_freed_heap_pages_back_every_heartbeat_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_store: bool
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(engine.api, "HEARTBEAT_S", 0.02)
    monkeypatch.setattr(engine.api, "trimmer", lambda: lambda: trims.append(time.monotonic()))
    (tmp_path / "sleepy.yaml").write_text(SLEEPY)
    db = tmp_path / "t.db" if with_store else None
    async with Pipeline(tmp_path / "sleepy.yaml", db=db) as pipe:
        started = time.monotonic()
        summary = await pipe.run_batch([{"prompt": f"q {i}"} for i in range(12)], concurrency=1)
        ended = time.monotonic()
        await anyio.sleep(0.1)
    assert summary.by_status == {"ok": 12}  # 12 requests of 20 ms one after another
    assert len(trims) >= 3
    assert all(started < at <= ended for at in trims)  # only while the batch runs


@pytest.mark.parametrize("concurrency", [1, 3, 8])
async def test_a_batch_never_has_more_requests_in_flight_than_its_concurrency(
    tmp_path: Path, concurrency: int
) -> None:
    (tmp_path / "sleepy.yaml").write_text(SLEEPY)
    seen: list[RequestRecord] = []
    async with Pipeline(tmp_path / "sleepy.yaml", db=None) as pipe:
        summary = await pipe.run_batch(
            [{"prompt": f"question {i}"} for i in range(24)],
            concurrency=concurrency,
            on_record=seen.append,
        )
    assert (summary.done, summary.by_status) == (24, {"ok": 24})
    assert sorted(r.seq for r in seen) == list(range(24))
    # the most requests in flight at once, from their recorded start and end times
    edges = sorted([(r.started_at, 1) for r in seen] + [(r.finished_at, -1) for r in seen])
    in_flight = peak = 0
    for _, step in edges:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == concurrency  # never more, and the batch does use what it is given


async def test_workers_beyond_the_first_start_as_items_are_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.api, "_FIRST_WORKERS", 2)
    (tmp_path / "sleepy.yaml").write_text(SLEEPY)
    seen: list[RequestRecord] = []

    def items() -> Iterator[dict[str, str]]:  # cannot say how many it holds
        for i in range(24):
            yield {"prompt": f"question {i}"}

    async with Pipeline(tmp_path / "sleepy.yaml", db=None) as pipe:
        summary = await pipe.run_batch(items(), concurrency=5, on_record=seen.append)
    assert (summary.done, sorted(r.seq for r in seen)) == (24, list(range(24)))
    edges = sorted([(r.started_at, 1) for r in seen] + [(r.finished_at, -1) for r in seen])
    in_flight = peak = 0
    for _, step in edges:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == 5  # two at first, then one more per item taken, up to the concurrency


@pytest.mark.parametrize("sized", [True, False])
def test_a_huge_concurrency_starts_no_more_workers_than_the_items_need(
    tmp_path: Path, sized: bool
) -> None:
    """`moat run --concurrency 1000000000000000000000000000000` on five lines: five
    answers, not a task per unit of concurrency (which once ate all memory)."""
    tasks: list[int] = []

    def items() -> Iterator[dict[str, str]]:
        for i in range(5):
            tasks.append(len(asyncio.all_tasks()))
            yield {"prompt": f"q{i}"}

    async def answer() -> BatchSummary:
        async with Pipeline(write_graph(tmp_path), db=None) as pipe:
            given = list(items()) if sized else items()
            return await pipe.run_batch(given, concurrency=10**30)

    summary = anyio.run(answer)
    assert (summary.done, summary.by_status) == (5, {"ok": 5})
    assert max(tasks) < (20 if sized else engine.api._FIRST_WORKERS + 20)


_BATCHES = st.lists(st.sampled_from(["a", "", None, "question", 7]), max_size=30).flatmap(
    lambda prompts: st.tuples(
        st.just(prompts), st.frozensets(st.integers(0, max(0, len(prompts) - 1)))
    )
)


# A plain function that runs its own event loop per example: hypothesis ends a test by
# raising inside it, which an async test under the anyio plugin would leave in a task.
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=_BATCHES, concurrency=st.integers(1, 6))
def test_every_item_of_a_batch_is_answered_exactly_once_but_those_skipped(
    tmp_path: Path, batch: tuple[list[object], frozenset[int]], concurrency: int
) -> None:
    prompts, skip = batch
    seen: list[RequestRecord] = []

    async def answer() -> BatchSummary:
        async with Pipeline(write_graph(tmp_path), db=None) as pipe:
            return await pipe.run_batch(
                [{"prompt": p} for p in prompts],
                concurrency=concurrency,
                skip=skip,
                on_record=seen.append,
            )

    summary = anyio.run(answer)
    answered = [i for i in range(len(prompts)) if i not in skip]
    assert sorted(r.seq for r in seen) == answered
    valid = sum(1 for i in answered if isinstance(prompts[i], str) and prompts[i])
    assert summary.by_status == {
        k: v for k, v in {"ok": valid, "invalid_input": len(answered) - valid}.items() if v
    }


async def test_an_error_raised_by_the_items_stops_the_batch_and_comes_out_as_itself(
    tmp_path: Path,
) -> None:
    def items() -> Iterator[dict[str, str]]:
        for i in range(10):
            if i == 4:
                raise ValueError("line 5 of the input could not be read")
            yield {"prompt": f"q{i}"}

    db = tmp_path / "t.db"
    async with Pipeline(write_graph(tmp_path), db=db) as pipe:
        batch = pipe.start_batch(10)
        with pytest.raises(ValueError, match="line 5 of the input"):
            await pipe.run_batch(items(), batch=batch, concurrency=2)
        assert pipe.store is not None
        run = pipe.store.require_run(batch.run_id)
        stored = sorted(r["seq"] for r in pipe.store.list_requests(batch.run_id))
    assert stored == [0, 1, 2, 3]  # what was read before the error is answered and kept
    assert (run["status"], run["requests_done"]) == ("interrupted", 4)


@pytest.mark.parametrize("call", ["run", "run_batch"])
async def test_a_run_of_its_own_waits_for_the_store_s_write_lock_off_the_event_loop(
    tmp_path: Path, call: str
) -> None:
    """`Pipeline.run` and `run_batch` without a run create one and finish it: while another
    process holds the store's write lock, the wait is a worker thread's and the event loop
    goes on."""
    db = tmp_path / "t.db"
    async with Pipeline(write_graph(tmp_path), db=db) as pipe:

        async def answer() -> object:
            if call == "run":
                return await pipe.run({"prompt": "hello"})
            return await pipe.run_batch([{"prompt": "hello"}])

        with write_lock_held(db, 0.3):
            ticks = await heartbeats_during(answer)
        pipe.flush()
        runs = pipe.store.query("SELECT status, requests_done FROM runs")  # type: ignore[union-attr]
    assert ticks >= 20  # 1 ms heartbeats through 0.3 s (a blocked loop ticks once at most)
    assert [(r["status"], r["requests_done"]) for r in runs] == [("finished", 1)]
