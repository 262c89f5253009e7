"""The Ray worker actor: a store-less `Pipeline` whose records are shipped to the driver.

A worker answers chunks of a batch with its own `Pipeline` (its own gateway, concurrency
and semantic cache) and sends back, for each request, the request's whole group of
records, its `RequestRecord` last. Whole groups are what make a lost worker harmless: the
driver stores a request's records only once its group arrives, so a request cut off by a
dying worker left nothing behind and is simply answered again elsewhere.

When the driver stores what it receives (it has a store and nothing watches every record),
a shipment carries its requests' records already encoded as the store's rows, with only
each request's `RequestRecord` as an object, pickled and zstd-compressed into one bytes
buffer (`Shipment.packed`): the driver, the one process every worker's records pass
through, then only inserts them, and the encoding is spread over the workers. Once the
store has its compression dictionary the rows are the compact tables' own
(`engine.store.rows.RowEncoder`: `strings` codes the driver pushes, times as offsets), so
the writer only gives each request its key; before that they are the contract's rows
(`encode_records`), which the writer converts and learns its dictionary from. Finished
requests are shipped together, at most every `_SHIP_S` or once `concurrency` are waiting,
so a Ray object carries a chunk's worth rather than one or two requests.

The actor is an async Ray actor (its methods never block its loop); the pipeline runs on an
anyio event loop of its own in a blocking portal thread, entered and left in one task, so
its task groups stay well nested whatever Ray does with the actor's own loop. Policy
versions and cache entries the driver pushes (`sync`) are applied on that loop too.
"""

from __future__ import annotations

import os
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import zstandard
from anyio.from_thread import BlockingPortal, start_blocking_portal

from engine.api import Pipeline
from engine.cluster.encoder import RowEncoder
from engine.errors import MoatError
from engine.events import Record, RequestRecord
from engine.logs import configure_logging
from engine.plugin.context import SharedState
from engine.requests import BatchItem, RequestLimits
from engine.store.codec import frame_packer
from engine.store.policy_ops import Active
from engine.store.rows import CompactRows, EncodedRows, encode_records

__all__ = ["BatchWorker", "CacheOp", "Shipment", "WorkerConfig"]

_POLL_S = 0.005
"""How often `stream` looks for finished requests."""
_SHIP_S = 0.1
"""How long a finished request waits at most for others to ship with."""

CacheOp = tuple[str, str, str, Any]
"""`("save", namespace, tenant, record)` or `("delete", namespace, tenant, key)`."""


@dataclass(slots=True, frozen=True)
class WorkerConfig:
    """What a worker needs to answer requests as the driver's own pipeline would."""

    graph_path: str
    """The graph file, by an absolute path every node of the cluster can read."""
    models: Mapping[str, str]
    seed: int
    allow_unpriced: bool
    limits: RequestLimits
    concurrency: int
    """Requests this worker answers at once."""
    policy: Active | None
    """The store's active policy version when the batch started."""
    cache: Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]] = field(default_factory=dict)
    """The store's semantic-cache entries, `namespace -> [(tenant, record)]`: a warm start."""
    dictionary: bytes | None = None
    """The store's compression dictionary, if it has one yet (later ones come by `sync`)."""
    codes: Mapping[str, int] = field(default_factory=dict)
    """The store's `strings` codes (text -> code), for rows encoded compact (more come by
    `sync` as the driver's writer commits them)."""


@dataclass(slots=True)
class Shipment:
    """What a worker sends back at once: finished requests and what it learned meanwhile."""

    groups: list[list[Record]]
    """One list per finished request: its records, its `RequestRecord` last (empty when
    the records come as `rows`)."""
    loose: list[Record]
    """Records of no request (run-level events; in `rows` when there are rows)."""
    cache_ops: list[CacheOp]
    """Cache entries this worker stored or dropped, for the store and the other workers."""
    packed: bytes | None = None
    """When the driver asked for rows: each finished request's `RequestRecord` and every
    record of the shipment encoded as the store's rows, pickled and compressed into one
    buffer (`unpack`): Ray moves one bytes object, small enough to travel inline."""

    def unpack(self) -> tuple[list[RequestRecord], EncodedRows | CompactRows]:
        """The requests and rows of a packed shipment."""
        assert self.packed is not None
        requests, rows = pickle.loads(_decompressor().decompress(self.packed))
        return requests, rows


class _ShipSink:
    """Holds each request's records until its `RequestRecord`, then puts the whole group in
    the outbox `stream` sends from. Used on the worker's event loop only."""

    def __init__(self, outbox: queue.SimpleQueue[Any]) -> None:
        self.outbox = outbox
        self.groups: dict[str, list[Record]] = {}
        self.loose: deque[Record] = deque()

    def record(self, item: Record) -> None:
        if isinstance(item, RequestRecord):
            group = self.groups.pop(item.id, [])
            group.append(item)
            self.outbox.put(group)
            return
        request_id = getattr(item, "request_id", "")
        if request_id:
            self.groups.setdefault(request_id, []).append(item)
        else:
            self.loose.append(item)


class _CacheBridge:
    """The `cache` node's persistence on a worker (`CachePersistence`, structurally): loads
    what the driver sent, and ships what the cache stores to the driver."""

    def __init__(self, warm: Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]]) -> None:
        self.pending: dict[str, list[tuple[str, Mapping[str, Any]]]] = {
            namespace: list(entries) for namespace, entries in warm.items()
        }
        self.loaded: set[str] = set()
        self.outbox: deque[CacheOp] = deque()

    def load(self, namespace: str) -> list[tuple[str, Mapping[str, Any]]]:
        self.loaded.add(namespace)
        return self.pending.pop(namespace, [])

    def save(self, namespace: str, tenant: str, record: Mapping[str, Any]) -> None:
        self.outbox.append(("save", namespace, tenant, dict(record)))

    def delete(self, namespace: str, tenant: str, key: str) -> None:
        self.outbox.append(("delete", namespace, tenant, key))

    def add(self, ops: Sequence[CacheOp]) -> set[str]:
        """Queue entries learned elsewhere; returns the namespaces to reload now."""
        touched = set()
        for kind, namespace, tenant, value in ops:
            if kind == "save":
                self.pending.setdefault(namespace, []).append((tenant, value))
                touched.add(namespace)
        return touched & self.loaded


class _SharedDb:
    """What `SharedState.db` offers the nodes on a worker: the cache bridge only."""

    def __init__(self, bridge: _CacheBridge) -> None:
        self._bridge = bridge

    def cache_persistence(self) -> _CacheBridge:
        return self._bridge


class _WorkerPipeline(Pipeline):
    """A store-less pipeline whose nodes persist cache entries through the bridge."""

    def __init__(self, config: WorkerConfig, sink: _ShipSink, bridge: _CacheBridge) -> None:
        super().__init__(
            config.graph_path,
            db=None,
            sink=sink,
            models=config.models,
            seed=config.seed,
            allow_unpriced=config.allow_unpriced,
            limits=config.limits,
        )
        self._bridge = bridge

    async def _open(self, stack: AsyncExitStack) -> None:
        await super()._open(stack)
        assert self._runner is not None
        self._runner.shared.db = _SharedDb(self._bridge)

    @property
    def shared_state(self) -> SharedState:
        """The state the graph's nodes share (its semantic caches)."""
        assert self._runner is not None, "use `async with`"
        return self._runner.shared


class BatchWorker:
    """One worker of a cluster batch (made a Ray actor by the driver).

    Args:
        config: the graph and settings, the policy version and the cache's warm start.
    """

    def __init__(self, config: WorkerConfig) -> None:
        configure_logging()
        self.config = config
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.sink = _ShipSink(self.outbox)
        self.bridge = _CacheBridge(config.cache)
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.problem: str | None = None
        """Why this worker could not open the graph (`ready` tells the driver)."""
        try:
            pipe = _WorkerPipeline(config, self.sink, self.bridge)
            self._pipe_cm = self.portal.wrap_async_context_manager(pipe)
            self._pipe_cm.__enter__()
        except MoatError as exc:  # the graph, its policy or a plugin, as this node sees them
            self.problem = str(exc)
            self._portal_cm.__exit__(None, None, None)
            return
        self.pipe = pipe
        self.limiter = self.portal.call(_new_limiter, config.concurrency)
        self.encoded = False
        self.ship_at = max(1, config.concurrency)
        self.compressor = zstandard.ZstdCompressor(level=1)
        self.codes = dict(config.codes)
        self.encoder: RowEncoder | None = None
        """Encodes compact rows, once the store has a dictionary: until then the driver's
        writer compresses (and learns its dictionary from) the rows it converts itself."""
        if config.dictionary:
            self.encoder = RowEncoder(self.codes, frame_packer(config.dictionary))
        self.switched_at = 0.0
        if config.policy is not None:
            self.portal.call(self._switch, config.policy)

    def ready(self) -> tuple[int, str | None]:
        """The worker's process id once its pipeline is open, and why it could not open it
        (None: it did)."""
        return os.getpid(), self.problem

    async def submit(self, run_id: str, items: list[BatchItem], encoded: bool = False) -> None:
        """Start answering `items` under `run_id`; their records come out of `stream`,
        as the store's rows if `encoded`."""
        self.encoded = encoded
        self.portal.start_task_soon(self._answer_chunk, run_id, items)

    async def stream(self) -> AsyncIterator[Shipment]:
        """Every finished request's records, as they finish, for as long as the worker
        lives (one Ray streaming generator per worker: the driver stores each group as it
        arrives, and learns of the worker's death from it). The outbox is filled from the
        pipeline's loop in another thread, so it is polled every `_POLL_S`."""
        groups: list[list[Record]] = []
        first = 0.0
        while True:
            for entry in _take_queue(self.outbox):
                if isinstance(entry, BaseException):
                    raise entry
                if not groups:
                    first = time.monotonic()
                groups.append(entry)
            if not groups or (len(groups) < self.ship_at and time.monotonic() - first < _SHIP_S):
                await anyio.sleep(_POLL_S)
                continue
            shipped, groups = groups, []
            yield self._shipment(shipped)

    def _shipment(self, groups: list[list[Record]]) -> Shipment:
        loose, ops = _take(self.sink.loose), _take(self.bridge.outbox)
        if not self.encoded:
            return Shipment(groups, loose, ops)
        finals = [group[-1] for group in groups]
        assert all(isinstance(final, RequestRecord) for final in finals)
        rows: EncodedRows | CompactRows
        if self.encoder is not None:
            rows = self.encoder.encode(groups, loose)
        else:
            rows = encode_records(loose + [record for group in groups for record in group])
        packed = self.compressor.compress(pickle.dumps((finals, rows), protocol=5))
        return Shipment([], [], ops, packed=packed)

    async def sync(
        self,
        policy: Active | None,
        cache_ops: list[CacheOp],
        dictionary: bytes | None = None,
        codes: Mapping[str, int] | None = None,
    ) -> int | None:
        """Apply what the driver pushed: a newer policy version, cache entries other workers
        learned, the store's compression dictionary and `strings` codes. Returns the policy
        version now current."""
        if codes:
            self.codes.update(codes)
            if self.encoder is not None:
                self.encoder.learn(codes)
        if dictionary is not None:
            self.encoder = RowEncoder(self.codes, frame_packer(dictionary))
        return await anyio.to_thread.run_sync(self.portal.call, self._apply, policy, cache_ops)

    def policy_version(self) -> tuple[int | None, float]:
        """The policy version new requests pin here, and when this worker switched to it."""
        assert self.pipe.policy is not None
        return self.pipe.policy.current().version, self.switched_at

    def stop(self) -> None:
        """Close the pipeline and its event loop."""
        self._pipe_cm.__exit__(None, None, None)
        self._portal_cm.__exit__(None, None, None)

    # -- on the worker's event loop ------------------------------------------------------

    async def _answer_chunk(self, run_id: str, items: list[BatchItem]) -> None:
        self.pipe.use_run(run_id)
        try:
            async with anyio.create_task_group() as tg:
                for item in items:
                    await self.limiter.acquire()
                    tg.start_soon(self._answer_one, run_id, item)
        except BaseException as exc:  # a bug: fail the stream rather than wait forever
            self.outbox.put(exc)
            raise

    async def _answer_one(self, run_id: str, item: BatchItem) -> None:
        try:
            await self.pipe._answer(run_id, item)
        finally:
            self.limiter.release()

    def _apply(self, policy: Active | None, cache_ops: list[CacheOp]) -> int | None:
        if policy is not None:
            self._switch(policy)
        for namespace in self.bridge.add(cache_ops):
            cache = self.pipe.shared_state.get("cache:" + namespace, lambda: None)
            if cache is not None:
                cache.attach(self.bridge)
        assert self.pipe.policy is not None
        return self.pipe.policy.current().version

    def _switch(self, policy: Active) -> None:
        assert self.pipe.policy is not None
        self.pipe.policy._switch(policy)
        self.switched_at = time.time()


_decompressors = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    found: zstandard.ZstdDecompressor | None = getattr(_decompressors, "one", None)
    if found is None:
        found = _decompressors.one = zstandard.ZstdDecompressor()
    return found


def _new_limiter(concurrency: int) -> anyio.Semaphore:
    return anyio.Semaphore(max(1, concurrency))


def _take_queue(items: queue.SimpleQueue[Any]) -> list[Any]:
    taken = []
    while True:
        try:
            taken.append(items.get_nowait())
        except queue.Empty:
            return taken


def _take(items: deque[Any]) -> list[Any]:
    taken = []
    while items:
        taken.append(items.popleft())
    return taken
