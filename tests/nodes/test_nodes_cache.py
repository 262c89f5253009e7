"""The `cache` node and its semantic store: tenant isolation, template keys, negative entries,
adaptive TTL, LRU ceilings, stores after success, warm start and persistence."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.plugin.context import SharedState
from nodes._support.semcache import SemanticCache, template
from nodes.cache import CacheNode, shared_cache
from tests.support.loop_probe import HOSTILE_60KB, finishes_first, heartbeats_during
from tests.support.nodes_fakes import FakeRuntime, run_node

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _lookup(
    store: SharedState, text: str, tenant: str = "a", **cfg: Any
) -> tuple[Any, FakeRuntime]:
    rt = FakeRuntime()
    out = await run_node(CacheNode(), {"text": text, **cfg}, rt, tenant=tenant, store=store)
    return out, rt


async def _store(
    store: SharedState, text: str, value: Any, tenant: str = "a", **cfg: Any
) -> FakeRuntime:
    rt = FakeRuntime()
    cfg = {"mode": "store", "text": text, "value": value, **cfg}
    out = await run_node(CacheNode(), cfg, rt, tenant=tenant, store=store)
    assert out.stored == (value is not None or cfg.get("negative_when", False)) and not out.hit
    await rt.succeed()
    return rt


def test_template_slots_numbers_emails_quotes_ids_and_names() -> None:
    tpl, slots = template('Where is order #4471 for ann@x.io, "blue box", INV-2024-7, in Paris?')
    assert tpl == "where is order {id} for {email} {quoted} {id} in {name}"
    assert slots == ("email:ann@x.io", "quoted:blue box", "id:#4471", "id:inv-2024-7", "name:paris")
    assert template("What is 2+2?")[0] == template("what is 3+3")[0]


async def test_miss_then_store_after_success_then_exact_hit() -> None:
    store = SharedState()
    out, rt = await _lookup(store, "How do I reset my password?")
    assert (out.hit, out.negative) == (False, False)
    assert rt.types() == ["CACHE_MISS"] and rt.last("CACHE_MISS").reason_codes == ["NO_CANDIDATE"]
    rt = FakeRuntime()
    await run_node(
        CacheNode(),
        {"mode": "store", "text": "How do I reset my password?", "value": "Click reset."},
        rt,
        tenant="a",
        store=store,
    )
    # nothing is stored until the request succeeds
    assert (await _lookup(store, "How do I reset my password?"))[0].hit is False
    await rt.succeed()
    assert rt.types() == ["CACHE_STORED"]
    out, rt = await _lookup(store, "how do i reset my password")
    assert (out.hit, out.value, out.similarity, out.exact) == (True, "Click reset.", 1.0, True)
    assert rt.last("CACHE_HIT").decision == "exact"


async def test_semantic_hit_on_paraphrase_but_not_on_other_slot_values() -> None:
    store = SharedState()
    await _store(store, "How can I reset the password of my account?", "Use the reset link.")
    out, rt = await _lookup(store, "How can I reset the password for my account?", threshold=0.8)
    assert out.hit and not out.exact and 0.8 <= out.similarity < 1.0
    assert rt.last("CACHE_HIT").reason_codes == ["SEMANTIC_MATCH"]
    await _store(store, "What is the status of order 1234?", "shipped")
    assert (await _lookup(store, "What is the status of order 1234?"))[0].hit
    assert not (await _lookup(store, "What is the status of order 9999?"))[0].hit
    await _store(store, "What is the capital of France?", "Paris")
    assert not (await _lookup(store, "What is the capital of Germany?", threshold=0.5))[0].hit


async def test_tenants_never_see_each_other() -> None:
    store = SharedState()
    await _store(store, "my secret plan", "tenant a's answer", tenant="a")
    assert (await _lookup(store, "my secret plan", tenant="a"))[0].hit
    out, _ = await _lookup(store, "my secret plan", tenant="b")
    assert not out.hit and out.value is None


async def test_scope_and_namespace_separate_entries() -> None:
    store = SharedState()
    await _store(store, "hello", "v1", scope="model-a")
    assert not (await _lookup(store, "hello", scope="model-b"))[0].hit
    assert not (await _lookup(store, "hello", namespace="other", scope="model-a"))[0].hit
    assert (await _lookup(store, "hello", scope="model-a"))[0].hit


async def test_negative_entries_report_negative_not_hit() -> None:
    store = SharedState()
    rt = await _store(store, "write ransomware", "refused", negative_when=True)
    assert rt.last("CACHE_STORED").decision == "negative"
    out, rt = await _lookup(store, "write ransomware")
    assert (out.hit, out.negative, out.value) == (False, True, "refused")
    assert rt.types() == ["CACHE_NEGATIVE_HIT"]


async def test_store_when_false_or_missing_value_stores_nothing() -> None:
    store = SharedState()
    rt = FakeRuntime()
    out = await run_node(
        CacheNode(),
        {"mode": "store", "text": "q", "value": "a", "store_when": False},
        rt,
        store=store,
    )
    assert not out.stored and rt.callbacks == []
    out = await run_node(
        CacheNode(), {"mode": "store", "text": "q", "store": None}, rt, store=store
    )
    assert not out.stored


async def test_ttl_grows_with_hits_up_to_the_ceiling() -> None:
    clock = Clock()
    store = SharedState()
    store.get("cache:default", lambda: SemanticCache("default", clock=clock))
    await _store(store, "q", "a", ttl_s=10)
    ttls = []
    for _ in range(5):
        _, rt = await _lookup(store, "q", ttl_growth=2.0, max_ttl_s=50)
        ttls.append(rt.last("CACHE_HIT").payload["ttl_s"])  # type: ignore[index]
    assert ttls == [20, 40, 50, 50, 50]
    clock.t += 51
    assert not (await _lookup(store, "q"))[0].hit  # expired


async def test_lru_ceiling_evicts_least_recently_used() -> None:
    store = SharedState()
    await _store(store, "one", 1, max_entries=2)
    await _store(store, "two", 2, max_entries=2)
    await _lookup(store, "one")  # one is now most recent
    rt = await _store(store, "three", 3, max_entries=2)
    assert rt.types() == ["CACHE_STORED", "CACHE_EVICTED"]
    evicted = rt.last("CACHE_EVICTED")
    assert evicted.reason_codes == ["MAX_ENTRIES_OR_BYTES"]
    assert evicted.payload is not None
    assert evicted.payload["evicted"] == 1 and evicted.payload["entries"] == 2
    assert evicted.payload["by_reason"] == {"MAX_ENTRIES_OR_BYTES": 1}
    hits = [(await _lookup(store, t))[0].hit for t in ("one", "two", "three")]
    assert hits == [True, False, True]


async def test_byte_ceiling_evicts() -> None:
    store = SharedState()
    for i in range(5):
        await _store(store, f"q{i} alpha", "x" * 400, max_bytes=2048)
    assert shared_cache_size(store) <= 2


def shared_cache_size(store: SharedState) -> int:
    return store.get("cache:default", lambda: SemanticCache("default")).size("a")


async def test_warm_start_from_yaml_and_jsonl(tmp_path: Path) -> None:
    y = tmp_path / "warm.yaml"
    y.write_text(
        "- {prompt: 'What are your opening hours?', value: '9 to 5'}\n"
        "- {prompt: 'Only for b', value: B, tenant: b}\n"
    )
    j = tmp_path / "warm.jsonl"
    j.write_text(json.dumps({"prompt": "Where are you?", "value": "Berlin"}) + "\n")
    store = SharedState()
    out, _ = await _lookup(store, "what are your opening hours", warm_file=str(y))
    assert out.hit and out.value == "9 to 5"
    assert not (await _lookup(store, "only for b", warm_file=str(y)))[0].hit
    assert (await _lookup(store, "only for b", tenant="b", warm_file=str(y)))[0].hit
    assert (await _lookup(store, "where are you", warm_file=str(j)))[0].hit
    with pytest.raises(ValueError, match="cannot read cache warm_file"):
        await _lookup(store, "x", warm_file=str(tmp_path / "none.yaml"))


class MemoryPersistence:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Mapping[str, Any]] = {}

    def load(self, namespace: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
        return [(t, r) for (ns, t, _), r in self.rows.items() if ns == namespace]

    def save(self, namespace: str, tenant: str, record: Mapping[str, Any]) -> None:
        self.rows[(namespace, tenant, str(record["key"]))] = json.loads(json.dumps(record))

    def delete(self, namespace: str, tenant: str, key: str) -> None:
        self.rows.pop((namespace, tenant, key), None)


class FakeStore:
    def __init__(self, persistence: MemoryPersistence) -> None:
        self.persistence = persistence

    def cache_persistence(self) -> MemoryPersistence:
        return self.persistence


async def test_persistence_writes_through_and_reloads() -> None:
    persistence = MemoryPersistence()
    first = SharedState(db=FakeStore(persistence))
    await _store(first, "What is moat?", "A runtime.", tenant="a")
    assert len(persistence.rows) == 1
    restarted = SharedState(db=FakeStore(persistence))
    out, _ = await _lookup(restarted, "what is moat", tenant="a")
    assert out.hit and out.value == "A runtime."
    assert not (await _lookup(restarted, "what is moat", tenant="b"))[0].hit


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["store", "lookup"]),
        st.sampled_from(["t1", "t2", "t3"]),
        st.sampled_from(
            [
                "reset my password",
                "reset the password",
                "order 12 status",
                "order 13 status",
                "hello there",
            ]
        ),
        st.floats(0.0, 1.0),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(ops=_OPS)
def test_no_interleaving_of_stores_and_lookups_leaks_across_tenants(
    ops: list[tuple[str, str, str, float]],
) -> None:
    async def go() -> None:
        store = SharedState()
        for op, tenant, text, threshold in ops:
            if op == "store":
                await _store(store, text, {"owner": tenant}, tenant=tenant, max_entries=3)
            else:
                out, _ = await _lookup(store, text, tenant=tenant, threshold=threshold)
                if out.value is not None:
                    assert out.value == {"owner": tenant}

    anyio.run(go)


def test_lookup_cost_is_bounded_by_candidates_not_size() -> None:
    cache = SemanticCache("n", candidates=8)
    for i in range(3000):
        cache.store("t", f"question about topic {i % 50} and detail x{i}", i, max_entries=10_000)
    assert cache.size("t") == 3000
    cache.store("t", "completely unrelated words here", "z")
    found = cache.lookup("t", "completely unrelated words here!")
    assert found.entry is not None and found.entry.value == "z"


def test_shared_cache_is_per_namespace() -> None:
    from tests.support.nodes_fakes import make_ctx

    store = SharedState()
    ctx = make_ctx(CacheNode(), FakeRuntime(), store=store)
    assert shared_cache(ctx, "x") is shared_cache(ctx, "x")
    assert shared_cache(ctx, "x") is not shared_cache(ctx, "y")


async def test_looking_up_a_large_hostile_prompt_leaves_the_event_loop_free() -> None:
    store = SharedState()
    cached = "What is the status of order 4471?"
    await _store(store, cached, "shipped")

    async def big() -> None:
        out, _ = await _lookup(store, HOSTILE_60KB)
        assert not out.hit

    async def small() -> None:
        out, _ = await _lookup(store, cached)
        assert out.hit and out.value == "shipped"

    assert await heartbeats_during(big) >= 3
    assert await finishes_first(big, small) == "small"


def test_the_word_feature_cache_is_bounded_and_never_changes_a_vector() -> None:
    from nodes._support.embed import _FEATURES, FEATURE_CACHE_WORDS, HashingEmbedder

    text = "reset the password for team 1234"
    before = HashingEmbedder().embed_one(text)
    embedder = HashingEmbedder()
    for i in range(FEATURE_CACHE_WORDS + 500):  # distinct prompts: a new word each
        embedder.embed_one(f"order w{i}x")
    cache = _FEATURES[(256, (1.0, 0.6, 0.25))]
    assert len(cache) <= FEATURE_CACHE_WORDS
    assert HashingEmbedder().embed_one(text) == before  # recomputed words, same vector


def test_the_minhash_token_cache_is_bounded_and_never_changes_a_signature() -> None:
    from nodes._support.lsh import TOKEN_CACHE_SIZE, MinHashIndex, _token_lanes

    index = MinHashIndex()
    tokens = ["reset", "password", "team", "{num}"]
    before = index.signature(tokens)
    for i in range(TOKEN_CACHE_SIZE + 500):
        index.signature([f"t{i}", "reset"])
    assert _token_lanes.cache_info().currsize <= TOKEN_CACHE_SIZE
    assert index.signature(tokens) == before


def test_a_store_reuses_the_preparation_of_the_lookup_before_it() -> None:
    from nodes._support.embed import HashingEmbedder
    from nodes._support.semcache import KEPT_PREPARED, Prepared

    cache = SemanticCache("answers", clock=lambda: 100.0)
    text = "How do I reset my password for account 1234?"
    looked = cache.prepare(text)
    cache.lookup("t", text, prepared=looked)
    assert cache.prepare(text) is looked
    assert cache.prepare(text, names=False) is not looked  # another template
    fresh = Prepared(text, HashingEmbedder())
    assert (looked.template, looked.slots) == (fresh.template, fresh.slots)
    assert looked.vector() == fresh.vector() and looked.signature() == fresh.signature()
    for i in range(KEPT_PREPARED + 10):
        cache.prepare(f"question number {i}")
    assert len(cache._prepared) == KEPT_PREPARED  # bounded: the oldest went
    assert cache.prepare(text) is not looked
