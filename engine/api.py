"""The embedding API: a `Pipeline` answers requests and batches with a store and policy.

```python
async with Pipeline("graphs/governed-answer.yaml", db="moat.db") as pipe:
    result = await pipe.run({"prompt": "How do I reset my password?"})
    summary = await pipe.run_batch(items, concurrency=32)
```

`Pipeline` owns a run's lifecycle: it starts (or, for a resume, claims) the run, counts its
requests, and records how it ended, once its requests are stored. The CLI's `moat run` is a
thin layer over this class; `run_sync` is the blocking helper for scripts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from engine._pipeline import _OwnedRun, _PipelineCore
from engine.collector import trim_every, trimmer
from engine.errors import DuplicateRequest, StoreError
from engine.events import RequestRecord
from engine.graph.compiled import Graph
from engine.models._rebind import rebind_models
from engine.requests import BatchItem, parse_request, show_value
from engine.scheduler.runner import RequestResult
from engine.seqs import SeqSet
from engine.store.store import HEARTBEAT_S

__all__ = ["BatchSummary", "Pipeline", "rebind_models", "run_sync"]


@dataclass(slots=True)
class BatchSummary:
    """What a batch did."""

    run_id: str
    total: int
    done: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


class Pipeline(_PipelineCore):
    """A graph loaded once, answering single requests and batches concurrently.

    Args:
        graph: a loaded `Graph` or the path of a graph file.
        db: the store file (`None` keeps records in memory only; see `sink`).
        sink: where records go when `db` is None (default: a `MemorySink`).
        policy_file: apply this policy snapshot before answering (`--policy`).
        models: rebind logical models, `{"large": "openai:gpt-4o-mini"}` (`--model`).
        seed: seed for the simulated models.
        limits: size and nesting limits of one request (default: the graph's `limits:`).
        memory_records: how many of the latest records the default in-memory sink keeps
            (`None`: all of them, which grows without bound in a long-lived process).
        allow_unpriced: run a graph with `budget.cost_usd` even though one of its models has
            no price (`--allow-unpriced`); its calls then cost $0 against the budget.

    Raises:
        SpecError: the graph is unusable, has a cost budget and an unpriced model, or an
            `openai` model it can call has no API key set or an endpoint that is no
            http(s) URL.
    """

    def start_batch(
        self,
        total: int | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        resume: str | None = None,
    ) -> BatchSummary:
        """Start a run for `run_batch` to answer and finish, or claim the run `resume` to go
        on with (its stored requests are counted, and not answered again).

        Args:
            total: how many requests the run has (default for a resume: what it recorded).
            config: the new run's settings, recorded with it.
            resume: the id of a run that is no longer running.

        Returns:
            The run's summary, counting what it already has; pass it to `run_batch(batch=)`.

        Raises:
            StoreError: `resume` is unknown or still running.
        """
        store_failures = self._store_failures
        if resume is None:
            return self._owned_run(self._create_run(total, config), total, store_failures)
        if self.store is None:
            raise StoreError(f"run {resume}: resuming needs a store; pass `db=`")
        self.store.claim_run(resume)
        self.use_run(resume)
        done = frozenset(self.store.finished_request_seqs(resume))
        self._seqs[resume] = SeqSet(done)
        if total is None:
            total = int(self.store.require_run(resume)["requests_total"] or 0)
        # a resumed run ends by all its requests, the earlier ones included
        summary = BatchSummary(resume, total, len(done), self.store.status_counts(resume))
        self._owned[resume] = _OwnedRun(done, store_failures)
        return summary

    def _owned_run(self, run_id: str, total: int | None, store_failures: int) -> BatchSummary:
        """A new run that this pipeline answers under and finishes (see `run_batch`)."""
        self.use_run(run_id)
        self._owned[run_id] = _OwnedRun(frozenset(), store_failures)
        return BatchSummary(run_id, total or 0)

    async def run(
        self,
        input: Mapping[str, Any],
        *,
        run_id: str | None = None,
        seq: int | None = None,
        labels: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        record_cancelled: bool | Callable[[], str | None] = False,
    ) -> RequestResult:
        """Answer one request (validated against the graph's `input` schema); `tenant`
        (default `input["tenant"]`, else `public`) partitions caches and is recorded.
        With `record_cancelled`, a request its caller cancels is recorded `cancelled`
        (a server's client that hung up; a function instead of True says why, see
        `Runner.run`); without, it leaves no request record. Under `run_id` without
        `seq`, the request takes the next seq the run has not answered.

        Raises:
            DuplicateRequest: `run_id` has answered `seq` already (its request id would be
                that request's); nothing was run or recorded.
        """
        runner = self._usable()  # (it checks that the pipeline answers here)
        if run_id and runner.run_id != run_id:
            self.use_run(run_id)
        if tenant is not None and (type(tenant) is not str or not 0 < len(tenant) <= 256):
            raise ValueError(
                f"Pipeline.run(tenant={show_value(tenant)}): a tenant is a string of 1 to 256 "
                "characters (its cache partition and audit identity)"
            )
        if (labels or type(input) is not dict) and isinstance(input, Mapping):
            input = {**input, **({"_labels": labels} if labels else {})}
        reserved = run_id is not None and seq is None
        if run_id and seq is None:  # the run's next seq, taken: no other call can answer it
            seqs = self._seqs.get(run_id)
            seq = await self._next_seq(run_id) if seqs is None else self._take_seq(run_id, seqs)
        # (anything else than a mapping is answered `invalid_input`, as in a batch)
        item = parse_request(
            input, seq=seq or 0, declared=self.validator.declared, limits=self.limits
        )
        item = item if not meta else _with_meta(item, meta)
        if run_id:
            return await self._answer(
                run_id, item, tenant, record_cancelled=record_cancelled, reserved=reserved
            )
        rid = await self.new_run(1)  # a run of its own, created and finished here
        self.use_run(rid)
        status = "interrupted"
        try:
            result = await self._answer(rid, item, tenant, record_cancelled=record_cancelled)
            status = "finished"
        finally:  # (cancelled: recorded `interrupted`, as a cancelled batch's run is)
            await self.finish_run(rid, status)
        return result

    async def run_batch(
        self,
        items: Iterable[BatchItem | Mapping[str, Any]],
        *,
        batch: BatchSummary | None = None,
        run_id: str | None = None,
        total: int | None = None,
        concurrency: int = 16,
        skip: frozenset[int] = frozenset(),
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> BatchSummary:
        """Answer `items` with at most `concurrency` in flight; finished records go to
        `on_record` as they are recorded. Cancelling the caller stops cleanly: what finished
        is kept.

        A run the batch owns (one it starts, or `batch` from `start_batch`) is finished when
        the batch ends, exactly once: `finished` as of its last request, `interrupted` if the
        batch was cancelled or answered fewer than `total` (`summary.interrupted` says so
        too), `failed` if a store write failed meanwhile.

        Args:
            items: `BatchItem`s, or plain request mappings (numbered in order from 0).
            batch: answer and finish the run `start_batch` returned (a new or resumed one).
            run_id: record the requests under this run, which the caller finishes; by
                default (and without `batch`) a new run is started and finished.
            total: how many requests the batch has, if known (default: `len(items)`).
                An item whose `seq` the run has answered already is not answered again.
            concurrency: requests in flight at most.
            skip: `seq` numbers not to answer (already answered).
            on_record: called with each finished request's record.

        Raises:
            StoreError: storing the batch's records failed (its run is recorded `failed`).
            DuplicateRequest: once every other item is answered, when some items had a
                `seq` the run had answered already (they were not answered: their request
                id was taken); it names them.
            Exception: whatever `items` raised while being read; the batch stops there,
                and what was answered is kept.
        """
        self._usable()
        if concurrency < 1:
            raise ValueError(f"run_batch(concurrency={concurrency}): answer at least 1 at a time")
        if batch is None and run_id is None:  # a run of its own, created off the event loop
            count = total if total is not None else len(items) if isinstance(items, Sized) else 0
            store_failures = self._store_failures
            batch = self._owned_run(await self.new_run(count), count, store_failures)
        if batch is None:
            assert run_id is not None
            self.use_run(run_id)
            if total is None:
                total = len(items) if isinstance(items, Sized) else 0
            summary = BatchSummary(run_id=run_id, total=total, done=len(skip))
            await self._answer_all(items, summary, concurrency, skip, on_record)
            return summary
        owned = self._owned.pop(batch.run_id, None)
        if owned is None:
            raise ValueError(
                f"run_batch(batch=...): run {batch.run_id} was not started by this pipeline's "
                "`start_batch`, or a batch already answered it; start it again"
            )
        await self._answer_owned(items, batch, owned, concurrency, skip, on_record)
        return batch

    async def _answer_owned(
        self,
        items: Iterable[BatchItem | Mapping[str, Any]],
        summary: BatchSummary,
        owned: _OwnedRun,
        concurrency: int,
        skip: frozenset[int],
        on_record: Callable[[RequestRecord], None] | None,
    ) -> None:
        """Answer a batch whose run this pipeline finishes, and finish it (see `run_batch`)."""
        self.use_run(summary.run_id)
        ended: float | None = None
        try:
            await self._answer_all(items, summary, concurrency, skip | owned.skip, on_record)
            ended = time.time()  # its last request's record is emitted: the run ends here
        finally:
            summary.interrupted = ended is None or summary.done < summary.total
            status = "interrupted" if summary.interrupted else "finished"
            if self._store_failures > owned.store_failures:
                status = "failed"  # some of its records were never stored
            await self.finish_run(summary.run_id, status, at=ended)

    async def _answer_all(
        self,
        items: Iterable[BatchItem | Mapping[str, Any]],
        summary: BatchSummary,
        concurrency: int,
        skip: frozenset[int],
        on_record: Callable[[RequestRecord], None] | None,
    ) -> None:
        # Workers start at once up to the items there are (or `_FIRST_WORKERS` when
        # `items` cannot tell), then one more for each item taken while fewer than
        # `concurrency` run: never more workers than items (plus those first ones),
        # whatever concurrency is asked for (`--concurrency 10**30` once made that many).
        limit = concurrency
        if isinstance(items, Sized):
            limit = min(limit, len(items))
        takers = _Takers(summary.run_id, self._taker(items, skip), limit)
        count = self._counter(summary, on_record)
        self._listeners.append(count)
        try:
            async with anyio.create_task_group() as beats:
                beats.start_soon(self._heartbeat, summary)
                # the heap's free pages go back to the system (`engine.collector`)
                beats.start_soon(trim_every, HEARTBEAT_S, trimmer())
                async with anyio.create_task_group() as takers.tg:
                    for _ in range(max(1, min(limit, _FIRST_WORKERS))):
                        self._start_taker(takers)
                # records come after each request's cleanup (`after_success` work): wait
                # for them before the listener goes
                await self.settle()
                beats.cancel_scope.cancel()
        finally:
            self._listeners.remove(count)
        if takers.broken:
            raise takers.broken[0]
        if takers.duplicates:
            first = takers.duplicates[0]
            raise DuplicateRequest(
                first.run_id,
                first.seq,
                first.request_id,
                first.source,
                others=[d.seq for d in takers.duplicates[1:]],
            )

    def _start_taker(self, takers: _Takers) -> None:
        assert takers.tg is not None
        takers.started += 1
        takers.tg.start_soon(self._take_and_answer, takers)

    async def _take_and_answer(self, takers: _Takers) -> None:
        """One worker of a batch: takes the next item and answers it, until none is left
        (a request in flight per worker, and no task, cancel scope or semaphore per
        request)."""
        while True:
            await self._writer_room(takers)
            try:
                item = takers.take()
            except Exception as exc:  # `items` itself failed: the batch stops
                takers.broken.append(exc)
                assert takers.tg is not None
                takers.tg.cancel_scope.cancel()
                return
            if item is None:
                return
            if takers.started < takers.limit:  # a taker for the next item while this one runs
                self._start_taker(takers)
            try:
                await self._answer(takers.run_id, item)
            except DuplicateRequest as exc:  # the others are answered; the batch says so
                takers.duplicates.append(exc)
            # a request may finish without ever waiting (invalid input, nodes that never
            # sleep): let the others, a cancellation and the heartbeat in
            await anyio.lowlevel.checkpoint()

    def _taker(
        self, items: Iterable[BatchItem | Mapping[str, Any]], skip: frozenset[int]
    ) -> Callable[[], BatchItem | None]:
        """A function giving the next item not skipped, or None once there are no more."""
        entries = enumerate(items)

        def take() -> BatchItem | None:
            for index, entry in entries:
                item = entry if isinstance(entry, BatchItem) else self._item(entry, index)
                if item.seq not in skip:
                    return item
            return None

        return take

    async def _writer_room(self, takers: _Takers) -> None:
        """Wait while the sink's writer is more than `WRITER_BACKLOG` records behind.

        One worker of the batch watches the backlog; the others wait for it to say there
        is room (every worker watching woke 64 tasks every 10 ms: about eight wake-ups a
        flagship request while the writer set the pace)."""
        backlog = getattr(self._sink, "backlog", None)
        if backlog is None or backlog <= WRITER_BACKLOG:
            return
        while getattr(self._sink, "backlog", 0) > WRITER_BACKLOG // 2:
            if takers.room is not None:
                await takers.room.wait()
                continue
            room = takers.room = anyio.Event()
            try:
                while getattr(self._sink, "backlog", 0) > WRITER_BACKLOG // 2:
                    await anyio.sleep(0.01)
            finally:  # (cancelled too: the others must not wait for a watcher that left)
                takers.room = None
                room.set()

    @staticmethod
    def _counter(
        summary: BatchSummary, on_record: Callable[[RequestRecord], None] | None
    ) -> Callable[[RequestRecord], None]:
        """A record listener that counts a batch's finished requests into `summary`
        (records of other runs are not the batch's) and hands each to `on_record`."""
        run_id = summary.run_id

        def count(record: RequestRecord) -> None:
            if record.run_id != run_id:
                return
            summary.done += 1
            summary.by_status[record.status] = summary.by_status.get(record.status, 0) + 1
            if on_record is not None:
                on_record(record)

        return count

    async def _heartbeat(self, summary: BatchSummary) -> None:
        """Every `HEARTBEAT_S` while a batch runs: record its progress, and that its process
        is alive (see `run_state`)."""
        store = self.store
        while store is not None:
            await anyio.sleep(HEARTBEAT_S)
            await anyio.to_thread.run_sync(store.update_run_progress, summary.run_id, summary.done)

    def _item(self, value: Mapping[str, Any], seq: int) -> BatchItem:
        return parse_request(value, seq=seq, declared=self.validator.declared, limits=self.limits)


@dataclass(slots=True)
class _Takers:
    """The workers of one batch, taking its items in turn (`Pipeline._answer_all`). The
    workers find each other through this and the pipeline, never through closures that
    refer to each other: a batch leaves no reference cycle behind."""

    run_id: str
    take: Callable[[], BatchItem | None]
    limit: int
    """Most workers: the concurrency, or the items' count when they can tell it."""
    tg: anyio.abc.TaskGroup | None = None
    started: int = 0
    broken: list[Exception] = field(default_factory=list)
    """What `take` raised: the batch stops and it comes out as itself."""
    duplicates: list[DuplicateRequest] = field(default_factory=list)
    """Items not answered because their seq was: raised together once the batch ends."""
    room: anyio.Event | None = None
    """Set once the writer has caught up, while one worker watches its backlog."""


_FIRST_WORKERS = 1_024
"""Workers `run_batch` starts at once when its items do not say how many they are."""
WRITER_BACKLOG = 8_192
"""Records a batch lets its sink's writer fall behind (`backlog`) before it waits to start
more requests; it starts again at half of it. A flagship request is about 60 records, so this
bounds the records held in memory to about a hundred requests' worth, however long the batch:
unbounded, a writer slower than the event loop (a loaded machine, a large store) held every
record it had not written (tens of KB a request, hundreds of MiB over a long batch). It costs
no throughput: a writer that keeps up never reaches it, and one that does not sets the pace
whatever the bound. Records made and freed in bulk are also what leaves holes in the
allocator's arenas while the semantic cache evicts (bench/RESULTS.md, "Memory at 100,000
requests"), so the bound is kept small."""


def _with_meta(item: BatchItem, meta: Mapping[str, Any]) -> BatchItem:
    return BatchItem(
        item.seq,
        item.input,
        item.labels,
        {**item.meta, **meta},
        item.error,
        item.line,
        item.source,
    )


def run_sync(
    graph: str | os.PathLike[str] | Graph,
    inputs: Iterable[Mapping[str, Any]],
    *,
    db: str | os.PathLike[str] | None = None,
    concurrency: int = 16,
    **options: Any,
) -> list[RequestResult]:
    """Blocking helper for scripts: answer `inputs` and return their results in order."""

    if concurrency < 1:
        raise ValueError(f"run_sync(concurrency={concurrency}): answer at least 1 at a time")
    values = list(inputs)

    async def main() -> list[RequestResult]:
        async with Pipeline(graph, db=db, **options) as pipe:
            run_id = await pipe.new_run(len(values))
            results: list[RequestResult | None] = [None] * len(values)
            numbered = iter(enumerate(values))

            async def worker() -> None:
                for seq, value in numbered:  # (one iterator: each input taken once)
                    results[seq] = await pipe.run(value, run_id=run_id, seq=seq)

            status = "interrupted"
            try:
                async with anyio.create_task_group() as tg:
                    for _ in range(min(concurrency, len(values))):
                        tg.start_soon(worker)
                status = "finished"
            finally:
                await pipe.finish_run(run_id, status)
            return [result for result in results if result is not None]

    return anyio.run(main)
