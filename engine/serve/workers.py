"""`moat serve --workers N`: N server processes on one port, one run per graph in the store.

One Python process runs its Python code on one core at a time, so one `moat serve` process
tops out at the requests/s one core gives it. With `--workers N` the parent process opens
the store, starts each graph's run and then starts N worker processes (`python -m
engine.serve.workers SPEC`), each a whole `MoatServer` joined to those runs:

- each worker listens on its own socket bound to the same port with SO_REUSEPORT, so the
  kernel spreads connections evenly over them;
- each writes its requests' records to the store itself, through its own writer thread
  (SQLite in WAL mode, writers taking turns on the write lock), and answers a request only
  once its records are committed, as one process does: a kill -9 of any process loses no
  answered request;
- requests are numbered `index, index + N, ...` in worker `index`, so ids never collide;
  a worker started again (after its predecessor died) carries on after the highest seq
  of its slot in the store, so it never hands out an id a stored request has;
- the parent beats each run's heartbeat with the count of stored requests, restarts a
  worker that dies (closing its socket at once, so that no new connection waits for it;
  the next worker listens on a new one once its graphs are checked), and on SIGTERM or
  SIGINT (from the moment it starts, so also while the workers start) stops the workers
  (each drains its requests within the grace period), then records the runs as
  finished. A worker whose parent is gone (its stdin ends) stops as on SIGTERM, so a
  kill -9 of the parent leaves no worker behind. `moat runs`, `moat report` and `moat
  tui` see one run per graph, as with one process;
- with `--rotate-run`, the parent starts the next runs, writes them to each worker's stdin
  as a line of JSON, and finishes the runs before once every worker has answered their
  last request (each says `switched` on its stdout). A worker started later joins the
  newest runs.

Per-tenant rate and concurrency limits and the in-flight cap are split evenly over the
workers (connections, not tenants, are spread, so a tenant's share is approximate).
`/metrics` reports the worker that answers the scrape.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from typing import IO, Any

import anyio

from engine.errors import MoatError, SpecError, printable
from engine.logs import get_logger
from engine.serve.app import MoatServer
from engine.serve.auth import KeyRing
from engine.serve.listen import BACKLOG, bind
from engine.serve.shaping import ShapingLimits

__all__ = ["serve_workers", "split_limits"]

_log = get_logger("moat.serve")

_CHECK_S = 0.5
"""How often the parent looks for a worker that died."""
_SWITCH_PATIENCE_S = 10.0
"""Beyond the grace period, how long the parent waits for the workers to leave a rotated
run before it records the run finished anyway (a late request still lands in it)."""
_FOLLOW_POLL_S = 0.2
"""How often a worker looks for new runs from its parent."""
_RETRY_S = 1.0
"""How long the parent waits before starting again a worker that failed to start (a
graph file edited since the server started, say); doubled at each failure in a row."""
_RETRY_MAX_S = 60.0
"""The longest wait between two starts of a worker that keeps failing to start."""


def split_limits(limits: ShapingLimits, workers: int) -> ShapingLimits:
    """Each worker's share of the server's limits."""
    if workers <= 1:
        return limits
    return replace(
        limits,
        rate=None if limits.rate is None else limits.rate / workers,
        burst=math.ceil(limits.burst / workers),
        tenant_concurrency=math.ceil(limits.tenant_concurrency / workers),
        max_inflight=math.ceil(limits.max_inflight / workers),
        max_queue=math.ceil(limits.max_queue / workers),
    )


def serve_workers(
    server: MoatServer,
    spec: Mapping[str, Any],
    socks: list[socket.socket],
    *,
    on_ready: Callable[[], None],
    stopped: Callable[[], bool] | None = None,
) -> bool:
    """Serve with one worker process per socket until SIGINT or SIGTERM; `server` (opened
    here, never serving) owns the runs. False if a worker failed to start.

    Args:
        spec: what every worker needs (`worker_spec`), but its slot, socket and runs.
        stopped: True if a SIGTERM came before this was called (the caller noted it):
            nothing is started.
    """
    server.counted_in_store = True
    count = len(socks)
    address, port = socks[0].getsockname()[:2]
    procs: list[subprocess.Popen[str]] = []
    base: dict[str, Any] = {}
    talking = anyio.Lock()
    """Held while the parent reads workers' lines (`ready`, `switched`): one reader at a
    time, and no rotation before the workers are ready."""

    async def tell_workers(runs: Mapping[str, str]) -> None:
        """Move every worker to `runs`; return once each has answered the runs before."""
        async with talking:
            base["runs"] = dict(runs)  # a worker started from now on joins these
            line = json.dumps({"runs": dict(runs)}) + "\n"
            told = [proc for proc in procs if _tell(proc, line)]
            with anyio.move_on_after(float(spec["grace_s"]) + _SWITCH_PATIENCE_S):
                for proc in told:
                    await anyio.to_thread.run_sync(_switched, proc, abandon_on_cancel=True)

    server.on_rotate = tell_workers

    async def main() -> bool:
        # SIGINT and SIGTERM are received from the start: one that comes while the graphs
        # open or the workers start stops the workers started so far, and no worker is
        # left behind (the default action of SIGTERM ended this process alone)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            if stopped is not None and stopped():  # before the receiver was open
                return True
            async with server:
                runs = {name: served.run_id for name, served in server.graphs.items()}
                graphs = {name: served.pipe.graph.hash for name, served in server.graphs.items()}
                base.update(spec, runs=runs, graph_hashes=graphs)

                def start(index: int) -> subprocess.Popen[str]:
                    sock = socks[index]
                    if sock.fileno() == -1:  # its worker died: a socket of its own again,
                        # which the worker listens on once it can serve (`_worker`)
                        socks[index] = sock = bind(address, port, reuse_port=True, listen=False)
                    child = {**base, "slot": [index, count], "fd": sock.fileno()}
                    return subprocess.Popen(
                        [sys.executable, "-m", "engine.serve.workers", json.dumps(child)],
                        pass_fds=[sock.fileno()],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )

                try:
                    async with anyio.create_task_group() as tg:

                        async def stop_on_signal() -> None:
                            async for _ in signals:
                                tg.cancel_scope.cancel()
                                return

                        tg.start_soon(stop_on_signal)
                        async with talking:
                            procs.extend(start(index) for index in range(count))
                            started = await anyio.to_thread.run_sync(
                                _all_ready, procs, abandon_on_cancel=True
                            )
                        if not started:
                            tg.cancel_scope.cancel()
                            return False
                        on_ready()
                        await _supervise(procs, start, lambda i: socks[i].close(), talking)
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(_stop, procs, float(spec["grace_s"]))
        return True

    return anyio.run(main)


async def _supervise(
    procs: list[subprocess.Popen[str]],
    start: Callable[[int], subprocess.Popen[str]],
    retire: Callable[[int], None],
    talking: anyio.Lock,
) -> None:
    """Restart workers that die (until cancelled: SIGINT or SIGTERM). A worker that fails
    to start again is retried after a wait that doubles up to `_RETRY_MAX_S`, rather than
    every `_CHECK_S` (each start costs a second of CPU; the other workers go on serving).

    A dead worker's socket is closed at once (`retire`) and its next start binds another:
    while it stayed open, the kernel went on handing it a share of new connections, which
    waited for a worker, up to a minute for one that kept failing to start.
    """
    waits = [0.0] * len(procs)
    due = [0.0] * len(procs)
    while True:
        await anyio.sleep(_CHECK_S)
        for index, proc in enumerate(procs):
            code = proc.poll()
            if code is None:
                continue
            retire(index)
            if anyio.current_time() < due[index]:
                continue
            if not waits[index]:  # (one that failed to start was logged so)
                _log.warning("serve.worker_died", worker=index, exit_code=code)
            async with talking:
                try:
                    procs[index] = start(index)
                except SpecError as exc:  # the port was taken meanwhile: try again later
                    ready = False
                    _log.error("serve.worker_not_bound", worker=index, error=str(exc))
                else:
                    ready = await anyio.to_thread.run_sync(
                        _all_ready, [procs[index]], abandon_on_cancel=True
                    )
            if ready:
                waits[index] = 0.0
                continue
            waits[index] = min(max(2 * waits[index], _RETRY_S), _RETRY_MAX_S)
            due[index] = anyio.current_time() + waits[index]
            code = await anyio.to_thread.run_sync(procs[index].wait)
            _log.error(
                "serve.worker_not_started", worker=index, exit_code=code, retry_s=waits[index]
            )


def _all_ready(procs: list[subprocess.Popen[str]]) -> bool:
    """Wait for each worker's `ready` line (printed once its graphs are open)."""
    for proc in procs:
        stdout: IO[str] | None = proc.stdout
        assert stdout is not None
        if stdout.readline().strip() != "ready":
            return False
    return True


def _tell(proc: subprocess.Popen[str], line: str) -> bool:
    """Write `line` to a worker's stdin; False if it is gone."""
    if proc.poll() is not None or proc.stdin is None:
        return False
    try:
        proc.stdin.write(line)
        proc.stdin.flush()
    except (BrokenPipeError, ValueError):  # it died meanwhile (closed: being stopped)
        return False
    return True


def _switched(proc: subprocess.Popen[str]) -> None:
    """Wait for the worker's `switched` line (or its end)."""
    stdout: IO[str] | None = proc.stdout
    assert stdout is not None
    for line in stdout:
        if line.strip() == "switched":
            return


def _stop(procs: list[subprocess.Popen[str]], grace_s: float) -> None:
    """SIGTERM every worker (each drains its requests), then wait; kill what outlives the
    grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace_s + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):  # buffered for one that is gone
                    stream.close()


def worker_spec(
    graphs: list[str],
    *,
    db: str | None,
    keys: KeyRing | None,
    limits: ShapingLimits,
    workers: int,
    models: Mapping[str, str],
    commit_wait: bool,
    grace_s: float,
    seed: int,
    allow_unpriced: bool,
    metrics_auth: bool = False,
) -> dict[str, Any]:
    """What `serve_workers` passes every worker (as JSON on its command line)."""
    return {
        "graphs": graphs,
        "db": db,
        "keys": None if keys is None else keys.keys,
        "limits": asdict(split_limits(limits, workers)),
        "models": dict(models),
        "commit_wait": commit_wait,
        "grace_s": grace_s,
        "seed": seed,
        "allow_unpriced": allow_unpriced,
        "metrics_auth": metrics_auth,
    }


def _worker(spec: Mapping[str, Any]) -> int:
    """One worker process: a `MoatServer` joined to the parent's runs, on its socket."""
    from engine.logs import configure_logging
    from engine.serve.listen import run_app

    configure_logging()
    try:
        server = _worker_server(spec)
    except MoatError as exc:  # (a graph edited since the server started, say)
        print(f"moat: serve worker {spec['slot'][0]}: {printable(str(exc))}", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=spec["fd"])
    sock.listen(BACKLOG)  # (a socket made for a worker started again was only bound)

    def ready() -> None:
        print("ready", flush=True)

    started = run_app(
        server.app, sock, grace_s=spec["grace_s"], context=_following(server), on_ready=ready
    )
    return 0 if started else 2


def _worker_server(spec: Mapping[str, Any]) -> MoatServer:
    """A worker's server, on the graphs its parent serves as the parent loaded them.

    Raises:
        MoatError: a graph is unusable now, or is not the one the parent's run records
            (its file was edited since the server started).
    """
    server = MoatServer(
        spec["graphs"],
        db=spec["db"],
        keys=None if spec["keys"] is None else KeyRing(spec["keys"]),
        limits=ShapingLimits(**spec["limits"]),
        models=spec["models"],
        commit_wait=spec["commit_wait"],
        runs=spec["runs"],
        slot=(spec["slot"][0], spec["slot"][1]),
        seed=spec["seed"],
        allow_unpriced=spec["allow_unpriced"],
        metrics_auth=spec["metrics_auth"],
    )
    hashes = spec.get("graph_hashes") or {}
    for name, served in server.graphs.items():
        if hashes.get(name) != served.pipe.graph.hash:
            raise SpecError(
                f"graph {name!r} is not the graph this server started with (its file was "
                "edited since, or renamed): a worker answers into the server's runs, which "
                "record the graph as it was; restore the file, or restart the server to "
                "serve the new graph",
                path=str(served.pipe.graph.path),
            )
    return server


@asynccontextmanager
async def _following(server: MoatServer) -> AsyncIterator[MoatServer]:
    """`server`, open, switching to the runs its parent writes to its stdin (`rotate`).

    A daemon thread reads the lines (one blocked in a read must not keep the process from
    exiting); the server looks for them every `_FOLLOW_POLL_S`."""
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()

    def read() -> None:
        for line in sys.stdin:
            lines.put(line)
        # the end of stdin: the parent is gone (a kill -9), and nothing would stop this
        # worker any more; it stops as on SIGTERM, draining its requests
        os.kill(os.getpid(), signal.SIGTERM)

    async def follow() -> None:
        while True:
            await anyio.sleep(_FOLLOW_POLL_S)
            while not lines.empty():
                await server.switch_runs(json.loads(lines.get())["runs"])
                print("switched", flush=True)

    threading.Thread(target=read, name="moat-follow-parent", daemon=True).start()
    async with server, anyio.create_task_group() as tg:
        tg.start_soon(follow)
        yield server
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    raise SystemExit(_worker(json.loads(sys.argv[1])))
