"""Group commit: a request's answer waits for its record's commit, handed over by the
store writer's thread straight to the event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from engine.errors import StoreError
from engine.events import RequestRecord, RequestStatus
from engine.serve.durable import Commits
from tests.support.sched_nodes import backends

anyio_backend = backends("asyncio", "trio")


def _record(request_id: str) -> RequestRecord:
    return RequestRecord(
        id=request_id,
        run_id="r",
        seq=0,
        status=RequestStatus.OK,
        started_at=0.0,
        finished_at=0.0,
        latency_ms=0.0,
        cost_usd=0.0,
        output=None,
        error=None,
    )


class _Writer:
    """A store writer's side of `flush_soon`: it commits on a thread of its own."""

    def __init__(self, error: StoreError | None = None) -> None:
        self.error = error
        self.flushes = 0
        self.threads: set[str] = set()

    def flush_soon(self, done: Callable[[StoreError | None], None]) -> bool:
        def commit() -> None:
            self.flushes += 1
            self.threads.add(threading.current_thread().name)
            done(self.error)

        threading.Thread(target=commit, name="writer").start()
        return True

    def flush(self) -> None:
        raise AssertionError("flush_soon is used where the sink offers it")


async def _answered(commits: Commits, ids: list[str]) -> list[str]:
    done: list[str] = []

    async def request(request_id: str) -> None:
        recorded = commits.expect(request_id)
        commits.watch(_record(request_id))
        try:
            await commits.committed(recorded)
        except StoreError as exc:
            done.append(f"{request_id}: {exc}")
            return
        done.append(request_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(commits.run)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as requests:
                for request_id in ids:
                    requests.start_soon(request, request_id)
        tg.cancel_scope.cancel()
    return sorted(done)


@pytest.mark.anyio
async def test_requests_are_answered_after_a_commit_the_writer_thread_reports(
    anyio_backend: Any,
) -> None:
    writer = _Writer()
    commits = Commits(writer.flush, writer.flush_soon)
    ids = [f"q{i}" for i in range(20)]
    assert await _answered(commits, ids) == sorted(ids)
    # each request asks the writer (which commits whatever is queued in one transaction)
    assert writer.flushes == 20
    assert writer.threads == {"writer"}


@pytest.mark.anyio
async def test_a_failed_commit_fails_the_requests_waiting_for_it(anyio_backend: Any) -> None:
    writer = _Writer(StoreError("moat.db: writing to the store failed (disk full)"))
    commits = Commits(writer.flush, writer.flush_soon)
    answered = await _answered(commits, ["q1", "q2"])
    assert answered == [
        "q1: moat.db: writing to the store failed (disk full)",
        "q2: moat.db: writing to the store failed (disk full)",
    ]


@pytest.mark.anyio
async def test_without_flush_soon_one_flush_runs_in_a_worker_thread_for_a_group(
    anyio_backend: Any,
) -> None:
    flushed: list[str] = []

    def flush() -> None:
        flushed.append(threading.current_thread().name)

    commits = Commits(flush, lambda done: False)  # e.g. a Ray replica's sink
    ids = [f"q{i}" for i in range(20)]
    assert await _answered(commits, ids) == sorted(ids)
    assert 1 <= len(flushed) < 20  # grouped: one flush for whoever asked since the last
    assert threading.main_thread().name not in flushed


def test_a_request_whose_record_is_emitted_asks_for_its_commit_without_a_turn() -> None:
    """The record comes before the answer, so the request goes straight on to its commit:
    a turn of a busy loop there would delay every answer by every other request's step."""
    commits = Commits(None)
    recorded = commits.expect("r-1")
    commits.watch(_record("r-1"))
    step = commits.committed(recorded)
    with pytest.raises(StopIteration):  # done on its first step: it never yielded
        step.send(None)
