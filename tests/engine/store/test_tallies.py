"""A run's tallies (`engine.store.tallies`) say exactly what its rows say.

The writer keeps each run's figures as it writes; `moat stats` and the TUI read them
instead of the rows. Whatever requests a run holds and however the writer batches them,
every figure read from the tallies equals the one counted from the rows; rows the writer
did not write (SQL through the views) send the reads back to the rows.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from engine.events import (
    CacheStatus,
    CallKind,
    CallOutcome,
    LlmCall,
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    Record,
    RequestRecord,
    RequestStatus,
)
from engine.report.stats import run_stats
from engine.store import reads, tallies
from engine.store.retention import prune
from engine.store.schema import SCHEMA_VERSION
from engine.store.store import Store
from engine.store.writer import StoreWriter
from tests.support.store_rows import request_records, stored_run

_FACTS = ("CACHE_HIT", "CACHE_MISS", "VALIDATION_PASSED", "VALIDATION_FAILED", "NODE_FAILED")

calls = st.lists(
    st.tuples(
        st.sampled_from(["small", "large", "médium"]),
        st.sampled_from(["sim", "openai"]),
        st.sampled_from(list(CallKind)),
        st.sampled_from(list(CallOutcome)),
        st.floats(0, 0.01, allow_nan=False),
    ),
    max_size=3,
)
requests = st.fixed_dictionaries(
    {
        "status": st.sampled_from(list(RequestStatus)),
        "latency": st.floats(0, 60_000, allow_nan=False),
        "cost": st.floats(0, 0.1, allow_nan=False),
        "finish": st.floats(0, 300, allow_nan=False),
        # every ROUTE_SELECTED decision of the request, in order (the last one counts)
        "routes": st.lists(st.sampled_from(["small", "large", "", "a b\nc"]), max_size=3),
        "facts": st.lists(st.sampled_from(_FACTS), max_size=4),
        "speculative": st.lists(
            st.tuples(st.sampled_from(list(NodeStatus)), st.sampled_from(list(NodeOutcome))),
            max_size=3,
        ),
        "calls": calls,
        "finished": st.booleans(),
    }
)
runs = st.lists(st.lists(requests, min_size=1, max_size=8), min_size=1, max_size=3)


def _records(run_id: str, seq: int, spec: dict[str, Any]) -> list[Record]:
    rid = f"{run_id}-{seq:06d}"
    at = 1_000_000.0 + spec["finish"]
    out: list[Record] = []
    types = [("ROUTE_SELECTED", route) for route in spec["routes"]]
    types += [(fact, None) for fact in spec["facts"]]
    for n, (event_type, decision) in enumerate(types, start=1):
        out.append(OrchestrationEvent(run_id, rid, 0, "s", "c", event_type, n, decision))
    for n, (status, outcome) in enumerate(spec["speculative"]):
        out.append(NodeRun(rid, f"n{n}", "model", 0, status, True, outcome, at, 1.0, 1))
    for model, provider, kind, outcome, cost in spec["calls"]:
        call = (model, provider, kind, outcome, CacheStatus.NONE, "h", 1, 2, cost, 5.0, at)
        out.append(LlmCall(rid, "n", 0, *call, "ok"))
    if spec["finished"]:
        out.append(
            RequestRecord(
                rid,
                run_id,
                seq,
                spec["status"],
                at - spec["latency"] / 1000,
                at,
                spec["latency"],
                spec["cost"],
                {"answer": "a"},
            )
        )
    return out


def _figures(store: Store, run_id: str, first: float, last: float) -> dict[str, Any]:
    return {
        "figures": reads.run_figures(store, run_id),
        "status": reads.status_counts(store, run_id),
        "routes": reads.route_counts(store, run_id),
        "facts": reads.run_facts(store, run_id),
        "speculative": reads.speculative_counts(store, run_id),
        "models": reads.calls_by_model(store, run_id),
        "series": sorted(reads.run_series(store, run_id, first, last, 4)),
    }


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to the last few bits (sums added up in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return bool(a == b)


def _untallied(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for table in ("run_tallies", "run_counts", "run_seconds"):
            conn.execute(f"DELETE FROM {table}")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(runs=runs, flush_every=st.integers(1, 5))
def test_tallied_figures_equal_the_rows_figures(
    tmp_path_factory: pytest.TempPathFactory, runs: list[list[dict[str, Any]]], flush_every: int
) -> None:
    db = tmp_path_factory.mktemp("tallies") / "s.db"
    with Store.open(db) as store:
        ids = [store.create_run("g", "abc", len(specs)) for specs in runs]
        with StoreWriter(db) as writer:
            for n, (run_id, specs) in enumerate(zip(ids, runs, strict=True)):
                for seq, spec in enumerate(specs):
                    for record in _records(run_id, seq, spec):
                        writer.record(record)
                    if (n + seq) % flush_every == 0:
                        writer.flush()  # tallies added up over several transactions
        tallied = {run_id: _figures(store, run_id, 1e6 - 400, 1e6 + 300) for run_id in ids}
        tallied_all = reads.every_run(store)
    _untallied(db)
    with Store.open(db) as store:
        for run_id in ids:
            counted = _figures(store, run_id, 1e6 - 400, 1e6 + 300)
            for name, value in tallied[run_id].items():
                assert _same(counted[name], value), (name, counted[name], value)
        assert _same(reads.every_run(store), tallied_all)


def test_moat_stats_reads_the_tallies_not_the_rows(tmp_path: Path) -> None:
    """With every row of the run's requests gone but their `requests` rows, the figures
    that only rows hold still show: they come from the tallies."""
    db = tmp_path / "s.db"
    run_id = stored_run(db, 3)
    with sqlite3.connect(db) as conn:
        for table in ("event_rows", "node_rows", "llm_rows"):
            conn.execute(f"DELETE FROM {table}")
    with Store.open(db) as store:
        stats = run_stats(store, run_id)
    assert stats.by_route == {"small": 3}
    assert stats.by_model == {"small (sim)": {"calls": 3, "cost_usd": 0.003}}
    assert stats.cache["misses"] == 3
    assert stats.speculative["used"] == 3


def test_rows_written_through_the_views_are_counted_from_the_rows(tmp_path: Path) -> None:
    """A request inserted with SQL (not by the writer) is not tallied: the run's figures
    count it anyway, from the rows."""
    db = tmp_path / "s.db"
    run_id = stored_run(db, 1, at=100.0)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO requests (id, run_id, seq, status, started_at, finished_at, "
            "latency_ms, cost_usd) VALUES (?, ?, 1, 'failed', 101, 102, 1000, 0.5)",
            (f"{run_id}-000001", run_id),
        )
        conn.execute(
            "INSERT INTO orchestration_events (run_id, request_id, cycle, stage, component, "
            "event_type, decision, sequence, started_at) "
            "VALUES (?, ?, 0, 'route', 'router', 'ROUTE_SELECTED', 'large', 1, 101)",
            (run_id, f"{run_id}-000001"),
        )
    with Store.open(db) as store:
        assert reads.status_counts(store, run_id) == {"ok": 1, "failed": 1}
        assert reads.route_counts(store, run_id) == {"small": 1, "large": 1}
        figures = reads.run_figures(store, run_id)
        assert (figures["requests"], figures["errors"], figures["latency_max"]) == (2, 1, 1000)
        assert reads.every_run(store)[0]["requests"] == 2


def test_resuming_keeps_the_tallies_and_pruning_deletes_them(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        old, run_id = store.create_run("g", "abc", 1), store.create_run("g", "abc", 4)
        with StoreWriter(db) as writer:
            for record in request_records(old, 0, 50.0):
                writer.record(record)
            for seq in range(2):
                for record in request_records(run_id, seq, 100.0 + seq):
                    writer.record(record)
        store.finish_run(old, "finished")
        store.finish_run(run_id, "interrupted")
        store.claim_run(run_id)
        with StoreWriter(db) as writer:
            for seq in (2, 3):
                for record in request_records(run_id, seq, 100.0 + seq):
                    writer.record(record)
        store.finish_run(run_id, "finished")
        assert store.query("SELECT requests FROM run_tallies WHERE run_id = ?", (run_id,)) == [
            {"requests": 4}
        ]
        assert reads.run_figures(store, run_id)["requests"] == 4
    prune(db, keep_runs=1)
    with Store.open(db) as store:
        for table in ("run_tallies", "run_counts", "run_seconds"):
            kept = {row["run_id"] for row in store.query(f"SELECT run_id FROM {table}")}
            assert kept == {run_id}, table


def test_a_schema_3_store_is_tallied_by_its_migration(tmp_path: Path) -> None:
    """Opening a store of the schema before the tallies counts them from its rows once,
    saying so in the log (a million requests take a minute); its figures read the same
    before and after."""
    db = tmp_path / "s.db"
    run_id = stored_run(db, 2, at=100.0, crashed=1)
    _untallied(db)
    with Store.open(db) as store:
        counted = _figures(store, run_id, 0, 200)
    with sqlite3.connect(db) as conn:  # as schema 3 had it
        for table in ("run_tallies", "run_counts", "run_seconds"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DROP INDEX requests_run_cost")
        conn.execute(
            "CREATE TABLE run_totals (run_id TEXT PRIMARY KEY, requests INTEGER NOT NULL, "
            "cost REAL NOT NULL, latency_sum REAL NOT NULL, latency_max REAL, "
            "errors INTEGER NOT NULL, facts TEXT NOT NULL)"
        )
        conn.execute("PRAGMA user_version = 3")
    with capture_logs() as logs, Store.open(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        assert [(log["event"], log["from_version"]) for log in logs] == [("store.migrating", 3)]
        assert store.query("SELECT requests FROM run_tallies") == [{"requests": 2}]
        assert _figures(store, run_id, 0, 200) == counted


def test_a_transactions_tally_reads_only_its_own_requests_rows(tmp_path: Path) -> None:
    """Each statement of the tally finds the new requests by rowid and their rows by
    request key: no stored table is scanned, so tallying costs the same on a store of a
    million requests as on an empty one (SQLite's own plans, asked of a real store)."""
    db = tmp_path / "s.db"
    stored_run(db, 3)
    conn = sqlite3.connect(db)
    conn.execute("ANALYZE")  # whatever the statistics say
    try:
        for statement in tallies._TALLY:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", {"mark": 0})]
            scans = [step for step in plan if step.startswith("SCAN") and "new" not in step]
            assert [s for s in scans if "subquery" not in s] == [], (statement, plan)
    finally:
        conn.close()


def test_a_run_being_written_is_read_from_its_tallies_not_its_rows(tmp_path: Path) -> None:
    """Commits landing between a read of the tallies and the count of the run's requests
    must not look like rows the tallies miss: that would send a live run of a million
    requests to its rows on every poll."""
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        run_id = store.create_run("g", "abc", 400)
    started, done = threading.Event(), threading.Event()

    def write() -> None:
        with StoreWriter(db) as writer:
            for seq in range(400):
                for record in request_records(run_id, seq, 100.0 + seq):
                    writer.record(record)
                writer.flush()
                started.set()  # (a run with no request yet is counted from its no rows)
        done.set()

    statements: list[str] = []
    with Store.open(db, readonly=True) as store:
        thread = threading.Thread(target=write)
        thread.start()
        started.wait(30)
        store._conn.set_trace_callback(statements.append)
        reads_done = 0
        while not done.is_set() or reads_done == 0:
            reads.status_counts(store, run_id)
            reads_done += 1
        thread.join()
        assert reads.status_counts(store, run_id) == {"ok": 400}
    from_rows = [s for s in statements if "GROUP BY status" in s and "FROM requests" in s]
    assert reads_done > 10
    assert from_rows == []
