"""The processes below a process, read from `/proc` (Linux), for benches that sum CPU and
memory over a server's workers or Ray's daemons."""

from __future__ import annotations

from pathlib import Path

__all__ = ["children", "descendants"]


def _parents() -> dict[int, int]:
    """Every live process's parent pid."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:  # it ended while we looked
                continue
            parents[int(entry.name)] = int(stat[1])
    return parents


def children(pid: int) -> list[int]:
    """The direct child processes of `pid`."""
    return [child for child, parent in _parents().items() if parent == pid]


def descendants(root: int) -> list[int]:
    """Every process below `root`, at any depth."""
    parents = _parents()
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        below = [pid for pid, ppid in parents.items() if ppid == parent]
        found += below
        frontier += below
    return found
