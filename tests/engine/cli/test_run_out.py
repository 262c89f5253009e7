"""`moat run --out` that is not a plain file: a named pipe, a device, a full disk."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from engine.cli import main
from tests.support.fast_graphs import one_model_graph

TOTAL = 3


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    graph = tmp_path / "g.yaml"
    graph.write_text(one_model_graph("g", 0.001))
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(TOTAL)))
    return graph, requests, tmp_path / "t.db"


def runs(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT id, status FROM runs"))


def test_an_out_pipe_nothing_reads_is_refused_at_once_and_nothing_runs(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph, requests, db = files
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    code = main(["run", str(graph), "--input", str(requests), "--out", str(fifo), "--db", str(db)])
    assert code == 2
    assert (
        f"moat: --out {fifo}: a named pipe that nothing reads; start its reader first "
        f"(e.g. `cat {fifo} &`), or give a file"
    ) in capsys.readouterr().err
    assert runs(db) == []


def test_an_out_pipe_with_its_reader_gets_every_line(
    files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    graph, requests, db = files
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        args = ["run", str(graph), "--input", str(requests), "--out", str(fifo)]
        assert main([*args, "--db", str(db), "--quiet"]) == 0
        received = os.read(reader, 1 << 16).decode()
    finally:
        os.close(reader)
    ((run_id, status),) = runs(db)
    assert status == "finished"
    ids = [json.loads(line)["request_id"] for line in received.splitlines()]
    assert sorted(ids) == [f"{run_id}-{i:06d}" for i in range(TOTAL)]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_exits_1_and_a_resume_neither_reads_the_device_nor_loses_a_line(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph, requests, db = files
    args = ["run", str(graph), "--input", str(requests), "--db", str(db), "--quiet"]
    assert main([*args, "--out", "/dev/full"]) == 1
    ((run_id, _),) = runs(db)
    err = capsys.readouterr().err
    assert "moat: --out /dev/full: writing result lines failed: No space left on device" in err
    assert f"Resume with: moat run --resume {run_id} --db {db}" in err
    # a device has no lines to read back (reading /dev/full never ends)
    resume = ["run", "--resume", run_id, "--db", str(db), "--quiet"]
    assert main(resume) == 0, capsys.readouterr().err
    out = tmp_path / "out.jsonl"
    assert main([*resume, "--out", str(out)]) == 0, capsys.readouterr().err
    ids = [json.loads(line)["request_id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == [f"{run_id}-{i:06d}" for i in range(TOTAL)]


def test_out_dash_is_standard_output_not_a_file_named_dash(
    files: tuple[Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph, requests, db = files
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(graph), "--input", str(requests), "--out", "-", "--db", str(db)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(line["status"] for line in lines) == ["ok"] * TOTAL
    assert not (tmp_path / "-").exists()
