"""`ClusterPipeline`: a batch answered by Ray worker actors, stored by the driver alone.

The driver is an ordinary `Pipeline` with a store; only where a request is answered
changes. `Pipeline.run_batch` still reads the input lazily, bounds what is in flight, counts
records, beats the heartbeat and finishes the run; this class's `_answer` hands each request
to a dispatcher instead of the local runner. The dispatcher sends requests to the workers
in chunks (at most `2 * concurrency` per worker outstanding, so the input is read only as
fast as the cluster answers), and each worker streams back whole groups of records per
request (`worker.Shipment`). With a store and no watcher of every record, the workers
encode the records as the store's rows (compact ones, with the `strings` codes the driver
pushes them) and the driver hands them to its store writer as they are, emitting only
each request's `RequestRecord` (the out file, the progress bar, the policy's
observations); otherwise it feeds each record through the pipeline's tap. The store,
`--out`, the progress bar and `--resume` see exactly what a local run would. A batch's
requests cost the driver no task each: `_answer_all` queues them as room frees and counts
them done as their records are emitted.

Exactly once: a group is stored only while its request is still waited for; a request
answered twice (sent again after its worker died just after answering) is stored once.
A worker that dies takes only whole requests with it: its unanswered requests go back to
the front of the queue for the other workers, and a `WORKER_LOST` event records it.

Policies and cache (`sync`): every `sync_interval_s` the driver polls the store's active
policy version and pushes a newer one to every worker; cache entries a worker stores come
back with its shipments, are written to the store's `cache_entries` and pushed to the other
workers every `cache_interval_s` (an actor call costs the driver about a millisecond of
CPU, so not one per request). Staleness bound: a policy applied to the store is pinned by
every worker's new requests within `sync_interval_s` plus one round trip (~0.3 s on one
machine); a cache entry learned on one worker can hit on another once the request that
stored it has been shipped (`worker._SHIP_S`, 100 ms at most) and the next cache push has
run: within `cache_interval_s` plus that, about 1.1 s after the request ends.

Sending: chunks of `concurrency` requests, each worker holding at most two chunks'
worth, and the driver keeping one more chunk per worker queued, so chunks leave full.
Every actor call and shipment costs the driver CPU (about a millisecond a call), which
the workers' CPU does not relieve: new `strings` codes go out with the cache's pushes.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from engine.api import BatchSummary, Pipeline
from engine.cluster._ray import WORKERS_PER_CPU, cluster_cpus, connect, require_ray
from engine.cluster.worker import BatchWorker, CacheOp, Shipment, WorkerConfig
from engine.errors import MoatError, SpecError
from engine.events import EventType, OrchestrationEvent, RequestRecord
from engine.logs import get_logger
from engine.requests import BatchItem
from engine.scheduler.runner import RequestResult
from engine.store.codec import load_dictionary
from engine.store.policy_ops import Active, poll_active
from engine.store.rows import codes_since
from engine.store.schema import connect as connect_store
from engine.store.writer import StoreWriter

__all__ = ["ClusterPipeline", "WorkersLost"]

_log = get_logger("moat.cluster")

_FILL_S = 0.02
"""How long the dispatcher waits for a chunk to fill before sending a smaller one."""


class WorkersLost(MoatError, RuntimeError):
    """Every worker of a cluster batch died; what finished is stored, resume the rest."""


@dataclass(slots=True, eq=False)
class _Waiter:
    """One request the driver waits for."""

    run_id: str
    item: BatchItem
    request_id: str
    done: anyio.Event | None = None
    """Set when it is answered, for a caller of `_answer` (a batch's requests have none:
    `_answer_all` learns of their end from the records emitted)."""
    result: RequestResult | None = None
    error: BaseException | None = None


@dataclass(slots=True, eq=False)
class _Slot:
    """One worker actor and what the driver has sent it."""

    index: int
    handle: Any
    pending: dict[str, _Waiter] = field(default_factory=dict)
    """The requests sent to it and not answered yet."""
    alive: bool = True


class ClusterPipeline(Pipeline):
    """A `Pipeline` whose batches are answered by Ray worker actors.

    Args:
        graph: the graph (a path: the workers load it from the same absolute path).
        address: the Ray cluster (`auto`, `HOST:PORT`, `ray://HOST:10001`), or None for a
            local instance.
        workers: how many worker actors (default: one per CPU the cluster offers).
        concurrency: requests each worker answers at once.
        sync_interval_s: how often a newer policy version is pushed to the workers.
        cache_interval_s: how often cache entries one worker learned are pushed to the others.
        **options: the `Pipeline` options (`db`, `policy_file`, `models`, `seed`, ...).

    Raises:
        SpecError: Ray is not installed, the cluster cannot be reached, or `workers` asks
            for more than `WORKERS_PER_CPU` a CPU of the cluster.
    """

    def __init__(
        self,
        graph: Any,
        *,
        address: str | None = None,
        workers: int | None = None,
        concurrency: int = 16,
        sync_interval_s: float = 0.25,
        cache_interval_s: float = 1.0,
        **options: Any,
    ) -> None:
        require_ray()
        super().__init__(graph, **options)
        self.address = address
        self.workers = workers
        self.concurrency = max(1, concurrency)
        self.chunk_size = self.concurrency
        self.window = 2 * self.concurrency
        """Requests sent to one worker and not answered yet, at most."""
        self.sync_interval_s = sync_interval_s
        self.cache_interval_s = cache_interval_s
        self.worker_pids: list[int] = []
        self._options = options
        self._slots: list[_Slot] = []
        self._queue: deque[_Waiter] = deque()
        self._waiting: dict[str, _Waiter] = {}
        self._changed = anyio.Event()
        self._cache_in: list[tuple[int, CacheOp]] = []
        self._syncing = anyio.Lock()
        """Held by the `sync` under way: one that starts meanwhile waits for its pushes."""
        self._activation = 0
        self._dictionary: bytes | None = None
        """The store's compression dictionary, once the workers have it."""
        self._last_code = 0
        """The highest `strings` code read from the store."""
        self._codes_out: dict[str, int] = {}
        """Codes read from the store and not pushed to the workers yet."""
        self._lost_events = 0
        self._failure: BaseException | None = None
        """What ends the current batch early (every worker lost, a bug on a worker)."""

    @property
    def slots(self) -> list[_Slot]:
        """The worker actors (`handle`, `alive`), for diagnostics and tests."""
        return list(self._slots)

    async def _open(self, stack: AsyncExitStack) -> None:
        await super()._open(stack)
        ray = connect(self.address)
        cpus = cluster_cpus()
        count = self.workers or cpus
        if count > WORKERS_PER_CPU * cpus:
            raise SpecError(
                f"workers={count}: each worker is a process of its own and the Ray cluster "
                f"offers {cpus} CPUs; give at most {WORKERS_PER_CPU * cpus} "
                f"({WORKERS_PER_CPU} a CPU), or leave it out for one a CPU"
            )
        config = self._worker_config()
        share = min(1.0, cpus / count)
        actor = ray.remote(
            num_cpus=share,
            max_concurrency=self.window + 8,  # submits, the stream and syncs
            max_restarts=0,
            scheduling_strategy="SPREAD",
        )(BatchWorker)
        self._slots = [_Slot(i, actor.remote(config)) for i in range(count)]
        stack.push_async_callback(self._stop_workers)
        answers = [await slot.handle.ready.remote() for slot in self._slots]
        self.worker_pids = [pid for pid, _ in answers]
        problem = next((why for _, why in answers if why is not None), None)
        if problem is not None:
            raise SpecError(
                f"the Ray workers cannot open the graph: {problem}\nEach worker loads "
                f"{config.graph_path}, its policy and its plugins: modules on its own node: "
                "give them the same absolute path on every node (a shared file system, or "
                "Ray's runtime_env), and install the plugins' packages there (a module only "
                "on this machine's PYTHONPATH is not on the workers')"
            )
        group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(group.cancel_scope.cancel)
        group.start_soon(self._send_loop)
        group.start_soon(self._sync_loop)
        for slot in self._slots:
            group.start_soon(self._receive, slot)

    def _worker_config(self) -> WorkerConfig:
        policy = None
        cache: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
        codes: dict[str, int] = {}
        if self.store is not None:
            if self.policy is not None and self.policy.name is not None:
                policy = poll_active(self.store, self.policy.name)
                self._activation = policy.activation_id if policy else 0
            persistence = self.store.cache_persistence()
            for namespace in persistence.namespaces():
                cache[namespace] = list(persistence.load(namespace))
            self._dictionary, codes = self._store_news()
        return WorkerConfig(
            dictionary=self._dictionary,
            codes=codes,
            graph_path=os.path.abspath(self.graph.path),
            models=dict(self._options.get("models") or {}),
            seed=self.seed,
            allow_unpriced=bool(self._options.get("allow_unpriced", False)),
            limits=self.limits,
            concurrency=self.concurrency,
            policy=policy,
            cache=cache,
        )

    async def _stop_workers(self) -> None:
        ray = require_ray()
        for slot in self._slots:
            if slot.alive:
                ray.kill(slot.handle, no_restart=True)
            slot.alive = False

    # -- answering ------------------------------------------------------------------------

    async def _answer_all(
        self,
        items: Iterable[BatchItem | Mapping[str, Any]],
        summary: BatchSummary,
        concurrency: int,
        skip: frozenset[int],
        on_record: Callable[[RequestRecord], None] | None,
    ) -> None:
        """`Pipeline._answer_all` without a task per request: requests are queued for the
        send loop as room frees (`concurrency` is per worker: every worker is kept busy
        with a chunk queued behind), and end when their records are emitted."""
        if not self._slots:
            await super()._answer_all(items, summary, concurrency, skip, on_record)
            return
        run_id = summary.run_id
        in_flight = (self.window + self.chunk_size) * len(self._slots)
        self._failure = None
        count = self._counter(summary, on_record)
        self._listeners.append(count)
        try:
            async with anyio.create_task_group() as beats:
                if self.store is not None:
                    beats.start_soon(self._heartbeat, summary)
                await self._feed(run_id, items, skip, in_flight)
                beats.cancel_scope.cancel()
            if self._failure is not None:
                raise self._failure
        finally:
            self._listeners.remove(count)
            self._give_up(run_id)

    async def _feed(
        self,
        run_id: str,
        items: Iterable[BatchItem | Mapping[str, Any]],
        skip: frozenset[int],
        in_flight: int,
    ) -> None:
        """Queue the requests of `items` as room frees, then wait for the last records
        (returns early when `_failure` ends the batch)."""
        for index, entry in enumerate(items):
            item = entry if isinstance(entry, BatchItem) else self._item(entry, index)
            if item.seq in skip:
                continue
            while len(self._waiting) >= in_flight and self._failure is None:
                await self._wait_changed()
            if self._failure is not None:
                return
            self._enqueue(_Waiter(run_id, item, f"{run_id}-{item.seq:06d}"))
        while self._waiting and self._failure is None:
            await self._wait_changed()
        if self._failure is None:
            # records come after each request's cleanup: wait for them before the
            # listener goes
            await self.settle()

    def _enqueue(self, waiter: _Waiter) -> None:
        self._waiting[waiter.request_id] = waiter
        self._queue.append(waiter)
        self._outstanding += 1

    async def _wait_changed(self) -> None:
        """Let the send loop see what was queued, and wait for a change."""
        self._signal()  # the send loop waits on the event this replaces
        await self._changed.wait()

    def _give_up(self, run_id: str) -> None:
        """The batch ended early (an error, a cancel): no record will come for the requests
        still waited for, so they no longer count as outstanding."""
        for request_id, waiter in list(self._waiting.items()):
            if waiter.run_id == run_id and waiter.done is None:
                del self._waiting[request_id]
                self._settled()

    async def _answer(
        self,
        run_id: str,
        item: BatchItem,
        tenant: str | None = None,
        *,
        record_cancelled: bool | Callable[[], str | None] = False,
        reserved: bool = False,
    ) -> RequestResult:
        if tenant is not None or record_cancelled is not False or not self._slots:
            return await super()._answer(
                run_id, item, tenant, record_cancelled=record_cancelled, reserved=reserved
            )
        waiter = _Waiter(run_id, item, f"{run_id}-{item.seq:06d}", anyio.Event())
        self._enqueue(waiter)
        self._signal()
        assert waiter.done is not None
        try:
            await waiter.done.wait()
        except BaseException:
            if self._waiting.pop(waiter.request_id, None) is not None:
                self._settled()  # no record will come for it
            raise
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _send_loop(self) -> None:
        """Send full chunks to the worker with the most room; a chunk goes out smaller
        only when the queue stays short for `_FILL_S` (the end of the input, a slow one)."""
        while True:
            while not self._queue:
                await self._changed.wait()
            if len(self._queue) < self.chunk_size:
                with anyio.move_on_after(_FILL_S):
                    while len(self._queue) < self.chunk_size:
                        await self._changed.wait()
            want = min(self.chunk_size, len(self._queue))
            slot = await self._free_slot(want)
            chunk: list[_Waiter] = []
            while self._queue and len(chunk) < want:
                waiter = self._queue.popleft()
                if waiter.request_id in self._waiting:  # not given up meanwhile
                    chunk.append(waiter)
            if chunk:
                slot.pending.update((w.request_id, w) for w in chunk)
                slot.handle.submit.remote(chunk[0].run_id, [w.item for w in chunk], self._encoded())

    async def _free_slot(self, want: int) -> _Slot:
        """The live worker with the most room, once it has room for `want` requests (fails
        every waiting request when no worker is left)."""
        while True:
            live = [s for s in self._slots if s.alive]
            if not live:
                self._fail_all()
                await self._changed.wait()
                continue
            best = min(live, key=lambda s: len(s.pending))
            if len(best.pending) + want <= self.window:
                return best
            await self._changed.wait()

    async def _receive(self, slot: _Slot) -> None:
        """Store what the worker answers, until it dies (then its requests go elsewhere)."""
        ray = require_ray()
        try:
            async for ref in slot.handle.stream.remote():
                shipment: Shipment = await ref
                self._deliver(slot, shipment)
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            self._lost(slot, exc)
        except ray.exceptions.RayTaskError as exc:  # a bug on the worker: fail its requests
            slot.alive = False
            for waiter in slot.pending.values():
                if self._waiting.pop(waiter.request_id, None) is not None:
                    self._settled()
                    self._fail(waiter, exc)
            slot.pending.clear()
        self._signal()

    def _encoded(self) -> bool:
        """Whether workers should ship rows: the records only go to the store writer."""
        return isinstance(self._sink, StoreWriter) and not self.record_watchers

    def _deliver(self, slot: _Slot, shipment: Shipment) -> None:
        if shipment.packed is not None:
            self._deliver_rows(slot, shipment)
            return
        for record in shipment.loose:
            self._tap.record(record)
        for group in shipment.groups:
            final = group[-1]
            assert isinstance(final, RequestRecord)
            slot.pending.pop(final.id, None)
            waiter = self._waiting.pop(final.id, None)
            if waiter is None:
                continue  # answered already (by a worker that died since), or given up
            for record in group:
                self._tap.record(record)
            if waiter.done is not None:
                waiter.result = _result(final)
                waiter.done.set()
        if shipment.cache_ops:
            self._learned(slot, shipment.cache_ops)
        self._signal()

    def _deliver_rows(self, slot: _Slot, shipment: Shipment) -> None:
        """Store a shipment of pre-encoded rows in one piece (without the rows of requests
        stored already), then emit each new request's record as the tap would."""
        requests, shipped = shipment.unpack()
        fresh: list[tuple[_Waiter, RequestRecord]] = []
        stale: set[str] = set()
        for final in requests:
            slot.pending.pop(final.id, None)
            waiter = self._waiting.pop(final.id, None)
            if waiter is None:
                stale.add(final.id)
            else:
                fresh.append((waiter, final))
        rows = shipped.without(stale) if stale else shipped
        if rows.count:
            self._sink.record(rows)  # type: ignore[arg-type]
        watchers = self.record_watchers
        for waiter, final in fresh:
            for watch in watchers:
                watch(final)
            self._on_request(final)
            if waiter.done is not None:
                waiter.result = _result(final)
                waiter.done.set()
        if shipment.cache_ops:
            self._learned(slot, shipment.cache_ops)
        self._signal()

    def _learned(self, slot: _Slot, ops: list[CacheOp]) -> None:
        """Write cache entries a worker stored through to the store, and queue them for the
        other workers."""
        if self.store is not None:
            persistence = self.store.cache_persistence()
            for kind, namespace, tenant, value in ops:
                if kind == "save":
                    persistence.save(namespace, tenant, value)
                else:
                    persistence.delete(namespace, tenant, value)
        self._cache_in += [(slot.index, op) for op in ops if op[0] == "save"]

    def _lost(self, slot: _Slot, error: BaseException) -> None:
        """A worker died: put its unanswered requests first in the queue, and record it."""
        slot.alive = False
        again = [w for w in slot.pending.values() if w.request_id in self._waiting]
        slot.pending.clear()
        self._queue.extendleft(reversed(again))
        left = sum(s.alive for s in self._slots)
        _log.warning("cluster.worker_lost", worker=slot.index, requeued=len(again), left=left)
        run_id = self._runner.run_id if self._runner is not None else ""
        self._tap.record(
            OrchestrationEvent(
                run_id=again[0].run_id if again else run_id,
                request_id="",
                cycle=0,
                stage="run",
                component="cluster",
                event_type=EventType.WORKER_LOST,
                sequence=self._lost_events,
                decision="requeued" if left else "stopped",
                reason_codes=("WORKER_LOST",),
                payload={
                    "worker": slot.index,
                    "requeued": len(again),
                    "requests": [w.request_id for w in again][:100],
                    "workers_left": left,
                    "error": (str(error).splitlines() or [repr(error)])[0][:300],
                },
            )
        )
        self._lost_events += 1

    def _fail_all(self) -> None:
        """No worker is left: end every waiting request with `WorkersLost`."""
        run_id = self._runner.run_id if self._runner else ""
        error = WorkersLost(
            f"every Ray worker of run {run_id} was lost; finished requests are stored. "
            f"Resume with: moat run --resume {run_id}"
        )
        while self._queue:
            waiter = self._queue.popleft()
            if self._waiting.pop(waiter.request_id, None) is not None:
                self._settled()
                self._fail(waiter, error)
        self._signal()

    def _fail(self, waiter: _Waiter, error: BaseException) -> None:
        """End a request with `error`: its caller's, or the batch's (the first one)."""
        if waiter.done is not None:
            waiter.error = error
            waiter.done.set()
        elif self._failure is None:
            self._failure = error

    # -- policies and cache ---------------------------------------------------------------

    async def _sync_loop(self) -> None:
        pushed = anyio.current_time()
        while True:
            await anyio.sleep(self.sync_interval_s)
            cache = anyio.current_time() - pushed >= self.cache_interval_s
            await self.sync(cache=cache)
            if cache:
                pushed = anyio.current_time()

    async def sync(self, *, cache: bool = True) -> None:
        """Push a newer active policy version, and (with `cache`) cache entries learned by
        one worker, to the workers (done periodically; call it to push at once). When it
        returns, what the driver had learned when it was called has reached every worker:
        a periodic push under way is waited for, not passed by."""
        async with self._syncing:
            await self._sync(cache)

    async def _sync(self, cache: bool) -> None:
        policy = await anyio.to_thread.run_sync(self._newer_policy)
        dictionary: bytes | None = None
        codes: dict[str, int] = {}
        # the dictionary as soon as it is trained (workers encode compact from then on),
        # new codes with it or with the cache's pushes (a push costs the driver about a
        # millisecond of CPU)
        if self.store is not None and self._encoded() and (cache or self._dictionary is None):
            had = self._dictionary
            found, fresh = await anyio.to_thread.run_sync(self._store_news)
            self._codes_out.update(fresh)
            if had is None and found is not None:  # trained meanwhile
                dictionary = found
            if cache or dictionary is not None:
                codes, self._codes_out = self._codes_out, {}
        learned: list[tuple[int, CacheOp]] = []
        if cache:
            learned, self._cache_in = self._cache_in, []
        news = dictionary is not None or bool(codes)
        if policy is None and not learned and not news:
            return
        async with anyio.create_task_group() as tg:  # all workers at once
            for slot in self._slots:
                ops = [op for origin, op in learned if origin != slot.index]
                if slot.alive and (policy is not None or ops or news):
                    tg.start_soon(self._push, slot, policy, ops, dictionary, codes)
        if policy is not None:
            self._activation = policy.activation_id
            _log.info("cluster.policy_pushed", version=policy.version)

    async def _push(
        self,
        slot: _Slot,
        policy: Active | None,
        ops: list[CacheOp],
        dictionary: bytes | None,
        codes: dict[str, int],
    ) -> None:
        ray = require_ray()
        # a lost worker's chunks notice, requeue and record the loss
        with contextlib.suppress(ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
            await slot.handle.sync.remote(policy, ops, dictionary, codes)

    def _store_news(self) -> tuple[bytes | None, dict[str, int]]:
        """The store's compression dictionary (None while the writer has not trained one
        yet; workers encode rows compact once they have it), and the `strings` codes
        committed since the last call (never deleted, so workers may use them for good)."""
        assert self.store is not None
        conn = connect_store(self.store.path, readonly=True)
        try:
            if self._dictionary is None:
                found = load_dictionary(conn)
                self._dictionary = found.as_bytes() if found is not None else None
            codes = codes_since(conn, self._last_code)
        finally:
            conn.close()
        self._last_code = max(codes.values(), default=self._last_code)
        return self._dictionary, codes

    def _newer_policy(self) -> Active | None:
        if self.store is None or self.policy is None or self.policy.name is None:
            return None
        return poll_active(self.store, self.policy.name, newer_than=self._activation)


def _result(record: RequestRecord) -> RequestResult:
    return RequestResult(
        request_id=record.id,
        status=record.status,
        output=dict(record.output) if record.output is not None else None,
        latency_ms=record.latency_ms,
        cost_usd=record.cost_usd,
        policy_version=record.policy_version,
        error=record.error,
        seq=record.seq,
    )
