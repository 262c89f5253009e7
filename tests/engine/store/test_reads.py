"""Reads at scale (`engine.store.reads`): the same figures as reading every row, from
indexes, and pages that continue where the last one ended."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import OrchestrationEvent, RequestRecord, RequestStatus
from engine.stats import percentile
from engine.store import reads
from engine.store.reads import RequestPage
from engine.store.store import Store
from tests.support.store_rows import stored_run

_LATENCY = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


def _requests(store: Store, run_id: str, latencies: list[float], **fields: object) -> None:
    with store.writer() as writer:
        for seq, latency in enumerate(latencies):
            writer.record(
                RequestRecord(
                    f"{run_id}-{seq:06d}", run_id, seq, RequestStatus.OK, 0.0, 1.0,
                    latency, latency / 1000, None, **fields,  # type: ignore[arg-type]
                )
            )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(st.lists(_LATENCY, max_size=40), st.lists(_LATENCY, min_size=1, max_size=5))
def test_percentiles_in_sql_equal_the_engine_s(values: list[float], other: list[float]) -> None:
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "s.db") as store:
        _requests(store, "run-a", values)
        _requests(store, "run-b", other)
        qs = (0, 50, 95, 99, 100)
        for run_id, expected in (("run-a", values), (None, values + other)):
            got = reads.percentiles(store, run_id, "latency_ms", qs)
            assert got == [percentile(expected, q) for q in qs]
            costs = reads.percentiles(store, run_id, "cost_usd", (95,))
            assert costs == [percentile([v / 1000 for v in expected], 95)]


def test_pages_continue_newest_first_and_filter_inside_sqlite(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        _requests(store, "run-a", [float(i) for i in range(25)], tenant="acme")
        _requests(store, "run-b", [100.0, 200.0], tenant="100%_real")
        first = reads.request_page(store, RequestPage(run_id="run-a"), None, 10)
        assert [r["seq"] for r in first] == list(range(24, 14, -1))
        second = reads.request_page(store, RequestPage(run_id="run-a"), first[-1]["row_id"], 10)
        assert [r["seq"] for r in second] == list(range(14, 4, -1))
        slow = reads.request_page(store, RequestPage(run_id="run-a", slow_ms=21.5), None, 10)
        assert [r["seq"] for r in slow] == [24, 23, 22]
        literal = reads.request_page(store, RequestPage(search="0%_"), None, 10)
        assert [r["run_id"] for r in literal] == ["run-b", "run-b"]
        assert reads.request_page(store, RequestPage(search="0%x"), None, 10) == []
        assert reads.latest_request_rowid(store) == first[0]["row_id"] + 2


def test_run_facts_count_the_fact_events_of_a_run_or_every_run(tmp_path: Path) -> None:
    """Of finished requests only: a crashed request's events (`q4`, no request row) are
    not counted, as none of its other figures are."""
    kinds = {
        "q1": ["CACHE_MISS", "VALIDATION_FAILED", "VALIDATION_PASSED", "GATE_DECISION"],
        "q2": ["CACHE_HIT", "VALIDATION_PASSED"],
        "q3": ["CACHE_HIT", "NODE_FAILED", "SPECULATIVE_RESULT_USED", "BRANCH_CANCELLED"],
        "q4": ["CACHE_HIT", "NODE_FAILED"],
    }
    with Store.open(tmp_path / "s.db") as store:
        with store.writer() as writer:
            for n, (rid, types) in enumerate(kinds.items()):
                for seq, kind in enumerate(types, 1):
                    writer.record(OrchestrationEvent("run", rid, 0, "n", "t", kind, seq))
                if rid != "q4":
                    writer.record(RequestRecord(rid, "run", n, RequestStatus.OK, 1, 2, 1, 0, {}))
            writer.record(OrchestrationEvent("other", "q9", 0, "n", "t", "CACHE_MISS", 1))
            writer.record(RequestRecord("q9", "other", 0, RequestStatus.OK, 1, 2, 1, 0, {}))
        facts = reads.run_facts(store, "run")
        every = reads.run_facts(store, None)
    with sqlite3.connect(tmp_path / "s.db") as conn:  # not tallied: counted from the rows
        conn.execute("DELETE FROM run_tallies")
    with Store.open(tmp_path / "s.db") as store:
        assert reads.run_facts(store, "run") == facts
    assert (facts.cache_hits, facts.cache_misses) == (2, 1)
    assert (facts.validation_passed, facts.validation_failed) == (2, 1)
    assert (facts.node_failures, facts.spec_used, facts.spec_cancelled) == (1, 1, 1)
    assert (every.cache_hits, every.cache_misses) == (2, 2)


def test_request_facts_give_route_and_cycles_of_just_the_asked_requests(tmp_path: Path) -> None:
    run_id = stored_run(tmp_path / "s.db", 3)
    with Store.open(tmp_path / "s.db", readonly=True) as store:
        facts = reads.request_facts(store, [f"{run_id}-000001", f"{run_id}-000002"])
    assert facts == {f"{run_id}-000001": ("small", 1), f"{run_id}-000002": ("small", 1)}
