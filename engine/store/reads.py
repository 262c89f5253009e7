"""The store's aggregate reads: one run's figures (`moat stats`) and the TUI's views.

Every function takes an open `Store` and returns plain rows or figures, so what it costs
depends on the size of the answer (one run, one page), never on the size of the store or of
the run: a run's figures come from the tallies the writer keeps as it writes
(`engine.store.tallies`), and are counted from the rows, inside SQLite through an index,
only when the tallies do not account for every stored request of the run (rows written
through the contract's views, or merged by `moat sync`). Lists are read a page at a time.
Keeping the SQL here (and nowhere outside `engine/store/`) means a schema change is made in
one package.
"""

from __future__ import annotations

import json
import math
import sqlite3
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.store.compact import (
    FACT_CODES,
    FACT_EVENT_TYPES,
    FACTS_WHERE,
    code_of,
    either,
    name_of,
)
from engine.store.schema import FAILED_IN, connect, user_version
from engine.store.store import Row, Store

__all__ = [
    "FACT_EVENT_TYPES",
    "RequestPage",
    "RunFacts",
    "being_created",
    "calls_by_model",
    "event_counts",
    "every_run",
    "latest_request_rowid",
    "percentiles",
    "request_count",
    "request_facts",
    "request_page",
    "requests_after",
    "route_counts",
    "run_facts",
    "run_figures",
    "run_series",
    "sim_call_in",
    "slowest_and_failed",
    "speculative_counts",
    "status_counts",
]

_RUN_REQUESTS = "SELECT r.id FROM requests r WHERE r.run_id = :run"
"""The ids of one run's finished requests, as a subquery."""

_KEYS_STORED = "SELECT k.key FROM requests r JOIN request_keys k ON k.id = r.id"
"""The request keys of every finished request, as a subquery."""
_RUN_KEYS_STORED = f"{_KEYS_STORED} WHERE r.run_id = :run"
"""The request keys of one run's finished requests, as a subquery."""
_ROW = (
    "SELECT rowid AS row_id, id, run_id, seq, tenant, status, started_at, finished_at, "
    "latency_ms, cost_usd, policy_version FROM requests"
)
_FACT_BATCH = 500
"""Request ids per `IN (...)` list: well under SQLite's limit on bound parameters."""


def _scope(run_id: str | None, column: str = "run_id") -> tuple[str, dict[str, Any]]:
    if run_id is None:
        return "1", {}
    return f"{column} = :run", {"run": run_id}


def _tallied(store: Store, run_id: str | None) -> Row | None:
    """The run's `run_tallies` row, if it accounts for every stored request of the run."""
    if run_id is None:
        return None
    with store.snapshot():  # (a commit between the two reads would look like a mismatch)
        rows = store.query("SELECT * FROM run_tallies WHERE run_id = ?", (run_id,))
        if rows and int(rows[0]["requests"]) == request_count(store, run_id):
            return rows[0]
    return None


def _counts(store: Store, run_id: str | None, kind: str) -> list[Row] | None:
    """The run's tallied counts of `kind` (`engine.store.tallies`), or None when the
    tallies do not account for the run's requests."""
    if _tallied(store, run_id) is None:
        return None
    return store.query(
        "SELECT name, n, cost, spec_cost, spec_wasted FROM run_counts "
        "WHERE run_id = ? AND kind = ? ORDER BY name",
        (run_id, kind),
    )


# -- one run, or every run ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the events of a run's (or every run's) requests say, counted in SQLite."""

    cache_hits: int = 0
    cache_misses: int = 0
    validation_passed: int = 0
    validation_failed: int = 0
    spec_used: int = 0
    spec_discarded: int = 0
    spec_cancelled: int = 0
    node_failures: int = 0


_FACT_NAMES = {code: name for name, code in FACT_CODES.items()}
_RUN_CODE = "run = (SELECT code FROM strings WHERE text = :run)"


def _fact_counts(store: Store, run_id: str | None) -> dict[str, int]:
    """The finished requests' fact events by type: tallied, or counted from the index
    `event_rows_facts` (the fact types have fixed codes, `engine.store.compact`)."""
    tallied = _counts(store, run_id, "fact")
    if tallied is not None:
        return {str(row["name"]): int(row["n"]) for row in tallied}
    where, params = (_RUN_CODE, {"run": run_id}) if run_id is not None else ("1", {})
    keys = _RUN_KEYS_STORED if run_id is not None else _KEYS_STORED
    return {
        _FACT_NAMES[int(row["type"])]: int(row["n"])
        for row in store.query(
            f"SELECT type, COUNT(*) AS n FROM event_rows WHERE {where} AND {FACTS_WHERE} "
            f"AND rk IN ({keys}) GROUP BY type",
            params,
        )
    }


def run_facts(store: Store, run_id: str | None) -> RunFacts:
    """Count the fact events of one run's (or every run's) finished requests."""
    return _as_facts(_fact_counts(store, run_id))


def _as_facts(counts: dict[str, int]) -> RunFacts:
    return RunFacts(
        cache_hits=counts.get("CACHE_HIT", 0),
        cache_misses=counts.get("CACHE_MISS", 0),
        validation_passed=counts.get("VALIDATION_PASSED", 0),
        validation_failed=counts.get("VALIDATION_FAILED", 0),
        spec_used=counts.get("SPECULATIVE_RESULT_USED", 0),
        spec_discarded=counts.get("SPECULATIVE_RESULT_DISCARDED", 0),
        spec_cancelled=counts.get("BRANCH_CANCELLED", 0),
        node_failures=counts.get("NODE_FAILED", 0),
    )


def run_figures(store: Store, run_id: str | None) -> Row:
    """`requests`, `cost` (sum), `latency_sum`, `latency_max`, `errors`, `first_started`
    and `last_finished` of one run's requests (or every run's, without the times)."""
    tallied = _tallied(store, run_id)
    if tallied is not None:
        del tallied["run_id"]
        return tallied
    where, params = _scope(run_id)
    row = store.query(
        "SELECT COUNT(*) AS requests, COALESCE(SUM(cost_usd), 0) AS cost, "
        "COALESCE(SUM(latency_ms), 0) AS latency_sum, MAX(latency_ms) AS latency_max "
        f"FROM requests WHERE {where}",
        params,
    )[0]
    row["errors"] = store.query(
        f"SELECT COUNT(*) AS n FROM requests WHERE {where} AND {FAILED_IN}", params
    )[0]["n"]
    row["first_started"] = row["last_finished"] = None
    if run_id is not None:  # over every run this would read the whole table
        times = store.query(
            "SELECT MIN(started_at) AS first, MAX(finished_at) AS last FROM requests "
            f"WHERE {where}",
            params,
        )[0]
        row["first_started"], row["last_finished"] = times["first"], times["last"]
    return row


def every_run(store: Store) -> tuple[Row, RunFacts]:
    """`run_figures` and `run_facts` of every run together, summed from the runs' tallies,
    so the cost is per run, not per request (tallies of a run no longer stored count for
    nothing). When the tallies do not account for every stored request, the whole-table
    reads answer instead."""
    figures = store.query(
        "SELECT COALESCE(SUM(t.requests), 0) AS requests, COALESCE(SUM(t.cost), 0) AS cost, "
        "COALESCE(SUM(t.latency_sum), 0) AS latency_sum, MAX(t.latency_max) AS latency_max, "
        "COALESCE(SUM(t.errors), 0) AS errors FROM run_tallies t JOIN runs r ON r.id = t.run_id"
    )[0]
    figures.update(first_started=None, last_finished=None)
    stored = int(store.query("SELECT COUNT(*) AS n FROM requests")[0]["n"])
    if stored != figures["requests"]:
        return run_figures(store, None), run_facts(store, None)
    facts = store.query(
        "SELECT c.name, SUM(c.n) AS n FROM run_counts c JOIN runs r ON r.id = c.run_id "
        "WHERE c.kind = 'fact' GROUP BY c.name"
    )
    return figures, _as_facts({str(row["name"]): int(row["n"]) for row in facts})


def percentiles(
    store: Store, run_id: str | None, column: str, qs: Sequence[float]
) -> list[float | None]:
    """Exact percentiles of `latency_ms` or `cost_usd` over a run's (or every) request,
    interpolated as `engine.stats.percentile`; each reads the two ranks it needs from an
    index (`requests_run_latency`, `requests_run_cost`, `requests_latency`, `requests_cost`)."""
    if column not in ("latency_ms", "cost_usd"):
        raise ValueError(f"not a percentile column: {column!r}")
    where, params = _scope(run_id)
    if run_id is not None:
        count = request_count(store, run_id)
    else:
        count = int(store.query("SELECT COUNT(*) AS n FROM requests")[0]["n"])
    out: list[float | None] = []
    for q in qs:
        if not count:
            out.append(None)
            continue
        position = (count - 1) * q / 100.0
        low = math.floor(position)
        # The two ranks `low` and `low + 1`, walked to from the nearer end of the index:
        # a p99 over a million requests skips 10,000 entries, not 990,000.
        if low <= (count - 1) // 2:
            order, offset = column, low
        else:
            order, offset = f"{column} DESC", max(0, count - 2 - low)
        values = [
            float(row["v"])
            for row in store.query(
                f"SELECT {column} AS v FROM requests WHERE {where} "
                f"ORDER BY {order} LIMIT 2 OFFSET :offset",
                {**params, "offset": offset},
            )
            if row["v"] is not None  # (a damaged value reads as None: `codec.NUMERIC`)
        ]
        if not values:
            out.append(None)
            continue
        if order != column:
            values.reverse()
            if low + 1 > count - 1:  # the last rank: only `low` itself was read
                values = values[-1:]
        high = values[1] if len(values) > 1 and position > low else values[0]
        out.append(values[0] + (high - values[0]) * (position - low))
    return out


def run_series(
    store: Store, run_id: str, first: float, last: float, points: int
) -> list[tuple[int, int, float]]:
    """`(bucket, requests, latency sum)` of one run's requests by finish time, `points`
    equal buckets ending at `last`. Buckets of a second or more are summed from the
    tallies' requests per second (each second counted in the bucket holding its middle)."""
    width = (last - first) / points if points else 1.0
    start = last - points * width
    if width >= 1.0 and _tallied(store, run_id) is not None:
        return [
            (int(row["b"]), int(row["n"]), float(row["s"]))
            for row in store.query(
                "SELECT MIN(:points - 1, MAX(0, CAST((second + 0.5 - :start) / :width "
                "AS INTEGER))) AS b, SUM(requests) AS n, SUM(latency_sum) AS s "
                "FROM run_seconds WHERE run_id = :run GROUP BY b",
                {"run": run_id, "points": points, "start": start, "width": width},
            )
        ]
    return [
        (int(row["b"]), int(row["n"]), float(row["s"]))
        for row in store.query(
            "SELECT MIN(:points - 1, MAX(0, CAST((finished_at - :start) / :width AS INTEGER))) "
            "AS b, COUNT(*) AS n, SUM(latency_ms) AS s FROM requests WHERE run_id = :run "
            "GROUP BY b",
            {"run": run_id, "points": points, "start": start, "width": width or 1.0},
        )
    ]


_counted: weakref.WeakKeyDictionary[Store, tuple[tuple[int, int], str, int]] = (
    weakref.WeakKeyDictionary()
)
"""Per open store, the last run counted: (store version, run, count)."""


def request_count(store: Store, run_id: str) -> int:
    """How many finished requests the run has stored. Remembered until the file changes:
    the reads of one screen (or of `moat stats`) each check the tallies against it, and a
    run of a million requests takes a tenth of a second to count."""
    version = store.version()
    seen = _counted.get(store)
    if seen is not None and seen[:2] == (version, run_id):
        return seen[2]
    rows = store.query("SELECT COUNT(*) AS n FROM requests WHERE run_id = ?", (run_id,))
    count = int(rows[0]["n"])
    _counted[store] = (version, run_id, count)
    return count


def status_counts(store: Store, run_id: str) -> dict[str, int]:
    """How many of the run's requests ended in each status."""
    tallied = _counts(store, run_id, "status")
    if tallied is not None:
        return {str(row["name"]): int(row["n"]) for row in tallied}
    rows = store.query(
        "SELECT status, COUNT(*) AS n FROM requests WHERE run_id = ? GROUP BY status", (run_id,)
    )
    return {str(row["status"]): int(row["n"]) for row in rows}


def slowest_and_failed(store: Store, run_id: str, limit: int) -> tuple[list[Row], list[Row]]:
    """The run's `limit` slowest requests, and its first `limit` failed ones (seq order)."""
    slowest = store.query(
        "SELECT id, latency_ms, status FROM requests WHERE run_id = ? "
        "ORDER BY latency_ms DESC LIMIT ?",
        (run_id, limit),
    )
    failed = store.query(
        f"SELECT id, status, error FROM requests WHERE run_id = ? AND {FAILED_IN} "
        "ORDER BY seq LIMIT ?",
        (run_id, limit),
    )
    return slowest, failed


def event_counts(store: Store, run_id: str, event_types: Sequence[str]) -> dict[str, int]:
    """How many events of each of `event_types` (fact types only) the run recorded."""
    unknown = set(event_types) - set(FACT_EVENT_TYPES)
    if unknown:
        raise ValueError(f"not counted by run: {sorted(unknown)}; see FACT_EVENT_TYPES")
    found = _fact_counts(store, run_id)
    return {t: found.get(t, 0) for t in event_types}


def route_counts(store: Store, run_id: str) -> dict[str, int]:
    """How many of the run's finished requests ended on each route: each request's last
    `ROUTE_SELECTED` decision (`(none)` when empty): tallied, or counted inside SQLite from
    the facts index (SQLite takes a bare column from the row holding the group's `MAX`)."""
    tallied = _counts(store, run_id, "route")
    if tallied is not None:
        return {str(row["name"]): int(row["n"]) for row in tallied}
    rows = store.query(
        f"SELECT {either('decision')} AS route, COUNT(*) AS n FROM (SELECT e.rk, e.decision, "
        f"MAX(e.sequence) FROM event_rows e WHERE e.{_RUN_CODE} AND e.{FACTS_WHERE} "
        f"AND e.type = {FACT_CODES['ROUTE_SELECTED']} AND e.rk IN ({_RUN_KEYS_STORED}) "
        "GROUP BY e.rk) GROUP BY decision",
        {"run": run_id},
    )
    out: dict[str, int] = {}
    for row in rows:
        route = row["route"] or "(none)"
        out[route] = out.get(route, 0) + int(row["n"])
    return out


def speculative_counts(store: Store, run_id: str) -> dict[str, int]:
    """The fates of the speculative node runs of the run's finished requests: `started`,
    and how many were `used`, `discarded` or `cancelled`, counted in SQLite."""
    fates = _counts(store, run_id, "speculative")
    if fates is None:
        fates = store.query(
            f"SELECT CASE WHEN {name_of('status')} = 'cancelled' THEN 'cancelled' "
            f"ELSE COALESCE({name_of('outcome')}, '') END AS name, n FROM "
            "(SELECT status, outcome, COUNT(*) AS n FROM node_rows "
            "INDEXED BY node_rows_speculative WHERE speculative = 1 "
            f"AND rk IN ({_RUN_KEYS_STORED}) GROUP BY status, outcome)",
            {"run": run_id},
        )
    out = {"started": 0, "used": 0, "discarded": 0, "cancelled": 0}
    for row in fates:
        fate = str(row["name"])
        out["started"] += int(row["n"])
        if fate in out:
            out[fate] += int(row["n"])
    return out


def calls_by_model(store: Store, run_id: str) -> list[Row]:
    """LLM calls of the run's finished requests per (model, provider), in name order:
    `calls`, `cost`, and the speculative part, `spec_cost` and `spec_wasted` (calls
    discarded or cancelled), in one pass over the calls, grouped on codes."""
    tallied = _counts(store, run_id, "model")
    if tallied is not None:
        rows = []
        for row in tallied:
            model, provider = json.loads(row["name"])
            rows.append(
                {
                    "model": model,
                    "provider": provider,
                    "calls": row["n"],
                    "cost": row["cost"],
                    "spec_cost": row["spec_cost"],
                    "spec_wasted": row["spec_wasted"],
                }
            )
        return sorted(rows, key=lambda row: (row["model"], row["provider"]))
    speculative = code_of("speculative")
    wasted = f"({code_of('discarded')}, {code_of('cancelled')})"
    return store.query(
        f"SELECT {name_of('model')} AS model, {name_of('provider')} AS provider, calls, cost, "
        "spec_cost, spec_wasted FROM (SELECT model, provider, COUNT(*) AS calls, "
        "SUM(cost_usd) AS cost, "
        f"COALESCE(SUM(CASE WHEN call_kind = {speculative} THEN cost_usd END), 0) AS spec_cost, "
        f"COALESCE(SUM(CASE WHEN call_kind = {speculative} AND call_outcome IN {wasted} "
        "THEN cost_usd END), 0) AS spec_wasted FROM llm_rows "
        f"WHERE rk IN ({_RUN_KEYS_STORED}) GROUP BY model, provider) "
        "ORDER BY model, provider",
        {"run": run_id},
    )


# -- requests, a page at a time (the TUI) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestPage:
    """What one page of the requests list asks for; every set criterion must hold."""

    run_id: str | None = None
    status: str | None = None
    tenant: str | None = None
    search: str = ""
    """Substring of the request id or tenant (case-insensitive)."""
    slow_ms: float | None = None
    costly_usd: float | None = None


def _page_where(page: RequestPage) -> tuple[str, dict[str, Any]]:
    terms, params = [], {}
    for column in ("run_id", "status", "tenant"):
        value = getattr(page, column)
        if value is not None:
            terms.append(f"{column} = :{column}")
            params[column] = value
    needle = page.search.strip().lower()
    if needle:
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        terms.append(
            "(lower(id) LIKE :needle ESCAPE '\\' OR lower(tenant) LIKE :needle ESCAPE '\\')"
        )
        params["needle"] = f"%{escaped}%"
    if page.slow_ms is not None:
        terms.append("latency_ms > :slow")
        params["slow"] = page.slow_ms
    if page.costly_usd is not None:
        terms.append("cost_usd > :costly")
        params["costly"] = page.costly_usd
    return " AND ".join(terms) or "1", params


def request_page(store: Store, page: RequestPage, before: int | None, limit: int) -> list[Row]:
    """Up to `limit` requests matching `page`, newest first, written before row `before`
    (keyset pagination on the rowid: each page costs the same however deep it is)."""
    where, params = _page_where(page)
    if before is not None:
        where += " AND rowid < :before"
        params["before"] = before
    return store.query(
        f"{_ROW} WHERE {where} ORDER BY rowid DESC LIMIT :limit", {**params, "limit": limit}
    )


def requests_after(store: Store, rowid: int, limit: int) -> list[Row]:
    """Up to `limit` finished requests written after `rowid`, oldest first, with `row_id`."""
    return store.query(f"{_ROW} WHERE rowid > ? ORDER BY rowid LIMIT ?", (rowid, limit))


def latest_request_rowid(store: Store) -> int:
    """The rowid of the newest stored request (0 when none)."""
    return int(store.query("SELECT COALESCE(MAX(rowid), 0) AS high FROM requests")[0]["high"])


def request_facts(store: Store, request_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """`(route, highest cycle)` of each request: its last `ROUTE_SELECTED` decision and the
    highest cycle a `LOOP_CYCLE_STARTED` event recorded (by request key, on type codes:
    no event's names are decoded)."""
    out: dict[str, tuple[str, int]] = {}
    found = store.query("SELECT code FROM strings WHERE text = 'LOOP_CYCLE_STARTED'")
    loop = int(found[0]["code"]) if found else -1
    route = FACT_CODES["ROUTE_SELECTED"]
    for start in range(0, len(request_ids), _FACT_BATCH):
        ids = tuple(request_ids[start : start + _FACT_BATCH])
        rows = store.query(
            "SELECT k.id AS request_id, MAX(CASE WHEN e.type = :loop THEN e.cycle END) "
            f"AS cycles, (SELECT {either('r.decision')} FROM event_rows r "
            f"WHERE r.rk = k.key AND r.type = {route} ORDER BY r.sequence DESC, r.id DESC "
            "LIMIT 1) AS route FROM request_keys k JOIN event_rows e ON e.rk = k.key "
            f"WHERE k.id IN ({', '.join(f':i{i}' for i in range(len(ids)))}) "
            f"AND e.type IN (:loop, {route}) GROUP BY k.key",
            {"loop": loop, **{f"i{i}": rid for i, rid in enumerate(ids)}},
        )
        for row in rows:
            previous = out.get(row["request_id"], ("", 0))
            out[row["request_id"]] = (
                row["route"] or previous[0],
                max(previous[1], int(row["cycles"] or 0)),
            )
    return out


def sim_call_in(store: Store, request_ids: Sequence[str]) -> bool:
    """Whether any LLM call of these requests went to the `sim` provider."""
    for start in range(0, len(request_ids), _FACT_BATCH):
        ids = tuple(request_ids[start : start + _FACT_BATCH])
        found = store.query(
            "SELECT 1 AS found FROM llm_calls WHERE provider = 'sim' AND request_id IN "
            f"({', '.join('?' * len(ids))}) LIMIT 1",
            ids,
        )
        if found:
            return True
    return False


def being_created(path: str | Path) -> bool:
    """Whether the file is a store a starting run is creating: empty, or no schema and no
    table yet (a reader waits for it rather than calling it no store)."""
    try:
        conn = connect(path, readonly=True)
    except StoreError:
        return False
    try:
        tables = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1")
        return user_version(conn) == 0 and tables.fetchone() is None
    except sqlite3.Error:
        return False
    finally:
        conn.close()
