"""The compact layout (schema 3): migration of a schema-2 store, writes through the writer
and through the contract's views read back the same rows, and prunes leave nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import (
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    RequestRecord,
    RequestStatus,
)
from engine.store import reads
from engine.store.compact import COMPACT_TABLES
from engine.store.retention import prune
from engine.store.schema import MIGRATIONS, SCHEMA_VERSION, connect, migrate
from engine.store.store import Store, StoreWriter
from tests.support.store_rows import TABLES, request_records

VIEWS = tuple(COMPACT_TABLES)

# Rows as a schema-2 moat wrote them (contract columns, tables): two requests of one run,
# a crashed request's leftovers, and a run-level policy event.
_V2_ROWS: dict[str, list[tuple[Any, ...]]] = {
    "orchestration_events": [
        (
            1,
            "r-1",
            "",
            0,
            "policy",
            "policy",
            "POLICY_ACTIVATED",
            "2",
            None,
            0,
            100.0,
            None,
            "[]",
            None,
            None,
            '{"version":2}',
        ),
        (
            2,
            "r-1",
            "r-1-000000",
            0,
            "request",
            "scheduler",
            "POLICY_PINNED",
            "1",
            None,
            0,
            100.1,
            None,
            "[]",
            None,
            None,
            '{"policy":"p","version":1}',
        ),
        (
            3,
            "r-1",
            "r-1-000000",
            0,
            "route",
            "router",
            "ROUTE_SELECTED",
            "small",
            None,
            1,
            100.2,
            1.5,
            '["CHEAP"]',
            '{"in":1}',
            '{"out":2}',
            '{"model":"small"}',
        ),
        (
            4,
            "r-1",
            "r-1-000001",
            0,
            "request",
            "scheduler",
            "POLICY_PINNED",
            "1",
            None,
            0,
            101.0,
            None,
            "[]",
            None,
            None,
            '{"policy":"p","version":1}',
        ),
        (
            5,
            "r-1",
            "r-1-000001",
            0,
            "cached",
            "cache",
            "CACHE_HIT",
            "hit",
            "ok",
            1,
            101.01,
            None,
            "[]",
            None,
            None,
            '{"similarity":1.0}',
        ),
        (
            6,
            "r-1",
            "r-1-000002",
            0,
            "request",
            "scheduler",
            "POLICY_PINNED",
            "1",
            None,
            0,
            102.0,
            None,
            "[]",
            None,
            None,
            None,
        ),
    ],
    "node_runs": [
        (1, "r-1-000000", "route", "router", 0, "succeeded", 0, "used", 100.15, 2.5, 1, None),
        (2, "r-1-000001", "draft", "model", 1, "failed", 1, "discarded", 101.2, 40.0, 2, "boom"),
    ],
    "llm_calls": [
        (
            1,
            "r-1-000001",
            "draft",
            1,
            "small",
            "sim",
            "speculative",
            "discarded",
            "miss",
            1,
            "h1",
            10,
            20,
            0.001,
            39.5,
            101.21,
            "ok",
            None,
            None,
            None,
        ),
    ],
    "decision_traces": [(1, "r-1-000000", 1, "CYCLE_SUMMARY", '{"cycle":1}')],
    "requests": [
        (
            "r-1-000000",
            "r-1",
            0,
            None,
            None,
            None,
            "acme",
            "ok",
            100.0,
            100.5,
            500.0,
            0.001,
            "p",
            1,
            "h",
            '{"text":"hi"}',
            None,
        ),
        (
            "r-1-000001",
            "r-1",
            1,
            None,
            None,
            None,
            "acme",
            "failed",
            101.0,
            101.5,
            500.0,
            0.002,
            "p",
            1,
            "h",
            None,
            "draft failed",
        ),
    ],
}


def _v2_store(path: Path) -> None:
    conn = connect(path)
    migrate(conn, path, MIGRATIONS[:2])
    conn.execute("INSERT INTO runs VALUES ('r-1', 'g', 'abc', 99.0, 110.0, 'finished', 3, 2, '{}')")
    for table, rows in _V2_ROWS.items():
        marks = ",".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    conn.close()


def _read(path: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


def _same(before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]) -> None:
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        for x, y in zip(old, new, strict=True):
            if isinstance(x, float):
                assert y == pytest.approx(x, abs=1e-6)  # times to the microsecond
            else:
                assert x == y


def test_migration_3_converts_a_schema_2_store_row_for_row(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _v2_store(db)
    before = {table: _read(db, table) for table in (*VIEWS, "requests")}
    with Store.open(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        rows = store.request_rows("r-1-000001")
        # the run's tallies were counted by migration 4, after the rows were converted
        assert [r["run_id"] for r in store.query("SELECT run_id FROM run_tallies")] == ["r-1"]
        whole = (reads.run_figures(store, None), reads.run_facts(store, None))
        assert reads.every_run(store) == whole
        assert whole[1].cache_hits == 1
    for table, old in before.items():
        _same(old, _read(db, table))  # same ids too: sync watermarks stay valid
    assert [e["event_type"] for e in rows["orchestration_events"]] == [
        "POLICY_PINNED",
        "CACHE_HIT",
    ]
    assert rows["node_runs"][0]["error"] == "boom"
    assert rows["llm_calls"][0]["related_event_id"] == 1
    conn = sqlite3.connect(db)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not {n for n in names if n.startswith("v2_")}
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_migrated_store_takes_new_writes_and_prunes_to_nothing(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _v2_store(db)
    with Store.open(db) as store:
        assert store.delete_orphans("r-1") == 1  # the crashed request's only event
        run = store.create_run("g", "abc", 1)
        with StoreWriter(db) as writer:
            for record in request_records(run, 0, 200.0):
                writer.record(record)
        assert [e["event_type"] for e in store.events(f"{run}-000000")][:2] == [
            "POLICY_PINNED",
            "ROUTE_SELECTED",
        ]
        store.finish_run(run, "finished")
    prune(db, keep_runs=0)
    conn = sqlite3.connect(db)
    for table in (*COMPACT_TABLES.values(), "request_keys", "requests", "runs"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    conn.close()


def test_writer_and_view_inserts_read_back_alike(tmp_path: Path) -> None:
    """The same request written by the batching writer and through the contract's views
    (as `moat sync` and policy events do) reads back identically, bar the ids."""
    by_writer, by_views = tmp_path / "w.db", tmp_path / "v.db"
    with Store.open(by_writer), StoreWriter(by_writer) as writer:
        for record in request_records("r-x", 0, 300.0):
            writer.record(record)
    Store.open(by_views).close()  # an empty store, migrated: rows go in through its views
    conn = sqlite3.connect(by_views)
    for table in TABLES:
        rows = _read(by_writer, table)
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        marks = ",".join("?" * len(columns))
        conn.executemany(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})", rows)
    conn.commit()
    conn.close()
    for table in TABLES:
        assert _read(by_views, table) == _read(by_writer, table), table


def test_updates_and_deletes_through_a_view_reach_the_compact_table(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store.open(db), StoreWriter(db) as writer:
        for record in request_records("r-x", 0, 300.0):
            writer.record(record)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE llm_calls SET cache_status = 'hit' WHERE node = 'draft'")
    assert conn.execute("SELECT cache_status, prompt_hash FROM llm_calls").fetchall() == [
        ("hit", "h0")
    ]
    conn.execute("DELETE FROM node_runs WHERE node = 'route'")
    assert conn.execute("SELECT node FROM node_runs").fetchall() == [("draft",)]
    assert conn.execute("SELECT COUNT(*) FROM node_rows").fetchone()[0] == 1
    conn.close()


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=st.lists(
        st.tuples(_TEXT, _TEXT, st.one_of(st.none(), _TEXT), st.integers(0, 3), _TEXT),
        min_size=1,
        max_size=12,
    ),
    duration=st.floats(0, 1e6, allow_nan=False),
)
def test_any_texts_read_back_as_written(
    tmp_path_factory: pytest.TempPathFactory,
    events: list[tuple[str, str, str | None, int, str]],
    duration: float,
) -> None:
    """Stages, decisions and payload texts of any content (numbers, empty, repeated so
    they get interned) read back exactly; times to the microsecond."""
    db = tmp_path_factory.mktemp("p") / "s.db"
    rid = "r-p-000000"
    written = [
        OrchestrationEvent(
            "r-p",
            rid,
            cycle,
            stage,
            "node",
            "CACHE_MISS",
            i,
            decision,
            started_at=500.0 + i / 7,
            payload={"note": note},
        )
        for i, (stage, note, decision, cycle, _) in enumerate(events * 3)
    ]
    node = NodeRun(
        rid, events[0][4], "t", 0, NodeStatus.SUCCEEDED, False, NodeOutcome.USED, 500.0, duration, 1
    )
    request = RequestRecord(rid, "r-p", 0, RequestStatus.OK, 500.0, 501.0, 1000.0, 0.0, None)
    with Store.open(db) as store:
        with StoreWriter(db) as writer:
            for record in (*written, node, request):
                writer.record(record)
        got = store.events(rid)
        runs = store.node_runs(rid)
    assert [(e["stage"], e["decision"], e["cycle"], e["payload"]) for e in got] == [
        (e.stage, e.decision, e.cycle, e.payload) for e in written
    ]
    assert [e["started_at"] for e in got] == pytest.approx(
        [e.started_at for e in written], abs=1e-6
    )
    assert runs[0]["node"] == node.node
    assert runs[0]["duration_ms"] == pytest.approx(duration, abs=1e-3)


def test_every_run_from_the_tallies_equals_the_whole_table_reads(tmp_path: Path) -> None:
    """Every run's tallies, running ones too, give the same figures and facts as reading
    every request and event, before and after a run is resumed; pruning a run deletes
    its tallies."""
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        runs = [store.create_run("g", "abc", 3) for _ in range(3)]
        with StoreWriter(db) as writer:
            for n, run in enumerate(runs):
                for seq in range(n + 2):
                    for record in request_records(run, seq, 100.0 + seq):
                        writer.record(record)
        store.finish_run(runs[0], "finished")
        store.finish_run(runs[1], "interrupted")  # runs[2] is still running
        figures, facts = reads.every_run(store)
        assert figures == pytest.approx(reads.run_figures(store, None))  # summed apart
        assert facts == reads.run_facts(store, None)
        assert reads.every_run(store)[1].cache_misses == 2 + 3 + 4
        assert len(store.query("SELECT * FROM run_tallies")) == 3
        store.claim_run(runs[1])
        with StoreWriter(db) as writer:
            for record in request_records(runs[1], 3, 200.0):
                writer.record(record)
        figures, facts = reads.every_run(store)
        assert figures == pytest.approx(reads.run_figures(store, None))  # summed apart
        assert facts == reads.run_facts(store, None)
    prune(db, keep_runs=2)
    with Store.open(db) as store:
        assert {r["run_id"] for r in store.query("SELECT run_id FROM run_tallies")} == {
            r["id"] for r in store.query("SELECT id FROM runs")
        }


def test_tallies_of_a_run_no_longer_stored_do_not_send_every_run_to_the_whole_tables(
    tmp_path: Path,
) -> None:
    """Tallies left by a run deleted by hand count for nothing: the figures still come
    from the tallies (the whole-table fallback would read a million rows)."""
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        kept, gone = store.create_run("g", "abc", 2), store.create_run("g", "abc", 2)
        with StoreWriter(db) as writer:
            for run in (kept, gone):
                for seq in range(2):
                    for record in request_records(run, seq, 100.0 + seq):
                        writer.record(record)
        store.finish_run(kept, "finished")
        store.finish_run(gone, "finished")
        with sqlite3.connect(db) as conn:  # as a hand-written cleanup would: tallies left
            conn.execute("DELETE FROM requests WHERE run_id = ?", (gone,))
            conn.execute("DELETE FROM runs WHERE id = ?", (gone,))
        assert len(store.query("SELECT * FROM run_tallies")) == 2
        figures, facts = reads.every_run(store)
        expected = reads.run_figures(store, kept)
        assert figures["requests"] == 2
        assert figures["first_started"] is None  # as from tallies: read on their own
        assert {k: figures[k] for k in ("requests", "cost", "latency_sum", "errors")} == {
            k: expected[k] for k in ("requests", "cost", "latency_sum", "errors")
        }
        assert facts == reads.run_facts(store, kept)


def test_a_non_text_decision_is_stored_as_its_text(tmp_path: Path) -> None:
    """As the contract's TEXT column stored it: a number comes back as its text, never as
    a `strings` code."""
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        with StoreWriter(db) as writer:
            event = OrchestrationEvent("r", "r-1", 0, "st", "node", "X", 0, 7)  # type: ignore[arg-type]
            writer.record(event)
        assert store.events("r-1")[0]["decision"] == "7"


def test_a_request_s_rows_from_two_writers_in_turn_share_its_one_key(tmp_path: Path) -> None:
    """A writer that did not write a request's first rows (a resumed run, a row that came
    after the writer forgot the request) finds its stored key: one key per request and
    run, and every row reads back under the request."""
    db = tmp_path / "s.db"
    records = request_records("r-x", 0, 300.0)
    first, rest = records[:3], records[3:]
    with Store.open(db), StoreWriter(db) as writer:
        for record in first:
            writer.record(record)
    with StoreWriter(db) as writer:  # a new writer: it knows no key yet
        for record in rest:
            writer.record(record)
    conn = sqlite3.connect(db)
    keys = conn.execute("SELECT id, run, t0 FROM request_keys").fetchall()
    events = conn.execute(
        "SELECT COUNT(*) FROM orchestration_events WHERE request_id = 'r-x-000000'"
    ).fetchone()
    conn.close()
    assert len(keys) == 1 and keys[0][0] == "r-x-000000"
    assert events == (4,)
    with Store.open(db) as store:
        assert reads.request_count(store, "r-x") == 1
