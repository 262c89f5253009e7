"""The library writes no log line to stdout and configures nothing global; the CLI logs to
stderr (or `MOAT_LOG`) as JSON lines with prompts hashed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine.logs import configure_logging, get_logger

ROOT = Path(__file__).parents[2]

# A fresh interpreter is the honest setting: the test session configures logging itself.
# The graph's router node logs at debug level on every request; the cache logs a warning.
SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import structlog
    from engine import Pipeline, run_sync
    from engine.logs import get_logger

    results = run_sync(sys.argv[1], [{"prompt": "What is a Roth IRA?"}] * 2, db=sys.argv[2])
    get_logger("moat.test").warning("library.warning", prompt="secret words")
    print("RESULT", [r.status.value for r in results])
    print("CONFIGURED", structlog.is_configured(), logging.getLogger().handlers)
    """
)


def _fresh_python(
    script: str, *args: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`script` run by a fresh interpreter with `args`, no `MOAT_*` variables but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOAT_")}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=cwd,
        timeout=120,
    )


def test_using_the_library_writes_nothing_to_stdout_or_stderr(tmp_path: Path) -> None:
    graph = str(ROOT / "graphs" / "extract.yaml")
    done = _fresh_python(SCRIPT, graph, str(tmp_path / "moat.db"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["RESULT ['ok', 'ok']", "CONFIGURED False []"]
    assert done.stderr == ""


def test_a_caller_who_configures_logging_gets_the_warnings(tmp_path: Path) -> None:
    script = "import logging; logging.basicConfig(level=logging.WARNING)\n" + SCRIPT
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(ROOT / "graphs" / "extract.yaml"),
            str(tmp_path / "moat.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "library.warning" in done.stderr and "secret words" not in done.stderr
    assert "router.feedback" not in done.stderr  # debug: below what the caller asked for
    assert done.stdout.startswith("RESULT")


@pytest.fixture
def _reset() -> Iterator[None]:
    yield
    configure_logging(level="warning")


@pytest.mark.usefixtures("_reset")
def test_the_cli_configuration_writes_json_lines_with_prompts_hashed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(level="info")
    configure_logging(level="info")  # again: still one line per event
    log = get_logger("moat.test").bind(run_id="r1")
    log.info("node.done", prompt="secret words", n=3)
    log.debug("node.chatter")
    out, err = capsys.readouterr()
    assert out == ""
    lines = [json.loads(line) for line in err.splitlines()]
    assert len(lines) == 1
    entry = lines[0]
    assert (entry["event"], entry["level"], entry["run_id"], entry["n"]) == (
        "node.done",
        "info",
        "r1",
        3,
    )
    assert entry["prompt"].startswith("sha256:")


@pytest.mark.usefixtures("_reset")
def test_a_log_file_gets_the_lines_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "moat.log"
    configure_logging(str(target), level="warning")
    get_logger("moat.test").warning("cache.write_failed", error="disk full")
    logging.getLogger("moat").handlers[-1].flush()
    assert capsys.readouterr() == ("", "")
    assert json.loads(target.read_text())["event"] == "cache.write_failed"


def test_structlog_capture_sees_engine_logs() -> None:
    with structlog.testing.capture_logs() as logs:
        get_logger("moat.test").warning("x.happened", k=1)
    assert [(e["event"], e["k"]) for e in logs] == [("x.happened", 1)]


THREAD_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from engine.cli import main

    main(["check", sys.argv[1]])  # any command that logs sets the CLI's hooks up

    def stray():  # a plugin's own thread, failing after its node returned
        raise ValueError("late trouble")

    thread = threading.Thread(target=stray, name="plugin-poller")
    thread.start()
    thread.join()
    """
)


@pytest.mark.parametrize("debug", [False, True])
def test_a_thread_that_dies_in_the_cli_is_one_log_line_not_a_traceback(
    tmp_path: Path, debug: bool
) -> None:
    env = {"MOAT_DEBUG": "1"} if debug else {}
    done = _fresh_python(THREAD_SCRIPT, str(ROOT / "graphs" / "extract.yaml"), cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("event") == "thread.failed"]
    assert len(failed) == 1
    assert failed[0]["thread"] == "plugin-poller"
    assert failed[0]["error"] == "ValueError: late trouble"
    assert ("Traceback" in done.stderr) is debug
