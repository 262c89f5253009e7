"""The semantic cache behind the `cache` node: tenant partitions, template keys, TTLs, LRU.

Isolation: every operation takes a tenant and touches only that tenant's `_Partition`;
there is no code path that reads another partition, so entries cannot leak across tenants.

Keys are template-aware: `template()` replaces emails, URLs, quoted strings, ids, numbers
and capitalised names by typed slots (`{email}`, `{num}`, ...) and keeps their values
apart. The exact key is (scope, template, slot values); a semantic match compares the
*templates* by embedding similarity and then requires identical slot values, so "status of
order 123" never answers "status of order 456" however similar the wording.

Lookup cost does not grow with the partition: an exact dict probe first, then a MinHash
index (`nodes._support.lsh`) yields a handful of candidates that are compared by cosine over
int8-quantised hashing embeddings.

TTL adapts: an entry starts with `ttl_s` and each hit multiplies its TTL by `ttl_growth`,
up to `max_ttl_s`. Ceilings (`max_entries`, `max_bytes`) hold per tenant and evict least
recently used entries first; a `CacheBudget` (`nodes._support.cachebudget`) shared by every
namespace of the process bounds their total, evicting fairly across partitions. An entry's
`size` counts its text and value plus `ENTRY_OVERHEAD` for the objects that hold it (the
vector, the index's bands, the dict slots), measured with tracemalloc (bench/cache_bound.py).

Persistence is optional: attach any object implementing `CachePersistence` (the store can
provide one) and entries are written through and reloaded; without it the cache lives in
memory.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
import struct
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nodes._support.cachebudget import CacheBudget
from nodes._support.embed import HashingEmbedder, QVector, quantize, words
from nodes._support.lsh import MinHashIndex

__all__ = [
    "ENTRY_OVERHEAD",
    "KEPT_PREPARED",
    "CachePersistence",
    "Entry",
    "Lookup",
    "Prepared",
    "SemanticCache",
    "template",
]

ENTRY_OVERHEAD = 5120
"""Bytes an entry costs beyond its text and value (see the module docstring)."""

_SLOT_PATTERNS = [
    # linear on hostile text: an email starts only where its run starts (a failed run is
    # scanned once, not once per position) and an id looks ahead a bounded distance
    ("email", re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("url", re.compile(r"https?://\S+")),
    ("quoted", re.compile(r"\"[^\"\n]{1,200}\"|“[^”\n]{1,200}”|(?<!\w)'[^'\n]{1,200}'(?!\w)")),
    ("id", re.compile(
        # INV-2024-7
        r"\b(?=[\w-]{0,63}\d)(?=[\w-]{0,63}[A-Za-z])[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)+\b"
        r"|#\d+|\b[0-9a-f]{8,}\b"  # #4471, hex ids
    )),
    ("num", re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?%?")),
]  # fmt: skip
_NAME = re.compile(r"\b[A-Z][a-zA-Z]+\b")
_NOT_NAMES = frozenset({"I", "I'm", "OK", "AI"})
_FUNCTION_TEXT = """
    a an the and or but if of to in on at by for with from into onto about as is are was
    were be been being am do does did done have has had can could would should shall will may
    might must i me my mine you your yours we our us they their them he she his her it its
    this that these those what which who whom whose when where why how whats there here
    please kindly just quickly really very some any way best good help tell show let know
    need want like get make give explain describe possible also again now today hi hello
    hey thanks thank"""
_FUNCTION_WORDS = frozenset(_FUNCTION_TEXT.split())
"""Words a paraphrase may add, drop or swap without changing what is asked."""
_SIGNER = MinHashIndex()
"""Computes band keys; every partition's index uses the same default parameters."""
_PUNCT = re.compile(r"[^\w{}\s]+")
_SPACE = re.compile(r"\s+")


def template(text: str, *, names: bool = True) -> tuple[str, tuple[str, ...]]:
    """The slot template of `text` and its typed slot values (`num:123`, `name:paris`)."""
    found: list[str] = []
    masked = text
    for kind, pattern in _SLOT_PATTERNS:
        masked = pattern.sub(lambda m, k=kind: _mark(m, k, found), masked)  # type: ignore[misc]
    if names:
        masked = _NAME.sub(lambda m: _name(m, found), masked)
    tpl = _SPACE.sub(" ", _PUNCT.sub(" ", masked.lower())).strip()
    return tpl, tuple(found)


def _mark(m: re.Match[str], kind: str, found: list[str]) -> str:
    value = m.group().strip("\"'“”").lower()
    if kind == "num":
        value = value.replace(",", "").lstrip("+$")
    found.append(f"{kind}:{value}")
    return "{" + kind + "}"


def _name(m: re.Match[str], found: list[str]) -> str:
    """A capitalised word inside a sentence is a name slot; a sentence's first word is not."""
    before = _char_before(m.string, m.start())
    if m.group() in _NOT_NAMES or not before or before in ".!?:;\n\"'(“":
        return m.group()
    found.append("name:" + m.group().lower())
    return "{name}"


def _char_before(text: str, pos: int) -> str:
    """The last non-space character before `pos` ('' at the start).

    Walks back over the whitespace run only, never copies the prefix: each run is walked by
    the one word after it, so naming every word of a long text stays linear.
    """
    i = pos - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    return text[i] if i >= 0 else ""


class Entry:
    """One cached answer (or known-bad prompt) of one tenant.

    Its slots, quantised vector, template and (a string) value are packed into one bytes
    object (`packed_entry`) instead of a dozen small ones, each with its header and its
    allocator's rounding: a flagship entry holds about 40 % fewer bytes this way (measured:
    bench/RESULTS.md, "cache entries packed into one object"). The parts are decoded when
    read (`template`, `slots`, `vector`, `value`); a lookup compares slots and similarity
    on the packed form (`has_slots`, `similarity`).
    """

    __slots__ = (
        "_packed", "_value", "expires_at", "hits", "key", "negative", "scope", "size",
        "stored_at", "ttl_s",
    )  # fmt: skip

    def __init__(
        self,
        *,
        key: str,
        scope: str,
        template: str,
        slots: tuple[str, ...],
        value: Any,
        negative: bool,
        vector: QVector,
        ttl_s: float,
        expires_at: float,
        hits: int,
        size: int,
        stored_at: float,
    ) -> None:
        packed_value = type(value) is str
        self._packed = packed_entry(slots, vector, template, value if packed_value else "")
        self._value: Any = _PACKED if packed_value else value
        self.key = key
        self.scope = scope
        self.negative = negative
        self.ttl_s = ttl_s
        self.expires_at = expires_at
        self.hits = hits
        self.size = size
        self.stored_at = stored_at

    @property
    def slots(self) -> tuple[str, ...]:
        """The typed slot values (`num:123`)."""
        packed = self._packed
        end = _U32.unpack_from(packed)[0]
        at, found = _U32.size, []
        while at < end:
            n = _U32.unpack_from(packed, at)[0]
            at += _U32.size
            found.append(packed[at : at + n].decode("utf-8", "surrogatepass"))
            at += n
        return tuple(found)

    @property
    def vector(self) -> QVector:
        """The template's embedding, quantised to int8, and its scale."""
        packed = self._packed
        at = _U32.unpack_from(packed)[0]
        scale, dims, _ = _HEAD.unpack_from(packed, at)
        at += _HEAD.size
        return array("b", packed[at : at + dims]), scale

    @property
    def template(self) -> str:
        """The slot template the entry is stored under."""
        packed = self._packed
        at = _U32.unpack_from(packed)[0]
        _, dims, length = _HEAD.unpack_from(packed, at)
        at += _HEAD.size + dims
        return packed[at : at + length].decode("utf-8", "surrogatepass")

    @property
    def value(self) -> Any:
        """The cached value (None for a negative entry stored without one)."""
        if self._value is not _PACKED:
            return self._value
        packed = self._packed
        at = _U32.unpack_from(packed)[0]
        _, dims, length = _HEAD.unpack_from(packed, at)
        return packed[at + _HEAD.size + dims + length :].decode("utf-8", "surrogatepass")

    def has_slots(self, code: bytes) -> bool:
        """Whether the entry's slots are those `packed_slots` encoded as `code`."""
        return self._packed.startswith(code)

    def similarity(self, query: Sequence[float]) -> float:
        """The dot product of `query` with the entry's quantised vector, scaled."""
        packed = self._packed
        at = _U32.unpack_from(packed)[0]
        scale, dims, _ = _HEAD.unpack_from(packed, at)
        at += _HEAD.size
        q8 = memoryview(packed)[at : at + dims].cast("b")
        return float(sum(map(operator.mul, query, q8)) * scale)

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _ENTRY_FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(_ENTRY_FIELDS, self._fields(), strict=True))
        return f"Entry({shown})"

    def record(self) -> dict[str, Any]:
        """A JSON-able record for persistence (the vector is recomputed on load)."""
        return {
            "key": self.key,
            "scope": self.scope,
            "template": self.template,
            "slots": list(self.slots),
            "value": self.value,
            "negative": self.negative,
            "ttl_s": self.ttl_s,
            "expires_at": self.expires_at,
            "hits": self.hits,
            "stored_at": self.stored_at,
        }


_ENTRY_FIELDS = (
    "key", "scope", "template", "slots", "value", "negative", "vector", "ttl_s",
    "expires_at", "hits", "size", "stored_at",
)  # fmt: skip
"""An entry's fields, in the order it is made with, compared and shown."""
_PACKED: Any = object()
"""`Entry._value` when the value is the string at the end of the packed bytes."""
_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<dII")
"""After the slots: the vector's scale, its length and the template's length in bytes."""


def packed_slots(slots: tuple[str, ...]) -> bytes:
    """Slot values as the bytes an entry's packed form starts with: their total length,
    then each one's length and UTF-8 (self-delimiting, so a packed form starts with these
    bytes exactly when it holds these slots)."""
    parts = [s.encode("utf-8", "surrogatepass") for s in slots]
    body = b"".join([_U32.pack(len(p)) + p for p in parts])
    return _U32.pack(_U32.size + len(body)) + body


def packed_entry(slots: tuple[str, ...], vector: QVector, template: str, value: str) -> bytes:
    """An entry's parts as one bytes object: slots (`packed_slots`), the vector's scale,
    length and the template's length, the int8 vector, the template, the value."""
    q8, scale = vector
    tpl = template.encode("utf-8", "surrogatepass")
    return b"".join(
        (
            packed_slots(slots),
            _HEAD.pack(scale, len(q8), len(tpl)),
            q8.tobytes(),
            tpl,
            value.encode("utf-8", "surrogatepass"),
        )
    )


@dataclass(frozen=True, slots=True)
class Lookup:
    """The answer to one lookup."""

    entry: Entry | None
    similarity: float
    exact: bool
    key: str


class CachePersistence(Protocol):
    """Where a cache namespace's entries survive restarts (implemented by the store)."""

    def load(self, namespace: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
        """Every stored `(tenant, record)` of the namespace."""
        ...

    def save(self, namespace: str, tenant: str, record: Mapping[str, Any]) -> None:
        """Insert or replace one record (keyed by `record["key"]`)."""
        ...

    def delete(self, namespace: str, tenant: str, key: str) -> None:
        """Forget one record."""
        ...


class _Partition:
    """One tenant's entries: LRU order, exact keys and the MinHash index."""

    __slots__ = ("bytes", "entries", "index")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.index = MinHashIndex()
        self.bytes = 0


KEPT_PREPARED = 256
"""Preparations kept per cache, latest first: more than the requests a process has between
a lookup and the store that follows it (a few KiB each)."""
KEPT_PREPARED_MAX_CHARS = 4096
"""Longer texts are prepared in a worker thread, and not kept."""


class Prepared:
    """The pure part of a lookup or store: template, slots and, on demand, vector and bands.

    It touches no partition, so for a long text the node computes it in a worker thread
    (`SemanticCache.prepare(...).complete()`) and the event loop only probes the dicts.
    """

    __slots__ = ("_embedder", "_signature", "_slots_code", "_vector", "slots", "template")

    def __init__(self, text: str, embedder: HashingEmbedder, *, names: bool = True) -> None:
        self.template, self.slots = template(text, names=names)
        self._embedder = embedder
        self._vector: list[float] | None = None
        self._signature: tuple[tuple[int, int], ...] | None = None
        self._slots_code: bytes | None = None

    def slots_code(self) -> bytes:
        """The slots as an entry's packed form starts with them (computed once)."""
        if self._slots_code is None:
            self._slots_code = packed_slots(self.slots)
        return self._slots_code

    def vector(self) -> list[float]:
        """The template's embedding (computed once)."""
        if self._vector is None:
            self._vector = self._embedder.embed_one(self.template)
        return self._vector

    def signature(self) -> tuple[tuple[int, int], ...]:
        """The template's MinHash band keys (computed once)."""
        if self._signature is None:
            self._signature = _SIGNER.signature(_lsh_tokens(self.template, self.slots))
        return self._signature

    def complete(self) -> Prepared:
        """Compute everything now (in a worker thread, for a long text)."""
        self.vector()
        self.signature()
        return self


class SemanticCache:
    """A namespace of per-tenant semantic caches.

    Args:
        namespace: the name shared by the lookup and store nodes of one cache.
        clock: wall-clock seconds (injectable for tests).
        max_tenants: partitions kept; the least recently used tenant is dropped beyond it.
        candidates: entries compared exactly per semantic lookup.
        budget: a byte ceiling shared with other caches (None: only per-tenant ceilings).
    """

    def __init__(
        self,
        namespace: str,
        *,
        clock: Callable[[], float] = time.time,
        max_tenants: int = 10_000,
        candidates: int = 8,
        budget: CacheBudget | None = None,
    ) -> None:
        self.namespace = namespace
        self.clock = clock
        self.max_tenants = max_tenants
        self.candidates = candidates
        self.persistence: CachePersistence | None = None
        self.warm_entries: list[Mapping[str, Any]] = []
        self.warmed_files: set[str] = set()
        self._embedder = HashingEmbedder()
        self._prepared: dict[tuple[str, bool], Prepared] = {}
        self._tenants: OrderedDict[str, _Partition] = OrderedDict()
        self.budget = budget
        self.last_evictions: dict[str, int] = {}
        """Entries the last `store` evicted, by reason (`MAX_ENTRIES_OR_BYTES` for the
        tenant's own ceilings, `TOTAL_BYTES` for the shared budget)."""

    def prepare(self, text: str, *, names: bool = True) -> Prepared:
        """The pure part of a lookup or store of `text`; safe to compute in a worker thread.

        A request that misses stores its answer under the text it looked up: the latest
        short texts' preparations are kept (`KEPT_PREPARED`), so the store reuses the
        lookup's template, bands and vector instead of computing them again.
        """
        if len(text) > KEPT_PREPARED_MAX_CHARS:  # prepared in a worker thread: not kept
            return Prepared(text, self._embedder, names=names)
        kept = self._prepared
        key = (text, names)
        found = kept.pop(key, None)
        if found is None:
            found = Prepared(text, self._embedder, names=names)
            if len(kept) >= KEPT_PREPARED:
                del kept[next(iter(kept))]  # the oldest goes
        kept[key] = found
        return found

    # ------------------------------------------------------------------ lookups

    def lookup(
        self,
        tenant: str,
        text: str,
        *,
        scope: str = "",
        threshold: float = 0.9,
        names: bool = True,
        strict_words: bool = True,
        prepared: Prepared | None = None,
    ) -> Lookup:
        """The best live entry of `tenant` for `text`, or a miss (`entry=None`).

        With `strict_words`, a semantic match that swaps a content word for another
        (`reset` for `cancel`) is refused however similar the rest; rewording with function
        words or one-sided additions (`please`, `quickly`) still matches.
        """
        prep = prepared or self.prepare(text, names=names)
        tpl, slots = prep.template, prep.slots
        key = _key(scope, tpl, slots)
        part = self._partition(tenant)
        now = self.clock()
        entry = part.entries.get(key)
        if entry is not None and self._alive(part, entry, now):
            return Lookup(self._touch(part, entry, now), 1.0, True, key)
        if threshold >= 1.0 or not part.entries:
            return Lookup(None, 0.0, False, key)
        scored: list[tuple[float, Entry]] = []
        for cand_key in part.index.candidates(prep.signature(), self.candidates):
            cand = part.entries.get(cand_key)
            if cand is None or cand.scope != scope or not cand.has_slots(prep.slots_code()):
                continue
            scored.append((cand.similarity(prep.vector()), cand))
        scored.sort(key=lambda x: -x[0])
        best_sim = scored[0][0] if scored else 0.0
        for sim, cand in scored:
            if sim < threshold:
                break
            if strict_words and _substitutes(tpl, cand.template):
                continue
            if self._alive(part, cand, now):
                return Lookup(self._touch(part, cand, now), sim, False, key)
        return Lookup(None, best_sim, False, key)

    # ------------------------------------------------------------------- stores

    def store(
        self,
        tenant: str,
        text: str,
        value: Any,
        *,
        scope: str = "",
        negative: bool = False,
        ttl_s: float = 3600.0,
        max_entries: int = 10_000,
        max_bytes: int = 64 << 20,
        names: bool = True,
        prepared: Prepared | None = None,
    ) -> tuple[Entry, int]:
        """Store `value` for `text` in `tenant`'s partition; returns the entry and evictions."""
        prep = prepared or self.prepare(text, names=names)
        tpl, slots = prep.template, prep.slots
        key = _key(scope, tpl, slots)
        part = self._partition(tenant)
        now = self.clock()
        size = len(tpl) + sum(map(len, slots)) + len(json.dumps(value, default=str))
        size += ENTRY_OVERHEAD
        entry = Entry(
            key=key, scope=scope, template=tpl, slots=slots, value=value, negative=negative,
            vector=quantize(prep.vector()), ttl_s=ttl_s,
            expires_at=now + ttl_s, hits=0, size=size, stored_at=now,
        )  # fmt: skip
        self._insert(tenant, part, entry, prep.signature())
        if self.persistence is not None:
            self.persistence.save(self.namespace, tenant, entry.record())
        own = self._evict(tenant, part, max_entries, max_bytes)
        shared = self.budget.enforce() if self.budget is not None else 0
        self.last_evictions = {
            k: n for k, n in (("MAX_ENTRIES_OR_BYTES", own), ("TOTAL_BYTES", shared)) if n
        }
        return entry, own + shared

    def attach(self, persistence: CachePersistence) -> int:
        """Load the namespace from `persistence` and write through to it; returns entries loaded."""
        self.persistence = None
        loaded = 0
        now = self.clock()
        for tenant, rec in persistence.load(self.namespace):
            if float(rec["expires_at"]) <= now:
                persistence.delete(self.namespace, tenant, str(rec["key"]))
                continue
            tpl = str(rec["template"])
            entry = Entry(
                key=str(rec["key"]), scope=str(rec["scope"]), template=tpl,
                slots=tuple(rec["slots"]), value=rec["value"], negative=bool(rec["negative"]),
                vector=quantize(self._embedder.embed_one(tpl)), ttl_s=float(rec["ttl_s"]),
                expires_at=float(rec["expires_at"]), hits=int(rec["hits"]),
                size=len(json.dumps(rec, default=str)) + ENTRY_OVERHEAD,
                stored_at=float(rec["stored_at"]),
            )  # fmt: skip
            self._insert(tenant, self._partition(tenant), entry)
            loaded += 1
        self.persistence = persistence
        if self.budget is not None:  # a store file written under a larger budget
            self.budget.enforce()
        return loaded

    def size(self, tenant: str) -> int:
        """Live and expired-but-not-yet-collected entries of `tenant`."""
        part = self._tenants.get(tenant)
        return len(part.entries) if part else 0

    # ------------------------------------------------------------------ helpers

    def _partition(self, tenant: str) -> _Partition:
        part = self._tenants.get(tenant)
        if part is not None:
            self._tenants.move_to_end(tenant)
            return part
        part = self._tenants[tenant] = _Partition()
        if self.budget is not None:
            self.budget.register(part, lambda: self._evict_oldest(tenant, part))
        if len(self._tenants) > self.max_tenants:
            _, dropped = self._tenants.popitem(last=False)
            if self.budget is not None:
                self.budget.forget(dropped)
        self._seed(tenant, part)
        return part

    def warm(self, items: Iterable[Mapping[str, Any]]) -> int:
        """Add warm-start entries (`prompt`, `value`, optional `tenant`, `scope`, `ttl_s`,
        `negative`): copied into each matching tenant partition, now and when it is created.

        Returns:
            How many entries were added to the warm set.
        """
        items = [dict(i) for i in items]
        self.warm_entries.extend(items)
        for tenant, part in self._tenants.items():
            self._seed(tenant, part, items)
        return len(items)

    def _seed(
        self, tenant: str, part: _Partition, items: Iterable[Mapping[str, Any]] | None = None
    ) -> None:
        """Copy the warm-start entries meant for every tenant (or this one) into `part`."""
        now = self.clock()
        for item in self.warm_entries if items is None else items:
            if item.get("tenant") not in (None, tenant):
                continue
            tpl, slots = template(str(item["prompt"]))
            ttl = float(item.get("ttl_s", 86_400.0))
            entry = Entry(
                key=_key(str(item.get("scope", "")), tpl, slots), scope=str(item.get("scope", "")),
                template=tpl, slots=slots, value=item.get("value"),
                negative=bool(item.get("negative", False)),
                vector=quantize(self._embedder.embed_one(tpl)), ttl_s=ttl, expires_at=now + ttl,
                hits=0, size=len(tpl) + ENTRY_OVERHEAD, stored_at=now,
            )  # fmt: skip
            self._insert(tenant, part, entry)
        if self.budget is not None:
            self.budget.enforce()

    def _insert(
        self,
        tenant: str,
        part: _Partition,
        entry: Entry,
        signature: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        old = part.entries.pop(entry.key, None)
        if old is not None:
            part.bytes -= old.size
        part.entries[entry.key] = entry
        part.bytes += entry.size
        if signature is None:
            signature = part.index.signature(_lsh_tokens(entry.template, entry.slots))
        part.index.add(entry.key, signature)
        self._resized(part)

    def _resized(self, part: _Partition) -> None:
        if self.budget is not None:
            self.budget.resize(part, part.bytes)

    def _remove(self, tenant: str, part: _Partition, entry: Entry) -> None:
        part.entries.pop(entry.key, None)
        part.index.remove(entry.key)
        part.bytes -= entry.size
        self._resized(part)
        if self.persistence is not None:
            self.persistence.delete(self.namespace, tenant, entry.key)

    def _alive(self, part: _Partition, entry: Entry, now: float) -> bool:
        if entry.expires_at > now:
            return True
        part.entries.pop(entry.key, None)
        part.index.remove(entry.key)
        part.bytes -= entry.size
        self._resized(part)
        return False

    def _touch(self, part: _Partition, entry: Entry, now: float) -> Entry:
        entry.hits += 1
        part.entries.move_to_end(entry.key)
        return entry

    def grow_ttl(self, tenant: str, entry: Entry, growth: float, max_ttl_s: float) -> None:
        """Extend a hit entry's TTL (multiplicatively, capped) and persist the change."""
        entry.ttl_s = min(entry.ttl_s * growth, max_ttl_s)
        entry.expires_at = max(entry.expires_at, self.clock() + entry.ttl_s)
        if self.persistence is not None:
            self.persistence.save(self.namespace, tenant, entry.record())

    def _evict_oldest(self, tenant: str, part: _Partition) -> int:
        """Evict the partition's least recently used entry; the bytes freed (0: empty)."""
        if not part.entries:
            return 0
        _, oldest = next(iter(part.entries.items()))
        self._remove(tenant, part, oldest)
        return oldest.size

    def _evict(self, tenant: str, part: _Partition, max_entries: int, max_bytes: int) -> int:
        evicted = 0
        while part.entries and (len(part.entries) > max_entries or part.bytes > max_bytes):
            _, oldest = next(iter(part.entries.items()))
            self._remove(tenant, part, oldest)
            evicted += 1
        return evicted


def _lsh_tokens(tpl: str, slots: tuple[str, ...]) -> list[str]:
    """Template words plus slot values, so candidates that share the slots rank first."""
    return [*words(tpl), *slots]


def _substitutes(a: str, b: str) -> bool:
    """True when each text has a content word the other lacks (a swap, not a rewording)."""
    wa = {w for w in words(a) if len(w) > 2 and w not in _FUNCTION_WORDS}
    wb = {w for w in words(b) if len(w) > 2 and w not in _FUNCTION_WORDS}
    return bool(wa - wb) and bool(wb - wa)


def _key(scope: str, tpl: str, slots: tuple[str, ...]) -> str:
    raw = json.dumps([scope, tpl, slots], ensure_ascii=False)
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()
