"""The store's aggregate reads: one run's figures (`moat stats`) and the TUI's live polls.

Every function takes an open `Store` and returns plain rows or counts; the callers turn
them into figures. Keeping the SQL here (and nowhere outside `engine/store/`) means a
schema change is made in one package.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from engine.store.store import Row, Store

__all__ = [
    "EVENT_FACT_TYPES",
    "calls_by_model",
    "event_counts",
    "event_facts",
    "last_routes",
    "max_id",
    "request_counts_by_run",
    "requests_after",
    "route_decisions",
    "run_requests",
    "sim_call_between",
    "speculative_runs",
    "speculative_spend",
]

_RUN_REQUESTS = "SELECT r.id FROM requests r WHERE r.run_id = :run"
"""The ids of one run's finished requests, as a subquery."""

_TABLES = frozenset({"requests", "orchestration_events", "llm_calls", "node_runs"})

EVENT_FACT_TYPES = (
    "CACHE_HIT",
    "CACHE_MISS",
    "VALIDATION_PASSED",
    "VALIDATION_FAILED",
    "SPECULATIVE_RESULT_USED",
    "SPECULATIVE_RESULT_DISCARDED",
    "BRANCH_CANCELLED",
    "NODE_FAILED",
    "LOOP_CYCLE_STARTED",
    "ROUTE_SELECTED",
)
"""The only event types a live poll reads: everything else is skipped inside SQLite."""

_EVENT_FACTS = f"""
SELECT run_id, request_id,
  MAX(CASE WHEN event_type = 'LOOP_CYCLE_STARTED' THEN cycle END) AS max_cycle,
  SUM(event_type = 'CACHE_HIT') AS cache_hit,
  SUM(event_type = 'CACHE_MISS') AS cache_miss,
  MAX(CASE WHEN event_type = 'VALIDATION_PASSED' THEN id END) AS valid_id,
  MAX(CASE WHEN event_type = 'VALIDATION_FAILED' THEN id END) AS invalid_id,
  SUM(event_type = 'SPECULATIVE_RESULT_USED') AS spec_used,
  SUM(event_type = 'SPECULATIVE_RESULT_DISCARDED') AS spec_discarded,
  SUM(event_type = 'BRANCH_CANCELLED') AS spec_cancelled,
  SUM(event_type = 'NODE_FAILED') AS node_failed,
  MAX(CASE WHEN event_type = 'ROUTE_SELECTED' THEN id END) AS route_id
FROM orchestration_events
WHERE id > ? AND id <= ? AND event_type IN ({", ".join(f"'{t}'" for t in EVENT_FACT_TYPES)})
GROUP BY run_id, request_id
"""

_ROUTE_BATCH = 500
"""Event ids per `IN (...)` list: well under SQLite's limit on bound parameters."""


# -- one run (`moat stats`) ------------------------------------------------------------


def run_requests(store: Store, run_id: str) -> list[Row]:
    """The run's finished requests in input order: id, status, latency, cost, finish, error."""
    return store.query(
        "SELECT id, status, latency_ms, cost_usd, finished_at, error FROM requests "
        "WHERE run_id = ? ORDER BY seq",
        (run_id,),
    )


def event_counts(store: Store, run_id: str, event_types: Iterable[str]) -> Counter[str]:
    """How many events of each of `event_types` the run's finished requests recorded."""
    types = sorted(set(event_types))
    marks = ", ".join(f":t{i}" for i in range(len(types)))
    rows = store.query(
        "SELECT event_type, COUNT(*) AS n FROM orchestration_events "
        f"WHERE request_id IN ({_RUN_REQUESTS}) AND event_type IN ({marks}) "
        "GROUP BY event_type",
        {"run": run_id, **{f"t{i}": t for i, t in enumerate(types)}},
    )
    return Counter({row["event_type"]: row["n"] for row in rows})


def last_routes(store: Store, run_id: str) -> dict[str, str]:
    """Each finished request's last `ROUTE_SELECTED` decision (`(none)` when empty)."""
    rows = store.query(
        "SELECT request_id, decision FROM orchestration_events "
        f"WHERE request_id IN ({_RUN_REQUESTS}) AND event_type = 'ROUTE_SELECTED' "
        "ORDER BY request_id, sequence",
        {"run": run_id},
    )
    return {row["request_id"]: row["decision"] or "(none)" for row in rows}


def speculative_runs(store: Store, run_id: str) -> list[Row]:
    """Status and outcome of every speculative node run of the run's finished requests."""
    return store.query(
        "SELECT status, outcome FROM node_runs "
        f"WHERE speculative = 1 AND request_id IN ({_RUN_REQUESTS})",
        {"run": run_id},
    )


def speculative_spend(store: Store, run_id: str) -> tuple[float, float]:
    """Dollars spent on speculative calls, and the part of it discarded or cancelled."""
    row = store.query(
        "SELECT COALESCE(SUM(cost_usd), 0) AS spent, COALESCE(SUM(CASE WHEN call_outcome IN "
        "('discarded', 'cancelled') THEN cost_usd END), 0) AS wasted FROM llm_calls "
        f"WHERE call_kind = 'speculative' AND request_id IN ({_RUN_REQUESTS})",
        {"run": run_id},
    )[0]
    return float(row["spent"]), float(row["wasted"])


def calls_by_model(store: Store, run_id: str) -> list[Row]:
    """LLM calls and their cost per (model, provider), in name order."""
    return store.query(
        "SELECT model, provider, COUNT(*) AS calls, SUM(cost_usd) AS cost FROM llm_calls "
        f"WHERE request_id IN ({_RUN_REQUESTS}) GROUP BY model, provider "
        "ORDER BY model, provider",
        {"run": run_id},
    )


# -- live polls (the TUI) --------------------------------------------------------------


def max_id(store: Store, table: str) -> int:
    """The highest row id of `table` (0 when empty)."""
    if table not in _TABLES:
        raise ValueError(f"not a table of the store with an id column: {table!r}")
    return int(store.query(f"SELECT COALESCE(MAX(id), 0) AS high FROM {table}")[0]["high"])


def event_facts(store: Store, low: int, high: int) -> list[Row]:
    """Per request, what the events with ids in (low, high] say: cycles, cache, validation,
    speculation, failures and the id of the last route decision."""
    return store.query(_EVENT_FACTS, (low, high))


def route_decisions(store: Store, event_ids: Sequence[int]) -> dict[str, str]:
    """The decision of each `ROUTE_SELECTED` event in `event_ids`, by request id."""
    routes: dict[str, str] = {}
    for start in range(0, len(event_ids), _ROUTE_BATCH):
        ids = tuple(event_ids[start : start + _ROUTE_BATCH])
        sql = (
            "SELECT request_id, decision FROM orchestration_events "
            f"WHERE id IN ({', '.join('?' * len(ids))})"
        )
        for row in store.query(sql, ids):
            routes[row["request_id"]] = row["decision"] or ""
    return routes


def requests_after(store: Store, rowid: int, limit: int) -> list[Row]:
    """Up to `limit` finished requests written after `rowid`, with their `row_id`."""
    return store.query(
        "SELECT rowid AS row_id, id, run_id, seq, tenant, status, started_at, finished_at, "
        "latency_ms, cost_usd, policy_version FROM requests WHERE rowid > ? ORDER BY rowid "
        "LIMIT ?",
        (rowid, limit),
    )


def sim_call_between(store: Store, low: int, high: int) -> bool:
    """Whether an LLM call with an id in (low, high] went to the `sim` provider."""
    found = store.query(
        "SELECT 1 AS found FROM llm_calls WHERE id > ? AND id <= ? AND provider = 'sim' LIMIT 1",
        (low, high),
    )
    return bool(found)


def request_counts_by_run(store: Store) -> dict[str, int]:
    """How many finished requests each run has."""
    rows = store.query("SELECT run_id, COUNT(*) AS n FROM requests GROUP BY run_id")
    return {row["run_id"]: int(row["n"]) for row in rows}
