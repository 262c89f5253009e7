"""The cache's total ceiling: every namespace and tenant together stay under one budget, in
memory and in the store file, and eviction takes from the largest partition first."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nodes._support.cachebudget as cachebudget
from engine.plugin.context import SharedState
from engine.store.cache import ROW_OVERHEAD, StoreCachePersistence
from engine.store.store import Store
from nodes._support.cachebudget import CacheBudget, parse_bytes
from nodes._support.semcache import SemanticCache
from nodes.cache import CacheNode
from tests.support.nodes_fakes import Emitted, FakeRuntime, run_node

stores = st.lists(
    st.tuples(
        st.sampled_from(["ns1", "ns2"]),
        st.sampled_from([f"t{i}" for i in range(6)]),
        st.integers(min_value=0, max_value=400),  # the question
        st.integers(min_value=0, max_value=3000),  # the answer's length
    ),
    max_size=150,
)


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(min_value=20_000, max_value=200_000), ops=stores)
def test_the_total_never_exceeds_the_budget(
    limit: int, ops: list[tuple[str, str, int, int]]
) -> None:
    budget = CacheBudget(limit)
    caches = {ns: SemanticCache(ns, budget=budget) for ns in ("ns1", "ns2")}
    for ns, tenant, question, length in ops:
        caches[ns].store(tenant, f"question number {question}", "x" * length)
        assert budget.total <= budget.entry_limit < limit
        held = sum(p.bytes for c in caches.values() for p in c._tenants.values())
        assert budget.total == held, "the budget counts exactly what the partitions hold"


def test_eviction_takes_from_the_largest_tenant_first() -> None:
    entry = SemanticCache("probe").store("x", "probe question", "v" * 100)[0].size
    budget = CacheBudget(int(20 * entry / 0.9))  # room for 20 entries besides the headroom
    cache = SemanticCache("ns", budget=budget)
    for i in range(3):
        cache.store("small", f"small tenant question {i}", "v" * 100)
    for i in range(40):
        cache.store("big", f"big tenant question {i}", "v" * 100)
    assert cache.size("small") == 3, "a tenant under its fair share keeps every entry"
    assert budget.total <= budget.entry_limit < budget.total + entry + 50, "evicted no more"
    assert budget.evictions == 43 - 3 - cache.size("big")
    assert cache.last_evictions == {"TOTAL_BYTES": 1}
    # within the big tenant, the least recently used entries went
    assert cache.lookup("big", "big tenant question 39", threshold=1.0).entry is not None
    assert cache.lookup("big", "big tenant question 0", threshold=1.0).entry is None


def test_partitions_even_out_towards_equal_shares() -> None:
    entry = SemanticCache("probe").store("x", "probe question", "v" * 100)[0].size
    budget = CacheBudget(int(30 * entry / 0.9))
    a, b = SemanticCache("a", budget=budget), SemanticCache("b", budget=budget)
    for i in range(60):
        a.store("t1", f"first namespace question {i}", "v" * 100)
        b.store("t2", f"second namespace question {i}", "v" * 100)
        b.store("t3", f"third partition question {i}", "v" * 100)
    sizes = [a.size("t1"), b.size("t2"), b.size("t3")]
    assert max(sizes) - min(sizes) <= 1, sizes


def test_sizes_parse_with_units() -> None:
    assert parse_bytes("50M") == 50 << 20
    assert parse_bytes("1.5k") == 1536
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


@pytest.fixture
def fresh_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cachebudget, "_process", None)
    yield


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_budget")
async def test_the_node_records_evictions_for_the_total_ceiling() -> None:
    shared = SharedState()
    events: list[Emitted] = []
    for i in range(40):
        rt = FakeRuntime()
        config = {
            "mode": "store",
            "text": f"question {i} about things",
            "value": "v" * 4000,
            "total_bytes": 1 << 16,
        }
        await run_node(CacheNode(), config, rt, tenant=f"t{i % 4}", store=shared)
        await rt.succeed()
        events += [e for e in rt.events if e.type == "CACHE_EVICTED"]
    assert events, "the 64 KiB ceiling evicted entries"
    assert {code for e in events for code in e.reason_codes} == {"TOTAL_BYTES"}
    budget = cachebudget.process_budget()
    assert budget.limit_bytes == 1 << 16 and budget.total <= 1 << 16


def _table_bytes(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(length(value_json) + length(namespace) + length(tenant) "
            "+ length(key)), 0), COUNT(*) FROM cache_entries"
        ).fetchone()
    return int(row[0]) + ROW_OVERHEAD * int(row[1])


def test_the_store_table_stays_under_its_cap_and_trims_the_largest_tenant(
    tmp_path: Path,
) -> None:
    db = tmp_path / "edge.db"
    Store.open(db).close()
    persistence = StoreCachePersistence(db, interval_s=0.0)
    try:
        persistence.limit_bytes(40_000)
        for i in range(30):
            persistence.save("ns", "small" if i < 3 else "big", {"key": f"k{i}", "v": "x" * 2000})
            persistence.flush(timeout=10)
            assert _table_bytes(db) <= 40_000
        with sqlite3.connect(db) as conn:
            tenants = dict(conn.execute("SELECT tenant, COUNT(*) FROM cache_entries GROUP BY 1"))
    finally:
        persistence.close()
    assert tenants["small"] == 3
    assert persistence.store_evictions > 0
    assert persistence.stored_bytes() == _table_bytes(db)


def test_a_cap_set_on_a_full_table_trims_it_on_the_next_write(tmp_path: Path) -> None:
    db = tmp_path / "edge.db"
    Store.open(db).close()
    persistence = StoreCachePersistence(db, interval_s=0.0)
    try:
        for i in range(20):
            persistence.save("ns", f"t{i % 2}", {"key": f"k{i}", "v": "x" * 2000})
        persistence.flush(timeout=10)
        persistence.limit_bytes(10_000)
        persistence.save("ns", "t0", {"key": "last", "v": "y"})
        persistence.flush(timeout=10)
    finally:
        persistence.close()
    assert _table_bytes(db) <= 10_000
