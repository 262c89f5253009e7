"""Benchmark of the cache's total ceiling: memory and store file held under a budget.

Usage:
    python bench/cache_bound.py [--budget 50M] [--inserts 200000] [--tenants 300] [--trace]
                                [--json]

Every cache of the process shares one budget (`nodes/_support/cachebudget.py`). This inserts
`--inserts` answers into two namespaces across `--tenants` tenants (Zipf-like: a few
tenants store most), with prompts of 5-40 words and answers of 20-4000 characters, and
writes through to a store file capped at the same budget, as `moat run --db` does. Every
5,000 inserts it samples:

- with `--trace`, the Python memory the caches hold (tracemalloc, over a baseline taken
  before the first insert: entries, vectors, indexes, token-hash cache, the pending writes
  of the store's writer thread); tracemalloc slows every allocation, so the long run leaves
  it off and samples the process's resident memory (RSS over the same baseline: an upper
  bound, since Python keeps freed memory for reuse);
- the bytes the budget accounts;
- the store's cache table bytes (row values + `ROW_OVERHEAD`) and the file's size.

Goal: a box given a 50 MB budget never exceeds it, in memory or in the store file.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.store.cache import ROW_OVERHEAD, StoreCachePersistence
from engine.store.store import Store
from nodes._support.cachebudget import CacheBudget, parse_bytes
from nodes._support.semcache import SemanticCache

_WORD_TEXT = """
    account password invoice refund order shipping printer router backup calendar payroll
    license warranty firmware database visa insurance subscription reset cancel renew update
    export delete transfer upgrade configure install restore how what why when where can
    should my the a of for with after before during today"""
WORDS = _WORD_TEXT.split()


def _table(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(length(value_json) + length(namespace) + length(tenant) "
            "+ length(key)), 0), COUNT(*) FROM cache_entries"
        ).fetchone()
    return int(row[0]) + ROW_OVERHEAD * int(row[1]), int(row[1])


def _rss() -> int:
    """Resident memory of this process (Linux /proc), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(budget_bytes: int, inserts: int, tenants: int, seed: int, trace: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(tenants)]
    names = [f"tenant-{i:04d}" for i in range(tenants)]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "edge.db"
        Store.open(db).close()
        persistence = StoreCachePersistence(db)
        persistence.limit_bytes(budget_bytes)
        budget = CacheBudget(budget_bytes)
        caches = [SemanticCache(ns, budget=budget) for ns in ("faq", "answers")]
        for cache in caches:
            cache.attach(persistence)
        gc.collect()
        if trace:
            tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0] if trace else _rss()
        peak_memory = peak_accounted = peak_table = peak_file = 0
        samples: list[dict[str, int]] = []
        t0 = time.monotonic()
        for i in range(1, inserts + 1):
            tenant = rng.choices(names, weights)[0]
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
            answer = "x" * int(rng.paretovariate(1.2) * 20)
            caches[i % 2].store(tenant, f"{prompt} {i}", answer[:4000], max_entries=10**9)
            if i % 5000 == 0 or i == inserts:
                persistence.flush(timeout=120)
                memory = (tracemalloc.get_traced_memory()[0] if trace else _rss()) - base
                table, rows = _table(db)
                file_size = sum(p.stat().st_size for p in Path(tmp).glob("edge.db*"))
                peak_memory = max(peak_memory, memory)
                peak_accounted = max(peak_accounted, budget.total)
                peak_table = max(peak_table, table)
                peak_file = max(peak_file, file_size)
                samples.append(
                    {"inserts": i, "memory": memory, "accounted": budget.total,
                     "table": table, "rows": rows, "file": file_size}
                )  # fmt: skip
        wall = time.monotonic() - t0
        if trace:
            tracemalloc.stop()
        entries = sum(c.size(t) for c in caches for t in names)
        persistence.close()
    return {
        "budget_bytes": budget_bytes,
        "inserts": inserts,
        "tenants": tenants,
        "seconds": round(wall, 1),
        "memory_measure": "tracemalloc" if trace else "rss",
        "entries_at_end": entries,
        "evictions": budget.evictions,
        "store_evictions": persistence.store_evictions,
        "peak_memory_bytes": peak_memory,
        "peak_accounted_bytes": peak_accounted,
        "peak_table_bytes": peak_table,
        "peak_file_bytes": peak_file,
        "memory_over_budget": round(peak_memory / budget_bytes, 3),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="50M")
    parser.add_argument("--inserts", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="measure with tracemalloc")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(parse_bytes(args.budget), args.inserts, args.tenants, args.seed, args.trace)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mb = 1 << 20
    print(
        f"{result['inserts']} inserts over {result['tenants']} tenants in {result['seconds']} s; "
        f"budget {result['budget_bytes'] / mb:.1f} MiB: peak memory ({result['memory_measure']}) "
        f"{result['peak_memory_bytes'] / mb:.1f} MiB, accounted "
        f"{result['peak_accounted_bytes'] / mb:.1f} MiB, table "
        f"{result['peak_table_bytes'] / mb:.1f} MiB, file {result['peak_file_bytes'] / mb:.1f} MiB"
    )


if __name__ == "__main__":
    main()
