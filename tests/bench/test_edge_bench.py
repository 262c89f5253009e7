"""The edge benchmarks, small: the cache bound holds and sync's compression is measured."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.edge_stores import edge_store

ROOT = Path(__file__).resolve().parents[2]


def _bench(module: str) -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(module)


def test_the_cache_bound_bench_stays_under_its_budget() -> None:
    result = _bench("bench.cache_bound").run(256 << 10, 400, 12, seed=1, trace=False)
    assert result["evictions"] > 0, "the budget was reached"
    assert result["peak_accounted_bytes"] <= 256 << 10
    assert result["peak_table_bytes"] <= 256 << 10
    assert len(result["samples"]) == 1


def test_the_sync_bench_measures_both_codecs(tmp_path: Path) -> None:
    db = edge_store(tmp_path, "edge")
    result = _bench("bench.sync").compression(db)
    assert result["records"] > 100
    for codec in ("zstd", "gzip"):
        assert result[codec]["ratio"] > 2
        assert result[codec]["bytes_per_record"] > 0


@pytest.mark.slow
def test_the_sync_bench_uploads_at_the_cap(tmp_path: Path) -> None:
    sync = _bench("bench.sync")
    db = edge_store(tmp_path, "edge")
    capped = sync.upload(db, tmp_path / "central.db", 64.0, None)
    assert capped["finished"]
    assert capped["records_stored_centrally"] == capped["records_acknowledged"]
    assert capped["kbps_achieved"] <= 64.0
