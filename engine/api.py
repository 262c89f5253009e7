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
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from engine.collector import trim_every, trimmer
from engine.errors import DuplicateRequest, StoreError
from engine.events import MemorySink, Record, RequestRecord, RequestStatus, Sink, now
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph
from engine.models import Gateway
from engine.models._rebind import _refuse_unpriced, rebind_models
from engine.plugin.context import SharedState
from engine.policy.manager import PolicyManager
from engine.requests import BatchItem, InputValidator, RequestLimits, parse_request, show_value
from engine.scheduler.runner import RequestResult, Runner
from engine.seqs import SeqSet
from engine.store.store import HEARTBEAT_S, Store, new_run_id

__all__ = ["BatchSummary", "Pipeline", "rebind_models", "run_sync"]


@dataclass(slots=True)
class BatchSummary:
    """What a batch did."""

    run_id: str
    total: int
    done: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


@dataclass(slots=True, frozen=True)
class _OwnedRun:
    """A run started by `start_batch`, which the `run_batch` answering it finishes."""

    skip: frozenset[int]
    """The `seq` of the requests the run already has (a resume answers only the others)."""
    store_failures: int
    """`Pipeline._store_failures` when the run began: more at the end means `failed`."""


class _TapSink:
    """Forwards every record, and hands finished requests to a callback."""

    __slots__ = ("_inner_record", "inner", "on_request", "watchers")

    def __init__(
        self,
        inner: Sink,
        on_request: Callable[[RequestRecord], None],
        watchers: list[Callable[[Record], None]] | None = None,
    ) -> None:
        self.inner = inner
        self._inner_record = inner.record  # bound once: every record of every request
        self.on_request = on_request
        self.watchers = watchers if watchers is not None else []

    def record(self, item: Record) -> None:
        self._inner_record(item)
        if self.watchers:
            for watch in self.watchers:
                watch(item)
        if isinstance(item, RequestRecord):
            self.on_request(item)

    def part_recorder(self) -> Callable[[Record], None]:
        """Where a starting request's other records (events, node runs, calls) go: straight
        to the inner sink while nobody watches records (a dozen a request skip this layer);
        a watcher added later sees the requests started after it."""
        return self.record if self.watchers else self._inner_record


class Pipeline:
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
        SpecError: the graph is unusable, or has a cost budget and an unpriced model.
    """

    def __init__(
        self,
        graph: Graph | str | os.PathLike[str],
        *,
        db: str | os.PathLike[str] | None = "moat.db",
        sink: Sink | None = None,
        policy_file: str | os.PathLike[str] | None = None,
        models: Mapping[str, str] | None = None,
        seed: int = 0,
        allow_unpriced: bool = False,
        limits: RequestLimits | None = None,
        memory_records: int | None = 100_000,
    ) -> None:
        self.graph = graph if isinstance(graph, Graph) else load_graph(graph)
        self.db = os.fspath(db) if db is not None else None
        self.memory = sink if sink is not None else MemorySink(max_records=memory_records)
        spec_limits = self.graph.spec.limits
        self.limits = limits or RequestLimits(spec_limits.max_request_bytes, spec_limits.max_depth)
        self.policy_file = policy_file
        self.seed = seed
        self.validator = InputValidator(self.graph.input_schema)
        self.model_specs = rebind_models(self.graph.models, models or {})
        if not allow_unpriced:
            _refuse_unpriced(self.graph, self.model_specs)
        self.store: Store | None = None
        self.policy: PolicyManager | None = None
        self._sink: Sink = self.memory
        self._runner: Runner | None = None
        self._stack: AsyncExitStack | None = None
        self._thread = 0
        """The thread whose event loop opened the pipeline (`_usable`)."""
        self._listeners: list[Callable[[RequestRecord], None]] = []
        self.record_watchers: list[Callable[[Record], None]] = []
        """Called with every record as it is emitted (the server sums a request's tokens)."""
        self._tap = _TapSink(self._sink, self._on_request, self.record_watchers)
        self._outstanding = 0
        """Requests answered whose record has not been emitted yet."""
        self._idle: anyio.Event | None = None
        self._owned: dict[str, _OwnedRun] = {}
        self._seqs: dict[str, SeqSet] = {}
        self._free: dict[str, int] = {}  # run -> where to look for its next free seq
        """Per run answered under, the seqs answered or in flight: request ids are unique."""
        self._store_failures = 0
        """Flushes that raised: the writes they covered are lost, so a run spanning one failed."""

    async def __aenter__(self) -> Pipeline:
        stack = AsyncExitStack()
        await stack.__aenter__()
        self._stack = stack
        try:
            await self._open(stack)
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def _open(self, stack: AsyncExitStack) -> None:
        self._thread = threading.get_ident()
        if self.db is not None:
            self.store = Store.open(self.db)
            stack.callback(self.store.close)
            writer = self.store.writer()
            stack.callback(writer.close)
            self._sink = writer
            self._tap = _TapSink(writer, self._on_request, self.record_watchers)
        self.policy = PolicyManager(
            self.store,
            name=self.graph.policy_name,
            default_body=self.graph.policy,
            graph=self.graph,
        )
        self.policy.ensure_registered()
        if self.policy_file is not None:
            self.policy.apply(self.policy_file, reason="--policy")
        group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(group.cancel_scope.cancel)
        if self.store is not None:
            await group.start(self.policy.watch)
        gateway = Gateway(self.model_specs)
        stack.push_async_callback(gateway.aclose)
        self._runner = Runner(
            self.graph,
            sink=self._tap,
            gateway=gateway,
            shared=SharedState(self.store),
            run_id="",
            policy=self.policy.current,
            seed=self.seed,
        )
        await stack.enter_async_context(self._runner)

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(None, None, None)

    def _on_request(self, record: RequestRecord) -> None:
        self._settled()
        if self.policy is not None and record.status not in _UNOBSERVED:
            self.policy.observe(
                record.latency_ms,
                record.cost_usd,
                record.validated,
                policy_version=record.policy_version,
            )
        for listener in list(self._listeners):
            listener(record)

    def start_run(self, total: int | None, config: Mapping[str, Any] | None = None) -> str:
        """Create a run (a row in `runs` when there is a store), answer under it from now
        on (`use_run`) and return its id; `total` is how many requests it will answer, None
        when open-ended (a server). It waits here for the store's write lock: from a task,
        `new_run` waits in a worker thread instead."""
        run_id = self._create_run(total, config)
        self.use_run(run_id)
        return run_id

    async def new_run(self, total: int | None, config: Mapping[str, Any] | None = None) -> str:
        """Create a run as `start_run` does, without answering under it yet (`use_run`
        does); its row is written in a worker thread, so the event loop goes on answering
        while another process (a server's worker, `moat prune`) holds the store's write
        lock."""
        if self.store is None:
            return self._create_run(total, config)
        return await anyio.to_thread.run_sync(self._create_run, total, config)

    def _create_run(self, total: int | None, config: Mapping[str, Any] | None) -> str:
        if self.store is None:
            run_id = new_run_id()
        else:
            conf = {
                "graph_path": os.path.abspath(self.graph.path),
                "policy": self.graph.policy_name,
                **(config or {}),
            }
            run_id = self.store.create_run(self.graph.name, self.graph.hash, total, conf)
        self._seqs[run_id] = SeqSet()
        return run_id

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

    async def finish_run(
        self, run_id: str, status: str = "finished", *, at: float | None = None
    ) -> None:
        """Record how a run ended, once every record so far is stored (`failed` if that
        fails); `at` is when it ended (default: now). No-op without a store. Both wait in
        a worker thread (counting a long run's requests takes a while, and the store's
        write lock may be another process's), never on the event loop.

        Raises:
            StoreError: storing the run's last records failed (the run is recorded `failed`).
        """
        store = self.store
        if store is None:
            self._seqs.pop(run_id, None)
            self._free.pop(run_id, None)
            return
        try:
            with anyio.CancelScope(shield=True):  # the run counts its requests once stored
                await anyio.to_thread.run_sync(self.flush)
        except StoreError:
            status = "failed"
            raise
        finally:
            with anyio.CancelScope(shield=True):  # how it ended is recorded, come what may
                await anyio.to_thread.run_sync(partial(store.finish_run, run_id, status, at=at))
            self._seqs.pop(run_id, None)  # stored now: the store knows them from here on
            self._free.pop(run_id, None)

    def _usable(self) -> Runner:
        """The runner, or a clear error: the pipeline is not open, or was opened in
        another thread (its connections, tasks and events belong to that thread's event
        loop; from another loop a request would wait for them forever)."""
        runner = self._runner
        if runner is None or self._stack is None:
            state = "was closed" if runner is not None else "is not open"
            raise RuntimeError(
                f"this Pipeline {state}: answer inside `async with Pipeline(...) as pipe:`"
            )
        if threading.get_ident() != self._thread:
            raise RuntimeError(
                "this Pipeline was opened in another thread's event loop, and answers only "
                "there; open one Pipeline in each event loop (thread) that answers requests"
            )
        return runner

    def use_run(self, run_id: str) -> None:
        """Attribute the requests answered from now on (and policy events) to `run_id`."""
        self._usable().run_id = run_id
        if self.policy is not None:
            self.policy.run_id = run_id

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
        if run_id:
            self.use_run(run_id)  # (it checks that the pipeline answers here)
        else:
            self._usable()
        if tenant is not None and (type(tenant) is not str or not 0 < len(tenant) <= 256):
            raise ValueError(
                f"Pipeline.run(tenant={show_value(tenant)}): a tenant is a string of 1 to 256 "
                "characters (its cache partition and audit identity)"
            )
        if isinstance(input, Mapping) and (labels or type(input) is not dict):
            input = {**input, **({"_labels": labels} if labels else {})}
        reserved = run_id is not None and seq is None
        if run_id and seq is None:
            seq = await self._next_seq(run_id)  # taken: no other call can answer it
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
            await self._writer_room()
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

    async def _writer_room(self) -> None:
        """Wait while the sink's writer is more than `WRITER_BACKLOG` records behind."""
        backlog = getattr(self._sink, "backlog", None)
        if backlog is None or backlog <= WRITER_BACKLOG:
            return
        while getattr(self._sink, "backlog", 0) > WRITER_BACKLOG // 2:
            await anyio.sleep(0.01)

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

    async def _answer(
        self,
        run_id: str,
        item: BatchItem,
        tenant: str | None = None,
        *,
        record_cancelled: bool | Callable[[], str | None] = False,
        reserved: bool = False,
    ) -> RequestResult:
        assert self._runner is not None, "use `async with Pipeline(...)`"
        request_id = f"{run_id}-{item.seq:06d}"
        seqs = self._seqs.get(run_id)
        if seqs is None:
            seqs = await self._adopt_run(run_id)
        if not seqs.add(item.seq) and not reserved:
            where = f"{item.source}:{item.line}" if item.source and item.line else ""
            raise DuplicateRequest(run_id, item.seq, request_id, where)
        data, error = self.validator.validate(item)
        if data is None:
            return self._invalid(run_id, request_id, item, error or "invalid input")
        self._outstanding += 1
        try:
            return await self._runner.run(
                data,
                request_id=request_id,
                seq=item.seq,
                labels=item.labels,
                meta=item.meta,
                tenant=tenant,
                record_cancelled=record_cancelled,
            )
        except anyio.get_cancelled_exc_class():
            if record_cancelled is False:
                self._settled()  # no record will come for this request
                seqs.discard(item.seq)  # (so it may be answered again)
            raise
        except BaseException:
            self._settled()  # no record will come for this request
            seqs.discard(item.seq)
            raise

    async def _next_seq(self, run_id: str) -> int:
        """The lowest seq `run_id` has not answered, taken for the caller."""
        seqs = self._seqs.get(run_id)
        if seqs is None:
            seqs = await self._adopt_run(run_id)
        seq = self._free.get(run_id, 0)
        while not seqs.add(seq):
            seq += 1
        self._free[run_id] = seq + 1
        return seq

    async def _adopt_run(self, run_id: str) -> SeqSet:
        """The seqs of a run this pipeline did not start (another process's, or one it
        finished): those the store has, read once, off the event loop."""
        stored: set[int] = set()
        if self.store is not None:
            stored = await anyio.to_thread.run_sync(self.store.finished_request_seqs, run_id)
        return self._seqs.setdefault(run_id, SeqSet(stored))

    def _invalid(self, run_id: str, request_id: str, item: BatchItem, error: str) -> RequestResult:
        stamp = now()
        record = RequestRecord(
            id=request_id,
            run_id=run_id,
            seq=item.seq,
            status=RequestStatus.INVALID_INPUT,
            started_at=stamp,
            finished_at=stamp,
            latency_ms=0.0,
            cost_usd=0.0,
            output=None,
            error=error,
            conversation_id=item.meta.get("conversation_id"),
            turn_index=item.meta.get("turn_index"),
            parent_request_id=item.meta.get("parent_request_id"),
        )
        self._outstanding += 1
        self._tap.record(record)
        return RequestResult(
            request_id=request_id,
            status=RequestStatus.INVALID_INPUT,
            output=None,
            latency_ms=0.0,
            cost_usd=0.0,
            policy_version=None,
            error=error,
            seq=item.seq,
        )

    def _settled(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def settle(self) -> None:
        """Wait until every answered request's cleanup has run and its record is emitted."""
        if self._outstanding > 0:
            self._idle = self._idle or anyio.Event()
            await self._idle.wait()

    def flush(self) -> None:
        """Block until every record so far is committed to the store (no-op without one)."""
        flush = getattr(self._sink, "flush", None)
        if callable(flush):
            try:
                flush()
            except StoreError:
                self._store_failures += 1
                raise

    def flush_soon(self, done: Callable[[StoreError | None], None]) -> bool:
        """Have `done` called, on the store writer's thread, once every record so far is
        committed (with the `StoreError` `flush` would raise, or None); never blocks.

        Returns:
            False when the sink cannot do that (no store, or one without a writer thread
            of its own): then call `flush` from a worker thread instead.
        """
        flush_soon = getattr(self._sink, "flush_soon", None)
        if not callable(flush_soon):
            return False

        def counted(error: StoreError | None) -> None:
            if error is not None:
                self._store_failures += 1
            done(error)

        flush_soon(counted)
        return True


_UNOBSERVED = frozenset({RequestStatus.INVALID_INPUT, RequestStatus.CANCELLED})
"""Statuses the regression guard does not observe: no work ran, or it was cut short by
the caller (its latency and cost say nothing about the policy)."""


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
