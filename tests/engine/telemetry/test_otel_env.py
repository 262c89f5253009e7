"""`OTEL_*` variables: one that can never work exits 2 before anything runs, naming the
variable, its value (secrets masked) and the fix; one moat does not follow is said once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.telemetry.otel_env import check_traces, export_timeout_s, sampler
from tests.support.fast_graphs import fast_copy
from tests.support.otlp_receiver import closed_port

UNUSABLE = [
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url"},
        "OTEL_EXPORTER_OTLP_ENDPOINT=not a url: not an http:// or https:// URL; give the "
        "collector's base URL (http://HOST:4318)",
    ),
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://not a host:4318"},
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://not a host:4318: not a URL",
    ),
    (
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://collector/v1/traces"},
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=ftp://collector/v1/traces: not an http:// or "
        "https:// URL; give the full URL",
    ),
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://moat:hunter2@collector:99999"},
        "OTEL_EXPORTER_OTLP_ENDPOINT=https://moat:***@collector:99999: not a URL",
    ),
    (
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: moat exports OTLP over HTTP with protobuf only",
    ),
    (
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json: moat exports OTLP over HTTP",
    ),
    (
        {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer s3cret,Api-Key: s3cret"},
        "OTEL_EXPORTER_OTLP_HEADERS=authorization=***,Api-Key:***: entry 2 is not NAME=VALUE",
    ),
    (
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"},
        "OTEL_EXPORTER_OTLP_TIMEOUT=10s: give the milliseconds to wait",
    ),
    (
        {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "-5"},
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=-5: give the milliseconds to wait",
    ),
    (
        {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"},
        "OTEL_EXPORTER_OTLP_COMPRESSION=brotli: give one of none, gzip, deflate",
    ),
    (
        {"OTEL_BSP_SCHEDULE_DELAY": "soon"},
        "OTEL_BSP_SCHEDULE_DELAY=soon: give a whole number of milliseconds, at least 1",
    ),
    (
        {"OTEL_BSP_EXPORT_TIMEOUT": "-1"},
        "OTEL_BSP_EXPORT_TIMEOUT=-1: give a whole number of milliseconds, at least 1",
    ),
    (  # a thread's wait overflows: the sender thread died and no span left
        {"OTEL_BSP_SCHEDULE_DELAY": "99999999999999"},
        "OTEL_BSP_SCHEDULE_DELAY=99999999999999: give a whole number of milliseconds, at "
        "least 1 and at most 86400000 (a day)",
    ),
    (  # the wait at exit overflowed: the run ended in an internal error
        {"OTEL_BSP_EXPORT_TIMEOUT": "99999999999999"},
        "OTEL_BSP_EXPORT_TIMEOUT=99999999999999: give a whole number of milliseconds, at "
        "least 1 and at most 86400000 (a day)",
    ),
    (  # every POST's socket timeout overflowed, said as a collector not listening
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "1e15"},
        "OTEL_EXPORTER_OTLP_TIMEOUT=1e15: give the milliseconds to wait for the collector to "
        "answer each POST, a positive number (10000, 10 s, unless set) up to 86400000 (a day)",
    ),
    (
        {"OTEL_BSP_MAX_QUEUE_SIZE": "0"},
        "OTEL_BSP_MAX_QUEUE_SIZE=0: give a whole number of spans, at least 1",
    ),
    (
        {"OTEL_TRACES_SAMPLER": "bogus"},
        "OTEL_TRACES_SAMPLER=bogus: not a sampler; give one of always_on, always_off, "
        "traceidratio, parentbased_always_on",
    ),
    (
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
        "OTEL_TRACES_SAMPLER_ARG=2: traceidratio needs the share of traces to keep, a number "
        "from 0 to 1",
    ),
    (
        {"OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER": "nope"},
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER=nope: no such credential provider",
    ),
    (
        {"OTEL_RESOURCE_ATTRIBUTES": "team=search,prod"},
        "OTEL_RESOURCE_ATTRIBUTES=team=search,prod: 'prod' is not KEY=VALUE",
    ),
    (
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
        },
        "OTEL_EXPORTER_OTLP_CERTIFICATE=/nonexistent/ca.pem: no such file",
    ),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No `OTEL_*` variable from the machine running the tests."""
    import os

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(("env", "message"), UNUSABLE)
def test_a_variable_that_can_never_work_exits_2_before_anything_runs(
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    from engine.cli import main

    for name, value in env.items():
        clean_env.setenv(name, value)
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "x.db"
    code = main(["run", str(graph), "--prompt", "hi", "--db", str(db), "--otel"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"moat: {message}"), err
    assert err.count("\n") == 1 and "s3cret" not in err and "hunter2" not in err
    assert not db.exists()  # nothing ran


def test_an_otel_url_that_does_not_parse_is_refused(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    graph = fast_copy("baseline", tmp_path, time_scale=0)
    code = main(["run", str(graph), "--prompt", "hi", "--otel", "http://collector host:4318"])
    assert code == 2
    assert capsys.readouterr().err.startswith("moat: --otel http://collector host:4318: not a URL")


def test_moat_serve_refuses_them_too_before_it_listens(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    code = main(["serve", str(graph), "--port", "0", "--db", str(tmp_path / "x.db"), "--otel"])
    assert code == 2
    assert capsys.readouterr().err.startswith("moat: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: ")


def test_variables_for_an_endpoint_not_used_are_not_checked(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")
    check_traces("http://127.0.0.1:4318")  # --otel URL wins over the variable
    clean_env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
    check_traces("http://127.0.0.1:4318")  # no TLS: no CA bundle read
    clean_env.setenv("OTEL_SDK_DISABLED", "true")
    check_traces(None)  # nothing is exported


def test_the_standard_values_pass(clean_env: pytest.MonkeyPatch) -> None:
    good = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:pw@[::1]:4318/",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer abc, x-tenant=acme%2Cbeta,,",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_RESOURCE_ATTRIBUTES": "team=search, deployment.environment=",
    }
    for name, value in good.items():
        clean_env.setenv(name, value)
    check_traces(None)


def test_the_timeout_variables_are_milliseconds_as_the_specification_says(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from engine.telemetry.traces import otlp_exporter

    assert export_timeout_s({}) == 10.0
    assert export_timeout_s({"OTEL_EXPORTER_OTLP_TIMEOUT": "10000"}) == 10.0
    both = {"OTEL_EXPORTER_OTLP_TIMEOUT": "10000", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500"}
    assert export_timeout_s(both) == 2.5
    clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "10000")
    exporter = otlp_exporter("http://127.0.0.1:4318")
    assert exporter._client._timeout == 10.0  # type: ignore[attr-defined]  # not 10,000 s


def test_a_timeout_most_likely_meant_in_seconds_is_said(clean_env: pytest.MonkeyPatch) -> None:
    from structlog.testing import capture_logs

    clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    with capture_logs() as logs:
        check_traces(None)
    [said] = logs
    assert said["event"] == "telemetry.timeout_in_milliseconds"
    assert "OTEL_EXPORTER_OTLP_TIMEOUT=30000" in said["fix"]


def test_the_sampler_is_built_without_the_sdks_own_warnings(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.trace.sampling import DEFAULT_ON, ParentBasedTraceIdRatio

    assert sampler({}) is DEFAULT_ON
    ratio = sampler({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"})  # no ARG: 1
    assert isinstance(ratio, ParentBasedTraceIdRatio) and "1.0" in ratio.get_description()
    assert not caplog.records
    with pytest.raises(SpecError, match="OTEL_TRACES_SAMPLER_ARG=one"):
        sampler({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "one"})


def _warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], otel: bool, **env: str
) -> list[dict[str, object]]:
    """The telemetry warnings about variables a run logs (moat's JSON lines on stderr)."""
    from engine.cli import main

    graph = fast_copy("baseline", tmp_path, time_scale=0)
    flags = ["--otel", f"http://127.0.0.1:{closed_port()}"] if otel else []
    args = ["run", str(graph), "--prompt", "hi", "--db", str(tmp_path / "x.db"), "--quiet"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"OTEL_BSP_EXPORT_TIMEOUT": "1", **env}.items():
            patch.setenv(name, value)
        assert main([*args, *flags]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    return [e for e in lines if "variable" in e]


def test_otel_sdk_disabled_under_otel_is_said_once(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [said] = _warnings(tmp_path, capsys, True, OTEL_SDK_DISABLED="true")
    assert (said["event"], said["variable"], said["value"], said["level"]) == (
        "telemetry.traces_disabled",
        "OTEL_SDK_DISABLED",
        "true",
        "warning",
    )
    assert said["fix"] == "unset OTEL_SDK_DISABLED to export traces"


def test_an_exporter_moat_does_not_have_is_said_once(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [said] = _warnings(tmp_path, capsys, False, OTEL_TRACES_EXPORTER="console")
    assert (said["event"], said["value"]) == ("telemetry.exporter_not_supported", "console")
    assert "console ignored: no traces are exported" in str(said["effect"])
    [said] = _warnings(tmp_path, capsys, True, OTEL_TRACES_EXPORTER="none")
    assert (said["event"], said["value"]) == ("telemetry.exporter_overridden", "none")
    assert _warnings(tmp_path, capsys, False, OTEL_TRACES_EXPORTER="none") == []
