"""The `cache` node: a per-tenant semantic cache, looked up on the request path, stored after it.

A graph evaluates a node's `with:` before the node runs, so a single node cannot both look
up a prompt and store the answer computed later (that would be a dependency cycle). The
cache is therefore used by two nodes sharing one `namespace`:

```yaml
cached: {type: cache, with: {text: "{{ input.prompt }}", namespace: faq}}
answer: {type: model, with: {model: large, prompt: "{{ input.prompt }}"}}
remember:
  type: cache
  with: {mode: store, namespace: faq, text: "{{ input.prompt }}",
         value: "{{ answer.text }}", store_when: "{{ checked.valid }}"}
output:
  answer: "cached.value if cached.hit else answer.text"
  stored: "false if cached.hit else remember.stored"
```

`mode: lookup` (default) answers `hit`, `value`, `similarity`, `negative`, `key`. A hit on a
negative entry (a known-bad prompt, stored with `negative_when`) has `hit: false,
negative: true` so graphs can refuse or escalate without computing. `mode: store`
registers the store with `ctx.after_success`: nothing is written unless the request
succeeds, and the write is off the response path. Both nodes find the shared cache with
`ctx.shared.get("cache:" + namespace)`.

Tenants (`ctx.request.tenant`) are separate partitions that never see each other. When
the run's store offers `cache_persistence()` (an object implementing
`nodes._support.semcache.CachePersistence`), the namespace is loaded from it and written through:
with a store file (`moat run --db`, `Pipeline(db=...)`) entries live in its
`cache_entries` table, per tenant, and survive restarts. Otherwise the cache is in memory.
`warm_file` (YAML list or JSONL of `{prompt, value}`,
optional `tenant`, `scope`, `ttl_s`, `negative`) seeds frequent templates once per process.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, ValidationInfo, field_validator

from engine import Node, NodeContext, at_check, graph_file, read_text_file
from nodes._support.cachebudget import process_budget
from nodes._support.datafiles import json_lines, yaml_data
from nodes._support.offload import INLINE_MAX_CHARS, off_loop
from nodes._support.semcache import Lookup, Prepared, SemanticCache

__all__ = ["CacheNode", "shared_cache"]

CACHE_HIT = "CACHE_HIT"
CACHE_MISS = "CACHE_MISS"
CACHE_STORED = "CACHE_STORED"
CACHE_NEGATIVE_HIT = "CACHE_NEGATIVE_HIT"
CACHE_EVICTED = "CACHE_EVICTED"


class CacheNode(Node):
    """Semantic cache: per-tenant lookups, stores after success, negative entries, adaptive TTL."""

    type_name = "cache"
    event_types = (CACHE_HIT, CACHE_MISS, CACHE_STORED, CACHE_NEGATIVE_HIT, CACHE_EVICTED)

    class Config(BaseModel):
        """Settings of a `cache` node."""

        text: str = Field(description="The prompt to look up (or to store an answer for).")
        value: Any = Field(
            default=None,
            validation_alias=AliasChoices("value", "store"),
            description="Store mode: the value to cache (also accepted as `store`).",
        )
        store_when: bool = Field(
            default=True, description="Store mode: store only when this is true."
        )
        negative_when: bool = Field(
            default=False,
            description="Store mode: record `text` as a known-bad prompt instead of a value.",
        )
        mode: Literal["lookup", "store"] = Field(
            default="lookup",
            validate_default=True,
            description="`lookup` answers from the cache; `store` saves `value` for `text` "
            "after the request succeeds.",
        )

        @field_validator("mode")
        @classmethod
        def _value_fits_mode(cls, mode: str, info: ValidationInfo) -> str:
            if mode != "store" or not at_check(info, "mode"):
                return mode
            # a `{{ }}` value is no constant at check time, but it was written
            given = info.data.get("value") is not None or not at_check(info, "value", "store")
            negative = info.data.get("negative_when") or not at_check(info, "negative_when")
            if not given and negative is False:
                raise ValueError(
                    "`mode: store` saves `value:` for `text:`, but no `value:` is given, so "
                    'nothing is ever stored; add `value: "{{ answer.text }}"` (or '
                    "`negative_when:` to record known-bad prompts)"
                )
            return mode

        namespace: str = Field(
            default="default", description="The cache shared by lookup and store nodes."
        )
        scope: str = Field(
            default="",
            description="Must match exactly (e.g. system prompt or model), besides the text.",
        )
        threshold: float = Field(
            default=0.85,
            ge=0,
            le=1,
            description="Minimum cosine similarity of templates for a semantic hit "
            "(1 = exact template matches only).",
        )
        names: bool = Field(
            default=True,
            description="Treat capitalised words inside sentences as name slots that must match.",
        )
        strict_words: bool = Field(
            default=True,
            description="Refuse semantic matches that swap a content word (`reset` for "
            "`cancel`), however similar.",
        )
        ttl_s: float = Field(default=3600.0, gt=0, description="Initial time to live (seconds).")
        ttl_growth: float = Field(
            default=2.0, ge=1, description="Each hit multiplies the entry's TTL by this."
        )
        max_ttl_s: float = Field(
            default=7 * 86400.0, gt=0, description="Ceiling of the adaptive TTL (seconds)."
        )
        max_entries: int = Field(
            default=10_000, ge=1, description="Entries per tenant before LRU eviction."
        )
        max_bytes: int = Field(
            default=64 << 20, ge=1024, description="Approximate bytes per tenant before eviction."
        )
        total_bytes: int | None = Field(
            default=None,
            ge=1 << 16,
            description="Bytes every cache of the process may hold together, in memory and "
            "in the store file (default `MOAT_CACHE_TOTAL_BYTES` or 256 MiB; the lowest "
            "setting seen holds); evicts fairly from the largest tenant partition.",
        )
        warm_file: str | None = Field(
            default=None, description="YAML or JSONL of frequent `{prompt, value}` to preload."
        )

        @field_validator("warm_file")
        @classmethod
        def _warm_file_reads(cls, value: str | None, info: ValidationInfo) -> str | None:
            path = graph_file(value, info) if value else None
            if path is not None:  # `moat check`: a file every request would fail on
                _read_warm_file(path)
            return value

    class Output(BaseModel):
        """What a `cache` node returns."""

        hit: bool = Field(description="True when a usable (non-negative) entry answered.")
        value: Any = Field(default=None, description="The cached value on a hit.")
        similarity: float = Field(
            description="Similarity of the best entry considered (1.0 for exact matches)."
        )
        negative: bool = Field(description="True when `text` matched a known-bad entry.")
        key: str = Field(description="The template key of `text` (stable across paraphrases).")
        exact: bool = Field(description="True when the template key matched exactly.")
        stored: bool = Field(description="Store mode: a store was scheduled for after success.")

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Look up, or schedule a store, in the request tenant's partition."""
        cache = shared_cache(ctx, config.namespace)
        if config.total_bytes is not None:
            _limit(cache, config.total_bytes)
        if config.warm_file:  # relative to the graph, not the working directory
            warm_file = ctx.resolve_path(config.warm_file, key="warm_file")
            if warm_file not in cache.warmed_files:
                cache.warm(_read_warm_file(warm_file))
                cache.warmed_files.add(warm_file)
        if config.mode == "store":
            return self._schedule_store(config, ctx, cache)
        return self._lookup(config, ctx, cache, await _prepare(cache, config))

    def _lookup(
        self, config: Config, ctx: NodeContext, cache: SemanticCache, prepared: Prepared
    ) -> Output:
        tenant = ctx.request.tenant
        found = cache.lookup(
            tenant,
            config.text,
            scope=config.scope,
            threshold=config.threshold,
            names=config.names,
            strict_words=config.strict_words,
            prepared=prepared,
        )
        entry = found.entry
        payload = {"similarity": round(found.similarity, 4), "key": found.key}
        if entry is None:
            ctx.emit(
                CACHE_MISS,
                decision="miss",
                reason_codes=_miss_codes(found, config),
                payload=payload,
            )
            return self._out(found, hit=False)
        cache.grow_ttl(tenant, entry, config.ttl_growth, config.max_ttl_s)
        payload |= {"hits": entry.hits, "ttl_s": entry.ttl_s}
        codes = ["EXACT_TEMPLATE" if found.exact else "SEMANTIC_MATCH"]
        if entry.negative:
            ctx.emit(
                CACHE_NEGATIVE_HIT,
                decision="negative",
                reason_codes=codes,
                payload=payload,
            )
            return self._out(found, hit=False, negative=True, value=entry.value)
        ctx.emit(
            CACHE_HIT,
            decision="exact" if found.exact else "semantic",
            reason_codes=codes,
            payload=payload,
        )
        return self._out(found, hit=True, value=entry.value)

    def _out(
        self, found: Lookup, *, hit: bool, negative: bool = False, value: Any = None
    ) -> Output:
        return self.Output(
            hit=hit, value=value, similarity=found.similarity, negative=negative,
            key=found.key, exact=found.exact and found.entry is not None, stored=False,
        )  # fmt: skip

    def _schedule_store(self, config: Config, ctx: NodeContext, cache: SemanticCache) -> Output:
        negative = config.negative_when
        wanted = negative or (config.store_when and config.value is not None)
        if wanted:
            tenant = ctx.request.tenant

            async def store() -> None:
                entry, evicted = cache.store(
                    tenant, config.text, config.value, scope=config.scope, negative=negative,
                    ttl_s=config.ttl_s, max_entries=config.max_entries,
                    max_bytes=config.max_bytes, names=config.names,
                    prepared=await _prepare(cache, config),
                )  # fmt: skip
                ctx.emit(
                    CACHE_STORED,
                    decision="negative" if negative else "positive",
                    reason_codes=["NEGATIVE_WHEN" if negative else "STORE_WHEN"],
                    payload={"key": entry.key, "ttl_s": entry.ttl_s, "entries": cache.size(tenant)},
                )
                if evicted:
                    budget = cache.budget
                    ctx.emit(
                        CACHE_EVICTED,
                        decision="lru",
                        reason_codes=sorted(cache.last_evictions),
                        payload={
                            "evicted": evicted,
                            "by_reason": dict(cache.last_evictions),
                            "entries": cache.size(tenant),
                            "total_bytes": budget.total if budget else None,
                            "limit_bytes": budget.limit_bytes if budget else None,
                        },
                    )

            ctx.after_success(store)
        return self.Output(
            hit=False, value=None, similarity=0.0, negative=False, key="", exact=False,
            stored=wanted,
        )  # fmt: skip


async def _prepare(cache: SemanticCache, config: CacheNode.Config) -> Prepared:
    """Template, embed and band `config.text`, in a worker thread when it is long."""
    if len(config.text) <= INLINE_MAX_CHARS:
        return cache.prepare(config.text, names=config.names)  # the rest stays lazy

    def complete(text: str) -> Prepared:
        return cache.prepare(text, names=config.names).complete()

    return await off_loop(config.text, complete)


def shared_cache(ctx: NodeContext, namespace: str) -> SemanticCache:
    """The graph's cache for `namespace`, attached to the store's persistence if it has one."""

    def create() -> SemanticCache:
        cache = SemanticCache(namespace, budget=process_budget())
        provider = getattr(ctx.shared.db, "cache_persistence", None)
        if callable(provider):
            persistence = provider()
            _bound_store(persistence, cache)
            cache.attach(persistence)
        return cache

    return ctx.shared.get("cache:" + namespace, create)


def _limit(cache: SemanticCache, total_bytes: int) -> None:
    """Lower the process's cache ceiling, in memory and in the store file."""
    if cache.budget is None or cache.budget.limit_bytes <= total_bytes:
        return
    cache.budget.lower_to(total_bytes)
    cache.budget.enforce()
    if cache.persistence is not None:
        _bound_store(cache.persistence, cache)


def _bound_store(persistence: object, cache: SemanticCache) -> None:
    """Cap the store's cache table at the budget (when the persistence can be capped)."""
    limit = getattr(persistence, "limit_bytes", None)
    if callable(limit) and cache.budget is not None:
        limit(cache.budget.limit_bytes)


def _miss_codes(found: Lookup, config: CacheNode.Config) -> list[str]:
    if found.similarity == 0.0:
        return ["NO_CANDIDATE"]
    return [f"BELOW_THRESHOLD_{config.threshold:g}"]


def _read_warm_file(path: str) -> list[dict[str, Any]]:
    """Warm-start entries from YAML (a list, or `entries:`) or JSONL.

    Raises:
        ValueError: the file cannot be read or parsed, or an entry is not `{prompt, value}`;
            the message names the file (and line).
    """
    raw = read_text_file(path, "cache warm_file")
    if path.endswith(".jsonl"):
        items = json_lines(raw, f"cache warm_file {path}", '{"prompt": ..., "value": ...}')
    else:
        data = yaml_data(raw, f"cache warm_file {path}")
        items = data.get("entries", []) if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(i, dict) and "prompt" in i for i in items):
        raise ValueError(f"cache warm_file {path!r}: expected a list of {{prompt, value}} entries")
    return items
