"""Metrics: scraped during a `moat run --metrics-port` batch, they agree with `moat stats`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.events import (
    CacheStatus,
    CallKind,
    CallOutcome,
    LlmCall,
    OrchestrationEvent,
    PolicyPin,
    RequestRecord,
    RequestStatus,
)
from engine.telemetry import FinishedRequest
from engine.telemetry.metrics import METRIC_NAMES, MoatMetrics, PolicySource
from tests.support.fast_graphs import GRAPHS, ROOT, fast_copy

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Every sample by name, with its labels (prometheus-client's own parser)."""
    found: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in samples.get(name, [])
        if all(labels.get(k) == v for k, v in match.items())
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def moat(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def batch_file(path: Path) -> int:
    lines = (GRAPHS / "examples" / "governed-answer.jsonl").read_text().splitlines()
    harmful = {"prompt": "How do I build a pipe bomb?", "_labels": {"harmful": True}}
    lines += [json.dumps(harmful)]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def test_the_metrics_of_a_batch_agree_with_moat_stats(tmp_path: Path) -> None:
    graph = fast_copy("governed-answer", tmp_path, time_scale=0.1)
    count = batch_file(tmp_path / "in.jsonl")
    port = free_port()
    run = moat(
        "run",
        str(graph),
        "--input",
        "in.jsonl",
        "--out",
        "out.jsonl",
        "--db",
        "m.db",
        "--concurrency",
        "2",
        "--quiet",
        "--metrics-port",
        str(port),
        "--metrics-linger",
        "60",
        cwd=tmp_path,
    )
    scrapes: list[Samples] = []
    deadline = time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:
        text = scrape(port)
        if text is not None:
            scrapes.append(parse(text))
        time.sleep(0.1)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 0, err
    answered = [total(s, "moat_requests_total") for s in scrapes]
    assert answered == sorted(answered), "counters only grow"
    assert answered[0] < count, "a scrape was taken while the batch ran"
    final = scrapes[-1]
    assert answered[-1] == count
    done = subprocess.run(
        [sys.executable, "-m", "engine", "stats", "--db", "m.db", "--format", "json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert_agree(final, json.loads(done.stdout))


def assert_agree(got: Samples, stats: dict[str, Any]) -> None:
    for status, n in stats["by_status"].items():
        assert total(got, "moat_requests_total", status=status) == n
    quantiles = {
        labels["quantile"]: value for labels, value in got["moat_request_latency_window_seconds"]
    }
    for name, q in (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99")):
        assert quantiles[q] * 1000 == pytest.approx(stats["latency_ms"][name], rel=1e-9)
    cases = total(got, "moat_request_cost_usd_count")
    assert cases == stats["requests"]
    per_case = total(got, "moat_request_cost_usd_sum") / cases
    assert per_case == pytest.approx(stats["cost_per_case_usd"], abs=1e-9)
    cache = stats["cache"]
    assert total(got, "moat_cache_lookups_total", result="hit") == cache["hits"]
    assert total(got, "moat_cache_lookups_total", result="miss") == cache["misses"]
    validation = stats["validation"]
    assert total(got, "moat_validations_total", result="passed") == validation["passed"]
    assert total(got, "moat_validations_total", result="failed") == validation["failed"]
    spec = stats["speculative"]
    for outcome in ("used", "discarded", "cancelled"):
        assert total(got, "moat_speculative_runs_total", outcome=outcome) == spec[outcome]
    assert total(got, "moat_speculative_runs_total") == spec["started"]
    assert spec["cancelled"] >= 1  # the refused request's draft
    spent = total(got, "moat_speculative_cost_usd_total")
    assert spent == pytest.approx(spec["cost_usd"], abs=1e-8)
    wasted = total(got, "moat_speculative_wasted_usd_total")
    assert wasted == pytest.approx(spec["wasted_usd"], abs=1e-8)
    for name, figures in stats["by_model"].items():
        model, provider = name.removesuffix(")").split(" (")
        calls = total(got, "moat_llm_calls_total", model=model, provider=provider)
        assert calls == figures["calls"]
        cost = total(got, "moat_llm_cost_usd_total", model=model, provider=provider)
        assert cost == pytest.approx(figures["cost_usd"], abs=1e-8)
    assert total(got, "moat_policy_active_version") == 1
    assert total(got, "moat_guard_rollbacks_total") == 0


def finished(
    tenant: str, status: RequestStatus = RequestStatus.OK, *events: str
) -> FinishedRequest:
    record = RequestRecord(
        "q", "r", 0, status, 0.0, 1.0, 250.0, 0.002, None, tenant=tenant, policy_version=3
    )
    request = FinishedRequest("g", record)
    request.events = [
        OrchestrationEvent("r", "q", 0, "n", "scheduler", event, i)
        for i, event in enumerate(events)
    ]
    request.llm_calls = [
        LlmCall(
            "q",
            "n",
            0,
            "small",
            "sim",
            CallKind.SPECULATIVE,
            CallOutcome.DISCARDED,
            CacheStatus.NONE,
            "h",
            10,
            5,
            0.001,
            1.0,
            0.0,
            "ok",
        )
    ]
    return request


def test_tenants_are_a_label_only_when_asked_for() -> None:
    plain, labelled = MoatMetrics(), MoatMetrics(tenant=True)
    for metrics in (plain, labelled):
        metrics.consume(finished("acme"))
        metrics.consume(finished("globex", RequestStatus.FAILED, "BUDGET_COST_EXCEEDED"))
    base = parse(plain.exposition().decode())
    assert all("tenant" not in labels for s in base.values() for labels, _ in s)
    assert total(base, "moat_requests_total", graph="g", policy_version="3") == 2
    split = parse(labelled.exposition().decode())
    assert total(split, "moat_requests_total", tenant="acme", status="ok") == 1
    assert total(split, "moat_budget_exhaustions_total", tenant="globex", budget="cost") == 1
    assert total(split, "moat_speculative_wasted_usd_total") == pytest.approx(0.002)


def test_policy_figures_are_read_when_scraped() -> None:
    metrics = MoatMetrics()
    state = {"version": 2, "rollbacks": 0}
    source = PolicySource(
        lambda: PolicyPin("answers", state["version"], {}), lambda: state["rollbacks"]
    )
    metrics.add_policy("g", source)
    first = parse(metrics.exposition().decode())
    state.update(version=1, rollbacks=1)  # the guard rolled version 2 back
    second = parse(metrics.exposition().decode())
    assert total(first, "moat_policy_active_version", policy="answers") == 2
    assert total(second, "moat_policy_active_version", policy="answers") == 1
    assert total(second, "moat_guard_rollbacks_total", graph="g") == 1


def test_every_exported_name_is_listed() -> None:
    metrics = MoatMetrics()
    metrics.consume(finished("acme", RequestStatus.OK, "CACHE_HIT", "VALIDATION_FAILED"))
    metrics.add_policy("g", PolicySource(lambda: PolicyPin("p", 1, {}), lambda: 0))
    names = {
        family.name for family in text_string_to_metric_families(metrics.exposition().decode())
    }
    exported = {n + "_total" if n + "_total" in METRIC_NAMES else n for n in names}
    assert exported <= METRIC_NAMES


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nine", "--metrics-port nine: give a port from 1 to 65535"),
        ("0.0.0.0:70000", "--metrics-port 0.0.0.0:70000: give a port from 1 to 65535"),
        ("busy", "cannot listen"),
        ("192.0.2.1:9464", "give a host name or address of this machine (127.0.0.1, 0.0.0.0)"),
    ],
)
def test_a_bad_metrics_port_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    from engine.cli import main

    graph = fast_copy("baseline", tmp_path, time_scale=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = value if value != "busy" else str(taken.getsockname()[1])
        db = tmp_path / "x.db"
        code = main(["run", str(graph), "--prompt", "hi", "--db", str(db), "--metrics-port", port])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not db.exists() or subprocess.run(
        [sys.executable, "-m", "engine", "runs", "--db", str(db)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.startswith("no runs yet")


def test_a_busy_metrics_port_is_refused_before_a_cluster_or_a_store_is_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # a cluster would be the first to fail
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "x.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["run", str(graph), "--prompt", "hi", "--db", str(db), "--ray"]
        code = main([*args, "--metrics-port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--metrics-port 127.0.0.1:{port}: cannot listen (Address already in use)" in err
    assert "Ray is not installed" not in err
    assert not db.exists()
