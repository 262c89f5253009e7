"""`moat run` as an operator uses it: result lines, exit codes, invalid input, crash and resume."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.fast_graphs import ROOT, fast_copy

EXAMPLES = ROOT / "graphs" / "examples"
KEYS = {"request_id", "status", "output", "latency_ms", "cost_usd", "policy_version", "error"}


def moat(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MOAT_DB": "", "MOAT_DEBUG": "1"},
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_batch_writes_one_line_per_request_and_records_the_run(tmp_path: Path) -> None:
    graph = fast_copy("governed-answer", tmp_path)
    out = tmp_path / "out.jsonl"
    proc = moat(
        "run",
        str(graph),
        "--input",
        str(EXAMPLES / "governed-answer.jsonl"),
        "--out",
        str(out),
        "--db",
        "t.db",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    results = lines(out)
    assert len(results) == 10
    assert all(set(r) == KEYS for r in results)
    assert {r["status"] for r in results} == {"ok"}
    bomb = next(r for r in results if str(r["request_id"]).endswith("-000002"))
    assert "simulated models" in proc.stderr
    with sqlite3.connect(tmp_path / "t.db") as db:
        # the run id is fresh, so the simulated review's draw is too: it refuses this request
        # nearly always (tests/engine/graph pins a run id and asserts the refusal); what a
        # batch guarantees whatever the draw is that the stronger review decided it
        reviewed = db.execute(
            "select status from node_runs where request_id = ? and node = 'review'",
            (bomb["request_id"],),
        ).fetchall()
        assert reviewed == [("succeeded",)]
        assert db.execute("select count(*) from requests").fetchone() == (10,)
        assert db.execute("select status, requests_done from runs").fetchone() == ("finished", 10)
        events = {row[0] for row in db.execute("select event_type from orchestration_events")}
    assert {"POLICY_PINNED", "SPECULATIVE_STARTED", "CRITIC_DECISION", "PII_REDACTED"} <= events


def test_a_single_prompt_prints_its_line_on_stdout(tmp_path: Path) -> None:
    graph = fast_copy("governed-answer", tmp_path)
    proc = moat(
        "run",
        str(graph),
        "--prompt",
        "What is a Roth IRA?",
        "--db",
        "t.db",
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (result,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert result["status"] == "ok" and result["output"]["answer"]


@pytest.mark.anyio
async def test_a_result_line_survives_a_drain_cancelled_before_its_row_commits(
    tmp_path: Path,
) -> None:
    # The run ends, cancelling the periodic drain just as it starts to wait for the store:
    # the line must be left for the final drain, not dropped with the cancelled one.
    import anyio

    from engine.cli.outfile import OutWriter
    from engine.events import RequestRecord, RequestStatus

    class Store:
        def flush(self) -> None:
            pass

    path = tmp_path / "out.jsonl"
    writer = OutWriter(Store(), str(path))  # type: ignore[arg-type]
    writer.add(RequestRecord("r-1", "run", 0, RequestStatus.OK, 1.0, 2.0, 1000.0, 0.0, {"a": 1}))
    with anyio.CancelScope() as scope:
        scope.cancel()
        await writer.drain()
    assert path.read_text() == ""
    await writer.drain()
    writer.close()
    assert [line["request_id"] for line in lines(path)] == ["r-1"]


def test_bad_lines_become_invalid_input_results_and_the_batch_goes_on(tmp_path: Path) -> None:
    graph = fast_copy("governed-answer", tmp_path)
    requests = tmp_path / "in.jsonl"
    requests.write_text(
        '{"prompt": "What is VAT?"}\n{not json\n{"prompt": 42}\n'
        '["a list"]\n{"prompt": "What is GDP?"}\n'
    )
    out = tmp_path / "out.jsonl"
    proc = moat(
        "run", str(graph), "--input", str(requests), "--out", str(out), "--db", "t.db", cwd=tmp_path
    )
    assert proc.returncode == 1
    by_seq = {int(str(r["request_id"])[-6:]): r for r in lines(out)}
    assert [by_seq[i]["status"] for i in range(5)] == [
        "ok",
        "invalid_input",
        "invalid_input",
        "invalid_input",
        "ok",
    ]
    assert f"{requests}:2:2: invalid JSON" in str(by_seq[1]["error"])
    assert 'each line must be one JSON object, such as {"prompt": "..."}' in str(by_seq[1]["error"])
    assert f"{requests}:3: input prompt: 42 is not of type 'string'" in str(by_seq[2]["error"])
    assert "must be a JSON object" in str(by_seq[3]["error"])


def test_an_unusable_graph_exits_2_and_runs_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("moat: 1\nname: bad\nnodes: {a: {type: modle}}\noutput: {x: a.text}\n")
    proc = moat("run", str(bad), "--prompt", "hi", "--db", "t.db", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        "bad.yaml:3:19: node 'a': unknown node type 'modle' (did you mean 'model'?)" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "t.db").exists()


def test_an_unknown_model_rebinding_exits_2(tmp_path: Path) -> None:
    graph = fast_copy("governed-answer", tmp_path)
    proc = moat("run", str(graph), "--prompt", "hi", "--model", "huge=sim:large", cwd=tmp_path)
    assert proc.returncode == 2
    assert "the graph has no model 'huge'. Models: large, medium, small" in proc.stderr


@pytest.mark.slow
def test_kill_9_mid_batch_then_resume_answers_every_request_exactly_once(tmp_path: Path) -> None:
    graph = fast_copy("governed-answer", tmp_path, time_scale=0.05)
    requests = tmp_path / "in.jsonl"
    prompts = [f"Question {i}: how do I configure feature {i} of the dashboard?" for i in range(60)]
    requests.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable,
        "-m",
        "engine",
        "run",
        str(graph),
        "--input",
        str(requests),
        "--out",
        str(out),
        "--db",
        "t.db",
        "--concurrency",
        "4",
        "--quiet",
    ]
    proc = subprocess.Popen(args, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text()) < 2000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(tmp_path / "t.db") as db:
        (run_id,) = db.execute("select id from runs").fetchone()
        done_before = db.execute("select count(*) from requests").fetchone()[0]
    assert 0 < done_before < 60, "the kill should land mid-batch"
    resumed = moat("run", "--resume", run_id, "--db", "t.db", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["request_id"] for r in lines(out)]
    assert sorted(ids) == sorted({f"{run_id}-{i:06d}" for i in range(60)})
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        stored = [
            row[0] for row in db.execute("select seq from requests where run_id = ?", (run_id,))
        ]
        orphans = db.execute(
            "select count(*) from node_runs where request_id not in (select id from requests)"
        ).fetchone()[0]
    assert sorted(stored) == list(range(60))
    assert orphans == 0


def test_ctrl_c_stops_cleanly_with_exit_130_and_resume_finishes_the_batch(tmp_path: Path) -> None:
    graph = fast_copy("governed-answer", tmp_path, time_scale=0.05)
    requests = tmp_path / "in.jsonl"
    requests.write_text(
        "".join(
            json.dumps({"prompt": f"How do I export report {i} as CSV?"}) + "\n" for i in range(40)
        )
    )
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "run",
            str(graph),
            "--input",
            str(requests),
            "--out",
            str(out),
            "--db",
            "t.db",
            "--concurrency",
            "2",
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "Resume with: moat run --resume" in stderr
    kept = lines(out)
    assert 3 <= len(kept) < 40
    with sqlite3.connect(tmp_path / "t.db") as db:
        (run_id, status) = db.execute("select id, status from runs").fetchone()
    assert status == "interrupted"
    resumed = moat("run", "--resume", run_id, "--db", "t.db", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["request_id"] for r in lines(out)) == [f"{run_id}-{i:06d}" for i in range(40)]


def test_the_progress_bar_writes_to_the_stderr_of_the_run_not_of_the_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stream bound when the module was imported may be closed by the time a run starts
    # (an embedding application or a test harness swapping sys.stderr): `isatty()` then raised.
    from engine.cli.run import _Progress

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert _Progress(3, enabled=True).stream is stream


def test_the_progress_bar_keeps_a_window_of_latencies_however_long_the_batch() -> None:
    # A 100,000-request batch kept every latency (and sorted them all four times a second).
    from engine.cli.run import PROGRESS_LATENCIES, _Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = _Progress(3 * PROGRESS_LATENCIES, enabled=True, stream=stream)
    for ms in range(3 * PROGRESS_LATENCIES):
        progress.add(SimpleNamespace(latency_ms=float(ms), cost_usd=0.001))  # type: ignore[arg-type]
    progress.draw(final=True)
    assert len(progress.latencies) == PROGRESS_LATENCIES
    oldest = 2 * PROGRESS_LATENCIES  # p95 of the latest window, not of the whole batch
    p95 = oldest + 0.95 * (PROGRESS_LATENCIES - 1)
    assert f"{3 * PROGRESS_LATENCIES}/{3 * PROGRESS_LATENCIES}" in stream.getvalue()
    assert f"p95 {p95:.0f} ms" in stream.getvalue()


def test_a_quiet_progress_bar_counts_without_keeping_latencies() -> None:
    from engine.cli.run import _Progress

    progress = _Progress(2, enabled=False, stream=io.StringIO())
    progress.add(SimpleNamespace(latency_ms=5.0, cost_usd=0.5))  # type: ignore[arg-type]
    assert (progress.done, progress.cost, len(progress.latencies)) == (1, 0.5, 0)
