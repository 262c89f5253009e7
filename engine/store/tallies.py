"""Each run's figures kept as it is written (schema version 4), so `moat stats` and the TUI
read a run of a million requests as fast as one of a thousand.

A run's figures (requests, cost, latency, statuses, routes, fact events, speculative
fates, calls per model, requests per second) used to be counted from its rows on every
read: linear in the run, 34 s for `moat stats` on one run of a million requests. The
batching writer now adds each transaction's finished requests to three small tables, in
the same transaction (`tally`):

- `run_tallies`: one row per run: `requests`, `cost`, `latency_sum`, `latency_max`,
  `errors`, `first_started`, `last_finished`;
- `run_counts`: `(run_id, kind, name) -> n`, and for `kind = 'model'` the calls' `cost`,
  `spec_cost` and `spec_wasted`. Kinds: `status`, `route` (each request's last
  `ROUTE_SELECTED` decision, `(none)` when empty), `fact` (the fact event types),
  `speculative` (a speculative node run's fate: `cancelled` or its outcome) and `model`
  (`name` is the JSON array `[model, provider]`);
- `run_seconds`: requests and their latency sum per whole second of finish time.

A request counts once its `requests` row is written: the writer writes it after the
request's other rows, so the rows it tallies are all there. Rows written any other way
(SQL through the contract's views, `moat sync` merging into a central store) are not
tallied; readers compare the tallied request count with the stored one and count from the
rows when they differ (`engine.store.reads`), so the figures are always the rows' own.
Tallies only grow: `moat prune` deletes a run's with the run (`forget`).
"""

from __future__ import annotations

import sqlite3

from engine.store.compact import FACT_CODES, FACTS_WHERE, FAILED_IN, code_of, either, name_of

__all__ = ["MIGRATION_4", "TABLES", "forget", "mark", "tally"]

TABLES = (
    """CREATE TABLE run_tallies (
        run_id TEXT PRIMARY KEY,
        requests INTEGER NOT NULL,
        cost REAL NOT NULL,
        latency_sum REAL NOT NULL,
        latency_max REAL NOT NULL,
        errors INTEGER NOT NULL,
        first_started REAL NOT NULL,
        last_finished REAL NOT NULL
    )""",
    """CREATE TABLE run_counts (
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        n INTEGER NOT NULL,
        cost REAL NOT NULL DEFAULT 0,
        spec_cost REAL NOT NULL DEFAULT 0,
        spec_wasted REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, kind, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE run_seconds (
        run_id TEXT NOT NULL,
        second INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        latency_sum REAL NOT NULL,
        PRIMARY KEY (run_id, second)
    ) WITHOUT ROWID""",
)

_NEW = "requests r NOT INDEXED WHERE r.rowid > :mark"
_NEW_KEYS = (
    "WITH new AS MATERIALIZED (SELECT r.run_id, k.key AS rk FROM requests r NOT INDEXED "
    "CROSS JOIN request_keys k ON k.id = r.id WHERE r.rowid > :mark) "
)
"""The request keys of the requests written after `:mark`, with their runs (by id alone,
as `engine.store.reads` finds a run's rows: a row recorded before any of its request's
events has a key without a run)."""


_TALLY = (
    "INSERT INTO run_tallies SELECT run_id, COUNT(*), SUM(cost_usd), SUM(latency_ms), "
    f"MAX(latency_ms), SUM({FAILED_IN}), MIN(started_at), MAX(finished_at) FROM {_NEW} "
    "GROUP BY run_id ON CONFLICT (run_id) DO UPDATE SET requests = requests + excluded.requests, "
    "cost = cost + excluded.cost, latency_sum = latency_sum + excluded.latency_sum, "
    "latency_max = MAX(latency_max, excluded.latency_max), errors = errors + excluded.errors, "
    "first_started = MIN(first_started, excluded.first_started), "
    "last_finished = MAX(last_finished, excluded.last_finished)",
    "INSERT INTO run_seconds SELECT run_id, CAST(finished_at AS INTEGER), COUNT(*), "
    f"SUM(latency_ms) FROM {_NEW} GROUP BY 1, 2 ORDER BY 1 ON CONFLICT (run_id, second) "
    "DO UPDATE SET requests = requests + excluded.requests, "
    "latency_sum = latency_sum + excluded.latency_sum",
    # Every kind of `run_counts` in one statement, so the new requests' keys are found once
    # (and a transaction runs three statements here, not seven: each one is a hand-off of
    # the writer thread's GIL). A kind without costs adds zeros to them.
    f"{_NEW_KEYS}INSERT INTO run_counts SELECT * FROM ("
    # statuses
    f"SELECT run_id, 'status', status, COUNT(*), 0, 0, 0 FROM {_NEW} GROUP BY run_id, status "
    # fact events, by their fixed type codes (the partial index `event_rows_facts` is by
    # run; these are found by request key)
    f"UNION ALL SELECT run_id, 'fact', {name_of('type')}, n, 0, 0, 0 FROM (SELECT new.run_id, "
    "e.type, COUNT(*) AS n FROM new CROSS JOIN event_rows e INDEXED BY event_rows_rk "
    f"ON e.rk = new.rk WHERE e.{FACTS_WHERE} GROUP BY new.run_id, e.type) "
    # each request's last ROUTE_SELECTED decision (SQLite takes a bare column from the row
    # holding the group's MAX)
    "UNION ALL SELECT run_id, 'route', "
    f"COALESCE(NULLIF({either('decision')}, ''), '(none)') AS route, COUNT(*), 0, 0, 0 FROM "
    "(SELECT new.run_id, e.rk, e.decision, MAX(e.sequence) FROM new CROSS JOIN event_rows e "
    f"INDEXED BY event_rows_rk ON e.rk = new.rk WHERE e.{FACTS_WHERE} "
    f"AND e.type = {FACT_CODES['ROUTE_SELECTED']} GROUP BY e.rk) GROUP BY run_id, route "
    # a speculative node run's fate
    "UNION ALL SELECT run_id, 'speculative', "
    f"CASE WHEN status = {code_of('cancelled')} THEN 'cancelled' "
    f"ELSE COALESCE({name_of('outcome')}, '') END AS fate, SUM(n), 0, 0, 0 FROM "
    "(SELECT new.run_id, s.status, s.outcome, COUNT(*) AS n FROM new CROSS JOIN node_rows s "
    "INDEXED BY node_rows_speculative ON s.rk = new.rk AND s.speculative = 1 "
    "GROUP BY new.run_id, s.status, s.outcome) GROUP BY run_id, fate "
    # calls per model, with their costs
    "UNION ALL SELECT run_id, 'model', "
    f"json_array({name_of('model')}, {name_of('provider')}), calls, cost, spec_cost, "
    "spec_wasted FROM (SELECT new.run_id, l.model, l.provider, COUNT(*) AS calls, "
    "SUM(l.cost_usd) AS cost, "
    f"COALESCE(SUM(CASE WHEN l.call_kind = {code_of('speculative')} THEN l.cost_usd END), 0) "
    f"AS spec_cost, COALESCE(SUM(CASE WHEN l.call_kind = {code_of('speculative')} AND "
    f"l.call_outcome IN ({code_of('discarded')}, {code_of('cancelled')}) THEN l.cost_usd "
    "END), 0) AS spec_wasted FROM new CROSS JOIN llm_rows l INDEXED BY llm_rows_rk "
    "ON l.rk = new.rk "
    "GROUP BY new.run_id, l.model, l.provider)"
    # WHERE before ON CONFLICT: SQLite's parser needs a clause there after a SELECT
    ") WHERE true ON CONFLICT (run_id, kind, name) "
    "DO UPDATE SET n = n + excluded.n, cost = cost + excluded.cost, "
    "spec_cost = spec_cost + excluded.spec_cost, spec_wasted = spec_wasted + excluded.spec_wasted",
)


def mark(conn: sqlite3.Connection) -> int:
    """Where the requests written next begin: the largest `requests` rowid so far. Take it
    inside the write transaction, before the requests are written."""
    return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM requests").fetchone()[0])


def tally(conn: sqlite3.Connection, since: int) -> None:
    """Add the requests written after `mark` returned `since` (and their rows) to their
    runs' tallies. Call it in the transaction that wrote them."""
    for statement in _TALLY:
        conn.execute(statement, {"mark": since})


def forget(conn: sqlite3.Connection, run_id: str) -> None:
    """Delete a run's tallies (the run is being deleted)."""
    for table in ("run_tallies", "run_counts", "run_seconds"):
        conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))


MIGRATION_4: tuple[str, ...] = (
    *TABLES,
    # A run's cost percentiles, read from two ranks of an index like its latency's.
    "CREATE INDEX requests_run_cost ON requests (run_id, cost_usd)",
    # Every stored request so far, as the writer would have tallied it.
    *(statement.replace(":mark", "0") for statement in _TALLY),
    "DROP TABLE run_totals",
)
"""Schema 3 -> 4: the tallies, counted once from the rows; they replace `run_totals` (a
finished run's totals, recorded as it finished), which the tallies hold for every run."""
