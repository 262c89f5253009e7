"""Cached answers survive a restart: the `cache` node persists through the store's
`cache_entries` table, per tenant, written off the event loop."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from engine.api import Pipeline
from engine.cli import main
from engine.errors import StoreError
from engine.store import schema as _store_schema
from engine.store.schema import connect, write_transaction
from engine.store.store import Store

pytestmark = pytest.mark.anyio

GRAPH = """
moat: 1
name: faq
models:
  small: {provider: sim, profile: small, time_scale: 0}
input:
  type: object
  required: [prompt]
  properties: {prompt: {type: string}, tenant: {type: string, default: public}}
nodes:
  cached: {type: cache, with: {text: "{{ input.prompt }}", namespace: faq}}
  answer: {type: model, with: {model: small, prompt: "{{ input.prompt }}"}}
  remember:
    type: cache
    with: {mode: store, namespace: faq, text: "{{ input.prompt }}", value: "{{ answer.text }}"}
output:
  answer: "cached.value if cached.hit else answer.text"
  source: "'cache' if cached.hit else 'model'"
  stored: "false if cached.hit else remember.stored"
"""
PROMPT = "How do I reset my password?"


def cache_rows(db: Path) -> list[tuple[str, str, int, int, object]]:
    """(namespace, tenant, hits, negative, cached value) of every row, oldest first."""
    with Store.open(db, readonly=True) as store:
        rows = store.query("SELECT * FROM cache_entries ORDER BY created_at")
    return [
        (r["namespace"], r["tenant"], r["hits"], r["negative"], r["value"]["value"]) for r in rows
    ]


async def test_a_cached_answer_survives_a_restart_for_its_own_tenant_only(tmp_path: Path) -> None:
    graph, db = tmp_path / "faq.yaml", tmp_path / "moat.db"
    graph.write_text(GRAPH)
    async with Pipeline(graph, db=db) as pipe:
        first = await pipe.run({"prompt": PROMPT, "tenant": "acme"})
    assert first.output is not None and first.output["stored"] is True
    answer = first.output["answer"]
    assert cache_rows(db) == [("faq", "acme", 0, 0, answer)]

    async with Pipeline(graph, db=db) as restarted:  # a new process: nothing in memory
        again = await restarted.run({"prompt": PROMPT, "tenant": "acme"})
        other = await restarted.run({"prompt": PROMPT, "tenant": "globex"})
    assert again.output == {"answer": answer, "source": "cache", "stored": False}
    assert again.cost_usd == 0.0
    assert other.output is not None and other.output["source"] == "model"
    with Store.open(db, readonly=True) as store:
        assert "CACHE_HIT" in [e["event_type"] for e in store.events(again.request_id)]
        assert "CACHE_MISS" in [e["event_type"] for e in store.events(other.request_id)]
        assert store.llm_calls(again.request_id) == []
        # its own model call (the text may still match: the sim can say the same twice)
        assert store.llm_calls(other.request_id) != []
    # the hit was written back (hits, longer TTL); the other tenant got a row of its own
    assert cache_rows(db) == [
        ("faq", "acme", 1, 0, answer),
        ("faq", "globex", 0, 0, other.output["answer"]),
    ]


def test_writes_are_seen_at_once_and_committed_in_the_background(tmp_path: Path) -> None:
    record = {"key": "k1", "value": "A runtime.", "stored_at": 1.0, "expires_at": 9e9}
    with Store.open(tmp_path / "moat.db") as store:
        persistence = store.cache_persistence()
        assert store.cache_persistence() is persistence  # one per store
        persistence.save("faq", "acme", record)
        assert persistence.load("faq") == [("acme", record)]  # pending, already visible
        assert persistence.load("other") == []
        persistence.flush()
        assert store.query("SELECT key, tenant, hits FROM cache_entries") == [
            {"key": "k1", "tenant": "acme", "hits": 0}
        ]
        persistence.delete("faq", "acme", "k1")
        assert persistence.load("faq") == []
        persistence.save("faq", "globex", {**record, "hits": 3})
    # closing the store commits what was still pending
    with Store.open(tmp_path / "moat.db") as store:
        assert store.query("SELECT key, tenant, hits FROM cache_entries") == [
            {"key": "k1", "tenant": "globex", "hits": 3}
        ]
        assert store.cache_persistence().load("faq") == [("globex", {**record, "hits": 3})]


def test_a_cache_that_outlives_its_store_keeps_working_in_memory(tmp_path: Path) -> None:
    with Store.open(tmp_path / "moat.db") as store:
        persistence = store.cache_persistence()
    with capture_logs() as logs:
        persistence.save("faq", "acme", {"key": "k1", "value": "late"})  # does not raise
    assert [entry["event"] for entry in logs] == ["cache.write_after_close"]


def hold_write_lock(db: Path, seconds: float) -> threading.Thread:
    """Another process's stand-in: a plain connection holding the write lock for a while."""
    held = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    held.wait()
    return thread


def test_writers_of_one_process_take_turns_and_never_lock_each_other_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no busy timeout at all, any overlap of two of the process's writers inside SQLite
    # would fail at once: the writers must take turns before they reach it.
    monkeypatch.setattr(_store_schema, "_BUSY_TIMEOUT_MS", 0)
    db = tmp_path / "moat.db"
    record = {"key": "k1", "value": "A runtime.", "stored_at": 1.0, "expires_at": 9e9}
    with Store.open(db) as store:
        persistence = store.cache_persistence()
        holder, held, release = connect(db), threading.Event(), threading.Event()

        def hold() -> None:  # e.g. the batching writer in the middle of a long commit
            with write_transaction(holder, db):
                holder.execute("INSERT INTO meta VALUES ('busy', 'yes')")
                held.set()
                release.wait(10)

        thread = threading.Thread(target=hold)
        thread.start()
        held.wait()
        persistence.save("faq", "acme", record)
        threading.Timer(0.3, release.set).start()
        persistence.flush(timeout=30)  # waits its turn instead of failing
        store.create_run("faq", None, 1)  # so does the store's own connection
        thread.join()
        holder.close()
        assert store.query("SELECT key FROM cache_entries") == [{"key": "k1"}]


def test_a_run_waits_out_another_process_holding_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_store_schema, "_BUSY_TIMEOUT_MS", 20)
    graph, db, out = tmp_path / "faq.yaml", tmp_path / "moat.db", tmp_path / "out.jsonl"
    graph.write_text(GRAPH)
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(f'{{"prompt": "Question {i}?"}}\n' for i in range(20)))
    Store.open(db).close()
    holder = hold_write_lock(db, 1.0)
    code = main(["run", str(graph), "--input", str(requests), "--out", str(out), "--db", str(db)])
    holder.join()
    err = capsys.readouterr().err
    assert code == 0, err
    assert "database is locked" not in err
    assert len(out.read_text().splitlines()) == 20
    assert len(cache_rows(db)) == 20


def test_a_cache_write_that_cannot_be_made_is_a_warning_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_store_schema, "_BUSY_TIMEOUT_MS", 10)
    monkeypatch.setattr(_store_schema, "WRITE_PATIENCE_S", 0.2)
    db = tmp_path / "moat.db"
    record = {"key": "k1", "value": "A runtime.", "stored_at": 1.0, "expires_at": 9e9}
    store = Store.open(db)
    persistence = store.cache_persistence()
    holder = hold_write_lock(db, 1.5)
    with capture_logs() as logs:
        persistence.save("faq", "acme", record)
        with pytest.raises(StoreError, match="another process held the write lock"):
            persistence.flush(timeout=30)
        assert persistence.load("faq") == [("acme", record)]  # still served from memory
        holder.join()
        persistence.flush(timeout=30)  # the retry got through
        store.close()  # and closing never raises for the cache
    assert "cache.write_failed" in [entry["event"] for entry in logs]
    assert cache_rows(db) == [("faq", "acme", 0, 0, "A runtime.")]


def test_entries_that_never_get_written_are_reported_when_the_store_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_store_schema, "_BUSY_TIMEOUT_MS", 10)
    monkeypatch.setattr(_store_schema, "WRITE_PATIENCE_S", 0.1)
    db = tmp_path / "moat.db"
    store = Store.open(db)
    persistence = store.cache_persistence()
    holder = hold_write_lock(db, 1.0)
    with capture_logs() as logs:
        persistence.save("faq", "acme", {"key": "k1", "value": "v"})
        store.close()  # does not raise
    holder.join()
    (lost,) = [entry for entry in logs if entry["event"] == "cache.entries_lost"]
    assert lost["entries"] == 1 and "another process held the write lock" in lost["error"]


@pytest.mark.slow
def test_cache_writes_get_through_while_the_batching_writer_commits_back_to_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The case that made a 5,000-request run exit 2: SQLite's busy handler polls, so a
    # writer committing back to back starved the cache writer past any busy timeout.
    from engine.events import NodeOutcome, NodeRun, NodeStatus

    monkeypatch.setattr(_store_schema, "_BUSY_TIMEOUT_MS", 300)
    with Store.open(tmp_path / "moat.db") as store:
        writer, persistence = store.writer(interval_s=0.0), store.cache_persistence()
        stop = time.monotonic() + 4
        run = NodeRun("r", "n", "t", 0, NodeStatus.SUCCEEDED, False, NodeOutcome.NONE, 1, 1, 1)

        def flood() -> None:  # keep a backlog, so the writer never pauses between commits
            sent = 0
            while time.monotonic() < stop:
                if sent - writer.stats.records < 50_000:
                    for _ in range(5000):
                        writer.record(run)
                    sent += 5000
                time.sleep(0.001)

        thread = threading.Thread(target=flood)
        thread.start()
        saved = 0
        while time.monotonic() < stop:
            persistence.save("faq", "acme", {"key": f"k{saved}", "value": "v"})
            persistence.flush(timeout=60)  # never "database is locked"
            saved += 1
        thread.join()
        writer.close()
        assert writer.stats.dropped == 0
        assert store.query("SELECT COUNT(*) AS n FROM cache_entries") == [{"n": saved}]
