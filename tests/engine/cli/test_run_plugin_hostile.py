"""`moat run` with a node plugin that misbehaves: the batch goes on, the store keeps every
finished request, and moat prints neither a traceback nor an internal error."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[3]
ARGS = ("--input", "in.jsonl", "--out", "out.jsonl", "--db", "t.db", "--quiet")
ONE_AT_A_TIME = ("--concurrency", "1")
GRAPH = """\
moat: 1
name: hostile
plugins: [tests.support.hostile_nodes]
input: {type: object, properties: {mode: {type: string}}}
nodes:
  h: {type: hostile, with: {mode: "{{ input.mode }}"}}
output:
  v: h.value
"""


def moat_run(tmp_path: Path, *modes: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    (tmp_path / "g.yaml").write_text(GRAPH)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"mode": m}) + "\n" for m in modes))
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "g.yaml", *ARGS, *ONE_AT_A_TIME],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MOAT_DB": "", "PYTHONPATH": str(ROOT)},
    )
    out = tmp_path / "out.jsonl"
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return done, lines


def test_a_node_raising_keyboard_interrupt_stops_the_run_as_ctrl_c_does(tmp_path: Path) -> None:
    done, lines = moat_run(tmp_path, "ok", "raise_interrupt", *["ok"] * 30)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "interrupted; finished requests are kept. Resume with" in done.stderr
    assert [line["status"] for line in lines[:2]] == ["ok", "failed"]
    assert "raised KeyboardInterrupt" in lines[1]["error"]
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("select status from runs").fetchone() == ("interrupted",)
        stored = db.execute("select count(*) from requests").fetchone()[0]
    assert stored == len(lines) < 32
