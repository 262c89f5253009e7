"""`moat serve` on the command line: arguments checked before anything listens (exit 2),
and a real server on loopback answering the official sync client, then draining on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from engine.cli import main
from engine.serve import hash_key
from engine.store.store import Store
from tests.support.fast_graphs import fast_copy
from tests.support.imports import without
from tests.support.serve_process import serving


def keys_file(dest: Path, **tenants: str) -> Path:
    path = dest / "keys.txt"
    lines = ["# tenant  sha256 of the key"]
    lines += [f"{tenant} sha256:{hash_key(key)}" for tenant, key in tenants.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_non_loopback_address_without_keys_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    code = main(["serve", str(graph), "--host", "0.0.0.0", "--db", str(tmp_path / "m.db")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "--keys FILE" in err
    assert not (tmp_path / "m.db").exists()


def test_metrics_auth_without_keys_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    code = main(["serve", str(graph), "--metrics-auth", "--db", str(tmp_path / "m.db")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--metrics-auth: without --keys" in err and "pass --keys FILE" in err
    assert not (tmp_path / "m.db").exists()


def test_a_keys_file_with_a_key_in_clear_is_refused_naming_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    keys = tmp_path / "keys.txt"
    keys.write_text("# keys\nacme sk-live-123\n")
    assert main(["serve", str(graph), "--keys", str(keys)]) == 2
    err = capsys.readouterr().err
    assert f"{keys}:2:" in err and "sha256sum" in err


def test_more_workers_than_the_machine_can_run_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "m.db"
    assert main(["serve", str(graph), "--workers", "100000", "--port", "0", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "moat: --workers 100000: each worker is a process of its own" in err
    assert "give at most 32 (16 a CPU" in err
    assert "internal error" not in err
    assert not db.exists()


def test_a_model_no_graph_has_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    assert main(["serve", str(graph), "--model", "huge=sim:large", "--port", "0"]) == 2
    assert "no served graph has a model 'huge'" in capsys.readouterr().err


def test_a_port_in_use_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(graph), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in err and "--port 0" in err


def test_without_the_serve_extra_it_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without(monkeypatch, "starlette", reloaded="engine.serve")
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    assert main(["serve", str(graph)]) == 2
    assert "pip install 'moat[serve]'" in capsys.readouterr().err


def test_a_real_server_answers_the_sync_client_and_drains_on_sigterm(tmp_path: Path) -> None:
    graphs = [str(fast_copy(name, tmp_path, time_scale=0)) for name in ("baseline", "extract")]
    db = tmp_path / "moat.db"
    keys = keys_file(tmp_path, acme="sk-acme", globex="sk-globex")
    with serving(*graphs, "--db", str(db), "--keys", str(keys)) as (_, base_url):
        with openai.OpenAI(base_url=base_url, api_key="sk-acme", max_retries=0) as oai:
            assert [m.id for m in oai.models.list().data] == ["baseline", "extract"]
            reply = oai.chat.completions.create(
                model="baseline", messages=[{"role": "user", "content": "What is a Roth IRA?"}]
            )
            chunks = list(
                oai.chat.completions.create(
                    model="extract",
                    messages=[{"role": "user", "content": "Order 4471 arrived broken. - Ana"}],
                    stream=True,
                )
            )
        with (
            openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError),
        ):
            bad.models.list()
    assert reply.choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    with Store.open(db, readonly=True) as store:
        runs = store.query(
            "SELECT graph_name, status, requests_done, requests_total FROM runs ORDER BY graph_name"
        )
        requests = store.query("SELECT tenant, status FROM requests")
    assert [tuple(r.values()) for r in runs] == [  # a server's total is open-ended
        ("baseline", "finished", 1, None),
        ("extract", "finished", 1, None),
    ]
    assert [(r["tenant"], r["status"]) for r in requests] == [("acme", "ok")] * 2


def test_keys_from_the_environment_are_hashed_and_a_bad_entry_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.serve import keys_from_env

    ring = keys_from_env("acme=sk-1, globex=sk-2")
    assert ring.keys == {hash_key("sk-1"): "acme", hash_key("sk-2"): "globex"}
    monkeypatch.setenv("MOAT_API_KEYS", "acme=sk-secret-1,sk-secret-2")
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    assert main(["serve", str(graph), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "$MOAT_API_KEYS: entry 2 is not TENANT=KEY" in err and "sk-secret" not in err


def test_a_store_that_cannot_be_opened_is_refused_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "missing" / "moat.db"
    assert main(["serve", str(graph), "--port", "0", "--db", str(db)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # the address is printed only once the graphs are open
    assert f"moat: {db}: cannot open the store" in err and "Traceback" not in err


@pytest.mark.slow  # ~11 s: a request that takes seconds, drained
def test_sigterm_lets_a_request_in_flight_finish_before_the_server_exits(tmp_path: Path) -> None:
    import threading
    import time

    import httpx2

    from tests.engine.serve.test_serve import echo_graph

    # a few seconds of simulated model time, and a deadline a tail call cannot reach
    graph = echo_graph(tmp_path, scale=2.0, deadline=120_000)
    db = tmp_path / "moat.db"
    with subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", str(graph), "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            replies: list[openai.types.chat.ChatCompletion] = []

            def ask() -> None:
                with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as oai:
                    replies.append(
                        oai.chat.completions.create(
                            model="echo", messages=[{"role": "user", "content": "hi"}]
                        )
                    )

            asker = threading.Thread(target=ask)
            asker.start()
            with httpx2.Client() as web:
                while "moat_requests_in_flight 1" not in web.get(f"{base_url[:-3]}/metrics").text:
                    time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            asker.join(timeout=30)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert replies[0].choices[0].message.content == "hi | turns: 0 | public"
    with Store.open(db, readonly=True) as store:
        (run,) = store.query("SELECT status, requests_done FROM runs")
    assert (run["status"], run["requests_done"]) == ("finished", 1)


def test_after_a_kill_9_under_load_every_answered_request_is_in_the_store(
    tmp_path: Path,
) -> None:
    import threading

    import httpx2

    graph = fast_copy("cascade", tmp_path, time_scale=0)
    db = tmp_path / "moat.db"
    with subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", str(graph), "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            answered: list[str] = []
            enough = threading.Event()

            def load(worker: int) -> None:
                with httpx2.Client(base_url=base_url, timeout=30) as web:
                    for n in range(10_000):
                        body = {
                            "model": "cascade",
                            "messages": [{"role": "user", "content": f"question {worker}-{n}"}],
                        }
                        try:
                            response = web.post("/chat/completions", json=body)
                        except httpx2.HTTPError:
                            return  # the server is gone
                        if response.status_code == 200:
                            answered.append(response.headers["x-moat-request-id"])
                        if len(answered) >= 120:
                            enough.set()

            workers = [threading.Thread(target=load, args=(w,)) for w in range(8)]
            for worker in workers:
                worker.start()
            assert enough.wait(timeout=60)
            proc.kill()  # SIGKILL: no shutdown, no flush
            proc.wait(timeout=30)
            for worker in workers:
                worker.join(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    with Store.open(db, readonly=True) as store:
        stored = {r["id"] for r in store.query("SELECT id FROM requests WHERE status = 'ok'")}
        with_calls = {r["request_id"] for r in store.query("SELECT request_id FROM llm_calls")}
    assert len(answered) >= 120
    assert set(answered) <= stored  # zero answered-but-unrecorded requests
    assert set(answered) <= with_calls


def test_sigterm_does_not_wait_for_a_client_stalled_mid_body(tmp_path: Path) -> None:
    """A request still sending its body when SIGTERM comes has not started: it gets a 503
    at once (the client may send it again elsewhere) instead of holding the drain for the
    whole grace period."""
    import json
    import time

    from tests.engine.serve.test_serve import echo_graph

    graph, db = echo_graph(tmp_path), tmp_path / "moat.db"
    args = ["serve", str(graph), "--port", "0", "--db", str(db), "--grace", "30"]
    with subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            host, port = proc.stdout.readline().strip()[len("http://") : -len("/v1")].split(":")
            with socket.create_connection((host, int(port)), timeout=60) as conn:
                conn.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: moat\r\n"
                    b'Content-Length: 1000\r\n\r\n{"model": "echo", '
                )
                time.sleep(0.5)  # the server has the head and waits for the rest
                start = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
            assert proc.wait(timeout=60) == 0
            took = time.monotonic() - start
        finally:
            if proc.poll() is None:
                proc.kill()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("server_error", "shutting_down")
    assert took < 10


SIGTERM_WHILE = {
    # the command's modules still importing (before `moat serve`'s own code runs): this
    # once ended the process with the signal's default action (exit 143)
    "importing": (
        "import engine.cli as at\n"
        "real = at.build_parser\n"
        "def build_parser(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(*args, **kwargs)\n"
        "at.build_parser = build_parser\n"
    ),
    # the graphs still loading: nothing has started
    "loading": (
        "import engine.graph.loader as at\n"
        "real = at.load_graph\n"
        "def load_graph(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(*args, **kwargs)\n"
        "at.load_graph = load_graph\n"
    ),
    # the graphs opening, the runs started: they are finished
    "opening": (
        "import engine.serve.app as at\n"
        "real = at.MoatServer.__aenter__\n"
        "async def opened(self):\n"
        "    server = await real(self)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return server\n"
        "at.MoatServer.__aenter__ = opened\n"
    ),
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("moment", sorted(SIGTERM_WHILE))
def test_sigterm_while_the_server_starts_exits_0_leaving_no_run_running(
    tmp_path: Path, moment: str, workers: str
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "moat.db"
    argv = ["serve", str(graph), "--port", "0", "--db", str(db), "--workers", workers]
    script = (
        "import os, signal, sys\n"
        + SIGTERM_WHILE[moment]
        + "from engine.cli import main\n"
        + f"sys.exit(main({argv!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if moment in ("importing", "loading"):
        assert done.stderr.endswith(
            "moat serve: stopped (SIGTERM) before it served; no run was started\n"
        )
        assert done.stdout == ""
    runs: list[str] = []
    if db.exists():
        with Store.open(db, readonly=True) as store:
            runs = [row["status"] for row in store.query("SELECT status FROM runs")]
    assert "running" not in runs
    assert runs == ([] if moment in ("importing", "loading") else ["finished"])


def _catches_sigterm(pid: int) -> bool:
    """The process has a handler of its own for SIGTERM (Linux: `SigCgt` in its status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_sigterm_as_soon_as_the_command_can_take_it_exits_0(tmp_path: Path) -> None:
    """The `moat` command itself, signalled the moment its SIGTERM handler is in (before
    the serving modules import): the earliest a supervisor can stop it cleanly."""
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "moat.db"
    moat = Path(sys.executable).with_name("moat")
    argv = [str(moat), "serve", str(graph), "--port", "0", "--db", str(db)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not _catches_sigterm(proc.pid):
            assert proc.poll() is None
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # (on a loaded machine it may have gone on to load the graphs, even to serve, before
    # the signal came: it still stops cleanly, only saying so differently)
    if out == "":
        assert err.endswith("moat serve: stopped (SIGTERM) before it served; no run was started\n")


def test_the_same_graph_given_twice_is_refused_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = fast_copy("extract", tmp_path, time_scale=0)
    again = tmp_path / "." / graph.name
    db = tmp_path / "m.db"
    assert main(["serve", str(graph), str(again), "--port", "0", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"moat: {again}: graph 'extract' is given twice (the same file); serve each graph once\n"
    )
    assert not db.exists()
    other = tmp_path / "copy.yaml"  # another file with the same `name:`
    other.write_text(graph.read_text())
    assert main(["serve", str(graph), str(other), "--port", "0", "--db", str(db)]) == 2
    assert f"graph name 'extract' is also the name of {graph}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "sim-server"])
@pytest.mark.parametrize("host", ["", "  "])
def test_an_empty_host_is_refused_saying_it_is_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, host: str
) -> None:
    graph = [str(fast_copy("baseline", tmp_path, time_scale=0))] if command == "serve" else []
    with pytest.raises(SystemExit) as exited:
        main([command, *graph, "--host", host, "--port", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --host: {host!r}: the host is empty; give an address" in err
    assert "without --keys" not in err
