"""Benchmark: `moat serve` under load over loopback, against its goals (issue "moat serve").

python -m bench.serve_load [--part all|throughput|added|commit|kill9|provider] [--workers N]
    [--phases] [--json]

Every part launches real processes: `moat serve` (uvicorn) and, for the added latency,
`moat sim-server`, each as `python -m engine ...` on port 0. The load comes from this
process, an asyncio client keeping one HTTP/1.1 keep-alive connection per simulated
client. The client is a few lines over asyncio streams rather than httpx2 or the openai
client on purpose: the two cores are shared by the server and the load, and a client that
spends more CPU per request than the server would measure itself (`--client httpx2` runs
the same load through httpx2 to show it; its CPU per request is reported). Parts:

- throughput: 1,000 concurrent clients on a one-node graph of the zero-latency `sim`
  for `--requests` requests: errors, requests/s, p50/p99, and the server's RSS sampled
  as the requests go (flat: the growth over the last 90 % of them).
- added: 100 concurrent clients; a sim-server whose every answer takes 200 ms, called
  directly, then through `moat serve` (a one-node graph whose model is `openai` pointed at
  that sim-server), alternating `--added-rounds` times in one session: moat's added
  latency is the difference of the percentiles over all rounds' requests. Each measured
  run goes on without a pause from a warm-up of two requests per client on the same
  connections: a run that started from idle found moat's pooled connections to the
  sim-server closed (idle ones are dropped after 2.5 s, and the direct run before it took
  longer), so its first 100 requests also connected, and with 1,000 requests a run those
  are a tenth of them: the p99 was theirs. With `--phases`, `moat.server_phases` says where
  moat's requests spent their time inside the server (read, model call, commit, send; the
  store writer's transactions and lock waits; the event loop's lag), from timestamps the
  serving processes take (`bench/_serve_phases.py`; a few microseconds a request).
  A third side, `floor`, runs in the same rounds: the same Starlette + uvicorn stack and
  aiohttp upstream client, on as many worker processes, with nothing of moat in it
  (`bench/_floor_proxy.py`). What it adds over the direct call is the stack's and the
  host's (`floor_added_*`); what moat adds over it is moat's own (`moat_over_floor_*`).
- commit: the throughput part again with `--no-commit-wait` (answers leave before their
  record is committed): the cost of committing before answering.
- kill9: 100 clients on the cascade graph, the server killed with SIGKILL mid-load:
  answered requests missing from the store (goal: none).
- provider (not in `all`): what moat's `openai` provider costs per call, without a
  server around it: `--provider-calls` calls from this process (20 at a time) to a
  zero-latency sim-server; this process's CPU per call. Under valgrind the difference of
  two runs with different `--provider-calls` is the instructions per call:
  `valgrind --tool=cachegrind --cache-sim=no python -m bench.serve_load --part provider
  --provider-calls N`.

`--workers N` runs `moat serve --workers N` (N server processes on one port); the server's
CPU and memory are then summed over the parent and its workers. The client's own CPU is
reported per request and as a share of the machine's cores, since it runs on them too.

Results from the `sim` provider are simulated; the HTTP, scheduling and store work is real.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _serve_phases
from bench._procs import children
from engine.stats import percentile

ROOT = Path(__file__).resolve().parents[1]

ONE_NODE = """moat: 1
name: one
models:
  m: {model}
input:
  type: object
  required: [prompt]
  properties: {{prompt: {{type: string, minLength: 1}}}}
nodes:
  answer: {{type: model, with: {{model: m, prompt: "{{{{ input.prompt }}}}"}}}}
output:
  answer: answer.text
"""
SIM_MODEL = "{provider: sim, profile: small, time_scale: 0}"


# -- processes ------------------------------------------------------------------------


@contextmanager
def launched(
    *args: str, env: dict[str, str] | None = None, module: str = "engine"
) -> Iterator[tuple[Any, str]]:
    """`python -m MODULE ARGS` (a server that prints its base URL first); the process and
    the URL, stopped on exit. Its log goes to a file (a pipe nobody reads would fill and
    stall it); error lines in it are reported on stderr."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            if not url.startswith("http://"):
                log.seek(0)
                raise SystemExit(f"{' '.join(args)} did not start: {log.read()}")
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.seek(0)
            errors = [line for line in log.read().splitlines() if "Error" in line]
            if errors:
                print(f"{args[0]}: {len(errors)} error lines; last: {errors[-1]}", file=sys.stderr)


WORKERS: list[str] = []
"""`--workers N` for every `moat serve` of the run (set by `main`)."""


def serve_args(graph: Path, db: Path, *extra: str) -> list[str]:
    return ["serve", str(graph), "--port", "0", "--db", str(db), *LIMITS, *WORKERS, *extra]


# the default caps (256 in flight) would make most of 1,000 clients queue: a load test
# measures the server, not its admission policy
LIMITS = ["--max-inflight", "2000", "--tenant-concurrency", "2000"]


def _tree(pid: int) -> list[int]:
    """`pid` and its child processes (the workers of `moat serve --workers N`)."""
    return [pid, *children(pid)]


def rss_mib(pid: int) -> float:
    """The resident memory of a process and its children, from /proc (Linux)."""
    total = 0.0
    for each in _tree(pid):
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("VmRSS:"))
    return total


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process and its children have used, from /proc."""
    total = 0.0
    for each in _tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# -- the load -------------------------------------------------------------------------


@dataclass
class Load:
    """What the clients saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    warmup: int = 0
    """Requests sent before the counted ones (their CPU is in `client_cpu_s`)."""
    measured_from: float | None = None
    """When the first counted request was sent (`elapsed_s` runs from there)."""

    def figures(self) -> dict[str, Any]:
        n = len(self.latencies)
        ms = sorted(x * 1000 for x in self.latencies)
        return {
            "requests": n,
            "ok": self.statuses.get(200, 0),
            "errors": n - self.statuses.get(200, 0) + len(self.failures),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": self.failures[:5],
            "rps": round(n / self.elapsed_s, 1) if self.elapsed_s else None,
            "p50_ms": _round(percentile(ms, 50)),
            "p99_ms": _round(percentile(ms, 99)),
            "max_ms": _round(ms[-1] if ms else None),
            "client_cpu_us_per_request": round(self.client_cpu_s / (n + self.warmup) * 1e6, 1)
            if n
            else None,
            # the load generator runs on the machine it measures: the share of all its
            # cores the client took while it ran
            "client_share_of_cores": round(
                self.client_cpu_s / (self.elapsed_s * (os.cpu_count() or 1)), 3
            )
            if self.elapsed_s
            else None,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _request(host: str, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer load\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _client_raw(
    url: str, model: str, load: Load, todo: Iterator[int], stop_at: float, tag: str, skip: int = 0
) -> None:
    """One client on one keep-alive connection: request after request until none is left;
    requests numbered below `skip` warm up and are not counted."""
    host_port = url.removeprefix("http://").split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1] + "/chat/completions"
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
    try:
        while time.perf_counter() < stop_at and (n := next(todo, None)) is not None:
            body = json.dumps(
                {"model": model, "messages": [{"role": "user", "content": f"q {tag}-{n}"}]}
            ).encode()
            start = time.perf_counter()
            writer.write(_request(host_port, path, body))
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            if n < skip:
                continue
            if n == skip:
                load.measured_from = start
            load.latencies.append(time.perf_counter() - start)
            status = int(lines[0].split(" ", 2)[1])
            load.statuses[status] = load.statuses.get(status, 0) + 1
            if status == 200 and "x-moat-request-id" in headers:
                load.answered.append(headers["x-moat-request-id"])
            if headers.get("connection", "").lower() == "close":
                break
    except (OSError, asyncio.IncompleteReadError) as exc:
        load.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def _client_httpx2(
    url: str, model: str, load: Load, todo: Iterator[int], stop_at: float, tag: str, skip: int = 0
) -> None:
    import httpx2

    async with httpx2.AsyncClient(base_url=url, timeout=120) as web:
        while time.perf_counter() < stop_at and (n := next(todo, None)) is not None:
            body = {"model": model, "messages": [{"role": "user", "content": f"q {tag}-{n}"}]}
            start = time.perf_counter()
            try:
                response = await web.post("/chat/completions", json=body)
            except httpx2.HTTPError as exc:
                load.failures.append(f"{type(exc).__name__}: {exc}")
                return
            if n < skip:
                continue
            if n == skip:
                load.measured_from = start
            load.latencies.append(time.perf_counter() - start)
            code = response.status_code
            load.statuses[code] = load.statuses.get(code, 0) + 1
            if code == 200 and "x-moat-request-id" in response.headers:
                load.answered.append(response.headers["x-moat-request-id"])


async def drive(
    url: str,
    model: str,
    *,
    clients: int,
    requests: int,
    seconds: float = 600.0,
    client: str = "raw",
    tag: str = "",
    on_progress: Any = None,
    warmup: int = 0,
) -> Load:
    """`clients` concurrent clients sending `requests` requests in all (or until
    `seconds` have passed), after `warmup` requests on the same connections that are not
    counted (the load goes on from them without a pause, so the measured requests find
    the server, its pools and the clients' pace as a steady load leaves them)."""
    load = Load(warmup=warmup)
    todo = iter(range(warmup + requests))  # shared: each number is taken by one client
    run = _client_raw if client == "raw" else _client_httpx2
    cpu0, start = time.process_time(), time.perf_counter()
    stop_at = start + seconds
    tasks = [
        asyncio.create_task(run(url, model, load, todo, stop_at, tag, warmup))
        for _ in range(clients)
    ]
    watcher = asyncio.create_task(_progress(load, on_progress)) if on_progress else None
    await asyncio.gather(*tasks)
    load.elapsed_s = time.perf_counter() - (load.measured_from or start)
    load.client_cpu_s = time.process_time() - cpu0
    if watcher is not None:
        watcher.cancel()
    return load


async def _progress(load: Load, callback: Any) -> None:
    while True:
        await asyncio.sleep(0.25)
        callback(len(load.latencies))


# -- the parts ------------------------------------------------------------------------


def _loop() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(coro: Any) -> Any:
    loop = _loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def throughput(
    work: Path, *, clients: int, requests: int, client: str, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    graph = work / "one.yaml"
    graph.write_text(ONE_NODE.format(model=SIM_MODEL))
    db = work / f"throughput{'-'.join(extra)}.db"
    samples: list[tuple[int, float]] = []
    with launched(*serve_args(graph, db, *extra)) as (proc, url):
        _run(drive(url, "one", clients=50, requests=2000, client=client, tag="warm"))
        cpu0 = cpu_s(proc.pid)
        load = _run(
            drive(
                url,
                "one",
                clients=clients,
                requests=requests,
                client=client,
                on_progress=lambda done: samples.append((done, rss_mib(proc.pid))),
            )
        )
        server_cpu = cpu_s(proc.pid) - cpu0
        samples.append((len(load.latencies), rss_mib(proc.pid)))
    figures = load.figures()
    tail = [mib for done, mib in samples if done >= requests // 10]
    figures |= {
        "clients": clients,
        "server_cpu_us_per_request": round(server_cpu / max(1, figures["requests"]) * 1e6, 1),
        # the server is one Python process (one core at a time for Python code): the
        # requests/s it could serve on a core of its own, whatever else the machine runs
        "server_rps_per_core": round(figures["requests"] / server_cpu, 1) if server_cpu else None,
        "rss_mib_at_10pct": round(tail[0], 1) if tail else None,
        "rss_mib_end": round(samples[-1][1], 1),
        "rss_mib_max": round(max(mib for _, mib in samples), 1),
        "rss_growth_mib_last_90pct": round(tail[-1] - tail[0], 1) if tail else None,
    }
    return figures


def added(
    work: Path,
    *,
    clients: int,
    requests: int,
    latency_ms: float,
    client: str,
    rounds: int = 4,
    phases: bool = False,
) -> dict[str, Any]:
    """Direct sim-server calls and calls through moat, alternating `rounds` times; each
    measured run follows its own warm-up (two requests per client) on the same connections
    without a pause, and the percentiles are over every round's requests. `phases`: also
    where moat's requests spent their time inside the server (`bench/_serve_phases.py`)."""
    per_round = max(1, requests // rounds)
    warm = clients * 2
    with launched("sim-server", "--port", "0", "--latency-ms", str(latency_ms)) as (sim, sim_url):
        model = f"{{provider: openai, model: sim-small, base_url: '{sim_url}', max_retries: 0}}"
        graph = work / "remote.yaml"
        graph.write_text(ONE_NODE.format(model=model).replace("name: one", "name: remote"))
        env = {"OPENAI_API_KEY": "unused-by-sim-server"}
        noted = work / "phases"
        if phases:
            noted.mkdir(exist_ok=True)
            env |= _serve_phases.environment(noted, ROOT)
        with launched(*serve_args(graph, work / "added.db"), env=env) as (proc, url):
            floor_args = [sim_url, "--workers", WORKERS[1] if WORKERS else "1"]
            with launched(*floor_args, module="bench._floor_proxy") as (floor, floor_url):
                # (served process, model name, the server's process for its CPU)
                sides: dict[str, tuple[str, str, Any]] = {
                    "direct": (sim_url, "sim-small", None),
                    "moat": (url, "remote", proc),
                    "floor": (floor_url, "sim-small", floor),
                }
                loads: dict[str, list[Load]] = {side: [] for side in sides}
                cpu = {side: [0.0, 0.0] for side in sides}  # (its server, sim-server) seconds
                for _ in range(rounds):
                    for side, (base, name, server) in sides.items():
                        own0 = cpu_s(server.pid) if server else 0.0
                        sim0 = cpu_s(sim.pid)
                        load = _run(
                            drive(
                                base,
                                name,
                                clients=clients,
                                requests=per_round,
                                client=client,
                                warmup=warm,
                            )
                        )
                        cpu[side][0] += (cpu_s(server.pid) - own0) if server else 0.0
                        cpu[side][1] += cpu_s(sim.pid) - sim0
                        loads[side].append(load)
    sent = rounds * (per_round + warm)  # the warm-up's CPU is in the CPU figures
    figures = {side: _pooled(runs) for side, runs in loads.items()}
    for side in figures:
        if side != "direct":
            figures[side]["server_cpu_us_per_request"] = round(cpu[side][0] / sent * 1e6)
        figures[side]["sim_server_cpu_us_per_request"] = round(cpu[side][1] / sent * 1e6)
    direct, moat, floor_side = figures["direct"], figures["moat"], figures["floor"]
    if phases:  # the server has stopped: its processes wrote what they noted
        moat["server_phases"] = _serve_phases.summarise(noted)
    return {
        "clients": clients,
        "model_latency_ms": latency_ms,
        "rounds": rounds,
        "direct": direct,
        "moat": moat,
        "floor": floor_side,
        **_added(moat, direct, "added"),
        # the same HTTP stack and upstream client with nothing of moat: the stack's and
        # the host's share of the added latency (bench/_floor_proxy.py)
        **_added(floor_side, direct, "floor_added"),
        **_added(moat, floor_side, "moat_over_floor"),
    }


def _added(side: dict[str, Any], base: dict[str, Any], name: str) -> dict[str, Any]:
    """`side`'s percentiles less `base`'s, pooled and round by round."""
    return {
        f"{name}_p50_ms": _round(side["p50_ms"] - base["p50_ms"]),
        f"{name}_p99_ms": _round(side["p99_ms"] - base["p99_ms"]),
        f"{name}_p50_ms_per_round": [
            _round(s["p50_ms"] - b["p50_ms"])
            for s, b in zip(side["per_round"], base["per_round"], strict=True)
        ],
        f"{name}_p99_ms_per_round": [
            _round(s["p99_ms"] - b["p99_ms"])
            for s, b in zip(side["per_round"], base["per_round"], strict=True)
        ],
    }


def _pooled(runs: list[Load]) -> dict[str, Any]:
    """The figures of several runs' requests taken together, and each run's own."""
    pooled = Load(
        latencies=[x for run in runs for x in run.latencies],
        failures=[f for run in runs for f in run.failures],
        elapsed_s=sum(run.elapsed_s for run in runs),
        client_cpu_s=sum(run.client_cpu_s for run in runs),
        warmup=sum(run.warmup for run in runs),
    )
    for run in runs:
        for status, count in run.statuses.items():
            pooled.statuses[status] = pooled.statuses.get(status, 0) + count
    figures = pooled.figures()
    figures["per_round"] = [
        {k: run.figures()[k] for k in ("p50_ms", "p99_ms", "errors")} for run in runs
    ]
    return figures


async def _provider_calls(base_url: str, calls: int, concurrency: int) -> dict[str, Any]:
    from engine.graph.spec import ModelSpec
    from engine.models.base import ProviderRequest
    from engine.models.openai_provider import OpenAIProvider
    from engine.plugin.context import RequestInfo

    spec = ModelSpec(provider="openai", model="sim-small", base_url=base_url)
    provider = OpenAIProvider(spec, api_key="unused-by-sim-server")
    todo = iter(range(calls + concurrency * 5))  # the first 5 per caller warm up

    async def caller() -> None:
        while (n := next(todo, None)) is not None:
            prompt = f"q {n}"
            info = RequestInfo(
                id=f"r{n}", run_id="bench", seq=n, tenant="t", input={"prompt": prompt}
            )
            call = ProviderRequest(
                model="m",
                messages=[{"role": "user", "content": prompt}],
                request=info,
                node_id="answer",
                cycle=0,
                attempt=0,
                max_tokens=256,
            )
            answer = await provider.complete(call)
            assert answer.text, answer

    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))  # warm-up included
        todo = iter(range(calls))
        cpu0, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - start
    finally:
        await provider.aclose()
    return {
        "calls": calls,
        "concurrency": concurrency,
        "cpu_us_per_call": round(cpu / calls * 1e6, 1),
        "calls_per_s": round(calls / wall, 1),
    }


def provider(*, calls: int) -> dict[str, Any]:
    with launched("sim-server", "--port", "0", "--time-scale", "0") as (_, sim_url):
        return _run(_provider_calls(sim_url, calls, concurrency=20))  # type: ignore[no-any-return]


def kill9(work: Path, *, clients: int, seconds: float, client: str) -> dict[str, Any]:
    graph = work / "cascade.yaml"
    text = (ROOT / "graphs" / "cascade.yaml").read_text()
    text = text.replace("policy: ../policies/", f"policy: {ROOT / 'policies'}/")
    for profile in ("small", "medium", "large"):
        text = text.replace(
            f"{{provider: sim, profile: {profile}}}",
            f"{{provider: sim, profile: {profile}, time_scale: 0}}",
        )
    graph.write_text(text)
    db = work / "kill9.db"
    with launched(*serve_args(graph, db)) as (proc, url):

        async def load_then_kill() -> Load:
            task = asyncio.create_task(
                drive(url, "cascade", clients=clients, requests=10**9, seconds=seconds + 30)
            )
            await asyncio.sleep(seconds)
            for pid in reversed(_tree(proc.pid)):  # SIGKILL: no shutdown, no flush
                os.kill(pid, signal.SIGKILL)
            return await task

        load = _run(load_then_kill())
        proc.wait()
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM requests")}
        with_calls = {row[0] for row in conn.execute("SELECT DISTINCT request_id FROM llm_calls")}
    answered = set(load.answered)
    return {
        "clients": clients,
        "answered": len(answered),
        "answered_not_stored": len(answered - stored),
        "answered_without_model_calls": len(answered - with_calls),
        "stored": len(stored),
        "seconds_before_kill": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--part",
        choices=["all", "throughput", "added", "commit", "kill9", "provider"],
        default="all",
    )
    parser.add_argument("--provider-calls", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=1000, help="throughput: clients")
    parser.add_argument("--requests", type=int, default=20_000, help="throughput: requests")
    parser.add_argument("--added-clients", type=int, default=100)
    parser.add_argument("--added-requests", type=int, default=5_000)
    parser.add_argument(
        "--added-rounds", type=int, default=4, help="added: direct and moat runs alternate"
    )
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--client", choices=["raw", "httpx2"], default="raw")
    parser.add_argument(
        "--phases",
        action="store_true",
        help="added: where moat's requests spend their time inside the server",
    )
    parser.add_argument("--workers", type=int, default=1, help="moat serve --workers N")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.workers > 1:
        WORKERS[:] = ["--workers", str(args.workers)]
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "client": args.client,
        "workers": args.workers,
        "date": time.strftime("%Y-%m-%d"),
        "load_average_before": [round(x, 1) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.part in ("all", "throughput", "commit"):
            result["throughput"] = throughput(
                work, clients=args.clients, requests=args.requests, client=args.client
            )
        if args.part in ("all", "commit"):
            result["no_commit_wait"] = throughput(
                work,
                clients=args.clients,
                requests=args.requests,
                client=args.client,
                extra=("--no-commit-wait",),
            )
        if args.part in ("all", "added"):
            result["added"] = added(
                work,
                clients=args.added_clients,
                requests=args.added_requests,
                latency_ms=args.latency_ms,
                client=args.client,
                rounds=args.added_rounds,
                phases=args.phases,
            )
        if args.part == "provider":
            result["provider"] = provider(calls=args.provider_calls)
        if args.part in ("all", "kill9"):
            result["kill9"] = kill9(work, clients=100, seconds=15.0, client=args.client)
    result["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
