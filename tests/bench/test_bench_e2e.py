"""The bench end to end: seeds, intervals, the oracle, sweeps, and real endpoints (sim-server)."""

from __future__ import annotations

import json
import math
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from engine.serve.sim_app import SimServer, serve

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_seeds_intervals_oracle_and_sweeps(tmp_path: Path) -> None:
    configs = "baseline,flagship,single-small,single-medium,single-large"
    results = _bench(
        "--n", "40", "--seeds", "2", "--configs", configs, "--sweep-n", "20",
        "--out-dir", str(tmp_path),
    )  # fmt: skip
    assert list(results) == [*configs.split(","), "oracle"]
    assert all(row["requests"] == 80 and row["seeds"] == 2 for row in results.values())
    flagship = results["flagship"]
    for key in ("cost_per_case", "p95_ms", "quality", "answer_accuracy", "false_refusal_rate"):
        ci = flagship["vs_baseline"][key]
        assert ci["low"] <= ci["value"] <= ci["high"], key
    assert "vs_oracle" in flagship and "vs_baseline" not in results["baseline"]
    # the oracle picks, per request, the cheapest single model that got it right
    singles = [results[f"single-{s}"] for s in ("small", "medium", "large")]
    assert results["oracle"]["quality"] >= max(s["quality"] for s in singles)
    assert results["oracle"]["cost_per_case"] <= results["single-large"]["cost_per_case"]
    sweep = flagship["sweep"]
    assert sweep[0]["value"] is None and len(sweep) == 5
    assert all(math.isfinite(p["cost_per_case"]) and p["requests"] == 20 for p in sweep)
    assert (tmp_path / "cost_quality.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["cpu_s"] > 0


@pytest.mark.parametrize("args", [["--mix", "nope=1"], ["--faults", "sunny"], ["--model", "small"]])
def test_bad_flags_are_clear_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and args[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rate", "0"], "--rate must be"),
        (["--rate", "nan"], "--rate must be"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--sweep-n", "-1"], "--sweep-n must be at least 1"),
        (["--mix", "code=inf"], "the share of code must be a finite number"),
        (["--mix", "code=nan"], "the share of code must be a finite number"),
        (["--faults", "error=nan"], "error=nan is out of range"),
        (["--model", "large=sim:huge"], "sim profiles are small, medium, large"),
        (["--model", "tiny=sim:small"], "no chosen configuration has a model 'tiny'"),
    ],
)
def test_bad_numbers_and_models_are_refused_before_anything_runs(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--n", "2", "--seeds", "1", "--configs", "baseline", "--no-sweep", *args])
    assert exit_.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "No such file or directory"),
        ("", "no requests"),
        ('{"prompt": "fine"}\nnot json\n', ":2:"),
        ('{"prompt": 3}\n', ":1: input prompt"),
        ('{"prompt": "fine", "_labels": 5}\n', "`_labels` must be an object"),
        ("[1, 2]\n", "must be a JSON object"),
    ],
)
def test_a_bad_workload_file_names_its_line_before_anything_runs(
    tmp_path: Path, content: str | None, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.__main__ import main

    workload = tmp_path / "workload.jsonl"
    if content is not None:
        workload.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["--configs", "baseline", "--no-sweep", "--workload", str(workload),
              "--out-dir", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and str(workload) in err


def test_a_workload_file_keeps_its_hidden_labels(tmp_path: Path) -> None:
    from bench.__main__ import _read_workload
    from bench._run import CONFIGS

    workload = tmp_path / "workload.jsonl"
    line = {"prompt": "What is 2+2?", "tenant": "acme", "_labels": {"kind": "arithmetic"}}
    workload.write_text(json.dumps(line) + "\n\n")
    assert _read_workload(workload, [CONFIGS["baseline"], CONFIGS["flagship"]]) == [line]


def test_an_unusable_out_dir_is_refused_before_the_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.__main__ import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["--n", "2", "--seeds", "1", "--configs", "baseline", "--no-sweep",
              "--out-dir", str(blocker / "sub")])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--out-dir" in err and "seed 1" not in err


@pytest.fixture
def sim_server() -> Iterator[str]:
    """`moat sim-server`'s server in a thread, its latencies scaled down: its base URL."""
    found: queue.Queue[SimServer] = queue.Queue()
    stop = threading.Event()

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            found.put(await tg.start(lambda task_status: serve(
                "127.0.0.1", 0, time_scale=0.02, task_status=task_status)))  # fmt: skip
            while not stop.is_set():
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    thread = threading.Thread(target=anyio.run, args=(run,), daemon=True)
    thread.start()
    server = found.get(timeout=20)
    try:
        yield server.base_url
    finally:
        stop.set()
        thread.join(timeout=10)


def test_the_bench_runs_unchanged_against_endpoints_through_the_openai_provider(
    sim_server: str,
) -> None:
    env = {**os.environ, "OPENAI_BASE_URL": sim_server, "OPENAI_API_KEY": "unused-by-sim"}
    models = ["--model", "small=openai:sim-small", "--model", "medium=openai:sim-medium",
              "--model", "large=openai:sim-large"]  # fmt: skip
    results = _bench(
        "--n", "16", "--seeds", "1", "--no-sweep", "--faults", "none",
        "--configs", "baseline,flagship", *models, env=env,
    )  # fmt: skip
    for row in results.values():
        assert row["requests"] == 16 and row["statuses"] == {"ok": 16}
        assert row["cost_per_case"] > 0 and row["llm_calls_per_case"] >= 1
        assert 0 <= row["quality"] <= 100 and row["answer_accuracy"] > 0
    assert "vs_baseline" in results["flagship"]


@pytest.mark.slow
def test_the_bench_runs_against_the_moat_sim_server_command(tmp_path: Path) -> None:
    """The same through the `moat sim-server` command (real-time simulated latencies)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", "sim-server", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        env = {
            **os.environ,
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "OPENAI_API_KEY": "unused-by-sim",
        }
        results = _bench(
            "--n", "8", "--seeds", "1", "--no-sweep", "--configs", "baseline",
            "--model", "large=openai:gpt-4.1", env=env, timeout=300,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
    row = results["baseline"]
    assert row["requests"] == 8 and sum(row["statuses"].values()) == 8
    assert row["cost_per_case"] > 0


@pytest.mark.parametrize("as_json", [False, True])
def test_figures_of_the_simulated_models_say_so(
    as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.__main__ import main

    args = ["--n", "4", "--seeds", "1", "--configs", "baseline", "--no-sweep"]
    assert main([*args, "--json"] if as_json else args) == 0
    out, err = capsys.readouterr()
    if as_json:  # stdout stays the figures alone, for tools that read them
        assert "SIMULATED" in err and list(json.loads(out)) == ["baseline"]
    else:
        assert out.startswith("SIMULATED") and "simulated models, not real ones" in out
