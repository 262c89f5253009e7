"""The end-to-end benchmark: a small run of `python -m bench` gives every figure, finite."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(module: str) -> ModuleType:
    """Import a `bench` module (bench/ is not an installed package)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(module)


KEYS = (
    "cost_per_case",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "quality",
    "validation_success",
    "cache_hit_rate",
    "llm_calls_per_case",
)


def test_bench_json_has_finite_figures_for_each_config() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--n",
            "60",
            "--seeds",
            "1",
            "--no-sweep",
            "--configs",
            "baseline,flagship",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results = json.loads(proc.stdout)
    assert list(results) == ["baseline", "flagship"]
    for figures in results.values():
        for key in KEYS:
            assert isinstance(figures[key], int | float), key
            assert math.isfinite(figures[key]), key
        assert figures["requests"] == 60
        assert 0 <= figures["quality"] <= 100


def test_workload_is_seeded_and_labelled() -> None:
    workload = _bench("bench.workload")
    first = workload.generate(300, seed=3)
    assert first == workload.generate(300, seed=3)
    assert first != workload.generate(300, seed=4)
    for request in first:
        labels = request["_labels"]
        assert set(labels) >= {"kind", "harmful", "difficulty", "category", "item", "pii"}
        assert 0 <= labels["difficulty"] <= 1
        assert labels["harmful"] or {"expected", "check"} <= set(labels)
    returning = [r for r in first if "repeat_of" in r["_labels"]]
    assert 0.15 < len(returning) / len(first) < 0.35
    for r in returning:
        original = first[r["_labels"]["repeat_of"]]
        assert r["_labels"]["item"] == original["_labels"]["item"]
        assert r["_labels"].get("expected") == original["_labels"].get("expected")


def test_results_section_replaces_only_its_markers(tmp_path: Path) -> None:
    report = _bench("bench._report")
    BEGIN, END = report.BEGIN, report.END
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# Results\n\nother\n\n{BEGIN}\nold\n{END}\n\ntail\n")
    report.write_section(path, "new table")
    text = path.read_text()
    assert "old" not in text and "new table" in text
    assert text.startswith("# Results\n\nother\n") and text.endswith("\ntail\n")
    fresh = tmp_path / "fresh.md"
    report.write_section(fresh, "body")
    assert BEGIN in fresh.read_text() and END in fresh.read_text()


def test_png_writer_emits_a_valid_header(tmp_path: Path) -> None:
    png = _bench("bench._png")
    canvas = png.Canvas(20, 10)
    canvas.text(1, 1, "OK")
    png.write_png(canvas, tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


def _json(*args: str) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow  # ~8 s: the bench twice
def test_worker_processes_change_no_figure() -> None:
    # On the mock clock every run is its own event loop: one process or two, the same
    # figures to the last digit (sweeps and the paired intervals included).
    args = ("--n", "30", "--seeds", "2", "--sweep-n", "10", "--configs", "baseline,cascade")
    one, two = _json(*args, "--jobs", "1"), _json(*args, "--jobs", "2")
    assert one == two
    assert [p["value"] for p in one["cascade"]["sweep"]] == [None, 0.3, 0.45, 0.75, 0.9]
    assert one["cascade"]["requests"] == 60 and "vs_baseline" in one["cascade"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_all_configs_small() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--n", "200", "--seeds", "2", "--sweep-n", "60", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
        check=True,
    )
    results = json.loads(proc.stdout)
    assert "oracle" in results and "flagship-eager-join" in results


def test_the_overhead_benchmark_prints_every_figure() -> None:
    # A tiny run: it checks that the benchmark works and says what it measures, not speed.
    proc = subprocess.run(
        [
            sys.executable,
            "bench/overhead.py",
            "--requests",
            "200",
            "--rounds",
            "2",
            "--sleep-requests",
            "2",
            "--in-flight",
            "50",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    for key in (
        "moat_us_per_request",
        "handwritten_us_per_request",
        "overhead_ratio",
        "moat_rps_100_concurrent",
        "moat_sleep_ms_mean",
        "memory_mib_50_in_flight_records_dropped",
        "memory_mib_50_in_flight_records_kept",
        "handwritten_memory_mib_50_in_flight",
    ):
        assert math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["backend"] == "asyncio"


def test_the_real_shape_overhead_benchmark_prints_every_figure() -> None:
    # A tiny run: it checks that the benchmark works and says what it measures, not speed.
    proc = subprocess.run(
        [
            sys.executable,
            "bench/overhead_real.py",
            "--requests",
            "200",
            "--rounds",
            "2",
            "--in-flight",
            "50",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    for key in (
        "handwritten_us_per_request",
        "runner_us_per_request",
        "pipeline_us_per_request",
        "pipeline_over_handwritten",
        "pipeline_batch_rps_100_concurrent",
        "pipeline_wall_s_50_sleeping",
        "handwritten_wall_s_50_sleeping",
    ):
        assert math.isfinite(figures[key]) and figures[key] > 0, key


@pytest.mark.anyio
async def test_the_real_shape_handwritten_version_answers_as_moat_does() -> None:
    overhead_real = _bench("bench.overhead_real")
    from engine.scheduler.runner import Runner

    graph = overhead_real.build_graph(sleep=False)
    manual = overhead_real.handwritten(graph)
    async with Runner(graph) as runner:
        for value in overhead_real._inputs(3):
            assert (await runner.run(value)).output == await manual(value)


def test_the_flagship_overhead_counts_only_time_without_a_model_call_in_flight() -> None:
    flagship = _bench("bench.flagship")
    from engine.events import CacheStatus, CallKind, CallOutcome, LlmCall

    def call(start: float, ms: float) -> LlmCall:
        return LlmCall(
            "r", "n", 0, "m", "sim", CallKind.NORMAL, CallOutcome.USED, CacheStatus.NONE,
            "h", 1, 1, 0.0, ms, start, "ok",
        )  # fmt: skip

    # two overlapping calls (0-100 ms, 50-150 ms) and one after a gap (200-250 ms)
    assert flagship._union_ms([call(0.2, 50), call(0.0, 100), call(0.05, 100)]) == (
        pytest.approx(200)
    )
    assert flagship._union_ms([]) == 0


def test_the_flagship_idle_time_splits_into_before_between_and_after_the_calls() -> None:
    flagship = _bench("bench.flagship")
    from engine.events import (
        CacheStatus,
        CallKind,
        CallOutcome,
        LlmCall,
        RequestRecord,
        RequestStatus,
    )

    def call(start: float, ms: float) -> LlmCall:
        return LlmCall(
            "r", "n", 0, "m", "sim", CallKind.NORMAL, CallOutcome.USED, CacheStatus.NONE,
            "h", 1, 1, 0.0, ms, start, "ok",
        )  # fmt: skip

    # request 10.0-10.3 s; calls 10.01-10.11 and 10.06-10.16 overlap, then 10.2-10.25
    record = RequestRecord("r", "run", 0, RequestStatus.OK, 10.0, 10.3, 300.0, 0.0, {})
    calls = [call(10.2, 50), call(10.01, 100), call(10.06, 100)]
    before, between, after = flagship._idle_ms(record, calls)
    assert before == pytest.approx(10) and between == pytest.approx(40)
    assert after == pytest.approx(50)
    assert before + between + after == pytest.approx(300 - flagship._union_ms(calls))


def test_the_flagship_writer_benchmark_writes_every_record_of_every_request() -> None:
    flagship = _bench("bench.flagship")
    figures = flagship.writer(20)
    kinds = figures["records_per_request"]
    assert kinds["RequestRecord"] == 1.0  # every request's records, each request once
    assert kinds["OrchestrationEvent"] > 10 and kinds["NodeRun"] > 3 and kinds["LlmCall"] >= 1
    assert figures["writer_cpu_ms_per_request"] > 0 and figures["writer_cpu_us_per_record"] > 0
