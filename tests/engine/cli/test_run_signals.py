"""`moat run` stopped by a signal: Ctrl-C, SIGTERM or the hangup of a closed terminal stops
the batch cleanly with exit 130; one more while it stops ends it at once, still 130. Either
way nothing finished is lost and a resume answers every line exactly once."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from engine import cli
from engine.cli import main
from tests.support.fast_graphs import one_model_graph

TOTAL = 40


def moat(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MOAT_DB": ""},
    )


def out_ids(path: Path) -> list[str]:
    data = path.read_text()
    assert data == "" or data.endswith("\n"), "a torn last line"
    return [json.loads(line)["request_id"] for line in data.split("\n") if line]


@pytest.mark.slow
@pytest.mark.parametrize(
    "signals",
    [
        [signal.SIGHUP],
        [signal.SIGTERM],
        [signal.SIGINT],
        [signal.SIGINT, signal.SIGINT],
        [signal.SIGTERM, signal.SIGHUP],
    ],
    ids=lambda sigs: "+".join(signal.Signals(s).name for s in sigs),
)
def test_a_stop_signal_mid_batch_exits_130_and_a_resume_answers_each_line_once(
    tmp_path: Path, signals: list[signal.Signals]
) -> None:
    (tmp_path / "g.yaml").write_text(one_model_graph("g", 0.2))
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(TOTAL)))
    out = tmp_path / "out.jsonl"
    run = ["run", "g.yaml", "--input", "in.jsonl", "--out", "out.jsonl", "--db", "t.db"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *run, "--concurrency", "2"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MOAT_DB": ""},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.02)
    for signum in signals:
        proc.send_signal(signum)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=60)
    if len(signals) == 1:
        assert proc.returncode == 130, err
        assert "moat: interrupted; finished requests are kept. Resume with" in err
    else:  # the second one may land while the interpreter itself shuts down
        assert proc.returncode in (130, -signals[-1]), err
    assert "Traceback" not in err
    assert "internal error" not in err
    with sqlite3.connect(tmp_path / "t.db") as db:
        run_id, status = db.execute("SELECT id, status FROM runs").fetchone()
        stored = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    assert status == "interrupted" or len(signals) > 1, status  # (else: died, at once)
    assert len(out_ids(tmp_path / "out.jsonl")) <= stored < TOTAL
    listed = moat("runs", "--db", "t.db", cwd=tmp_path)
    assert listed.returncode == 0 and run_id in listed.stdout, listed.stderr
    assert moat("stats", run_id, "--db", "t.db", cwd=tmp_path).returncode == 0

    resumed = moat("run", "--resume", run_id, "--db", "t.db", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(out_ids(out)) == [f"{run_id}-{i:06d}" for i in range(TOTAL)]
    with sqlite3.connect(tmp_path / "t.db") as db:
        seqs = [s for (s,) in db.execute("SELECT seq FROM requests ORDER BY seq")]
        assert db.execute("SELECT status, requests_done FROM runs").fetchone() == (
            "finished",
            TOTAL,
        )
    assert seqs == list(range(TOTAL))


@pytest.mark.slow
def test_a_terminal_that_closes_mid_batch_stops_it_cleanly_with_exit_130(tmp_path: Path) -> None:
    """The terminal's hangup is a SIGHUP, and from then on the progress bar and summary
    cannot be written: the run is still recorded `interrupted` and exits 130."""
    (tmp_path / "g.yaml").write_text(one_model_graph("g", 0.2))
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(TOTAL)))
    terminal, tty = os.openpty()

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    run = ["run", "g.yaml", "--input", "in.jsonl", "--out", "out.jsonl", "--db", "t.db"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *run, "--concurrency", "2"],
        cwd=tmp_path,
        stdin=tty,
        stdout=tty,
        stderr=tty,
        preexec_fn=own_terminal,
        env={**os.environ, "MOAT_DB": ""},
    )
    os.close(tty)
    out, shown = tmp_path / "out.jsonl", b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        if select.select([terminal], [], [], 0.02)[0]:
            shown += os.read(terminal, 1 << 16)
    assert b"/40  " in shown  # the progress bar was on the terminal
    os.close(terminal)  # the terminal goes away
    assert proc.wait(timeout=60) == 130
    with sqlite3.connect(tmp_path / "t.db") as db:
        status, done = db.execute("SELECT status, requests_done FROM runs").fetchone()
        stored = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    assert status == "interrupted"
    assert 3 <= done == stored == len(out_ids(out)) < TOTAL


STUCK_STOP = textwrap.dedent(
    """
    import anyio, sys
    from engine.cli.stopping import stoppable

    async def main() -> None:
        async with stoppable(lambda: "resume with: moat run --resume r-1") as stop:
            with stop:
                print("running", flush=True)
                await anyio.sleep(60)
            print("stopping", flush=True)
            await anyio.sleep(60)  # a stop that hangs (a stuck reader of --out, say)
        print("not reached", flush=True)

    anyio.run(main)
    """
)


@pytest.mark.slow
def test_a_second_signal_while_the_run_stops_ends_it_at_once_with_exit_130() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_STOP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "running\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "stopping\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "not reached" not in out
    assert err == "\nmoat: stopped at once (SIGINT); resume with: moat run --resume r-1\n"


def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def loading(command: str | None = None) -> argparse.ArgumentParser:
        raise KeyboardInterrupt  # as if pressed while the command's modules import

    monkeypatch.setattr(cli, "build_parser", loading)
    assert main(["run", "g.yaml", "--prompt", "hi"]) == 130
    assert capsys.readouterr().err == "moat: interrupted\n"


def test_ctrl_c_landing_in_a_class_body_is_an_interruption_not_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python 3.11 wraps an exception raised by `__set_name__` in a RuntimeError: a Ctrl-C
    during a lazy import (the summary's, say) came out as "internal error", exit 1."""

    class Field:
        def __set_name__(self, owner: type, name: str) -> None:
            raise KeyboardInterrupt

    def handler(args: argparse.Namespace) -> int:
        type("Summary", (), {"degraded": Field()})
        return 0

    def parser(command: str | None = None) -> argparse.ArgumentParser:
        built = argparse.ArgumentParser()
        built.set_defaults(command="runs", handler=handler)
        return built

    monkeypatch.setattr(cli, "build_parser", parser)
    assert main([]) == 130
    assert capsys.readouterr().err == "moat: interrupted\n"
