"""A sync server killed mid-upload (SIGKILL) and restarted: the upload resumes, and the
central store holds every record exactly once."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from engine.cli import main
from engine.errors import SyncError
from engine.store.sync_ops import SYNC_TABLES
from engine.sync import EdgeSync, SyncReport
from tests.support.edge_stores import (
    SyncServerProcess,
    counts,
    edge_store,
    fingerprint,
    integrity,
    wait_for_port_free,
)
from tests.support.otlp_receiver import closed_port

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def big_edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return edge_store(tmp_path_factory.mktemp("edge"), "edge", copies=2)


def assert_exactly_once(edge: Path, central: Path) -> None:
    assert counts(central) == counts(edge)
    for table in SYNC_TABLES:
        skip = ("id",) if table.key == "int" else ()
        assert fingerprint(central, table.name, skip) == fingerprint(edge, table.name, skip), (
            table.name
        )
    assert integrity(edge) == integrity(central) == "ok"


@pytest.mark.slow  # ~10 s of uploads killed and resumed
async def test_killed_mid_upload_the_sync_resumes_and_stores_each_record_once(
    big_edge: Path, tmp_path: Path
) -> None:
    central = tmp_path / "central.db"
    server = await anyio.to_thread.run_sync(SyncServerProcess, central)
    acked = anyio.Event()

    def progress(report: SyncReport) -> None:
        if report.batches == 8:
            acked.set()

    sync = EdgeSync(
        big_edge,
        server.url,
        batch_rows=20,
        max_kbps=128,
        patience_s=30,
        backoff_s=(0.05, 0.5),
        progress=progress,
    )
    result: list[SyncReport] = []
    try:
        async with anyio.create_task_group() as tg:

            async def upload() -> None:
                result.append(await sync.run())

            tg.start_soon(upload)
            await acked.wait()
            server.kill()  # mid-upload: later batches are in flight or queued
            await anyio.sleep(0.5)  # the edge retries against a closed port meanwhile
            await anyio.to_thread.run_sync(wait_for_port_free, server.port)
            server = await anyio.to_thread.run_sync(SyncServerProcess, central, server.port)
    finally:
        server.stop()
    (report,) = result
    assert report.retries >= 1
    assert report.total_rows >= sum(counts(big_edge).values())  # resent batches count again
    assert_exactly_once(big_edge, central)


@pytest.mark.slow
async def test_a_sync_that_gave_up_resumes_on_the_next_run(big_edge: Path, tmp_path: Path) -> None:
    central = tmp_path / "central.db"
    server = await anyio.to_thread.run_sync(SyncServerProcess, central)
    killed = anyio.Event()

    def progress(report: SyncReport) -> None:
        if report.batches == 5 and not killed.is_set():
            server.kill()
            killed.set()

    try:
        first = EdgeSync(big_edge, server.url, batch_rows=20, patience_s=0.5, progress=progress)
        with pytest.raises(SyncError, match="unreachable"):
            await first.run()
        wait_for_port_free(server.port)
        server = await anyio.to_thread.run_sync(SyncServerProcess, central, server.port)
        second = await EdgeSync(big_edge, server.url, batch_rows=20).run()
    finally:
        server.stop()
    assert 0 < second.total_rows < sum(counts(big_edge).values())  # only what was left
    assert_exactly_once(big_edge, central)


def test_the_cli_syncs_and_says_what_it_sent(
    big_edge: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = SyncServerProcess(tmp_path / "central.db")
    try:
        assert main(["sync", "--to", server.url, "--db", str(big_edge), "--max-kbps", "512"]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert f"rows to {server.url}" in out and "zstd" in out


def test_the_cli_refuses_a_url_that_is_not_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sync", "--to", "central:8477", "--db", str(tmp_path / "x.db")]) == 2
    assert "--to central:8477: not an http(s) URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://central host:8477", "the host 'central host' is not a host name or address"),
        ("http://central%zz:8477", "the host 'central%zz' is not a host name or address"),
        ("http://central:0", "port 0 is no port to connect to"),
        ("http://central:8477?token=x", "a query or fragment is not used"),
        ("http://central:8477/#sync", "a query or fragment is not used"),
    ],
)
def test_a_url_no_sync_could_ever_reach_exits_2_at_once_naming_the_flag(
    url: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the default --patience would otherwise retry it as an outage for ten minutes
    assert main(["sync", "--to", url, "--db", str(tmp_path / "x.db")]) == 2
    err = capsys.readouterr().err
    assert f"--to {url}: {problem}" in err
    assert "give the sync server's address, e.g. http://central:8477" in err


@pytest.mark.parametrize("where", ["/behind/a/proxy", ""])
def test_a_url_with_a_path_prefix_is_tried(
    where: str, big_edge: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}{where}"
    assert main(["sync", "--to", url, "--db", str(big_edge), "--patience", "0.2"]) == 1
    assert f"moat: {url}: unreachable for 0.2s" in capsys.readouterr().err


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_sync_stopped_mid_upload_says_so_exits_130_and_resumes(
    stop: signal.Signals, big_edge: Path, tmp_path: Path
) -> None:
    """SIGTERM (a cron job's timeout, systemd) ended `moat sync` without a word and with
    its own exit status; Ctrl-C said only `moat: interrupted`."""
    db = tmp_path / "edge.db"
    shutil.copy(big_edge, db)
    server = SyncServerProcess(tmp_path / "central.db")
    try:
        upload = subprocess.Popen(
            [sys.executable, "-m", "engine", "sync", "--to", server.url, "--db", str(db), *SLOW],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _batches(tmp_path / "central.db"):
            time.sleep(0.05)
        upload.send_signal(stop)
        _, err = upload.communicate(timeout=30)
        assert upload.returncode == 130, err
        assert f"moat: sync stopped by {stop.name} after " in err
        assert (
            f"what the central side acknowledged is kept: rerun `moat sync --to {server.url}`"
            in err
        )
        assert "Traceback" not in err
        assert main(["sync", "--to", server.url, "--db", str(db)]) == 0
    finally:
        server.stop()
    assert_exactly_once(db, tmp_path / "central.db")


SLOW = ("--max-kbps", "24", "--batch-rows", "40")
"""Small batches at a slow link: the upload is under way when it is stopped."""


def _batches(central: Path) -> int:
    """Batches the central store has merged (0 before it has any)."""
    try:
        with sqlite3.connect(central) as conn:
            return int(
                conn.execute("SELECT COALESCE(SUM(batches), 0) FROM sync_origins").fetchone()[0]
            )
    except sqlite3.Error:
        return 0
