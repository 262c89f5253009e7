"""moat's processes take turns to write a store through an OS lock beside it (`WriterTurn`),
woken within milliseconds of the other's commit rather than by SQLite's busy handler."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import Store
from engine.store import schema
from engine.store.schema import file_lock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="flock is POSIX")

ROOT = Path(__file__).resolve().parents[3]


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _try_turn(db: Path) -> str:
    """Whether another process gets the turn within 50 ms: `got` or `busy`."""
    probe = _child(
        f"""
        import sqlite3
        import engine.store.schema as s
        s.WRITE_PATIENCE_S = 0.05
        try:
            with s.file_lock({str(db)!r}):
                print("got")
        except sqlite3.OperationalError:
            print("busy")
        """
    )
    out, _ = probe.communicate(timeout=60)
    return out.strip()


def test_a_process_waits_for_anothers_turn_and_gets_it_as_soon_as_it_ends(tmp_path: Path) -> None:
    db = tmp_path / "moat.db"
    Store.open(db).close()
    holder = _child(
        f"""
        import time
        from engine.store.schema import file_lock
        with file_lock({str(db)!r}):
            print("held", flush=True)
            time.sleep(0.5)
            print(time.time(), flush=True)
        time.sleep(5)
        """
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    with Store.open(db) as store:
        run_id = store.create_run("g", None, 1)  # a write transaction: it waits for the turn
        got = time.time()
    released = float(holder.stdout.readline())
    holder.kill()
    holder.communicate()
    assert released <= got < released + 0.25
    with Store.open(db, readonly=True) as store:
        assert store.require_run(run_id)["status"] == "running"


def test_the_turn_is_held_until_the_outermost_writer_of_the_process_is_done(
    tmp_path: Path,
) -> None:
    db = tmp_path / "moat.db"
    turn = file_lock(db)
    with turn:
        with turn:  # the store's writers nest (prune inside its own lock)
            pass
        assert _try_turn(db) == "busy"
    assert _try_turn(db) == "got"
    assert (tmp_path / "moat.db-writer").exists()


def test_a_forked_child_has_a_turn_of_its_own(tmp_path: Path) -> None:
    db = tmp_path / "moat.db"
    turn = file_lock(db)
    with turn:
        pid = os.fork()
        if pid == 0:  # the child: the parent's turn is not its own
            code = 1
            try:
                schema.WRITE_PATIENCE_S = 0.05
                with turn:
                    pass
            except Exception:
                code = 0
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _try_turn(db) == "got"


def test_a_store_whose_turn_file_cannot_be_made_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse_turn_files(path: str, *args: int) -> int:
        if str(path).endswith("-writer"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", refuse_turn_files)  # a read-only folder, say
    db = tmp_path / "moat.db"
    with Store.open(db) as store:
        run_id = store.create_run("g", None, 1)
    assert not (tmp_path / "moat.db-writer").exists()
    with Store.open(db, readonly=True) as store:
        assert store.require_run(run_id)["status"] == "running"
