"""`moat serve --workers N`: N processes on one port, one run per graph, ids that never
collide, no answered request lost to a kill -9 of every process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from bench._procs import children
from engine.cli import main
from engine.serve import MoatServer, ShapingLimits
from engine.serve.workers import split_limits
from engine.store.store import Store
from tests.support.fast_graphs import fast_copy
from tests.support.serve_client import http
from tests.support.serve_process import serving


def _ask(base_url: str, model: str, n: int, timeout: float = 30) -> list[str]:
    """`n` requests, each on a new connection (so the kernel spreads them over workers)."""
    ids = []
    for i in range(n):
        body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}
        with httpx2.Client(base_url=base_url, timeout=timeout) as web:
            response = web.post("/chat/completions", json=body)
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-moat-request-id"])
    return ids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT, /proc")
def test_two_workers_answer_into_one_run_and_stop_on_sigterm(tmp_path: Path) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "moat.db"
    with serving(str(graph), "--db", str(db), "--workers", "2") as (proc, base_url):
        assert len(children(proc.pid)) == 2
        ids = _ask(base_url, "baseline", 24)
    assert len(set(ids)) == 24
    seqs = {int(rid.rsplit("-", 1)[1]) for rid in ids}
    assert {s % 2 for s in seqs} == {0, 1}  # both workers answered (even: 0, odd: 1)
    with Store.open(db, readonly=True) as store:
        runs = store.query("SELECT id, status, requests_done FROM runs")
        stored = {r["id"] for r in store.query("SELECT id FROM requests WHERE status = 'ok'")}
    assert [(r["status"], r["requests_done"]) for r in runs] == [("finished", 24)]
    assert stored == set(ids)


@pytest.mark.slow  # ~9 s: a worker killed and started again
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT, /proc")
def test_a_worker_that_dies_is_replaced_and_numbers_after_its_stored_requests(
    tmp_path: Path,
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "moat.db"
    with serving(str(graph), "--db", str(db), "--workers", "2") as (proc, base_url):
        before = _ask(base_url, "baseline", 12)
        first = children(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        for _ in range(100):  # the parent notices within half a second, then restarts it
            now = children(proc.pid)
            if len(now) == 2 and first[0] not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and first[0] not in now
        after: list[str] = []  # each a 200: no id handed out twice
        for _ in range(50):  # the new worker takes connections once it can serve them
            after += _ask(base_url, "baseline", 4)
            if {int(rid.rsplit("-", 1)[1]) % 2 for rid in after} == {0, 1}:
                break
            time.sleep(0.2)
    ids = before + after
    assert len(set(ids)) == len(ids)
    assert {int(rid.rsplit("-", 1)[1]) % 2 for rid in after} == {0, 1}  # both answered
    with Store.open(db, readonly=True) as store:
        stored = {r["id"] for r in store.query("SELECT id FROM requests WHERE status = 'ok'")}
    assert stored == set(ids)


@pytest.mark.slow  # ~15 s: a worker refused, then started again
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT, /proc")
def test_a_worker_started_again_refuses_a_graph_edited_since_until_it_is_restored(
    tmp_path: Path,
) -> None:
    # it once loaded the edited file and answered it in the run of the graph as it was,
    # or, when the edit broke the file, died with a traceback every second forever
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    served = graph.read_text()
    db = tmp_path / "moat.db"
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "engine", "serve", str(graph), "--db", str(db)]
    command += ["--workers", "2", "--port", "0"]
    with (
        log.open("w") as err,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True) as proc,
    ):
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            first = children(proc.pid)
            graph.write_text(served.replace("max_tokens: 400", "max_tokens: 300"))
            os.kill(first[0], signal.SIGKILL)
            time.sleep(4)  # refused: started again after 1 s, 2 s, ... not every 0.5 s
            # meanwhile the other worker answers every connection: the dead one's socket
            # is closed, so none waits for a worker on it (they once waited a minute)
            live = {int(rid.rsplit("-", 1)[1]) % 2 for rid in _ask(base_url, "baseline", 8, 5)}
            assert len(live) == 1
            graph.write_text(served)
            seqs: set[int] = set()
            for _ in range(100):  # the next start (at most 8 s after the last) takes it
                time.sleep(0.2)
                if len(children(proc.pid)) == 2:
                    seqs = {int(rid.rsplit("-", 1)[1]) % 2 for rid in _ask(base_url, "baseline", 8)}
                    if seqs == {0, 1}:
                        break
            assert seqs == {0, 1}  # both workers answer again
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "Traceback" not in text
    refused = "graph 'baseline' is not the graph this server started with"
    assert 1 <= text.count(refused) <= 3, text
    with Store.open(db, readonly=True) as store:
        runs = store.query("SELECT graph_hash, status FROM runs")
    assert len(runs) == 1 and runs[0]["status"] == "finished"


async def _answer_as_worker(graph: Path, db: Path, runs: dict[str, str], n: int) -> list[str]:
    """`n` requests answered by a worker in slot 1 of 2 joined to `runs`, then stopped."""
    worker = MoatServer([graph], db=db, runs=runs, slot=(1, 2))
    async with worker, http(worker) as web:
        ids = []
        for i in range(n):
            body = {"model": "baseline", "messages": [{"role": "user", "content": f"q{i}"}]}
            response = await web.post("/chat/completions", json=body)
            assert response.status_code == 200, response.text
            ids.append(response.headers["x-moat-request-id"])
    return ids


@pytest.mark.anyio
async def test_a_worker_joining_a_run_again_carries_on_after_its_slots_stored_seqs(
    tmp_path: Path,
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "moat.db"
    async with MoatServer([graph], db=db) as parent:
        runs = {"baseline": parent.graphs["baseline"].run_id}
        first = await _answer_as_worker(graph, db, runs, 3)
        again = await _answer_as_worker(graph, db, runs, 2)  # a worker started again
    run = runs["baseline"]
    assert first == [f"{run}-{seq:06d}" for seq in (1, 3, 5)]
    assert again == [f"{run}-{seq:06d}" for seq in (7, 9)]
    with Store.open(db, readonly=True) as store:
        stored = store.query("SELECT id, status FROM requests ORDER BY seq")
    assert [(r["id"], r["status"]) for r in stored] == [(rid, "ok") for rid in first + again]


@pytest.mark.anyio
async def test_a_request_numbered_with_a_taken_id_gets_a_500_without_that_id(
    tmp_path: Path,
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "moat.db"
    async with MoatServer([graph], db=db) as server, http(server) as web:
        body = {"model": "baseline", "messages": [{"role": "user", "content": "hello"}]}
        answered = await web.post("/chat/completions", json=body)
        server.graphs["baseline"].seq = 0  # a numbering fault: the next id is taken
        response = await web.post("/chat/completions", json=body)
    taken = answered.headers["x-moat-request-id"]
    assert response.status_code == 500
    assert "x-moat-request-id" not in response.headers
    assert taken not in response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "did not run it" in error["message"]
    with Store.open(db, readonly=True) as store:
        stored = store.query("SELECT id, status FROM requests")
    assert [(r["id"], r["status"]) for r in stored] == [(taken, "ok")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone, only not reaped yet
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped meanwhile
        return False


def _gone(pids: list[int], within_s: float) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT, /proc")
def test_sigterm_while_the_workers_start_stops_them_all(tmp_path: Path) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    command = [sys.executable, "-m", "engine", "serve", str(graph), "--workers", "2"]
    proc = subprocess.Popen(
        [*command, "--port", "0", "--db", str(tmp_path / "moat.db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: list[int] = []
    deadline = time.monotonic() + 60
    while not started and time.monotonic() < deadline and proc.poll() is None:
        started = children(proc.pid)  # until the first worker process exists
        time.sleep(0.02)
    assert started, "no worker started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # (a worker left behind keeps stderr open)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert _gone(started, within_s=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT, /proc")
def test_a_kill_9_of_the_parent_leaves_no_worker_behind(tmp_path: Path) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    command = [sys.executable, "-m", "engine", "serve", str(graph), "--workers", "2"]
    with subprocess.Popen(
        [*command, "--port", "0", "--db", str(tmp_path / "moat.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        workers = children(proc.pid)
        assert len(workers) == 2
        assert len(_ask(base_url, "baseline", 2)) == 2
        proc.kill()
        proc.wait()
        assert _gone(workers, within_s=30), "a worker outlived its parent"


def test_limits_are_split_among_the_workers() -> None:
    limits = ShapingLimits(rate=10.0, burst=5, tenant_concurrency=64, max_inflight=256)
    split = split_limits(limits, 3)
    assert (split.rate, split.burst, split.tenant_concurrency, split.max_inflight) == (
        pytest.approx(10 / 3),
        2,
        22,
        86,
    )
    assert split_limits(limits, 1) == limits


def test_workers_with_ray_or_with_a_metrics_port_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = str(fast_copy("baseline", tmp_path, time_scale=0))
    assert main(["serve", graph, "--port", "0", "--workers", "2", "--ray"]) == 2
    assert "use --replicas N" in capsys.readouterr().err
    db = str(tmp_path / "m.db")
    args = ["serve", graph, "--port", "0", "--db", db, "--workers", "2", "--otel"]
    assert main(args) == 2
    assert "drop --workers" in capsys.readouterr().err
