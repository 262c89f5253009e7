"""Flags that only mean something beside another flag are refused without it (exit 2, the
flag named with the fix), never silently ignored; nothing is created or run."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from tests.support.fast_graphs import fast_copy


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--metrics-linger", "30"], ["--metrics-linger 30:", "add --metrics-port"]),
        (["--metrics-tenant"], ["--metrics-tenant:", "add --metrics-port"]),
    ],
)
def test_run_refuses_a_flag_whose_partner_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: list[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "m.db"
    argv = ["run", str(graph), "--db", str(db), "--quiet", *extra]
    if "--prompt" not in extra:
        argv += ["--prompt", "hello"]
    _refused(capsys, argv, *words)
    assert not db.exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--otel", "http://127.0.0.1:4318"], ["--otel with --ray", "serve without --ray"]),
        (["--metrics-tenant"], ["--metrics-tenant with --ray", "drop --metrics-tenant"]),
        (["--no-commit-wait"], ["--no-commit-wait with --ray", "drop --no-commit-wait"]),
        (["--grace", "5"], ["--grace with --ray", "drop --grace"]),
    ],
)
def test_serve_on_ray_refuses_what_ray_serve_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: list[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "m.db"
    _refused(capsys, ["serve", str(graph), "--db", str(db), *extra, "--ray"], *words)
    assert not db.exists()


def test_serve_on_ray_refuses_traces_asked_for_by_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    words = ["OTEL_TRACES_EXPORTER=otlp with --ray", "unset it"]
    _refused(capsys, ["serve", str(graph), "--db", str(tmp_path / "m.db"), "--ray"], *words)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--replicas", "2"], ["--replicas 2:", "add --ray"]),
        (["--autoscale", "1:4"], ["--autoscale 1:4:", "add --ray"]),
        (["--burst", "50"], ["--burst 50:", "add --rate R"]),
    ],
)
def test_serve_refuses_a_flag_whose_partner_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: list[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "m.db"
    _refused(capsys, ["serve", str(graph), "--port", "0", "--db", str(db), *extra], *words)
    assert not db.exists()


def test_resume_accepts_the_run_s_own_requests_and_refuses_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = fast_copy("baseline", tmp_path, time_scale=0)
    db = tmp_path / "m.db"
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"prompt": "hello"}\n{"prompt": "again"}\n')
    assert main(["run", str(graph), "--db", str(db), "--quiet", "--input", str(requests)]) == 0
    capsys.readouterr()
    from engine.store.store import Store

    with Store.open(db) as store:
        (run,) = store.list_runs()
    run_id = str(run["id"])
    again = ["run", str(graph), "--db", str(db), "--quiet", "--resume", run_id]
    assert main([*again, "--input", str(requests)]) == 0  # the first command, with --resume
    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "new"}\n')
    _refused(
        capsys, [*again, "--input", str(other)], f"--input {other} with --resume", "drop --input"
    )
    _refused(capsys, [*again, "--prompt", "hi"], "--prompt with --resume", "drop --prompt")
