"""`bench/ray.py` runs end to end at a tiny size and reports every figure it promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_ray_benchmark_prints_both_figures() -> None:
    pytest.importorskip("ray")
    sizes = ["--requests", "40", "--slow-requests", "20", "--repeat", "1", "--concurrency", "8"]
    done = subprocess.run(
        [sys.executable, "bench/ray.py", *sizes, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["simulated"] is True
    assert math.isfinite(figures["speedup"]["ratio_median"])
    assert figures["speedup"]["ratio_median"] > 0
    assert math.isfinite(figures["overhead"]["added_ms_per_request_median"])
    assert figures["overhead"]["requests"] == 20
