"""A MinHash locality-sensitive index: near-duplicate candidates in time independent of size.

Pure Python (no numpy): each item's token set is summarised by `bands * rows` MinHash
values (16-bit slices of one BLAKE2b digest per token); items sharing all `rows` values of
any band share a bucket. A token's 32 slices are kept as one integer of 32-bit lanes
(cached), so the minimum of every slice over the tokens is taken by a few whole-integer
operations per token (`_lane_min`) rather than one comparison per slice.
A query collects the most recent `bucket_cap` members of its buckets and ranks them by how many
bands they share, which estimates Jaccard similarity; only the best few are then compared
exactly by the caller. With the defaults (10 bands of 3 rows) a pair with Jaccard 0.6 is a
candidate 91% of the time, one with Jaccard 0.5 74%, one with Jaccard 0.2 8%.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from array import array
from collections import Counter
from collections.abc import Iterable
from itertools import chain, islice
from operator import itemgetter

__all__ = ["TOKEN_CACHE_SIZE", "MinHashIndex"]

_UNPACK = struct.Struct("<32H").unpack
_WIDEN = struct.Struct("<32I").pack
_LANES = struct.Struct("<" + "H2x" * 32).unpack
"""The 16-bit values of an integer of 32-bit lanes, written as 128 little-endian bytes."""
_GUARD = int.from_bytes(_WIDEN(*[1] * 32), "little") << 16
"""Bit 16 of every 32-bit lane: above any 16-bit value, below the next lane."""


TOKEN_CACHE_SIZE = 2048
"""Tokens whose hashes are kept (least recently used go first). Small on purpose: slot
values such as order numbers are new tokens on almost every prompt, a cached token costs
about 330 B with the cache's own bookkeeping (under a megabyte in all, however long the
process runs), and a miss costs one BLAKE2b of a word (about a microsecond)."""


def _token_digest(token: str) -> bytes:
    """A token's 64-byte digest."""
    return hashlib.blake2b(token.encode(), digest_size=64).digest()


def _token_hashes(token: str) -> tuple[int, ...]:
    """32 independent 16-bit hashes of a token: one MinHash permutation each."""
    return _UNPACK(_token_digest(token))


@functools.lru_cache(maxsize=TOKEN_CACHE_SIZE)
def _token_lanes(token: str) -> int:
    """`_token_hashes(token)` as one integer, hash `i` in bits `32 i` to `32 i + 15` (the
    common words' are cached)."""
    return int.from_bytes(_WIDEN(*_token_hashes(token)), "little")


def _lane_min(a: int, b: int) -> int:
    """The lane-by-lane minimum of two integers of 32-bit lanes holding 16-bit values.

    `(a | guard) - b` leaves a lane's guard bit set exactly where `a >= b` (a lane never
    borrows from the next: its difference stays positive), which widens to a mask of
    the lanes where `b` is the smaller.
    """
    take_b = (((a | _GUARD) - b) & _GUARD) >> 16
    return a ^ ((a ^ b) & (take_b * 0xFFFF))


class MinHashIndex:
    """Buckets of item ids keyed by MinHash bands.

    Args:
        bands: number of bands (more: higher recall, more candidates).
        rows: MinHash values per band (more: fewer, closer candidates).
        bucket_cap: most recent members read from each bucket per query.
    """

    def __init__(self, bands: int = 10, rows: int = 3, bucket_cap: int = 32) -> None:
        if bands * rows > 32:
            raise ValueError(f"bands * rows must be at most 32, got {bands} * {rows}")
        self.bands = bands
        self.rows = rows
        self.bucket_cap = bucket_cap
        self._bands: list[dict[int, str | dict[str, None]]] = [{} for _ in range(bands)]
        """Members by band key, one map per band keyed by the band's hash, oldest first:
        the one member itself while it is alone (most buckets of distinct texts hold one; a
        dict per bucket was about half of a cache entry's bytes), a dict of them in
        insertion order once there are more. The maps' keys are the hash integers of the
        signature that was added, so no per-key tuple is kept."""
        self._keys: dict[str, bytes] = {}
        """Each member's band keys, packed into one bytes object (`_pack_keys`): a tuple of
        pairs would be 21 small objects a member."""

    def signature(self, tokens: Iterable[str]) -> tuple[tuple[int, int], ...]:
        """The band keys of a token set (empty for an empty set)."""
        lanes = [_token_lanes(t) for t in set(tokens)]
        if not lanes:
            return ()
        mins = _LANES(functools.reduce(_lane_min, lanes).to_bytes(128, "little"))
        r = self.rows
        return tuple((i, hash(mins[i * r : (i + 1) * r])) for i in range(self.bands))

    def add(self, item: str, keys: tuple[tuple[int, int], ...]) -> None:
        """Index `item` under its band keys (replacing an earlier entry of the same id).

        The keys are `(band, hash)` pairs as `signature` makes them: a band below 256, a
        hash that fits 64 signed bits.
        """
        self.remove(item)
        self._keys[item] = _pack_keys(keys)
        bands = self._bands
        for i, h in keys:
            if i >= len(bands):
                bands.extend({} for _ in range(i + 1 - len(bands)))
            band = bands[i]
            bucket = band.get(h)
            if bucket is None:
                band[h] = item
            elif isinstance(bucket, str):
                if bucket != item:  # (an item's keys may repeat a band's)
                    band[h] = {bucket: None, item: None}
            else:
                bucket[item] = None

    def remove(self, item: str) -> None:
        """Forget `item` (no error when absent)."""
        packed = self._keys.pop(item, None)
        if packed is None:
            return
        bands = self._bands
        for i, h in _unpack_keys(packed):
            band = bands[i]
            bucket = band.get(h)
            if bucket is None:
                continue
            if isinstance(bucket, str):
                if bucket == item:
                    del band[h]
                continue
            bucket.pop(item, None)
            if len(bucket) == 1:
                band[h] = next(iter(bucket))  # alone again: the member itself
            elif not bucket:
                del band[h]

    def candidates(self, keys: tuple[tuple[int, int], ...], limit: int) -> list[str]:
        """Up to `limit` item ids sharing the most bands with `keys`, best first."""
        bands = self._bands
        n = len(bands)
        members = [
            (b,) if isinstance(b, str) else islice(reversed(b), self.bucket_cap)
            for i, h in keys
            if i < n and (b := bands[i].get(h))
        ]
        votes = Counter(chain.from_iterable(members))
        ranked = sorted(votes.items(), key=itemgetter(1), reverse=True)
        return [item for item, _ in ranked[:limit]]

    def __len__(self) -> int:
        return len(self._keys)


def _pack_keys(keys: tuple[tuple[int, int], ...]) -> bytes:
    """Band keys as one bytes object: the bands (a byte each), then the hashes (8 each)."""
    return bytes(i for i, _ in keys) + array("q", [h for _, h in keys]).tobytes()


def _unpack_keys(packed: bytes) -> zip[tuple[int, int]]:
    """The `(band, hash)` pairs `_pack_keys` packed, in their order."""
    n = len(packed) // 9
    return zip(packed[:n], memoryview(packed)[n:].cast("q"), strict=True)
