"""Cached answers survive a restart: the `cache` node persists through the store's
`cache_entries` table, per tenant, written off the event loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from engine.api import Pipeline
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
    assert other.output["answer"] != answer
    with Store.open(db, readonly=True) as store:
        assert "CACHE_HIT" in [e["event_type"] for e in store.events(again.request_id)]
        assert "CACHE_MISS" in [e["event_type"] for e in store.events(other.request_id)]
        assert store.llm_calls(again.request_id) == []
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
