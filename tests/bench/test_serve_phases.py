"""The serve bench's phase breakdown: what the serving processes noted, summarised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import _serve_phases

ROOT = Path(__file__).resolve().parents[2]


def _request(base: int, model_ms: int) -> dict[str, int]:
    ms = 1_000_000
    steps = ("rx", "in", "call0", "call1", "answered", "ask", "commit", "woke", "sent")
    gaps = (0, 1, 1, model_ms, 1, 1, 2, 1, 1)
    times, at = {}, base
    for step, gap in zip(steps, gaps, strict=True):
        at += gap * ms
        times[step] = at
    return times


def test_each_phase_is_the_span_between_its_steps_and_moat_s_share_leaves_the_call_out(
    tmp_path: Path,
) -> None:
    noted = {
        "requests": [_request(i * 10**9, 200) for i in range(10)],
        "batches": [[0, 3_000_000, 1_000_000, 12]],
        "begins": [50_000],
        "lags": [100_000],
    }
    (tmp_path / "1.json").write_text(json.dumps(noted))
    summary = _serve_phases.summarise(tmp_path, skip=0)
    phases = summary["phases_ms"]
    assert summary["requests"] == 10
    assert phases["model_call"] == {"p50": 200.0, "p90": 200.0, "p99": 200.0}
    assert phases["commit"]["p50"] == 2.0 and phases["read"]["p50"] == 1.0
    assert phases["total"]["p50"] == 208.0
    assert phases["moat_share"]["p50"] == 8.0
    assert summary["writer"]["wall_ms"]["p50"] == 3.0
    assert summary["writer"]["records_per_transaction_p50"] == 12


def test_the_site_hook_installs_only_where_moat_serves(tmp_path: Path) -> None:
    env = {**os.environ, **_serve_phases.environment(tmp_path, ROOT)}
    probe = "import engine.serve.app as a, sys; print(a.MoatServer.__call__.__module__)"
    other = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == "engine.serve.app"  # not a server: left as it is
    # a process whose command line names the serve worker module gets the wrappers
    worker = subprocess.run(
        [sys.executable, "-c", probe, "engine.serve.workers"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert worker.stdout.strip() == "bench._serve_phases"
