"""Export failures: said in moat's log, once an outage and then as counts, never as the
exporter's own lines; a collector that never answers holds a run or a server's shutdown
no longer than `OTEL_BSP_EXPORT_TIMEOUT`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs

from engine.events import RequestRecord, RequestStatus
from engine.telemetry import FinishedRequest
from engine.telemetry.export_health import ExportHealth, describe
from engine.telemetry.traces import SpanBuilder, otlp_exporter
from tests.support.fast_graphs import ROOT, fast_copy
from tests.support.otlp_receiver import closed_port, failing_collector, silent_collector
from tests.support.serve_client import http

URL = "http://collector.example:4318/v1/traces"
WHY = {"reason": "connection refused", "fix": "check it"}
RAW = ("Transient error", "Failed to export", "Shutdown in progress", "Traceback")


def test_the_first_failure_is_said_then_a_count_a_minute_then_the_recovery() -> None:
    now = [0.0]
    health = ExportHealth(URL, every_s=60, clock=lambda: now[0])
    with capture_logs() as logs:
        for at in (0, 10, 20, 61, 70):
            now[0] = at
            health.failed(5, WHY)
        health.ok(3)
        health.ok(3)
    assert [(e["event"], e.get("batches_failed"), e.get("spans_lost")) for e in logs] == [
        ("telemetry.export_failed", None, 5),
        ("telemetry.export_failing", 3, 15),  # the failures at 10, 20 and 61
        ("telemetry.export_recovered", 5, 25),
    ]
    assert logs[0]["endpoint"] == URL and logs[0]["reason"] == "connection refused"
    with capture_logs() as logs:
        health.closed(31, 0, timed_out_s=None)  # 70's failure was never counted by a line
    [summary] = logs
    assert (summary["event"], summary["spans"], summary["of"]) == (
        "telemetry.spans_not_exported",
        25,
        31,
    )


def test_nothing_is_said_at_close_when_the_lines_said_it_all() -> None:
    health = ExportHealth()
    with capture_logs() as logs:
        health.failed(4, WHY)
        health.closed(4, 0, timed_out_s=None)
        ExportHealth().closed(7, 0, timed_out_s=None)  # ... or nothing was lost
    assert [e["event"] for e in logs] == ["telemetry.export_failed"]


def test_a_password_in_the_endpoint_is_masked() -> None:
    with capture_logs() as logs:
        ExportHealth("https://moat:hunter2@collector/v1/traces").failed(1, WHY)
    assert logs[0]["endpoint"] == "https://moat:***@collector/v1/traces"


@pytest.mark.parametrize(
    ("status", "error", "reason", "fix"),
    [
        (401, None, "HTTP 401 Unauthorized", "OTEL_EXPORTER_OTLP_HEADERS"),
        (404, None, "HTTP 404 Not Found", "base URL (/v1/traces is appended)"),
        (503, None, "HTTP 503 Service Unavailable", "failing or overloaded"),
        (
            None,
            requests.exceptions.SSLError(
                "HTTPSConnectionPool(host='c', port=4318): Max retries exceeded (Caused by "
                "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] "
                "certificate verify failed: self-signed certificate (_ssl.c:1006)')))"
            ),
            "TLS: certificate verify failed: self-signed certificate",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        (
            None,
            requests.exceptions.ConnectionError(
                "HTTPConnectionPool(host='c', port=4318): Max retries exceeded (Caused by "
                "NewConnectionError('Failed to establish a new connection: [Errno 111] "
                "Connection refused'))"
            ),
            "connection refused",
            "collector listening there",
        ),
        (
            None,
            requests.exceptions.ConnectionError(
                "('Connection aborted.', BadStatusLine('garbage'))"
            ),
            "the answer was not HTTP",
            "OTLP/HTTP collector",
        ),
        (
            None,
            requests.exceptions.ReadTimeout("read timed out"),
            "no answer in time (OTEL_EXPORTER_OTLP_TIMEOUT)",
            "4318",
        ),
    ],
)
def test_a_failed_post_is_said_in_a_few_words_with_what_to_check(
    status: int | None, error: BaseException | None, reason: str, fix: str
) -> None:
    said = describe(status, error)
    assert said["reason"] == reason
    assert fix in said["fix"]


def _finished(request_id: str) -> FinishedRequest:
    record = RequestRecord(request_id, "r", 0, RequestStatus.OK, 1.0, 1.2, 200.0, 0.0, None)
    return FinishedRequest("g", record)


def test_a_collector_that_never_answers_holds_close_no_longer_than_the_export_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")  # per POST: far longer
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "300")
    with silent_collector() as url:
        builder = SpanBuilder(otlp_exporter(url))
        builder.consume(_finished("q"))
        started = time.monotonic()
        with capture_logs() as logs:
            builder.close()
        took = time.monotonic() - started
    assert took < 2, took  # 0.3 s and the sender's grace, not the POST's 60 s
    [said] = logs
    assert said["event"] == "telemetry.spans_not_exported"
    assert said["reason"] == "no answer within 0.3 s (OTEL_BSP_EXPORT_TIMEOUT)"


def test_retries_cut_short_at_close_still_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "300")
    builder = SpanBuilder(otlp_exporter(f"http://127.0.0.1:{closed_port()}"))
    builder.consume(_finished("q"))
    with capture_logs() as logs:
        builder.close()
    [said] = logs
    assert (said["event"], said["reason"]) == ("telemetry.spans_not_exported", "connection refused")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def _moat_run(tmp_path: Path, otel: str, **env: str) -> tuple[int, list[str], float]:
    """`moat run --otel OTEL`: its exit code, its stderr lines, and how long it took."""
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    args = ["run", str(graph), "--prompt", "hi", "--db", "x.db", "--quiet", "--otel", otel]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stderr.splitlines(), time.monotonic() - started


def _said(lines: list[str]) -> list[dict[str, Any]]:
    assert not [x for x in lines if x.startswith(RAW)], lines
    assert all(x.startswith("{") for x in lines), lines  # moat's JSON lines, nothing else
    return [json.loads(x) for x in lines]


def test_an_unreachable_collector_is_one_line_in_moats_log_and_the_run_exits_0(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, lines, _ = _moat_run(tmp_path, url, OTEL_BSP_EXPORT_TIMEOUT="1500")
    assert code == 0
    [said] = _said(lines)
    assert (said["event"], said["reason"], said["endpoint"]) == (
        "telemetry.spans_not_exported",
        "connection refused",
        f"{url}/v1/traces",
    )


def test_a_collector_that_refuses_the_batch_is_said_with_its_status(tmp_path: Path) -> None:
    with failing_collector(401) as url:
        code, lines, _ = _moat_run(tmp_path, url)
    assert code == 0
    [said] = _said(lines)
    assert (said["event"], said["reason"]) == ("telemetry.export_failed", "HTTP 401 Unauthorized")
    assert "OTEL_EXPORTER_OTLP_HEADERS" in said["fix"]


def test_a_run_is_not_held_by_a_collector_that_never_answers(tmp_path: Path) -> None:
    with silent_collector() as url:
        code, lines, took = _moat_run(
            tmp_path, url, OTEL_EXPORTER_OTLP_TIMEOUT="60000", OTEL_BSP_EXPORT_TIMEOUT="500"
        )
    assert code == 0
    assert took < 30, took  # the process's start, the run, 0.5 s: not the POST's 60 s
    [said] = _said(lines)
    assert said["reason"] == "no answer within 0.5 s (OTEL_BSP_EXPORT_TIMEOUT)"


@pytest.mark.anyio
async def test_a_server_stops_in_bounded_time_with_a_collector_that_never_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.serve import MoatServer
    from engine.telemetry import Telemetry

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "300")
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    body = {"model": "baseline", "messages": [{"role": "user", "content": "hi"}]}
    with silent_collector() as url:
        telemetry = Telemetry(traces=otlp_exporter(url), metrics=True, server=True)
        server = MoatServer([graph], db=None, telemetry=telemetry)
        async with server:
            async with http(server) as web:
                assert (await web.post("/chat/completions", json=body)).status_code == 200
            started = time.monotonic()
        took = time.monotonic() - started
    assert took < 5, took
