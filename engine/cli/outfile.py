"""The `--out` file of `moat run`: result lines appended once their rows are committed,
and on `--resume` made whole again from the store.

A line is appended only after its request's rows are committed, each batch of lines in one
`write`, so a `kill -9` leaves no duplicated line and nothing the store does not know; at
worst a torn last line, which `reconcile_out` drops before writing the lines the file lacks.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from stat import S_ISREG
from typing import Any

import anyio

from engine import events
from engine.api import Pipeline
from engine.errors import MoatError, SpecError
from engine.events import RequestRecord
from engine.store.store import Store, row_result_line

__all__ = ["OutFailed", "OutWriter", "reconcile_out", "result_line"]


def result_line(record: RequestRecord) -> str:
    """The `--out` line of one request."""
    line = events.result_line(
        record.id,
        record.status,
        record.output,
        record.latency_ms,
        record.cost_usd,
        record.policy_version,
        record.error,
        record.degraded,
    )
    return events.strict_json(line)


def reconcile_out(store: Store, run_id: str, out: Path) -> None:
    """Drop a torn last line, then append the lines the store has and the file lacks (all
    of them when the file is gone).

    A named pipe or a device (`/dev/null`, `/dev/full`) keeps nothing to read back: the
    lines it was given are the reader's, and only the requests answered now are written.

    Raises:
        SpecError: the file cannot be read or written (a full disk, say); nothing ran.
    """
    if out.exists() and not out.is_file():
        return
    try:
        _reconcile(store, run_id, out)
    except OSError as exc:
        raise SpecError(
            f"--out {out}: making it whole again (the lines run {run_id} answered) failed: "
            f"{exc.strerror}; fix that, or resume with --out OTHER_FILE"
        ) from exc


def _reconcile(store: Store, run_id: str, out: Path) -> None:
    data = out.read_bytes() if out.exists() else b""
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        out.write_bytes(data)
    have = set()
    for line in data.decode("utf-8", "replace").split("\n"):  # JSON text may hold U+2028
        try:
            have.add(json.loads(line)["request_id"])
        except (ValueError, KeyError, TypeError):
            continue
    missing = [r for r in store.list_requests(run_id) if r["id"] not in have]
    if missing:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write("".join(_stored_line(r) + "\n" for r in missing))


def _stored_line(row: Mapping[str, Any]) -> str:
    """The `--out` line of a stored request (a row of `Store.list_requests`)."""
    return events.strict_json(row_result_line(row))


def _open_out(out: str) -> int:
    """The `--out` file opened to append; a named pipe must have its reader already (moat
    would otherwise wait for one, silently, before answering anything)."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise SpecError(
                f"--out {out}: a named pipe that nothing reads; start its reader first "
                f"(e.g. `cat {out} &`), or give a file"
            ) from exc
        raise SpecError(f"--out {out}: cannot open it for writing: {exc.strerror}") from exc
    os.set_blocking(fd, True)  # a slow reader holds the writes back rather than fail them
    _start_on_a_new_line(fd, out)
    return fd


def _start_on_a_new_line(fd: int, out: str) -> None:
    """A file whose last line has no newline (one torn by a `kill -9`, or text written by
    hand) gets one, so the first result line is a line of its own, not glued to it."""
    stat = os.fstat(fd)
    if not (S_ISREG(stat.st_mode) and stat.st_size):
        return
    try:
        with open(out, "rb") as fh:  # (the descriptor is write-only, as a pipe's must be)
            fh.seek(-1, os.SEEK_END)
            last = fh.read(1)
    except OSError:  # a file moat may write but not read: appended to as it is
        return
    if last != b"\n":
        try:
            os.write(fd, b"\n")
        except OSError as exc:
            os.close(fd)
            raise SpecError(f"--out {out}: cannot write to it: {exc.strerror}") from exc


class OutFailed(MoatError):
    """A result line could not be written to `--out` (a full disk, say): the run stops,
    and what finished is in the store (a resume writes the missing lines)."""


class OutWriter:
    """Appends result lines once their rows are committed, a batch per `write` call."""

    def __init__(self, pipe: Pipeline, out: str | None) -> None:
        self.pipe = pipe
        self.out = out
        self.pending: list[RequestRecord] = []
        self._fd: int | None = None
        if out:
            self._fd = _open_out(out)

    def add(self, record: RequestRecord) -> None:
        self.pending.append(record)

    def store_failed(self) -> None:
        """Storing records failed: the lines waiting may be of requests whose rows were
        lost, and a flush after the failure no longer says so (the error is reported
        once). They are not written to `--out`; a resume writes those the store has."""
        if self.out:
            self.pending.clear()

    async def drain(self) -> None:
        count = len(self.pending)
        if not count:
            return
        # Take the lines only once their rows are committed: a drain cancelled while it
        # waits (the run ending under the periodic one) leaves them to the final drain.
        await anyio.to_thread.run_sync(self.pipe.flush)
        batch = self.pending[:count]
        del self.pending[:count]
        data = "".join(result_line(r) + "\n" for r in sorted(batch, key=lambda r: r.seq))
        if self._fd is None:
            sys.stdout.write(data)
            sys.stdout.flush()
        else:
            encoded = memoryview(data.encode("utf-8"))
            try:
                while encoded:  # (a write may take only part of it)
                    encoded = encoded[os.write(self._fd, encoded) :]
            except OSError as exc:
                raise OutFailed(
                    f"--out {self.out}: writing result lines failed: {exc.strerror}"
                ) from exc

    async def loop(self) -> None:
        while True:
            await anyio.sleep(0.1)
            await self.drain()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
