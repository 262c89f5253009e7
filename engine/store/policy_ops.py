"""The policy manager's atomic store operations: register, publish, roll back, poll.

Each operation runs in one `BEGIN IMMEDIATE` transaction on a short-lived connection of its
own, in turn with the file's other writers (`write_transaction`), so checking the active
version, inserting a snapshot, activating it, updating statuses and recording the
orchestration event either all happen or none do, even with several processes applying
policies to the same store. The row-level work reuses the store's own policy-table
functions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import PolicyError, StoreError
from engine.events import EventType, OrchestrationEvent, RequestStatus
from engine.store import policy_tables as _store_policy
from engine.store.rows import EVENT_SQL, event_row
from engine.store.schema import connect, describe_error, write_transaction

if TYPE_CHECKING:
    from engine.store.store import Store

__all__ = [
    "ROLLBACK_PREFIXES",
    "Active",
    "Outcome",
    "baseline_samples",
    "graph_paths",
    "guard_decisions",
    "is_rollback",
    "poll_active",
    "publish",
    "record_guard_kept",
    "register",
    "roll_back",
    "transaction",
    "version_numbers",
]

Outcome = str
"""`created`, `reactivated` or `unchanged`."""

ROLLBACK_PREFIXES = ("rollback", "guard")
"""How the activation reasons of rollbacks start (`rollback from v3`, `guard: ...`); an
`apply` may not use them, so the activation log tells rollbacks apart."""

_ACTIVE_SQL = (
    "SELECT a.id, a.version, a.reason, s.status, s.parent_version, s.content_hash, "
    "s.body_json FROM policy_activations a JOIN policy_snapshots s "
    "ON s.name = a.name AND s.version = a.version "
    "WHERE a.name = ? ORDER BY a.id DESC LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class Active:
    """The active version of a policy as of one read.

    Attributes:
        activation_id: the `policy_activations` row that made it active.
        version: the active version.
        body: its settings.
        status: its snapshot status (`active`, or `bad` if marked since).
        parent_version: the version it was derived from.
        reason: why it was activated (`initial`, `apply`, `rollback ...`, `guard: ...`).
        content_hash: sha256 of its canonical body.
    """

    activation_id: int
    version: int
    body: dict[str, Any]
    status: str
    parent_version: int | None
    reason: str | None
    content_hash: str


@contextmanager
def transaction(store: Store) -> Iterator[sqlite3.Connection]:
    """One write transaction on a fresh connection to the store's file, taken in turn with
    every other writer of the file (`write_transaction`)."""
    conn = connect(store.path)
    try:
        with write_transaction(conn, store.path):
            yield conn
    except sqlite3.Error as exc:
        raise StoreError(
            f"{store.path}: policy update failed: {describe_error(exc, store.path)}"
        ) from exc
    finally:
        conn.close()


def _active(conn: sqlite3.Connection, name: str) -> Active | None:
    row = conn.execute(_ACTIVE_SQL, (name,)).fetchone()
    if row is None:
        return None
    return Active(int(row[0]), int(row[1]), json.loads(row[6]), row[3], row[4], row[2], row[5])


_LATEST_ACTIVATION = "SELECT id FROM policy_activations WHERE name = ? ORDER BY id DESC LIMIT 1"


def poll_active(store: Store, name: str, *, newer_than: int | None = None) -> Active | None:
    """The active version as of now, read on the store's own connection (cheap).

    With `newer_than` (the activation a process knows), None unless a later activation
    exists, found by its id alone: a poll that finds nothing new reads no body (decoding a
    policy of up to 1 MiB twice a second would hold the GIL for tens of milliseconds at a
    time; the index `policy_activations_name` answers the id)."""
    if newer_than is not None:
        latest = store.query(_LATEST_ACTIVATION, (name,))
        if not latest or int(latest[0]["id"]) <= newer_than:
            return None
    rows = store.query(_ACTIVE_SQL, (name,))
    if not rows:
        return None
    r = rows[0]
    active = Active(
        int(r["id"]),
        int(r["version"]),
        r["body"],
        r["status"],
        r["parent_version"],
        r["reason"],
        r["content_hash"],
    )
    return None if newer_than is not None and active.activation_id <= newer_than else active


def _next_sequence(conn: sqlite3.Connection, run_id: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(sequence), -1) + 1 FROM orchestration_events "
        "WHERE run_id = ? AND request_id = ''",
        (run_id,),
    ).fetchone()
    return int(row[0])


def _event(
    conn: sqlite3.Connection,
    run_id: str,
    event_type: EventType,
    decision: str,
    payload: Mapping[str, Any],
    reason_codes: tuple[str, ...] = (),
) -> None:
    """Record a policy event as any other `OrchestrationEvent`, in the caller's transaction."""
    event = OrchestrationEvent(
        run_id=run_id,
        request_id="",
        cycle=0,
        stage="policy",
        component="policy",
        event_type=event_type,
        sequence=_next_sequence(conn, run_id),
        decision=decision,
        status="ok",
        reason_codes=reason_codes,
        payload=dict(payload),
    )
    conn.execute(EVENT_SQL, event_row(event))


def _activate(
    conn: sqlite3.Connection,
    name: str,
    version: int,
    reason: str,
    previous: Active | None,
    run_id: str,
    mark_previous: str = "superseded",
) -> Active:
    _store_policy.activate(conn, name, version, reason)
    # a version marked bad keeps its mark when it is left (it was forced back with --to)
    if previous is not None and previous.version != version and previous.status != "bad":
        _store_policy.set_status(conn, name, previous.version, mark_previous)
    active = _active(conn, name)
    assert active is not None
    _event(
        conn,
        run_id,
        EventType.POLICY_ACTIVATED,
        f"v{version}",
        {
            "name": name,
            "version": version,
            "previous_version": previous.version if previous else None,
            "reason": reason,
            "content_hash": active.content_hash,
        },
    )
    return active


def register(
    store: Store, name: str, body: Mapping[str, Any], content_hash: str, run_id: str = ""
) -> Active:
    """The active version, storing `body` as version 1 and activating it if there is none."""
    with transaction(store) as conn:
        active = _active(conn, name)
        if active is not None:
            return active
        versions = _store_policy.versions(conn, name)
        if not versions:
            _store_policy.insert_snapshot(conn, name, 1, content_hash, body, None, "candidate")
            return _activate(conn, name, 1, "initial", None, run_id)
        good = [v for v in versions if _status(conn, name, v) != "bad"] or versions
        return _activate(conn, name, good[-1], "initial", None, run_id)


def _status(conn: sqlite3.Connection, name: str, version: int) -> str | None:
    row = conn.execute(
        "SELECT status FROM policy_snapshots WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    return None if row is None else str(row[0])


def publish(
    store: Store,
    name: str,
    body: Mapping[str, Any],
    content_hash: str,
    *,
    reason: str,
    run_id: str,
    check: Callable[[Active | None], None],
    body_json: str | None = None,
) -> tuple[Active, Outcome, Active | None]:
    """Validate against the active version and make `body` active, atomically.

    A body identical to the active version changes nothing (`unchanged`); identical to an
    older version reactivates it (`reactivated`) unless the guard marked it bad; otherwise
    it is stored as the next version (`created`).

    Args:
        store: the store.
        name: the policy name.
        body: the new settings.
        content_hash: `content_hash(body)`.
        reason: the activation reason.
        run_id: recorded with the `POLICY_ACTIVATED` event.
        check: called with the active version inside the transaction; raises to refuse.
        body_json: the body's canonical strict JSON, when the caller has it (the text
            `content_hash` covers): stored as it is instead of encoding the body again.

    Returns:
        `(active, outcome, previous)`.

    Raises:
        PolicyError: `check` refused the body, or it equals a version marked bad.
    """
    with transaction(store) as conn:
        previous = _active(conn, name)
        check(previous)
        if previous is not None and previous.content_hash == content_hash:
            return previous, "unchanged", previous
        same = conn.execute(
            "SELECT version, status FROM policy_snapshots WHERE name = ? AND content_hash = ? "
            "ORDER BY version DESC LIMIT 1",
            (name, content_hash),
        ).fetchone()
        if same is not None and same[1] == "bad":
            raise PolicyError(
                f"policy '{name}': this content is identical to version {same[0]}, which was "
                f"marked bad; change it, or force it back with "
                f"`moat policy rollback {name} --to {same[0]}`"
            )
        if same is not None:
            active = _activate(conn, name, int(same[0]), reason, previous, run_id)
            return active, "reactivated", previous
        version = max(_store_policy.versions(conn, name), default=0) + 1
        parent = previous.version if previous else None
        _store_policy.insert_snapshot(
            conn, name, version, content_hash, body, parent, "candidate", encoded=body_json
        )
        return _activate(conn, name, version, reason, previous, run_id), "created", previous


def is_rollback(reason: str | None) -> bool:
    """Whether an activation's reason marks a rollback (manual or by the guard)."""
    return (reason or "").startswith(ROLLBACK_PREFIXES)


def _undo_stack(conn: sqlite3.Connection, name: str) -> list[int]:
    """The activation log replayed as an undo stack, the active version on top.

    Every activation that is not a rollback pushes its version. A rollback removes the
    version it left, then goes down the stack to its target when the target is on it
    (so every version it passed counts as rolled back from), else pushes the target
    (`--to` a version no longer on the stack).
    """
    stack: list[int] = []
    rows = conn.execute(
        "SELECT version, reason FROM policy_activations WHERE name = ? ORDER BY id", (name,)
    )
    for version, reason in rows:
        if is_rollback(reason) and stack:
            stack.pop()
            if version in stack:
                del stack[len(stack) - stack[::-1].index(version) :]
                continue
        stack.append(int(version))
    return stack


def _previous_good(conn: sqlite3.Connection, name: str, current: int) -> int | None:
    """What a rollback without `--to` reactivates: the version below the active one on the
    undo stack, skipping versions marked bad."""
    stack = _undo_stack(conn, name)
    if stack and stack[-1] == current:
        stack.pop()
    while stack and (stack[-1] == current or _status(conn, name, stack[-1]) == "bad"):
        stack.pop()
    return stack[-1] if stack else None


def roll_back(
    store: Store,
    name: str,
    *,
    to: int | None,
    expect_version: int | None,
    mark: str,
    reason: str | None,
    run_id: str,
    payload: Mapping[str, Any] | None = None,
    expect_activation: int | None = None,
) -> tuple[Active, Active] | None:
    """Reactivate `to` (default: the version activated before the active one that was not
    rolled back from, nor marked bad: see `_undo_stack`).

    Args:
        store: the store.
        name: the policy name.
        to: the version to reactivate, or None for the previous good one.
        expect_version: only roll back if this version is still the active one (the guard
            uses it so two processes never roll back twice); None: whatever is active.
        mark: the status the rolled-back version gets (`superseded` or `bad`).
        reason: the activation reason; default `rollback from vN`.
        run_id: recorded with the events.
        payload: extra figures for the `POLICY_ROLLED_BACK` event.
        expect_activation: only roll back if this activation is still the latest (the
            guard judged what it observed under it: not a later `rollback --to` or
            re-apply of the same version).

    Returns:
        `(rolled_back, now_active)`, or None when `expect_version` (or
        `expect_activation`) is no longer active.

    Raises:
        PolicyError: nothing to roll back to, or `to` is unknown or already active.
    """
    with transaction(store) as conn:
        current = _active(conn, name)
        if current is None:
            raise _unknown(conn, name)
        if expect_version is not None and current.version != expect_version:
            return None
        if expect_activation is not None and current.activation_id != expect_activation:
            return None
        target = to if to is not None else _previous_good(conn, name, current.version)
        _check_target(conn, name, current, target)
        assert target is not None
        why = reason or f"rollback from v{current.version}"
        _event(
            conn,
            run_id,
            EventType.POLICY_ROLLED_BACK,
            f"v{current.version} -> v{target}",
            {
                "name": name,
                "from_version": current.version,
                "to_version": target,
                "reason": why,
                "marked": mark,
                **(payload or {}),
            },
            ("guard",) if mark == "bad" else ("manual",),
        )
        active = _activate(conn, name, target, why, current, run_id, mark_previous=mark)
        return current, active


def record_guard_kept(
    store: Store,
    name: str,
    *,
    version: int,
    reason: str,
    reason_codes: tuple[str, ...],
    run_id: str,
    payload: Mapping[str, Any],
) -> None:
    """Record that the guard judged `version` and kept it: a `GATE_DECISION` of the policy
    (stage and component `policy`, decision `keep vN`), once per judged version, saying
    which thresholds held and which the window could not judge (too few baseline samples:
    no rollback was considered). A rollback says so in its `POLICY_ROLLED_BACK` instead."""
    with transaction(store) as conn:
        _event(
            conn,
            run_id,
            EventType.GATE_DECISION,
            f"keep v{version}",
            {"name": name, "version": version, "reason": reason, **payload},
            ("guard", *reason_codes),
        )


def guard_decisions(store: Store, name: str, *, version: int | None = None) -> list[dict[str, Any]]:
    """What the guard decided about the policy's versions (of `version` only, if given),
    oldest first: each a dict with `decision` (`keep vN`, or `vN -> vM` for a rollback),
    `reason_codes`, `started_at` and the event's `payload` (`reason`, the figures)."""
    rows = store.query(
        "SELECT event_type, decision, started_at, reason_codes_json, payload_json "
        "FROM orchestration_events WHERE request_id = '' AND stage = 'policy' "
        "AND event_type IN (?, ?) AND json_extract(payload_json, '$.name') = ? "
        "AND json_extract(reason_codes_json, '$[0]') = 'guard' "
        "AND (? IS NULL OR COALESCE(json_extract(payload_json, '$.version'), "
        "json_extract(payload_json, '$.from_version')) = ?) ORDER BY started_at, id",
        (EventType.GATE_DECISION.value, EventType.POLICY_ROLLED_BACK.value, name, version, version),
    )
    return [dict(row) for row in rows]  # (`query` decodes the `_json` columns)


def _check_target(conn: sqlite3.Connection, name: str, current: Active, target: int | None) -> None:
    known = _store_policy.versions(conn, name)
    if target is None:
        raise PolicyError(
            f"policy '{name}': no earlier version to roll back to (active: "
            f"v{current.version}; stored versions: {_store_policy.listed(known)}); "
            "apply a fixed file instead"
        )
    if target not in known:
        raise PolicyError(
            f"policy '{name}' has no version {target}; stored versions: "
            f"{_store_policy.listed(known)}"
        )
    if target == current.version:
        raise PolicyError(
            f"policy '{name}': version {target} is already active; name another with --to"
        )


def _unknown(conn: sqlite3.Connection, name: str) -> PolicyError:
    names = sorted(n for (n,) in conn.execute("SELECT DISTINCT name FROM policy_snapshots"))
    listed = ", ".join(names) or "none yet"
    return PolicyError(
        f"no active policy named '{name}' in the store (policies: {listed}); "
        "add one with `moat policy apply FILE`"
    )


def version_numbers(store: Store, name: str, *, status: str | None = None) -> list[int]:
    """The policy's stored versions (only those with `status` if given), ascending, read
    without their bodies: a store may hold thousands of versions of up to 1 MiB each."""
    rows = store.query(
        "SELECT version FROM policy_snapshots WHERE name = ? AND status = COALESCE(?, status) "
        "ORDER BY version",
        (name, status),
    )
    return [int(row["version"]) for row in rows]


_UNJUDGED = (RequestStatus.INVALID_INPUT.value, RequestStatus.CANCELLED.value)
"""Requests the guard leaves out, stored or observed: no work ran (a bad input), or the
caller cut it short; their latency and cost say nothing about the policy."""


def baseline_samples(
    store: Store, name: str, version: int, limit: int
) -> list[tuple[float, float]]:
    """`(latency_ms, cost_usd)` of the latest stored requests that pinned `version`,
    leaving out those the guard does not judge (`_UNJUDGED`), as the running process
    does with its own."""
    rows = store.query(
        "SELECT latency_ms, cost_usd FROM requests WHERE policy_name = ? AND "
        "policy_version = ? AND status NOT IN (?, ?) ORDER BY finished_at DESC LIMIT ?",
        (name, version, *_UNJUDGED, limit),
    )
    return [(float(r["latency_ms"]), float(r["cost_usd"])) for r in rows]


def graph_paths(store: Store, name: str) -> list[str]:
    """The graph files of the runs that read policy `name` (their `config_json` records
    both), newest run first, each once: the graphs `moat policy apply` must not break,
    wherever it is run from. The files may have moved or changed since."""
    rows = store.query(
        "SELECT path, MAX(started_at) AS last FROM (SELECT started_at, CASE WHEN "
        "json_valid(config_json) THEN json_extract(config_json, '$.graph_path') END AS path, "
        "CASE WHEN json_valid(config_json) THEN json_extract(config_json, '$.policy') END "
        "AS policy FROM runs) WHERE policy = ? AND typeof(path) = 'text' "
        "GROUP BY path ORDER BY last DESC, path",
        (name,),
    )
    return [str(row["path"]) for row in rows]
