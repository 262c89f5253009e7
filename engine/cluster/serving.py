"""`moat serve --ray`: the serve app on Ray Serve replicas, one store-writer actor for all.

Each replica runs the same `MoatServer` as `moat serve` (engine/serve/app.py), with one
difference: its pipelines have no store of their own. Their records go, in batches, to
`StoreWriterActor`, the one process that writes the store file; a replica's group commit
(`durable.Commits`) flushes through the actor, so an answer still leaves only once its
request is committed. Each replica records one run per graph (created, beaten and finished
through the actor, whose process owns the runs). Policies: the actor registers each graph's
policy and the replicas poll it for the active version every `POLICY_POLL_S`. The semantic
cache of a replica is its own (not shared, not persisted) in this mode.

Ray Serve does the HTTP, routing and autoscaling: `--replicas N` fixes the count,
`--autoscale MIN:MAX` lets Ray Serve scale on requests in flight per replica.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio

from engine.api import Pipeline
from engine.cluster._ray import WORKERS_PER_CPU, cluster_cpus, connect, require_ray
from engine.errors import SpecError, StoreError
from engine.events import Record, RequestRecord
from engine.graph.loader import load_graph
from engine.policy.manager import PolicyManager
from engine.serve.app import MoatServer
from engine.serve.protocol import bounded_heads
from engine.store.policy_ops import Active, poll_active
from engine.store.store import HEARTBEAT_S, Store

__all__ = ["StoreWriterActor", "deploy", "parse_autoscale", "serve_on_ray"]

POLICY_POLL_S = 0.5
"""How often a replica asks the store-writer actor for the active policy version."""
_SEND_EVERY = 256
"""Records a replica gathers before it sends them without waiting for a flush."""
_APP = "moat"


class StoreWriterActor:
    """The one writer of the store for every replica (made a Ray actor by `deploy`).

    Args:
        db: the store file, on the node this actor runs on.
        graphs: the served graph files, whose policies it registers.
    """

    def __init__(self, db: str, graphs: Sequence[str]) -> None:
        self.store = Store.open(db)
        self.writer = self.store.writer()
        self.done: dict[str, int] = {}
        for path in graphs:
            graph = load_graph(path)
            PolicyManager(
                self.store, name=graph.policy_name, default_body=graph.policy, graph=graph
            ).ensure_registered()

    def create_run(
        self, graph_name: str, graph_hash: str | None, total: int | None, config: Any
    ) -> str:
        run_id = self.store.create_run(graph_name, graph_hash, total, config)
        self.done[run_id] = 0
        return run_id

    def record(self, records: list[Record]) -> None:
        for item in records:
            self.writer.record(item)
            if isinstance(item, RequestRecord):
                self.done[item.run_id] = self.done.get(item.run_id, 0) + 1

    def flush(self) -> None:
        self.writer.flush()

    def update_run_progress(self, run_id: str, done: int) -> None:
        self.store.update_run_progress(run_id, self.done.get(run_id, done))

    def finish_run(self, run_id: str, status: str, at: float | None = None) -> None:
        self.writer.flush()
        self.store.finish_run(run_id, status, at=at)

    def active_policy(self, name: str, newer_than: int | None = None) -> Active | None:
        """The active version of `name`, or None when it is no later than `newer_than`."""
        return poll_active(self.store, name, newer_than=newer_than)

    def close(self) -> None:
        """Commit what is queued and close the store (before the actor is killed)."""
        self.writer.close()
        self.store.close()


class _ActorSink:
    """Gathers a replica's records and sends them to the store-writer actor in batches."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.pending: list[Record] = []
        self._lock = threading.Lock()

    def record(self, item: Record) -> None:
        self.pending.append(item)
        if len(self.pending) >= _SEND_EVERY:
            self.send()

    def send(self) -> Any:
        with self._lock:  # the event loop and flushing threads both send
            batch, self.pending = self.pending, []
            return self.writer.record.remote(batch) if batch else None

    def flush(self) -> None:
        """Block until every record so far is committed (call it from a worker thread)."""
        ray = require_ray()
        self.send()
        try:
            ray.get(self.writer.flush.remote())
        except ray.exceptions.RayError as exc:
            raise StoreError(f"the store-writer actor failed: {exc}") from exc


class _StoreProxy:
    """The calls `Pipeline` and `MoatServer` make on a store, answered by the actor."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def create_run(self, *args: Any) -> str:
        return str(require_ray().get(self.writer.create_run.remote(*args)))

    def update_run_progress(self, run_id: str, done: int) -> None:
        require_ray().get(self.writer.update_run_progress.remote(run_id, done))

    def finish_run(self, run_id: str, status: str, at: float | None = None) -> None:
        require_ray().get(self.writer.finish_run.remote(run_id, status, at))


class _ReplicaPipeline(Pipeline):
    """A pipeline whose records, runs and policy versions go through the writer actor."""

    def __init__(self, graph: Any, *, writer: Any, db: Any = None, **options: Any) -> None:
        super().__init__(graph, db=None, sink=_ActorSink(writer), **options)
        self._writer = writer

    async def _open(self, stack: AsyncExitStack) -> None:
        await super()._open(stack)
        self.store = _StoreProxy(self._writer)  # type: ignore[assignment]
        group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(group.cancel_scope.cancel)
        group.start_soon(self._send_loop)
        if self.policy is not None and self.policy.name is not None:
            group.start_soon(self._policy_loop, self.policy.name)

    async def _send_loop(self) -> None:
        assert isinstance(self.memory, _ActorSink)
        while True:
            await anyio.sleep(0.05)
            self.memory.send()

    async def _policy_loop(self, name: str) -> None:
        assert self.policy is not None
        while True:
            known = self.policy._state.activation_id
            active: Active | None = await self._writer.active_policy.remote(name, known)
            if active is not None:
                self.policy._switch(active)
            await anyio.sleep(POLICY_POLL_S)


class _Replica:
    """One Ray Serve replica: a `MoatServer` whose pipelines store through the actor."""

    def __init__(self, graphs: list[str], writer: Any, options: Mapping[str, Any]) -> None:
        def pipeline(graph: Any, **kwargs: Any) -> Pipeline:
            return _ReplicaPipeline(graph, writer=writer, **kwargs)

        self.server = MoatServer(graphs, db="(store-writer actor)", pipeline=pipeline, **options)

    def __serve_build_asgi_app__(self) -> Any:
        # Ray's proxy, not moat's protocol, reads the requests: heads are bounded here
        return bounded_heads(self.server.app)


def parse_autoscale(value: str) -> tuple[int, int]:
    """`MIN:MAX` of `--autoscale`.

    Raises:
        SpecError: not two whole numbers with 1 <= MIN <= MAX.
    """
    low, sep, high = value.partition(":")
    try:
        pair = (int(low), int(high)) if sep else (0, 0)
    except ValueError:
        pair = (0, 0)
    if not 1 <= pair[0] <= pair[1]:
        raise SpecError(f"--autoscale {value}: write MIN:MAX with 1 <= MIN <= MAX, e.g. 1:4")
    return pair


def deploy(
    graphs: Sequence[str],
    *,
    db: str,
    host: str,
    port: int,
    replicas: int | None = None,
    autoscale: tuple[int, int] | None = None,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Start the store-writer actor and the serve app on the connected Ray cluster.

    Returns:
        The base URL of the OpenAI-compatible API (`http://HOST:PORT/v1`).
    """
    ray = require_ray()
    from ray import serve

    paths = [os.path.abspath(g) for g in graphs]
    here = ray.get_runtime_context().get_node_id()
    affinity = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False)
    writer = (
        ray.remote(num_cpus=0, scheduling_strategy=affinity)(StoreWriterActor)
        .options(name="moat-store-writer", get_if_exists=False)
        .remote(os.path.abspath(db), paths)
    )
    ray.get(writer.flush.remote())  # opened, policies registered
    scale: dict[str, Any] = {"num_replicas": replicas or 1}
    if autoscale is not None:
        low, high = autoscale
        scale = {
            "autoscaling_config": {
                "min_replicas": low,
                "max_replicas": high,
                "target_ongoing_requests": 16,
            }
        }
    deployment = serve.deployment(name="moat", ray_actor_options={"num_cpus": 0}, **scale)(
        serve.ingress()(_Replica)
    )
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment.bind(paths, writer, dict(options or {})), name=_APP, route_prefix="/")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def serve_on_ray(
    args: Any, db: str, options: Mapping[str, Any], on_ready: Callable[[str, str], None]
) -> int:
    """`moat serve --ray`: deploy, tell `on_ready(url, scale)`, serve until Ctrl-C or
    SIGTERM, then stop the replicas (each finishes its runs) and the store-writer actor.

    Args:
        args: the `moat serve` arguments (`graphs`, `ray`, `replicas`, `autoscale`, ...).
        db: the store file.
        options: the `MoatServer` options (keys, limits, models, seed, ...).
        on_ready: called once the app answers, with its URL and its replica count.

    Raises:
        SpecError: bad `--replicas`/`--autoscale`, Ray missing or the cluster unreachable.
    """
    from engine.cluster._ray import parse_address

    if args.replicas is not None and args.autoscale is not None:
        raise SpecError("--replicas and --autoscale: give one of them")
    autoscale = parse_autoscale(args.autoscale) if args.autoscale is not None else None
    replicas = args.replicas
    ray = connect(parse_address(args.ray))
    most = WORKERS_PER_CPU * cluster_cpus()
    asked = autoscale[1] if autoscale is not None else replicas or 1
    if asked > most:
        flag = f"--autoscale {args.autoscale}" if autoscale else f"--replicas {replicas}"
        raise SpecError(
            f"{flag}: each replica is a process of its own and the Ray cluster offers "
            f"{most // WORKERS_PER_CPU} CPUs; give at most {most} ({WORKERS_PER_CPU} a CPU)"
        )
    from ray import serve

    url = deploy(
        args.graphs,
        db=db,
        host=args.host,
        port=args.port,
        replicas=replicas,
        autoscale=autoscale,
        options=options,
    )
    on_ready(url, f"{autoscale[0]}-{autoscale[1]}" if autoscale else str(replicas or 1))
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(HEARTBEAT_S):
            pass
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the handlers were set
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.shutdown()  # type: ignore[no-untyped-call]  # replicas finish their runs
        writer = ray.get_actor("moat-store-writer")
        ray.get(writer.close.remote())
        ray.kill(writer)
    return 0
