"""Where a request's time goes inside `moat serve`: phase timestamps taken under load.

`python -m bench.serve_load --part added --phases` starts `moat serve` with this module
installed in its serving processes (through `bench/_phases_site/sitecustomize.py`, which
Python imports at start-up when its folder is on `PYTHONPATH`; the bench sets that and
`MOAT_BENCH_PHASES` to a folder for the results). Nothing in `engine` knows about it:
`install` wraps a few of the server's functions to note the time (`perf_counter_ns`, one
clock for every thread) at each step of a request, and each process writes what it noted
to `MOAT_BENCH_PHASES/<pid>.json` when it exits. `summarise` reads those files back.

The steps of one proxied request, in order:

- `rx`: its bytes reached the server (uvicorn's `data_received`, httptools only);
- `in`: the app was called (uvicorn's task for the request took its first step);
- `call0` / `call1`: the model call was sent / its answer read (the `openai` provider's
  direct route);
- `answered`: the graph's answer (`Pipeline.run` returned);
- `ask`: the request asked the store writer for its commit;
- `commit`: the writer thread reported the commit;
- `woke`: the request went on after it;
- `sent`: the response's bytes were handed to the socket.

Besides, per process: each store-writer transaction (wall and thread CPU time, records),
each wait for SQLite's write lock (`BEGIN IMMEDIATE`, which the other worker processes
hold in turn), and the event loop's lag (how late a 1 ms sleep wakes up).

The wrapping costs a few microseconds a request; figures with and without `--phases` are
not meant to be compared.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

ENV = "MOAT_BENCH_PHASES"
SITE = Path(__file__).with_name("_phases_site")
"""The folder to put first on the served processes' `PYTHONPATH`."""

_STEPS = (
    ("read", "rx", "in"),
    ("to_model_call", "in", "call0"),
    ("model_call", "call0", "call1"),
    ("to_answer", "call1", "answered"),
    ("to_commit_asked", "answered", "ask"),
    ("commit", "ask", "commit"),
    ("woken_after_commit", "commit", "woke"),
    ("to_sent", "woke", "sent"),
    ("answer_to_sent", "answered", "sent"),
    ("total", "rx", "sent"),
)
"""(name, from, to): the phases `summarise` reports, between two steps."""


class _Notes:
    """What one serving process noted."""

    def __init__(self) -> None:
        self.now = time.perf_counter_ns
        self.current: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
            "phases", default=None
        )
        self.requests: list[dict[str, int]] = []
        self.batches: list[tuple[int, int, int, int]] = []
        self.begins: list[int] = []
        self.lags: list[int] = []

    def note(self, step: str) -> None:
        """The time of `step` of the request in whose context this runs (its first)."""
        noted = self.current.get()
        if noted is not None and step not in noted:
            noted[step] = self.now()

    def dump(self, out: str) -> None:
        data = {
            "requests": self.requests,
            "batches": self.batches,
            "begins": self.begins,
            "lags": self.lags[1:],
        }
        Path(out, f"{os.getpid()}.json").write_text(json.dumps(data))


def environment(out: Path, root: Path) -> dict[str, str]:
    """What a `moat serve` process's environment needs for `install` to run in it and
    write to `out` (`root`: the project, for `bench` to be importable)."""
    path = [str(SITE), str(root), os.environ.get("PYTHONPATH", "")]
    return {ENV: str(out), "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def install(out: str) -> None:
    """Wrap the server's steps to note their times; write them to `out` at exit."""
    notes = _Notes()
    _wrap_uvicorn_rx(notes)
    _wrap_server(notes)
    _wrap_pipeline(notes)
    _wrap_store(notes)
    atexit.register(notes.dump, out)


def _wrap_server(notes: _Notes) -> None:
    """The request's start and end (the app's call, the response's send)."""
    import asyncio

    import engine.serve.app as app
    import engine.serve.durable as durable
    import engine.serve.listen as listen

    served, committed = app.MoatServer.__call__, durable.Commits.committed
    flush = listen._Coalesced.flush

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if not notes.lags:
            notes.lags.append(0)
            asyncio.get_running_loop().create_task(_lag_monitor(notes.lags))
        noted = {"rx": scope.get("phases_rx", 0), "in": notes.now()}
        notes.current.set(noted)
        await served(self, scope, receive, send)
        notes.requests.append(noted)

    async def commits_committed(self: Any, recorded: Any) -> None:
        await committed(self, recorded)
        notes.note("woke")

    def coalesced_flush(self: Any) -> None:
        if self._pending:
            notes.note("sent")
        flush(self)

    app.MoatServer.__call__ = call  # type: ignore[method-assign]
    durable.Commits.committed = commits_committed  # type: ignore[method-assign]
    listen._Coalesced.flush = coalesced_flush  # type: ignore[method-assign]


def _wrap_pipeline(notes: _Notes) -> None:
    """The graph's run, its model call, and the request's ask for a commit."""
    import engine.api as api
    import engine.models._direct_http as direct

    run, post, flush_soon = api.Pipeline.run, direct.DirectRoute.post, api.Pipeline.flush_soon

    async def pipeline_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await run(self, *args, **kwargs)
        finally:
            notes.note("answered")

    async def route_post(self: Any, *args: Any, **kwargs: Any) -> Any:
        notes.note("call0")
        try:
            return await post(self, *args, **kwargs)
        finally:
            notes.note("call1")

    def pipeline_flush_soon(self: Any, done: Callable[[Any], None]) -> bool:
        noted = notes.current.get()
        notes.note("ask")

        def reported(error: Any) -> None:  # on the writer thread
            if noted is not None:
                noted["commit"] = notes.now()
            done(error)

        return flush_soon(self, reported)

    api.Pipeline.run = pipeline_run  # type: ignore[method-assign]
    direct.DirectRoute.post = route_post  # type: ignore[method-assign]
    api.Pipeline.flush_soon = pipeline_flush_soon  # type: ignore[method-assign]


def _wrap_store(notes: _Notes) -> None:
    """The store writer's transactions and its waits for the write lock."""
    import engine.store.schema as schema
    import engine.store.writer as writer

    write_batch, begin = writer.StoreWriter._write_batch, schema._begin_immediate
    now = notes.now

    def writer_batch(self: Any, conn: Any) -> None:
        start, cpu, records = now(), time.thread_time_ns(), self.stats.records
        write_batch(self, conn)
        wall, cpu = now() - start, time.thread_time_ns() - cpu
        notes.batches.append((start, wall, cpu, self.stats.records - records))

    def begin_immediate(conn: Any) -> None:
        start = now()
        begin(conn)
        notes.begins.append(now() - start)

    writer.StoreWriter._write_batch = writer_batch  # type: ignore[method-assign]
    schema._begin_immediate = begin_immediate


def _wrap_uvicorn_rx(notes: _Notes) -> None:
    """Note when a request's bytes arrive: each scope gets the time of the
    `data_received` that began it."""
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # h11 only: the `read` phase is not reported
        return
    protocol = httptools_impl.HttpToolsProtocol
    received, begun = protocol.data_received, protocol.on_message_begin

    def data_received(self: Any, data: bytes) -> None:
        self._phases_rx = notes.now()
        received(self, data)

    def on_message_begin(self: Any) -> None:
        begun(self)
        self.scope["phases_rx"] = getattr(self, "_phases_rx", 0)

    protocol.data_received = data_received  # type: ignore[method-assign]
    protocol.on_message_begin = on_message_begin  # type: ignore[method-assign]


async def _lag_monitor(lags: list[int]) -> None:
    import asyncio

    while True:
        start = time.perf_counter_ns()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter_ns() - start - 1_000_000)


def summarise(folder: Path, skip: float = 0.2) -> dict[str, Any]:
    """The phases' p50 / p90 / p99 in ms over every process's requests (the first `skip`
    of them left out: the start-up and first warm-up), the writer's transactions, the
    waits for the write lock and the loop's lag."""
    requests: list[Mapping[str, int]] = []
    batches: list[list[int]] = []
    begins: list[int] = []
    lags: list[int] = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        requests += data["requests"]
        batches += data["batches"]
        begins += data["begins"]
        lags += data["lags"]
    requests.sort(key=lambda noted: noted["in"])
    requests = requests[int(len(requests) * skip) :]
    phases = {}
    for name, start, end in _STEPS:
        spans = [r[end] - r[start] for r in requests if r.get(start) and r.get(end)]
        if spans:
            phases[name] = _spread(spans)
    moat = [
        (r["sent"] - r["rx"]) - (r["call1"] - r["call0"])
        for r in requests
        if all(r.get(step) for step in ("rx", "sent", "call0", "call1"))
    ]
    if moat:
        phases["moat_share"] = _spread(moat)  # the total but the model call
    batches = batches[int(len(batches) * skip) :]
    return {
        "requests": len(requests),
        "phases_ms": phases,
        "writer": {
            "transactions": len(batches),
            "records_per_transaction_p50": _pct([b[3] for b in batches], 50),
            "wall_ms": _spread([b[1] for b in batches]),
            "thread_cpu_ms": _spread([b[2] for b in batches]),
            "write_lock_wait_ms": _spread(begins[int(len(begins) * skip) :]),
        },
        "loop_lag_ms": _spread(lags[int(len(lags) * skip) :]),
    }


def _spread(ns: Iterable[int]) -> dict[str, float | None]:
    ms = sorted(x / 1e6 for x in ns)
    return {f"p{p}": _pct(ms, p) for p in (50, 90, 99)}


def _pct(values: list[float] | list[int], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(float(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]), 3)
