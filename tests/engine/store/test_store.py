"""The embedded store: schema contract, migrations, the batching writer, readers, runs,
orphans and the policy tables."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import StoreError
from engine.events import (
    CacheStatus,
    CallKind,
    CallOutcome,
    DecisionTrace,
    LlmCall,
    NodeOutcome,
    NodeRun,
    NodeStatus,
    OrchestrationEvent,
    RequestRecord,
    RequestStatus,
    hash_input,
)
from engine.store.compact import COMPACT_TABLES
from engine.store.schema import MIGRATIONS, SCHEMA_VERSION, connect, migrate
from engine.store.store import Store, StoreWriter

# architecture: The store, plus the nullable extras this store adds.
CONTRACT = {
    "runs": "id graph_name graph_hash started_at finished_at status requests_total "
    "requests_done config_json",
    "requests": "id run_id seq conversation_id turn_index parent_request_id tenant status "
    "started_at finished_at latency_ms cost_usd policy_name policy_version input_hash "
    "output_json error",
    "node_runs": "id request_id node node_type cycle status speculative outcome started_at "
    "duration_ms attempts error",
    "llm_calls": "id request_id node cycle model provider call_kind call_outcome cache_status "
    "related_event_id prompt_hash input_tokens output_tokens cost_usd latency_ms started_at "
    "status error prompt_text response_text",
    "orchestration_events": "id run_id request_id cycle stage component event_type decision "
    "status sequence started_at duration_ms reason_codes_json inputs_json outputs_json "
    "payload_json",
    "decision_traces": "id request_id cycle stage payload_json",
    "policy_snapshots": "name version content_hash body_json created_at parent_version status",
    "policy_activations": "id name version activated_at reason",
    "cache_entries": "namespace tenant key embedding value_json created_at expires_at hits "
    "negative",
    "meta": "key value",
}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "moat.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store.open(db) as opened:
        yield opened


def event(
    request_id: str,
    sequence: int,
    event_type: str = "GATE_DECISION",
    *,
    run_id: str = "run-1",
    decision: str | None = None,
    reason_codes: tuple[str, ...] = (),
    payload: dict[str, Any] | None = None,
) -> OrchestrationEvent:
    return OrchestrationEvent(
        run_id=run_id,
        request_id=request_id,
        cycle=0,
        stage="critic",
        component="scheduler",
        event_type=event_type,
        sequence=sequence,
        decision=decision,
        started_at=100.0 + sequence,
        reason_codes=reason_codes,
        payload=payload,
    )


def node_run(request_id: str, node: str = "critic") -> NodeRun:
    return NodeRun(
        request_id, node, "critic", 1, NodeStatus.SUCCEEDED, True, NodeOutcome.USED, 100.5, 12.5, 2
    )


def llm_call(request_id: str) -> LlmCall:
    return LlmCall(
        request_id=request_id,
        node="draft",
        cycle=1,
        model="small",
        provider="sim",
        call_kind=CallKind.SPECULATIVE,
        call_outcome=CallOutcome.DISCARDED,
        cache_status=CacheStatus.MISS,
        prompt_hash="abc",
        input_tokens=10,
        output_tokens=20,
        cost_usd=0.001,
        latency_ms=50.0,
        started_at=100.2,
        status="ok",
        related_event_id=3,
        prompt_text="hello",
    )


def request(request_id: str, seq: int, run_id: str = "run-1") -> RequestRecord:
    return RequestRecord(
        id=request_id,
        run_id=run_id,
        seq=seq,
        status=RequestStatus.OK,
        started_at=100.0,
        finished_at=100.8,
        latency_ms=800.0,
        cost_usd=0.002,
        output={"answer": "yes"},
        tenant="public",
        policy_name="default",
        policy_version=2,
    )


def count(store: Store, table: str) -> int:
    return int(store.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])


def test_schema_tables_and_columns_match_the_contract(store: Store) -> None:
    # The per-request tables are views over the compact layout (engine.store.compact):
    # readers see the contract's names and columns either way.
    readable = {
        row["name"]
        for row in store.query("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    }
    assert set(CONTRACT) <= readable
    assert readable - set(CONTRACT) == {
        *COMPACT_TABLES.values(),
        "strings",
        "request_keys",
        "run_tallies",
        "run_counts",
        "run_seconds",
    }
    for table, columns in CONTRACT.items():
        info = store.query(f"PRAGMA table_info({table})")
        assert [row["name"] for row in info] == columns.split(), table


def test_request_and_run_id_columns_are_indexed(store: Store) -> None:
    # `requests` by its ids; the compact tables by their integer request key, which
    # `request_keys` maps from the request id (and run).
    for table, wanted in (
        ("requests", {"run_id"}),
        ("request_keys", {"id", "run"}),
        *((base, {"rk"}) for base in COMPACT_TABLES.values()),
    ):
        indexed = {
            info["name"]
            for index in store.query(f"PRAGMA index_list({table})")
            for info in store.query(f"PRAGMA index_info({index['name']})")
        }
        assert wanted <= indexed, table


def test_store_is_in_wal_mode_at_the_current_schema_version(store: Store, db: Path) -> None:
    assert store.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    with Store.open(db) as again:  # reopening migrates nothing
        assert again.schema_version == SCHEMA_VERSION


def test_migrations_are_applied_in_order_and_recorded_in_user_version(db: Path) -> None:
    extra = ("CREATE TABLE extra (x INTEGER)", "INSERT INTO extra VALUES (1)")
    conn = connect(db)
    shipped = len(MIGRATIONS)
    assert migrate(conn, db) == shipped
    assert migrate(conn, db, (*MIGRATIONS, extra)) == shipped + 1
    assert migrate(conn, db, (*MIGRATIONS, extra)) == shipped + 1  # idempotent
    assert conn.execute("SELECT COUNT(*) FROM extra").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shipped + 1
    conn.close()


def test_a_failed_migration_leaves_the_previous_version(db: Path) -> None:
    conn = connect(db)
    migrate(conn, db)
    broken = ("CREATE TABLE ok_table (x)", "CREATE TABLE runs (x)")
    with pytest.raises(StoreError, match="migrating the store schema failed"):
        migrate(conn, db, (*MIGRATIONS, broken))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'ok_table'").fetchone() is None
    conn.close()


def test_pending_migrations_apply_together_or_not_at_all(db: Path) -> None:
    """A store being created goes from no schema to the latest in one transaction: a reader
    never finds it at an older version (the TUI would call it one), and a failure in the
    last migration leaves no table of the first."""
    conn = connect(db)
    broken = ("CREATE TABLE ok_table (x)", "CREATE TABLE runs (x)")
    with pytest.raises(StoreError, match="migrating the store schema failed"):
        migrate(conn, db, (*MIGRATIONS, broken))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    conn.close()


def test_a_newer_schema_is_refused_with_an_upgrade_hint(db: Path) -> None:
    Store.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match=r"version 99 is newer .* upgrade moat"):
        Store.open(db)
    with pytest.raises(StoreError, match="upgrade moat"):
        StoreWriter(db)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_negative_schema_version_is_no_store_and_is_left_as_it_was(
    db: Path, readonly: bool
) -> None:
    Store.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = -1")
    tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
    conn.close()

    # migrating from "-1" would replay the last migration on tables that already exist
    with pytest.raises(StoreError, match=r"schema version is -1, which no moat writes.*--db"):
        Store.open(db, readonly=readonly)

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == -1
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == tables
    conn.close()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not sqlite at all, just some text that is long enough" * 20)
    with pytest.raises(StoreError, match="not a moat store"):
        Store.open(path)


def test_readonly_open_of_a_missing_store_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store; run `moat run GRAPH"):
        Store.open(tmp_path / "missing.db", readonly=True)


def test_records_round_trip_through_the_writer(store: Store) -> None:
    with store.writer() as writer:
        writer.record(event("q1", 1, reason_codes=("a", "b"), payload={"x": 1}, decision="run"))
        writer.record(node_run("q1"))
        writer.record(llm_call("q1"))
        writer.record(DecisionTrace("q1", 1, "CYCLE_SUMMARY", {"planned": ["critic"]}))
        writer.record(request("q1", 0))
    rows = store.request_rows("q1")
    ev = rows["orchestration_events"][0]
    assert (ev["event_type"], ev["decision"], ev["reason_codes"], ev["payload"]) == (
        "GATE_DECISION",
        "run",
        ["a", "b"],
        {"x": 1},
    )
    assert ev["inputs"] is None
    nr = rows["node_runs"][0]
    assert (nr["status"], nr["speculative"], nr["outcome"], nr["attempts"]) == (
        "succeeded",
        1,
        "used",
        2,
    )
    call = rows["llm_calls"][0]
    assert (call["call_kind"], call["call_outcome"], call["cache_status"]) == (
        "speculative",
        "discarded",
        "miss",
    )
    assert (call["related_event_id"], call["prompt_text"], call["response_text"]) == (
        3,
        "hello",
        None,
    )
    assert rows["decision_traces"][0]["payload"] == {"planned": ["critic"]}
    assert rows["requests"][0]["output"] == {"answer": "yes"}
    assert store.request_output("q1") == {
        "request_id": "q1",
        "status": "ok",
        "output": {"answer": "yes"},
        "latency_ms": 800.0,
        "cost_usd": 0.002,
        "policy_version": 2,
        "error": None,
    }


def test_the_writer_hashes_a_request_input_the_scheduler_left_unhashed(store: Store) -> None:
    with store.writer() as writer:
        unhashed = request("q1", 0)
        unhashed.input = {"prompt": "hi", "tenant": "acme"}
        writer.record(unhashed)
        hashed = request("q2", 1)
        hashed.input_hash = "given"
        writer.record(hashed)
        writer.record(request("q3", 2))
    hashes = {
        row["id"]: row["input_hash"]
        for row in store.query("SELECT id, input_hash FROM requests ORDER BY seq")
    }
    assert hashes == {
        "q1": hash_input({"tenant": "acme", "prompt": "hi"}),
        "q2": "given",
        "q3": None,
    }
    assert len(hashes["q1"]) == 16


def test_writer_batches_many_records_into_few_transactions(db: Path) -> None:
    writer = StoreWriter(db, batch_size=1_000, interval_s=0.05)
    for i in range(5_000):
        writer.record(event(f"q{i // 10}", i % 10))
    writer.flush()
    assert writer.stats.records == 5_000
    assert 1 <= writer.stats.transactions <= 10
    writer.close()
    with Store.open(db) as store:
        assert count(store, "orchestration_events") == 5_000


@pytest.mark.parametrize("many", [False, True], ids=["alone", "in-a-full-statement"])
def test_a_text_holding_a_lone_surrogate_is_stored_escaped_and_costs_no_other_row(
    db: Path, many: bool
) -> None:
    """Python keeps bytes of a file name or argument that are not UTF-8 as lone surrogates;
    SQLite takes UTF-8 only. Such a text is stored escaped, and the rows written beside it
    (in the same statement, the same transaction) are all kept."""
    writer = StoreWriter(db)
    others = 40 if many else 0
    for i in range(others):
        writer.record(request(f"ok-{i}", i + 1))
    bad = dataclasses.replace(request("odd", 0), error="we\udcffird.jsonl:3: invalid JSON")
    writer.record(bad)
    writer.flush()
    assert (writer.stats.records, writer.stats.dropped) == (others + 1, 0)
    writer.close()
    with Store.open(db) as store:
        assert count(store, "requests") == others + 1
        row = store.get_request("odd")
        assert row is not None and row["error"] == "we\\udcffird.jsonl:3: invalid JSON"


def test_writer_counts_its_peak_backlog_and_bounds_its_transactions(db: Path) -> None:
    writer = StoreWriter(db, batch_size=10_000, interval_s=60, max_batch=300)
    for i in range(1_000):
        writer.record(event(f"q{i // 10}", i % 10))
    writer.flush()  # the only wake-up: everything waits until then
    assert writer.stats.records == 1_000
    assert writer.stats.largest_batch == 300
    assert writer.stats.transactions == 4
    assert writer.stats.peak_backlog >= 1_000
    writer.close()
    with Store.open(db) as store:
        assert count(store, "orchestration_events") == 1_000


def test_writer_commits_on_its_interval_without_an_explicit_flush(db: Path) -> None:
    writer = StoreWriter(db, interval_s=0.02)
    with Store.open(db) as store:
        writer.record(event("q1", 1))
        deadline = time.monotonic() + 5
        while count(store, "orchestration_events") == 0:
            assert time.monotonic() < deadline, "the writer never committed"
            time.sleep(0.01)
    writer.close()


def test_record_does_no_io_and_close_is_idempotent(db: Path) -> None:
    writer = StoreWriter(db, interval_s=60)  # nothing is written until asked
    writer.record(event("q1", 1))
    with Store.open(db) as store:
        assert count(store, "orchestration_events") == 0
        writer.close()
        writer.close()
        assert count(store, "orchestration_events") == 1
    with pytest.raises(StoreError, match="writer is closed"):
        writer.record(event("q1", 2))


def test_a_request_s_parts_given_to_the_part_recorder_are_written_with_its_record(
    db: Path,
) -> None:
    writer = StoreWriter(db, batch_size=3, interval_s=60)
    part = writer.part_recorder()
    for sequence in range(1, 6):
        part(event("q1", sequence))
    part(node_run("q1"))
    assert not writer._wake.is_set()  # parts alone never wake the writer: the record does
    writer.record(request("q1", 0))
    assert writer._wake.is_set()  # (a full batch waits)
    writer.close()
    with Store.open(db) as store:
        assert count(store, "orchestration_events") == 5
        assert count(store, "node_runs") == 1
        assert store.request_rows("q1")["requests"][0]["status"] == "ok"
    with pytest.raises(StoreError, match="writer is closed"):  # the request is refused
        writer.record(request("q2", 1))


def broken_run(request_id: str) -> NodeRun:
    """A node run no row can be built of (moat's own mistake, not a node's payload)."""
    return dataclasses.replace(node_run(request_id), status=object())  # type: ignore[arg-type]


def test_a_record_that_cannot_be_encoded_is_dropped_and_reported(db: Path) -> None:
    writer = StoreWriter(db)
    writer.record(broken_run("q1"))
    writer.record(event("q1", 2, payload={"odd": {1}}))  # not JSON: stored as its str()
    with pytest.raises(StoreError, match=r"writing to the store failed .* 1 records dropped"):
        writer.flush()
    writer.close()
    with Store.open(db) as store:
        assert [e["payload"] for e in store.events("q1")] == [{"odd": "{1}"}]
        assert count(store, "node_runs") == 0


def test_a_node_payload_json_cannot_carry_is_stored_mended_not_dropped(db: Path) -> None:
    circular: dict[str, Any] = {"name": "loop"}
    circular["self"] = circular
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    writer = StoreWriter(db)
    writer.record(event("q1", 1, payload=circular))
    writer.record(event("q1", 2, payload={"deep": deep, (1, 2): "tuple key"}))
    writer.record(event("q1", 3, reason_codes=[object()], decision=3))  # type: ignore[arg-type]
    writer.record(DecisionTrace("q1", 0, "HOSTILE", circular))
    writer.record(event("q1", 4, payload={"fine": 1}))
    writer.flush()  # nothing dropped: no error
    writer.close()
    assert writer.stats.dropped == 0
    with Store.open(db) as store:
        events = store.events("q1")
        assert [e["sequence"] for e in events] == [1, 2, 3, 4]
        assert events[0]["payload"] == {"name": "loop", "self": "<dict holding itself>"}
        kept = events[1]["payload"]
        assert kept["(1, 2)"] == "tuple key"
        for _ in range(62):
            (kept,) = kept["deep"] if isinstance(kept, dict) else kept
        assert kept == ["<list nested deeper than 64>"]
        assert events[2]["reason_codes"][0].startswith("<object object at")
        assert events[3]["payload"] == {"fine": 1}


def test_the_store_s_json_is_strict_nan_and_infinities_are_null(db: Path) -> None:
    writer = StoreWriter(db)
    odd = {"nan": math.nan, "inf": [math.inf, -math.inf], "fine": 1.5}
    writer.record(event("q1", 1, payload=odd))
    writer.flush()
    writer.close()
    assert writer.stats.dropped == 0
    with sqlite3.connect(db) as conn:
        ((text,),) = conn.execute("SELECT payload_json FROM orchestration_events").fetchall()
    conn.close()

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the store's JSON")

    json.loads(text, parse_constant=refuse)
    assert json.loads(text) == {"nan": None, "inf": [None, None], "fine": 1.5}


def test_flush_soon_calls_back_on_the_writer_thread_once_the_records_are_committed(
    db: Path,
) -> None:
    writer = StoreWriter(db, interval_s=60)  # only the flush makes it write
    seen: list[tuple[str, int, StoreError | None]] = []
    called = threading.Event()

    def done(error: StoreError | None) -> None:
        with Store.open(db) as store:  # another connection sees the commit already
            seen.append(
                (threading.current_thread().name, count(store, "orchestration_events"), error)
            )
        called.set()

    for i in range(50):
        writer.record(event("q1", i))
    writer.flush_soon(done)
    assert called.wait(10)
    assert seen == [("moat-store-writer", 50, None)]
    writer.close()


def test_flush_soon_hands_a_failed_write_to_its_callback_once(db: Path) -> None:
    writer = StoreWriter(db, interval_s=60)
    errors: list[StoreError | None] = []
    called = threading.Event()

    def done(error: StoreError | None) -> None:
        errors.append(error)
        called.set()

    writer.record(broken_run("q1"))
    writer.flush_soon(done)
    assert called.wait(10)
    assert len(errors) == 1 and errors[0] is not None
    assert re.search(r"writing to the store failed .* 1 records dropped", str(errors[0]))
    writer.flush()  # the failure was reported once, to the callback
    writer.close()
    closed: list[StoreError | None] = []
    writer.flush_soon(closed.append)  # a stopped writer calls back at once
    assert closed == [None]


def test_readers_never_see_a_request_row_before_its_other_rows(db: Path) -> None:
    requests, per_request = 300, 8
    writer = StoreWriter(db, batch_size=50, interval_s=0.001, max_batch=37)
    violations: list[str] = []
    done = threading.Event()

    def read() -> None:
        with Store.open(db, readonly=True) as reader:
            while not done.is_set():
                rows = reader.query(
                    "SELECT r.id, (SELECT COUNT(*) FROM orchestration_events e "
                    "WHERE e.request_id = r.id) AS n FROM requests r"
                )
                violations.extend(row["id"] for row in rows if row["n"] != per_request)

    reader = threading.Thread(target=read)
    reader.start()
    for seq in range(requests):
        for i in range(per_request):
            writer.record(event(f"q{seq}", i))
        writer.record(request(f"q{seq}", seq))
        if seq % 50 == 0:
            time.sleep(0.005)
    writer.close()
    done.set()
    reader.join()
    assert violations == []
    with Store.open(db) as store:
        assert count(store, "requests") == requests


def test_delete_orphans_removes_rows_of_unfinished_requests_only(store: Store) -> None:
    with store.writer() as writer:
        for rid in ("done", "crashed"):
            writer.record(event(rid, 1))
            writer.record(node_run(rid))
            writer.record(llm_call(rid))
            writer.record(DecisionTrace(rid, 1, "CYCLE_SUMMARY", {}))
        writer.record(request("done", 0))
        writer.record(event("other-run-live", 1, run_id="run-2"))
        writer.record(event("", 0, "POLICY_ACTIVATED"))  # run-level event
        writer.record(node_run("no-events-at-all"))
    assert store.delete_orphans("run-1") == 5
    for table in ("node_runs", "llm_calls", "decision_traces"):
        ids = {row["request_id"] for row in store.query(f"SELECT request_id FROM {table}")}
        assert ids == {"done"}, table
    events = {row["request_id"] for row in store.query("SELECT * FROM orchestration_events")}
    assert events == {"done", "other-run-live", ""}


def test_runs_have_a_lifecycle_and_sortable_ids(store: Store) -> None:
    run_id = store.create_run("governed-answer", "h1", 3, {"concurrency": 4})
    assert re.fullmatch(r"r-\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    run = store.require_run(run_id)
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    assert (run["status"], run["requests_done"], run["config"]) == (
        "running",
        0,
        {"concurrency": 4, "owner": owner, "heartbeat_at": run["started_at"]},
    )
    store.update_run_progress(run_id, 1)
    assert store.require_run(run_id)["requests_done"] == 1
    with store.writer() as writer:
        writer.record(request("a", 0, run_id))
        writer.record(request("b", 2, run_id))
    assert store.finished_request_seqs(run_id) == {0, 2}
    store.finish_run(run_id, "interrupted")
    run = store.require_run(run_id)
    assert (run["status"], run["requests_done"]) == ("interrupted", 2)
    assert run["finished_at"] >= run["started_at"]
    assert [r["id"] for r in store.list_runs()] == [run_id]
    assert [r["id"] for r in store.list_requests(run_id)] == ["a", "b"]


def test_an_unknown_run_lists_the_latest_runs(store: Store) -> None:
    run_id = store.create_run("g", None, None)
    with pytest.raises(StoreError, match=rf"no run 'nope'\. Latest runs: {run_id}\..*moat runs"):
        store.finish_run("nope", "finished")


def test_policy_snapshots_activate_and_keep_history(store: Store) -> None:
    store.insert_policy_snapshot("gov", 1, "h1", {"max_risk": 0.3}, None, "inactive")
    store.insert_policy_snapshot("gov", 2, "h2", {"max_risk": 0.2}, 1, "candidate")
    assert store.active_policy("gov") is None
    store.activate_policy("gov", 1, "initial")
    store.activate_policy("gov", 2, "apply")
    active = store.active_policy("gov")
    assert active is not None
    assert (active["version"], active["body"], active["status"]) == (2, {"max_risk": 0.2}, "active")
    assert store.get_policy("gov", 1)["status"] == "inactive"  # type: ignore[index]
    store.set_policy_status("gov", 2, "bad")
    store.activate_policy("gov", 1, "guard: p95 ratio 1.8 > 1.2")
    assert store.get_policy("gov", 2)["status"] == "bad"  # type: ignore[index]
    history = store.policy_history("gov")
    assert [(h["version"], h["reason"], h["status"]) for h in history] == [
        (1, "initial", "active"),
        (2, "apply", "bad"),
        (1, "guard: p95 ratio 1.8 > 1.2", "active"),
    ]
    assert store.list_policies() == [{"name": "gov", "versions": 2, "latest": 2, "active": 1}]


def test_policy_errors_say_what_exists(store: Store) -> None:
    store.insert_policy_snapshot("gov", 1, "h1", {}, None, "inactive")
    with pytest.raises(StoreError, match=r"version 1 already exists .* as version 2"):
        store.insert_policy_snapshot("gov", 1, "h9", {}, None, "inactive")
    with pytest.raises(StoreError, match="has no version 7; stored versions: 1"):
        store.activate_policy("gov", 7, "x")
    with pytest.raises(StoreError, match=r"no policy named 'nope' .*policies: gov"):
        store.set_policy_status("nope", 1, "bad")
    assert store.policy_history("gov") == []


def test_a_running_run_whose_process_is_gone_reads_as_died(store: Store) -> None:
    import subprocess
    import sys

    from engine.store.store import STALE_AFTER_S, run_state

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = socket.gethostname()
    now = time.time()

    def running(pid: int, host: str, beat: float) -> dict[str, Any]:
        owner = {"pid": pid, "host": host}
        return {"status": "running", "config": {"owner": owner, "heartbeat_at": beat}}

    assert run_state(running(os.getpid(), here, 0.0), now) == "running"  # alive, if silent
    assert run_state(running(gone.pid, here, now), now) == "died"
    assert run_state(running(1234, "elsewhere", now - 1), now) == "running"
    assert run_state(running(1234, "elsewhere", now - STALE_AFTER_S - 1), now) == "died"
    assert run_state({"status": "finished", "config": {}}, now) == "finished"
    assert run_state({"status": "running", "config": {}}, now) == "running"  # an older moat's

    run_id = store.create_run("g", None, 2)
    assert store.require_run(run_id)["status"] == "running"
    store._conn.execute(  # as if the process that made it had died
        "UPDATE runs SET config_json = json_set(config_json, '$.owner.pid', ?)", (gone.pid,)
    )
    assert [(r["status"], r["stored_status"]) for r in store.list_runs()] == [("died", "running")]
    store.claim_run(run_id)  # a resume takes it over
    assert store.require_run(run_id)["status"] == "running"
    with pytest.raises(StoreError, match=f"run {run_id} is still running"):
        store.claim_run(run_id)


def test_a_store_file_has_one_write_lock_however_it_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.store.schema import file_lock

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    monkeypatch.chdir(tmp_path / "a")
    lock = file_lock(tmp_path / "a" / "t.db")
    assert file_lock(str(tmp_path / "a" / "t.db")) is lock
    assert file_lock(tmp_path / "link" / "t.db") is lock
    assert file_lock("t.db") is lock
    assert file_lock(tmp_path / "a" / "t.db") is lock  # asked again, remembered
    # a relative name follows the working directory; another file has its own lock
    monkeypatch.chdir(tmp_path / "b")
    other = file_lock("t.db")
    assert other is file_lock(tmp_path / "b" / "t.db")
    assert other is not lock


odd_payloads = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=4)
    | st.datetimes()
    | st.builds(object),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
        | st.dictionaries(
            st.text(max_size=4) | st.integers() | st.tuples(st.integers()), inner, max_size=3
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payloads=st.lists(odd_payloads, min_size=1, max_size=5), cyclic=st.booleans())
def test_whatever_payloads_nodes_record_every_event_is_kept(
    tmp_path: Path, payloads: list[Any], cyclic: bool
) -> None:
    db = tmp_path / f"p{time.monotonic_ns()}.db"
    writer = StoreWriter(db)
    for n, value in enumerate(payloads, 1):
        payload: dict[Any, Any] = {"v": value}
        if cyclic:
            payload["again"] = payload
        writer.record(event("q1", n, payload=payload))
    writer.flush()
    writer.close()
    assert writer.stats.dropped == 0
    with Store.open(db) as store:
        assert [e["sequence"] for e in store.events("q1")] == list(range(1, len(payloads) + 1))
