"""A store in a folder moat may not write to (a mounted backup, say) can still be read:
`moat runs` and `moat report` do not need the -shm file of a WAL store there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.cli.test_cli_careless import FAST


def _as_unprivileged() -> list[str] | None:
    """A command prefix under which file permissions hold (root ignores them)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def test_a_store_in_a_read_only_folder_is_read_as_it_is(tmp_path: Path) -> None:
    prefix = _as_unprivileged()
    if prefix is None:
        pytest.skip("needs setpriv to drop root's override of file permissions")
    graph = tmp_path / "fast.yaml"
    graph.write_text(FAST)
    folder = tmp_path / "backup"
    folder.mkdir()
    db = folder / "moat.db"
    moat = [sys.executable, "-m", "engine"]
    made = subprocess.run(
        [*moat, "run", str(graph), "--prompt", "hi", "--db", str(db), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    db.chmod(0o444)
    folder.chmod(0o555)
    try:
        listed = subprocess.run(
            [*prefix, *moat, "runs", "--db", str(db)], capture_output=True, text=True
        )
    finally:
        folder.chmod(0o755)
    assert listed.returncode == 0, listed.stderr
    assert " fast " in listed.stdout and " finished " in listed.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["moat.db", "moat.db-writer"]
