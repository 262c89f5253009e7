"""Edge stores with real runs in them, and a `moat sync-server` in a subprocess (sync tests)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import uvicorn

from engine.cli import main
from engine.store.sync_ops import SYNC_TABLES
from engine.sync.server import SyncServer, _config
from tests.support.fast_graphs import GRAPHS, fast_copy

EXAMPLES = GRAPHS / "examples" / "governed-answer.jsonl"


def edge_store(tmp: Path, name: str, *, copies: int = 1) -> Path:
    """A store holding one run of the fast governed-answer graph over its examples
    (`copies` times the ten example requests)."""
    graph = fast_copy("governed-answer", tmp)
    lines = EXAMPLES.read_text().splitlines() * copies
    requests = tmp / f"{name}.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    db = tmp / f"{name}.db"
    run_into(db, graph, requests)
    return db


def run_into(db: Path, graph: Path, requests: Path) -> None:
    """One more run of `graph` over `requests`, recorded in `db`."""
    code = main(["run", str(graph), "--input", str(requests), "--db", str(db), "--out", os.devnull])
    assert code == 0


def counts(db: Path) -> dict[str, int]:
    """Rows per synced table."""
    with sqlite3.connect(db) as conn:
        return {
            t.name: conn.execute(f"SELECT COUNT(*) FROM {t.name}").fetchone()[0]
            for t in SYNC_TABLES
        }


def fingerprint(db: Path, table: str, skip: tuple[str, ...] = ()) -> Counter[tuple[object, ...]]:
    """The multiset of a table's rows, without the columns in `skip` (ids that are remapped)."""
    with sqlite3.connect(db) as conn:
        cursor = conn.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cursor.description]
        keep = [i for i, n in enumerate(names) if n not in skip]
        return Counter(tuple(row[i] for i in keep) for row in cursor)


def integrity(db: Path) -> str:
    """`PRAGMA integrity_check` of a store."""
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


class SyncServerProcess:
    """`moat sync-server --db DB` in a subprocess, on a given or a free port."""

    def __init__(self, db: Path, port: int = 0, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "sync-server", "--db", str(db), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"sync-server did not start: {line} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL, no goodbye."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def listening(server: SyncServer) -> Iterator[str]:
    """`server` (opened here, closed after) on uvicorn on a free loopback port, in a thread
    of its own, as `moat sync-server` serves it; its URL."""
    server.open()
    sock = socket.create_server(("127.0.0.1", 0))
    runner = uvicorn.Server(_config(server))
    thread = threading.Thread(target=anyio.run, args=(lambda: runner.serve(sockets=[sock]),))
    thread.start()
    try:
        while not runner.started and thread.is_alive():
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        runner.should_exit = True
        thread.join(30)
        sock.close()
        server.close()


def wait_for_port_free(port: int, timeout: float = 5.0) -> None:
    """Give the kernel a moment to release a killed server's port."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.05)
