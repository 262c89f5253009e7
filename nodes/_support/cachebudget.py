"""One byte ceiling over every semantic-cache partition of the process, with fair eviction.

Per-tenant ceilings (`max_entries`, `max_bytes`) bound each partition, but not their sum: a
thousand tenants at the default 64 MiB may hold 64 GB. A `CacheBudget` bounds the total over
every (namespace, tenant) partition of every `SemanticCache` that shares it. When a store
takes the total past the ceiling, entries are evicted until it fits again, fairly:

- **who**: the partition holding the most bytes. With a ceiling C over N partitions the
  fair share is C/N for each, so the largest partition is the one furthest above its share
  (max-min fairness: a small tenant is never evicted while a larger one is above it);
- **what**: that partition's least recently used entry, as its own LRU ceiling would.

Entries are held to `limit - headroom`, `HEADROOM` (10 %) of the ceiling: the rest pays for
what no entry owns, the partitions' dict tables and index buckets and the token-hash cache
(about half a megabyte), so the process's cache memory stays under the ceiling itself
(measured: bench/RESULTS.md, "Bounded cache").

Each eviction is counted per reason so the cache node can record it (`CACHE_EVICTED`,
reason `TOTAL_BYTES`). Finding the largest partition uses a lazy max-heap (stale entries
are skipped when popped and the heap is rebuilt when it grows past four per partition), so
an eviction costs O(log P), not a scan of P partitions.

The process-wide default ceiling is `MOAT_CACHE_TOTAL_BYTES` (bytes, `K`/`M`/`G` suffixes
allowed) or 256 MiB; a cache node's `total_bytes` (for instance `{{ policy.cache.total_bytes
}}`) lowers it.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_TOTAL_BYTES", "CacheBudget", "parse_bytes", "process_budget"]

HEADROOM = 0.10
"""The share of the ceiling kept free of entries (see the module docstring)."""
DEFAULT_TOTAL_BYTES = 256 << 20
"""The ceiling when neither `MOAT_CACHE_TOTAL_BYTES` nor a node's `total_bytes` sets one."""
ENV = "MOAT_CACHE_TOTAL_BYTES"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(text: str) -> int:
    """`"50M"` -> 52428800; plain digits are bytes.

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M or G)")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _UNITS[unit])


Evict = Callable[[], int]
"""Evicts the partition's least recently used entry; returns the bytes freed (0: empty)."""


class CacheBudget:
    """The byte ceiling shared by the partitions registered with it.

    Args:
        limit_bytes: the ceiling.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.total = 0
        """Bytes held by every registered partition."""
        self.evictions = 0
        """Entries evicted to keep the total under the ceiling, since creation."""
        self._sizes: dict[int, int] = {}
        self._evictors: dict[int, Evict] = {}
        self._heap: list[tuple[int, int]] = []

    def lower_to(self, limit_bytes: int) -> None:
        """Lower the ceiling (a higher value is ignored: the strictest setting holds)."""
        self.limit_bytes = min(self.limit_bytes, limit_bytes)

    def register(self, owner: Any, evict: Evict) -> None:
        """Track a partition (`owner`: any object, identified by `id`)."""
        self._evictors[id(owner)] = evict
        self._sizes.setdefault(id(owner), 0)

    def forget(self, owner: Any) -> None:
        """Stop tracking a partition that was dropped whole (its bytes leave the total)."""
        key = id(owner)
        self.total -= self._sizes.pop(key, 0)
        self._evictors.pop(key, None)

    def resize(self, owner: Any, size: int) -> None:
        """The partition now holds `size` bytes."""
        key = id(owner)
        if key not in self._evictors:
            return
        self.total += size - self._sizes.get(key, 0)
        self._sizes[key] = size
        heapq.heappush(self._heap, (-size, key))
        if len(self._heap) > 4 * len(self._sizes) + 64:
            self._heap = [(-s, k) for k, s in self._sizes.items()]
            heapq.heapify(self._heap)

    @property
    def entry_limit(self) -> int:
        """The bytes entries may account for: the ceiling less its headroom."""
        return int(self.limit_bytes * (1 - HEADROOM))

    def enforce(self) -> int:
        """Evict until the entries fit `entry_limit`; returns how many went."""
        evicted = 0
        limit = self.entry_limit
        while self.total > limit:
            victim = self._largest()
            if victim is None or self._evictors[victim]() <= 0:
                break
            evicted += 1
        self.evictions += evicted
        return evicted

    def _largest(self) -> int | None:
        while self._heap:
            size, key = self._heap[0]
            if self._sizes.get(key) == -size and size < 0:
                return key
            heapq.heappop(self._heap)  # stale: the partition changed or went
        return None


_process: CacheBudget | None = None


def process_budget() -> CacheBudget:
    """The budget every cache of this process shares (created on first use)."""
    global _process
    if _process is None:
        raw = os.environ.get(ENV)
        _process = CacheBudget(parse_bytes(raw) if raw else DEFAULT_TOTAL_BYTES)
    return _process
