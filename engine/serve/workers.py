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
- the parent beats each run's heartbeat with the count of stored requests, restarts a
  worker that dies, and on SIGTERM or SIGINT stops the workers (each drains its requests
  within the grace period), then records the runs as finished. `moat runs`, `moat
  report` and `moat tui` see one run per graph, as with one process.

Per-tenant rate and concurrency limits and the in-flight cap are split evenly over the
workers (connections, not tenants, are spread, so a tenant's share is approximate).
`/metrics` reports the worker that answers the scrape.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import IO, Any

import anyio

from engine.logs import get_logger
from engine.serve.app import MoatServer
from engine.serve.auth import KeyRing
from engine.serve.shaping import ShapingLimits

__all__ = ["serve_workers", "split_limits"]

_log = get_logger("moat.serve")

_CHECK_S = 0.5
"""How often the parent looks for a worker that died."""


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
) -> bool:
    """Serve with one worker process per socket until SIGINT or SIGTERM; `server` (opened
    here, never serving) owns the runs. False if a worker failed to start.

    Args:
        spec: what every worker needs (`worker_spec`), but its slot, socket and runs.
    """
    server.counted_in_store = True
    count = len(socks)

    async def main() -> bool:
        async with server:
            runs = {name: served.run_id for name, served in server.graphs.items()}
            base = {**spec, "runs": runs}

            def start(index: int) -> subprocess.Popen[str]:
                sock = socks[index]
                child = {**base, "slot": [index, count], "fd": sock.fileno()}
                return subprocess.Popen(
                    [sys.executable, "-m", "engine.serve.workers", json.dumps(child)],
                    pass_fds=[sock.fileno()],
                    stdout=subprocess.PIPE,
                    text=True,
                )

            procs = [start(index) for index in range(count)]
            try:
                if not await anyio.to_thread.run_sync(_all_ready, procs):
                    return False
                on_ready()
                await _supervise(procs, start)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_stop, procs, float(spec["grace_s"]))
        return True

    return anyio.run(main)


async def _supervise(
    procs: list[subprocess.Popen[str]], start: Callable[[int], subprocess.Popen[str]]
) -> None:
    """Restart workers that die, until SIGINT or SIGTERM."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while True:
                    await anyio.sleep(_CHECK_S)
                    for index, proc in enumerate(procs):
                        code = proc.poll()
                        if code is None:
                            continue
                        _log.warning("serve.worker_died", worker=index, exit_code=code)
                        procs[index] = start(index)
                        await anyio.to_thread.run_sync(_all_ready, [procs[index]])

            tg.start_soon(watch)
            async for _ in signals:
                tg.cancel_scope.cancel()
                break


def _all_ready(procs: list[subprocess.Popen[str]]) -> bool:
    """Wait for each worker's `ready` line (printed once its graphs are open)."""
    for proc in procs:
        stdout: IO[str] | None = proc.stdout
        assert stdout is not None
        if stdout.readline().strip() != "ready":
            return False
    return True


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
        if proc.stdout is not None:
            proc.stdout.close()


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
    sock = socket.socket(fileno=spec["fd"])

    def ready() -> None:
        print("ready", flush=True)

    started = run_app(server.app, sock, grace_s=spec["grace_s"], context=server, on_ready=ready)
    return 0 if started else 2


if __name__ == "__main__":
    raise SystemExit(_worker(json.loads(sys.argv[1])))
