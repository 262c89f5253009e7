"""`--resume` answers every request exactly once, in the store and in `--out`, whatever
moment the process died at: any set of committed requests, any subset of their result lines
written (the rest lost between commit and write), a torn last line, orphan rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.store.store import Store

GRAPH = """
moat: 1
name: echo
input:
  type: object
  required: [prompt]
  properties: {prompt: {type: string, minLength: 1}}
nodes:
  clean: {type: redact, with: {text: "{{ input.prompt }}"}}
output:
  text: clean.text
"""
TOTAL = 10
BAD = {3, 7}  # lines that are invalid_input: they are answered exactly once too


class Batch:
    """One finished batch, kept as files to restore before each simulated crash."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db = folder / "t.db"
        self.out = folder / "out.jsonl"
        self.saved = folder / "saved"
        graph = folder / "echo.yaml"
        graph.write_text(GRAPH)
        requests = folder / "in.jsonl"
        requests.write_text(
            "".join(
                # U+2028 is a line break to str.splitlines, not to JSON Lines
                "{broken\n" if i in BAD else json.dumps({"prompt": f"question {i}\u2028"}) + "\n"
                for i in range(TOTAL)
            )
        )
        args = ["run", str(graph), "--input", str(requests), "--out", str(self.out)]
        assert main([*args, "--db", str(self.db), "--quiet"]) == 1
        with Store.open(self.db, readonly=True) as store:
            (run,) = store.list_runs()
        self.run_id: str = run["id"]
        self.lines = {
            json.loads(line)["request_id"]: line
            for line in self.out.read_text().split("\n")
            if line
        }
        self.saved.mkdir()
        shutil.copy(self.db, self.saved / "t.db")

    def crash(
        self, stored: set[int], written: list[int], torn: int | None, gone: bool = False
    ) -> None:
        """The files as a process killed at some moment leaves them."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        shutil.copy(self.saved / "t.db", self.db)
        with sqlite3.connect(self.db) as conn:
            lost = [f"{self.run_id}-{seq:06d}" for seq in range(TOTAL) if seq not in stored]
            conn.executemany("DELETE FROM requests WHERE id = ?", [(i,) for i in lost])
            # it died running: its owner is gone and silent
            conn.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL, config_json = "
                'json_set(config_json, \'$.owner\', json(\'{"pid": 1, "host": "gone"}\'), '
                "'$.heartbeat_at', 0) WHERE id = ?",
                (self.run_id,),
            )
        text = "".join(self.lines[f"{self.run_id}-{seq:06d}"] + "\n" for seq in written)
        if torn is not None:
            text += self.lines[f"{self.run_id}-{torn:06d}"][:20]
        if text or not gone:
            self.out.write_text(text)
        else:  # lost, or deleted by the operator: resume writes every line again
            self.out.unlink(missing_ok=True)

    def ids(self) -> list[str]:
        return sorted(f"{self.run_id}-{seq:06d}" for seq in range(TOTAL))


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return Batch(tmp_path_factory.mktemp("resume"))


@st.composite
def crash_points(draw: st.DrawFn) -> tuple[set[int], list[int], int | None, bool]:
    stored = draw(st.sets(st.integers(0, TOTAL - 1)))
    written = draw(st.permutations(sorted(stored)))
    written = written[: draw(st.integers(0, len(written)))]
    unwritten = sorted(stored - set(written))
    torn = draw(st.none() | st.sampled_from(unwritten)) if unwritten else None
    return stored, written, torn, draw(st.booleans())


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(point=crash_points())
def test_resume_answers_every_request_exactly_once_whenever_the_process_died(
    batch: Batch,
    point: tuple[set[int], list[int], int | None, bool],
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored, written, torn, gone = point
    batch.crash(stored, written, torn, gone)
    code = main(["run", "--resume", batch.run_id, "--db", str(batch.db), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err  # the two broken lines are answered (as invalid_input) again
    assert "internal error" not in err
    results = [json.loads(line) for line in batch.out.read_text().split("\n") if line]
    assert sorted(r["request_id"] for r in results) == batch.ids()
    assert {r["request_id"] for r in results if r["status"] == "invalid_input"} == {
        f"{batch.run_id}-{seq:06d}" for seq in BAD
    }
    for result in results:  # a line rewritten from the store is the line first written
        if int(result["request_id"][-6:]) in stored:
            assert json.loads(batch.lines[result["request_id"]]) == result
    with sqlite3.connect(batch.db) as conn:
        seqs = [s for (s,) in conn.execute("SELECT seq FROM requests ORDER BY seq")]
        orphans = conn.execute(
            "SELECT COUNT(*) FROM node_runs WHERE request_id NOT IN (SELECT id FROM requests)"
        ).fetchone()[0]
        status = conn.execute("SELECT status FROM runs").fetchone()[0]
    assert seqs == list(range(TOTAL))
    assert orphans == 0
    assert status == "finished"


def test_a_run_that_died_shows_as_died_and_one_still_running_cannot_be_resumed(
    batch: Batch, capsys: pytest.CaptureFixture[str]
) -> None:
    batch.crash({0, 1}, [0], None)
    assert main(["runs", "--db", str(batch.db)]) == 0
    assert "died" in capsys.readouterr().out
    with sqlite3.connect(batch.db) as conn:  # now it is this (live) process's run
        conn.execute(
            "UPDATE runs SET config_json = json_set(config_json, '$.owner', json(?), "
            "'$.heartbeat_at', ?)",
            (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}), time.time()),
        )
    with Store.open(batch.db, readonly=True) as store:
        assert store.require_run(batch.run_id)["status"] == "running"
    code = main(["run", "--resume", batch.run_id, "--db", str(batch.db), "--quiet"])
    assert code == 2
    assert f"--resume {batch.run_id}: the run is still running (process {os.getpid()}" in (
        capsys.readouterr().err
    )


def test_a_resume_over_input_lines_that_changed_is_refused_and_runs_nothing(
    batch: Batch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resume reads the input again and answers the lines whose seq the store lacks: over
    an edited file those would be other requests than the ones the run left unanswered
    (and lines the run answered would stay answered with what they held then)."""
    requests = batch.folder / "in.jsonl"
    original = requests.read_bytes()
    batch.crash({0, 1}, [0, 1], None)
    try:
        requests.write_bytes(b'{"prompt": "a line put first"}\n' + original)
        code = main(["run", "--resume", batch.run_id, "--db", str(batch.db), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"the run's --input {requests}: changed since run {batch.run_id} started" in err
        assert "restore the file the run read, or start a new run" in err
        with sqlite3.connect(batch.db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 2
    finally:
        requests.write_bytes(original)
    code = main(["run", "--resume", batch.run_id, "--db", str(batch.db), "--quiet"])
    assert code == 1, capsys.readouterr().err  # its two broken lines are invalid_input
    results = [json.loads(line) for line in batch.out.read_text().split("\n") if line]
    assert sorted(r["request_id"] for r in results) == batch.ids()


def test_a_moved_input_file_is_resumed_from_its_new_place_when_its_content_is_the_same(
    batch: Batch, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = batch.folder / "in.jsonl"
    moved = batch.folder / "moved.jsonl"
    batch.crash({0, 1}, [0, 1], None)
    requests.rename(moved)
    try:
        code = main(["run", "--resume", batch.run_id, "--db", str(batch.db), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2
        assert f"the run's --input {requests}: no such file; if it was moved, give its new " in err
        assert f"moat run --resume {batch.run_id} --input NEW_PATH" in err
        other = batch.folder / "other.jsonl"
        other.write_text('{"prompt": "another request"}\n')
        args = ["run", "--resume", batch.run_id, "--db", str(batch.db), "--quiet"]
        assert main([*args, "--input", str(other)]) == 2
        assert f"the run read {requests}" in capsys.readouterr().err
        assert main([*args, "--input", str(moved)]) == 1  # its two broken lines: invalid_input
    finally:
        moved.rename(requests)
    results = [json.loads(line) for line in batch.out.read_text().split("\n") if line]
    assert sorted(r["request_id"] for r in results) == batch.ids()


def test_a_resume_answers_with_the_runs_own_models_and_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last requests of a resumed run meet the models and the seeded draws its first
    ones did; another `--model` or `--seed` is refused rather than mixed in."""
    graph = tmp_path / "ask.yaml"
    graph.write_text(
        "moat: 1\nname: ask\nmodels:\n  large: {provider: sim, profile: large}\n"
        "nodes:\n  a: {type: model, with: {model: large, prompt: '{{ input.prompt }}'}}\n"
        "output:\n  text: a.text\n  cost: a.cost_usd\n"
    )
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(6)))
    db, out = tmp_path / "t.db", tmp_path / "out.jsonl"
    args = ["run", str(graph), "--input", str(requests), "--db", str(db), "--out", str(out)]
    assert main([*args, "--quiet", "--model", "large=sim:small", "--seed", "7"]) == 0
    answered = out.read_text().splitlines(keepends=True)
    with Store.open(db, readonly=True) as store:
        run_id = store.list_runs()[0]["id"]
    with sqlite3.connect(db) as conn:  # the run died after its first three requests
        conn.execute("DELETE FROM requests WHERE run_id = ? AND seq >= 3", (run_id,))
        conn.execute("UPDATE runs SET status = 'died' WHERE id = ?", (run_id,))
    out.write_text("".join(answered[:3]))
    resume = ["run", "--resume", run_id, "--db", str(db), "--quiet"]
    assert main([*resume, "--seed", "8"]) == 2
    assert f"--seed 8 with --resume {run_id}: the run answered with seed 7" in (
        capsys.readouterr().err
    )
    assert main([*resume, "--model", "large=sim:large"]) == 2
    assert "the run answered with --model large=sim:small" in capsys.readouterr().err
    assert main(resume) == 0

    def outputs(lines: list[str]) -> dict[str, object]:
        return {r["request_id"]: r["output"] for r in map(json.loads, lines)}

    # the resumed requests answered as the run first answered them: same models, same draws
    assert outputs(out.read_text().splitlines()) == outputs(answered)


def test_a_run_whose_requests_a_program_gave_cannot_be_resumed_by_moat_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anyio

    from engine import Pipeline

    graph = tmp_path / "echo.yaml"
    graph.write_text(GRAPH)
    db = tmp_path / "t.db"

    async def answer_two() -> str:
        async with Pipeline(graph, db=db) as pipe:
            summary = await pipe.run_batch([{"prompt": "one"}, {"prompt": "two"}])
        return summary.run_id

    run_id = anyio.run(answer_two)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET status = 'died' WHERE id = ?", (run_id,))
    code = main(["run", "--resume", run_id, "--db", str(db), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "internal error" not in err
    assert "the run's requests were given by the program that ran it" in err
    assert f"pipe.start_batch(total, resume={run_id!r})" in err


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_answers_each_request_once(tmp_path: Path) -> None:
    graph = tmp_path / "echo.yaml"
    graph.write_text(GRAPH)
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(400)))
    out, db = tmp_path / "out.jsonl", tmp_path / "t.db"
    command = [sys.executable, "-m", "engine", "run", "--db", str(db), "--quiet"]
    proc = subprocess.Popen([*command, str(graph), "--input", str(requests), "--out", str(out)])
    row = None
    for delay in (1.2, 0.3, 0.5, 0.2, 0.4, 0.6, 1.0, 0.7):
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            with sqlite3.connect(db) as conn:
                row = conn.execute("SELECT id FROM runs").fetchone()
        except sqlite3.OperationalError:  # killed before the store had its tables
            row = None
        if row is None:  # killed before the run existed: start again
            proc = subprocess.Popen(
                [*command, str(graph), "--input", str(requests), "--out", str(out)]
            )
            continue
        proc = subprocess.Popen([*command, "--resume", row[0]])
    assert proc.wait(timeout=120) == 0
    if row is None:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT id FROM runs").fetchone()
    ids = [json.loads(line)["request_id"] for line in out.read_text().split("\n") if line]
    assert sorted(ids) == [f"{row[0]}-{i:06d}" for i in range(400)]
