"""The policy tables of the store: immutable snapshots and the activation log.

A snapshot `(name, version)` is written once and never changes, except its `status`. The
active version of a policy is the one of its latest activation; `activate` also keeps the
snapshots' `status` column in step (the previous `active` one becomes `inactive`), so a
version marked `bad` by a guard stays `bad`. Every function runs inside the caller's
transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import Any

from engine.errors import StoreError
from engine.store.codec import strict_json

__all__ = [
    "activate",
    "insert_snapshot",
    "listed",
    "set_status",
    "versions",
]


def versions(conn: sqlite3.Connection, name: str) -> list[int]:
    """The stored versions of a policy, ascending."""
    rows = conn.execute(
        "SELECT version FROM policy_snapshots WHERE name = ? ORDER BY version", (name,)
    )
    return [int(v) for (v,) in rows]


def listed(numbers: Iterable[int]) -> str:
    """Version numbers for a message, runs of three or more as ranges (`1, 2, 4-5000`):
    a policy applied thousands of times must not fill the screen with them."""
    parts: list[str] = []
    run: list[int] = []
    for n in sorted(set(numbers)):
        if run and n != run[-1] + 1:
            parts.append(_span(run))
            run = []
        run.append(n)
    if run:
        parts.append(_span(run))
    return ", ".join(parts)


def _span(run: list[int]) -> str:
    if len(run) < 3:
        return ", ".join(str(n) for n in run)
    return f"{run[0]}-{run[-1]}"


def _missing(conn: sqlite3.Connection, name: str, version: int) -> StoreError:
    known = versions(conn, name)
    if not known:
        names = [n for (n,) in conn.execute("SELECT DISTINCT name FROM policy_snapshots")]
        policies = ", ".join(sorted(names)) or "none yet"
        return StoreError(
            f"no policy named '{name}' in the store (policies: {policies}); "
            "add one with `moat policy apply FILE`"
        )
    return StoreError(f"policy '{name}' has no version {version}; stored versions: {listed(known)}")


def insert_snapshot(
    conn: sqlite3.Connection,
    name: str,
    version: int,
    content_hash: str,
    body: Mapping[str, Any],
    parent_version: int | None,
    status: str,
    *,
    encoded: str | None = None,
) -> None:
    """Store a new snapshot (`encoded`: the body's strict JSON, if the caller has it).

    Raises:
        StoreError: `(name, version)` already exists.
    """
    try:
        conn.execute(
            "INSERT INTO policy_snapshots (name, version, content_hash, body_json, created_at, "
            "parent_version, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                version,
                content_hash,
                encoded
                if encoded is not None
                else strict_json(dict(body), f"policy '{name}' version {version}", sort_keys=True),
                time.time(),
                parent_version,
                status,
            ),
        )
    except sqlite3.IntegrityError as exc:
        latest = max(versions(conn, name), default=0)
        raise StoreError(
            f"policy '{name}' version {version} already exists (snapshots are immutable); "
            f"store the change as version {latest + 1}"
        ) from exc


def activate(conn: sqlite3.Connection, name: str, version: int, reason: str | None) -> int:
    """Make `version` the active one and log the activation; return the activation id.

    Raises:
        StoreError: no such snapshot; the message lists the stored versions.
    """
    exists = conn.execute(
        "SELECT 1 FROM policy_snapshots WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    if exists is None:
        raise _missing(conn, name, version)
    conn.execute(
        "UPDATE policy_snapshots SET status = 'inactive' "
        "WHERE name = ? AND status = 'active' AND version != ?",
        (name, version),
    )
    conn.execute(  # a version marked bad stays bad, even while active (`rollback --to`)
        "UPDATE policy_snapshots SET status = 'active' "
        "WHERE name = ? AND version = ? AND status != 'bad'",
        (name, version),
    )
    cursor = conn.execute(
        "INSERT INTO policy_activations (name, version, activated_at, reason) VALUES (?, ?, ?, ?)",
        (name, version, time.time(), reason),
    )
    return int(cursor.lastrowid or 0)


def set_status(conn: sqlite3.Connection, name: str, version: int, status: str) -> None:
    """Change a snapshot's status (`bad`, `inactive`, ...).

    Raises:
        StoreError: no such snapshot.
    """
    cursor = conn.execute(
        "UPDATE policy_snapshots SET status = ? WHERE name = ? AND version = ?",
        (status, name, version),
    )
    if cursor.rowcount == 0:
        raise _missing(conn, name, version)
