"""Argument checks shared by the bench's command lines: clear errors before any work.

Every entry point (`python -m bench`, `bench.workload`, `bench.calibration`,
`bench.router_train`, `bench.router_compare`) takes request counts, seeds and output paths;
a bad one must be a one-line error (exit 2) before minutes of runs, never a traceback
after them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_REQUESTS",
    "count",
    "read_rows",
    "seed",
    "seed_list",
    "total_requests",
    "writable_file",
]

MAX_REQUESTS = 1_000_000
"""Requests one invocation may generate in all (per seed times seeds): the workloads are
held in memory, and a million requests is already hours of simulated runs."""


def count(text: str) -> int:
    """An argparse type: a request count, 1 to `MAX_REQUESTS`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_REQUESTS:
        raise argparse.ArgumentTypeError(
            f"must be from 1 to {MAX_REQUESTS:,} requests, got {value:,}"
        )
    return value


def seed(text: str) -> int:
    """An argparse type: a seed, a whole number >= 0 (Python seeds a generator with the
    absolute value of an integer, so -3 would draw the same workload as 3)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be 0 or more, got {value} (a negative seed draws what its absolute value draws)"
        )
    return value


def seed_list(text: str) -> list[int]:
    """An argparse type: comma-separated distinct seeds, at least one."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated seeds, e.g. 1,2")
    seeds = [seed(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is listed twice in {text!r}")
    return seeds


def total_requests(parser: argparse.ArgumentParser, n: int, seeds: int) -> None:
    """Refuse `n` requests per seed over `seeds` seeds when that is above `MAX_REQUESTS`."""
    if n * seeds > MAX_REQUESTS:
        parser.error(
            f"--n {n:,} x {seeds:,} seeds is {n * seeds:,} requests; at most "
            f"{MAX_REQUESTS:,} in one run"
        )


def writable_file(parser: argparse.ArgumentParser, flag: str, path: Path | None) -> None:
    """Refuse an output file whose directory is missing or that is a directory, before any
    work is done (an error after the runs would lose them)."""
    if path is None:
        return
    if path.is_dir():
        parser.error(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        parser.error(f"{flag} {path}: the directory {parent} does not exist")


def read_rows(
    parser: argparse.ArgumentParser, flag: str, path: Path, keys: Sequence[str]
) -> list[dict[str, Any]]:
    """The JSON objects of a recorded-runs file, each with `keys`; a bad line is an error
    that names the file and line."""
    if not path.is_file():
        parser.error(f"{flag} {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"{flag} {path}: cannot be read ({exc})")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            parser.error(f"{path}:{number}: not JSON ({exc.msg})")
        if not isinstance(row, dict):
            parser.error(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in keys if k not in row]
        if missing:
            parser.error(f"{path}:{number}: no field {missing[0]!r}; a row has {', '.join(keys)}")
        if not isinstance(row.get("labels"), dict) or not isinstance(row.get("answers"), dict):
            parser.error(f"{path}:{number}: `labels` and `answers` must be JSON objects")
        rows.append(row)
    if not rows:
        parser.error(f"{flag} {path}: no recorded runs (one JSON object per line)")
    return rows
