"""The core under `Pipeline`: a graph's runner, opened with its store and policy, answering
one request at a time under runs whose books it keeps.

`_PipelineCore` creates and finishes runs, numbers each request in its run (its seq, and the
request id made of both, never answered twice), and emits its record, counting those still
to come so `settle` can wait for them. `Pipeline` (engine.api) builds single requests and
batches on it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, Self

import anyio

from engine.errors import DuplicateRequest, StoreError
from engine.events import MemorySink, Record, RequestRecord, RequestStatus, Sink, now
from engine.graph.compiled import Graph
from engine.graph.loader import load_graph
from engine.models import Gateway
from engine.models._preflight import refuse_uncallable
from engine.models._rebind import _refuse_unpriced, rebind_models
from engine.plugin.context import SharedState
from engine.policy.manager import PolicyManager
from engine.requests import BatchItem, InputValidator, RequestLimits
from engine.scheduler.runner import RequestResult, Runner
from engine.seqs import SeqSet
from engine.store.store import Store, new_run_id


@dataclass(slots=True, frozen=True)
class _OwnedRun:
    """A run started by `start_batch`, which the `run_batch` answering it finishes."""

    skip: frozenset[int]
    """The `seq` of the requests the run already has (a resume answers only the others)."""
    store_failures: int
    """`Pipeline._store_failures` when the run began: more at the end means `failed`."""


class _TapSink:
    """Forwards every record, and hands finished requests to a callback."""

    __slots__ = ("_inner_parts", "_inner_record", "inner", "on_request", "watchers")

    def __init__(
        self,
        inner: Sink,
        on_request: Callable[[RequestRecord], None],
        watchers: list[Callable[[Record], None]] | None = None,
    ) -> None:
        self.inner = inner
        self._inner_record = inner.record  # bound once: every record of every request
        parts = getattr(inner, "part_recorder", None)
        self._inner_parts: Callable[[Record], None] = (
            self._inner_record if parts is None else parts()
        )
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
        to the inner sink (its own `part_recorder` if it has one) while nobody watches
        records (a dozen a request skip this layer); a watcher added later sees the
        requests started after it."""
        return self.record if self.watchers else self._inner_parts


_UNOBSERVED = frozenset({RequestStatus.INVALID_INPUT, RequestStatus.CANCELLED})
"""Statuses the regression guard does not observe: no work ran, or it was cut short by
the caller (its latency and cost say nothing about the policy)."""


class _PipelineCore:
    """A graph's runner with its store and policy, answering requests under runs; see
    `Pipeline` for the arguments."""

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
        refuse_uncallable(self.graph, self.model_specs, models)
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

    async def __aenter__(self) -> Self:
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
        if not reserved and not seqs.add(item.seq):  # (a reserved seq is in already)
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
        """The next seq `run_id` has not answered, taken for the caller."""
        return self._take_seq(run_id, await self._adopt_run(run_id))

    def _take_seq(self, run_id: str, seqs: SeqSet) -> int:
        """The next seq not in `seqs`, added to it (no await: no other call can take it)."""
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
