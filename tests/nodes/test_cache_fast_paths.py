"""The cache's cheaper embedding, quantisation and MinHash paths give exactly what the plain
computations they replace give: the same floats, the same int8 values, the same band keys,
so no lookup hits or misses differently because the code got faster."""

from __future__ import annotations

import itertools
import math
import zlib

from hypothesis import given
from hypothesis import strategies as st

from nodes._support.embed import HashingEmbedder, cosine, cosines, quantize, words
from nodes._support.lsh import MinHashIndex, _token_hashes
from nodes._support.principles import DEFAULT_PRINCIPLES, PrincipleIndex

_WORDS = ["reset", "password", "order", "{num}", "team", "the", "a", "é", "42", "x", "xx"]
_texts = st.lists(
    st.one_of(st.sampled_from(_WORDS), st.text(alphabet="abcXYZ019 -'{}", max_size=8)),
    max_size=24,
).map(" ".join)


def _dense_embedding(text: str, dims: int, weights: tuple[float, float, float]) -> list[float]:
    """The embedding as first written: every bucket summed, scaled and normalised."""
    w_word, w_bigram, w_char = weights
    vec = [0.0] * dims
    toks = words(text)
    for tok in toks:
        acc: dict[int, float] = {}
        padded = f"#{tok}#"
        feats = [("w:" + tok, w_word)]
        feats += [(padded[i : i + 3], w_char) for i in range(len(padded) - 2)]
        for feature, weight in feats:
            h = zlib.crc32(feature.encode())
            acc[h % dims] = acc.get(h % dims, 0.0) + (weight if (h >> 20) & 1 else -weight)
        for i, w in acc.items():
            vec[i] += w
    for a, b in itertools.pairwise(toks):
        h = zlib.crc32(f"b:{a} {b}".encode())
        vec[h % dims] += w_bigram if (h >> 20) & 1 else -w_bigram
    norm = math.sqrt(sum(v * v for v in vec))
    return vec if norm == 0.0 else [v * (1.0 / norm) for v in vec]


@given(_texts, st.sampled_from([16, 256]))
def test_the_sparse_embedding_is_the_dense_one(text: str, dims: int) -> None:
    embedder = HashingEmbedder(dims, bigram_weight=0.6, char_weight=0.25)
    vec, nonzero = embedder.embed_sparse(text)
    expected = _dense_embedding(text, dims, (1.0, 0.6, 0.25))
    assert [x.hex() for x in vec] == [x.hex() for x in expected]  # bit for bit, signs too
    assert nonzero == [i for i, x in enumerate(vec) if x]
    assert embedder.embed_one(text) == vec


@given(_texts, st.lists(_texts, max_size=5))
def test_cosines_over_the_query_buckets_are_the_full_dot_products(
    query: str, others: list[str]
) -> None:
    embedder = HashingEmbedder()
    q, nonzero = embedder.embed_sparse(query)
    vectors = [embedder.embed_one(t) for t in others]
    got = cosines(q, nonzero, vectors)
    assert [x.hex() for x in got] == [cosine(q, v).hex() for v in vectors]


@given(_texts)
def test_quantising_the_nonzero_buckets_gives_the_dense_quantisation(text: str) -> None:
    vec = HashingEmbedder().embed_one(text)
    q8, scale = quantize(vec)
    peak = max((abs(v) for v in vec), default=0.0)
    if peak == 0.0:
        assert (list(q8), scale) == ([0] * len(vec), 0.0)
        return
    assert list(q8) == [round(v * (127.0 / peak)) for v in vec]
    assert scale == peak / 127.0


@given(st.lists(st.text(max_size=6), max_size=30), st.sampled_from([(10, 3), (4, 8), (32, 1)]))
def test_minhash_bands_are_the_minimum_of_every_token_hash(
    tokens: list[str], shape: tuple[int, int]
) -> None:
    bands, rows = shape
    index = MinHashIndex(bands=bands, rows=rows)
    if not tokens:
        assert index.signature(tokens) == ()
        return
    mins = [min(column) for column in zip(*(_token_hashes(t) for t in set(tokens)), strict=True)]
    expected = tuple((i, hash(tuple(mins[i * rows : (i + 1) * rows]))) for i in range(bands))
    assert index.signature(tokens) == expected


@given(_texts)
def test_principle_scores_are_the_plain_cosines(query: str) -> None:
    index = PrincipleIndex(DEFAULT_PRINCIPLES)
    q = index._embedder.embed_one(query)
    lowered = query.lower()
    plain = [
        (p, cosine(q, v) + (0.2 if any(t in lowered for t in p.tags) else 0.0))
        for p, v in zip(index.principles, index._vectors, strict=True)
    ]
    core = [x for x in plain if x[0].core]
    others = sorted((x for x in plain if not x[0].core), key=lambda x: -x[1])
    assert index.relevant(query, 3) == core + others[:3]


class _DictBuckets:
    """The MinHash index's buckets as first written: a dict of members per band key."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buckets: dict[tuple[int, int], dict[str, None]] = {}
        self.keys: dict[str, tuple[tuple[int, int], ...]] = {}

    def add(self, item: str, keys: tuple[tuple[int, int], ...]) -> None:
        self.remove(item)
        self.keys[item] = keys
        for key in keys:
            self.buckets.setdefault(key, {})[item] = None

    def remove(self, item: str) -> None:
        for key in self.keys.pop(item, ()):
            bucket = self.buckets.get(key)
            if bucket is not None:
                bucket.pop(item, None)
                if not bucket:
                    del self.buckets[key]

    def candidates(self, keys: tuple[tuple[int, int], ...], limit: int) -> list[str]:
        members = [
            itertools.islice(reversed(b), self.cap) for k in keys if (b := self.buckets.get(k))
        ]
        votes: dict[str, int] = {}
        for item in itertools.chain.from_iterable(members):
            votes[item] = votes.get(item, 0) + 1
        ranked = sorted(votes.items(), key=lambda kv: kv[1], reverse=True)
        return [item for item, _ in ranked[:limit]]


_band = st.tuples(st.integers(0, 3), st.integers(0, 3))
_steps = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "query"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.lists(_band, min_size=1, max_size=4, unique=True).map(tuple),
    ),
    max_size=40,
)


@given(_steps, st.integers(1, 3))
def test_index_buckets_of_one_member_answer_as_dicts_of_members_do(
    steps: list[tuple[str, str, tuple[tuple[int, int], ...]]], cap: int
) -> None:
    """A bucket holds its one member itself until a second comes: the candidates, their
    order and the index's size stay those of a dict of members per bucket."""
    index, reference = MinHashIndex(bucket_cap=cap), _DictBuckets(cap)
    for action, item, keys in steps:
        if action == "add":
            index.add(item, keys)
            reference.add(item, keys)
        elif action == "remove":
            index.remove(item)
            reference.remove(item)
        else:
            assert index.candidates(keys, 3) == reference.candidates(keys, 3)
        assert len(index) == len(reference.keys)
