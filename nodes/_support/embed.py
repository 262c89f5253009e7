"""Text embeddings for the built-in nodes: a dependency-free hashing embedder by default.

`HashingEmbedder` maps word unigrams, word bigrams and character trigrams into a fixed
number of signed buckets (the "hashing trick") and L2-normalises the result, so cosine
similarity is a plain dot product. It needs no model, no network and no numpy, is stable
across processes (CRC-32, not Python's salted `hash`) and embeds a sentence in about a
tenth of a millisecond, which is what the cache's lookup budget allows.

Real embedding models are options behind the same `Embedder` protocol and are imported
lazily, only when configured: `sentence-transformers:all-MiniLM-L6-v2` or
`openai:text-embedding-3-small` (any OpenAI-compatible `/embeddings` endpoint; the base URL
and key come from the standard `OPENAI_BASE_URL` / `OPENAI_API_KEY` of the client).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import re
import zlib
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

__all__ = [
    "FEATURE_CACHE_WORDS",
    "Embedder",
    "HashingEmbedder",
    "QVector",
    "cosine",
    "cosines",
    "embedder_problem",
    "get_embedder",
    "qcosine",
    "quantize",
    "words",
]

_WORD = re.compile(r"[a-z0-9]+|\{[a-z]+\}")

FEATURE_CACHE_WORDS = 8192
"""Words whose features are kept, per embedder configuration, shared by its instances.

Distinct prompts bring new words (numbers, names) with every request: the cache holds the
recent ones and drops the oldest, so it stays a few MiB however long the process runs.
"""
_Features = tuple[tuple[int, float], ...]
_FEATURES: dict[tuple[int, tuple[float, float, float]], dict[str, _Features]] = {}
"""The word-feature caches, by `(dims, weights)`: the same word has the same features in
every embedder configured alike."""


def words(text: str) -> list[str]:
    """Lower-cased word tokens; slot markers such as `{num}` stay one token."""
    return _WORD.findall(text.lower())


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors of a fixed dimension."""

    dims: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


class HashingEmbedder:
    """Signed feature hashing of words, word bigrams and character trigrams.

    Args:
        dims: number of buckets (vector length).
        word_weight: weight of each word feature.
        bigram_weight: weight of each word-bigram feature (captures a little order).
        char_weight: weight of each character-trigram feature (tolerates typos, plurals).
    """

    def __init__(
        self,
        dims: int = 256,
        *,
        word_weight: float = 1.0,
        bigram_weight: float = 0.6,
        char_weight: float = 0.25,
    ) -> None:
        self.dims = dims
        self._weights = (word_weight, bigram_weight, char_weight)
        self._cache = _FEATURES.setdefault((dims, self._weights), {})

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text."""
        return [self.embed_one(t) for t in texts]

    def embed_one(self, text: str) -> list[float]:
        """The L2-normalised vector of one text (all zeros for text without words)."""
        return self.embed_sparse(text)[0]

    def embed_sparse(self, text: str) -> tuple[list[float], list[int]]:
        """`embed_one(text)` and the positions of its non-zero values, in order.

        A sentence touches a fraction of the buckets: the norm and the scaling read only
        those (the zeros add nothing to the sum of squares and stay zeros when scaled), so
        the vector is the very one the dense computation gives.
        """
        vec = [0.0] * self.dims
        toks = words(text)
        cache = self._cache
        for tok in toks:
            feats = cache.get(tok)
            if feats is None:
                feats = self._token_features(tok)
            for i, w in feats:
                vec[i] += w
        w_bigram = self._weights[1]
        for a, b in itertools.pairwise(toks):
            h = zlib.crc32(f"b:{a} {b}".encode())
            vec[h % self.dims] += w_bigram if (h >> 20) & 1 else -w_bigram
        nonzero = list(itertools.compress(range(self.dims), vec))
        values = [vec[i] for i in nonzero]
        norm = math.sqrt(sum(map(operator.mul, values, values)))
        if norm == 0.0:
            return vec, nonzero
        inv = 1.0 / norm
        for i, v in zip(nonzero, values, strict=True):
            vec[i] = v * inv
        return vec, nonzero

    def _token_features(self, tok: str) -> _Features:
        """A word's own and character-trigram buckets with signed weights (cached)."""
        acc: dict[int, float] = {}
        w_word, _, w_char = self._weights
        padded = f"#{tok}#"
        feats = [("w:" + tok, w_word)]
        feats += [(padded[i : i + 3], w_char) for i in range(len(padded) - 2)]
        for feature, weight in feats:
            h = zlib.crc32(feature.encode())
            idx = h % self.dims
            acc[idx] = acc.get(idx, 0.0) + (weight if (h >> 20) & 1 else -weight)
        out = tuple(acc.items())
        cache = self._cache
        if len(cache) >= FEATURE_CACHE_WORDS:
            # the oldest word goes (another thread may be doing the same)
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del cache[next(iter(cache))]
        cache[tok] = out
        return out


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Dot product of two L2-normalised vectors (their cosine similarity)."""
    return float(sum(map(operator.mul, a, b)))


def cosines(
    query: Sequence[float], nonzero: Sequence[int], vectors: Iterable[Sequence[float]]
) -> list[float]:
    """`cosine(query, v)` for each of `vectors`, reading only the query's `nonzero`
    positions (all of them, in order): the products left out are zeros, which change
    no sum, so each value is the very float `cosine` gives."""
    if len(nonzero) < 2:  # `itemgetter` of one position gives a value, not a tuple
        return [cosine(query, v) for v in vectors]
    pick = operator.itemgetter(*nonzero)
    q = pick(query)
    return [float(sum(map(operator.mul, q, pick(v)))) for v in vectors]


QVector = tuple["array[int]", float]
"""An int8-quantised vector and its scale: 4x smaller than floats, same ranking."""


def quantize(vec: Sequence[float]) -> QVector:
    """Quantise a vector to int8 with one scale factor (for large in-memory indexes)."""
    nonzero = list(itertools.compress(range(len(vec)), vec))
    out = array("b", bytes(len(vec)))
    if not nonzero:  # the zeros round to zeros: only the others are worked out
        return out, 0.0
    values = [vec[i] for i in nonzero]
    peak = max(map(abs, values))
    factor = 127.0 / peak
    for i, v in zip(nonzero, values, strict=True):
        out[i] = round(v * factor)
    return out, peak / 127.0


def qcosine(a: QVector, b: QVector) -> float:
    """Approximate cosine of two quantised vectors."""
    return float(sum(map(operator.mul, a[0], b[0]))) * a[1] * b[1]


class _SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded on first use."""

    def __init__(self, model_name: str) -> None:
        try:
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"embedder 'sentence-transformers:{model_name}' needs the sentence-transformers"
                " package: pip install sentence-transformers (or use embedder 'hashing')"
            ) from exc
        self._model: Any = SentenceTransformer(model_name)
        self.dims = int(self._model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> list[list[float]]:  # pragma: no cover
        vectors = self._model.encode(list(texts), normalize_embeddings=True)
        return [[float(x) for x in v] for v in vectors]


class _OpenAIEmbedder:
    """An OpenAI-compatible `/embeddings` endpoint (sync client: call it off the event loop)."""

    def __init__(self, model_name: str, dims: int = 0) -> None:
        import openai

        self._client = openai.OpenAI()
        self._model = model_name
        self.dims = dims

    def embed(self, texts: Sequence[str]) -> list[list[float]]:  # pragma: no cover - network
        response = self._client.embeddings.create(model=self._model, input=list(texts))
        out = []
        for item in response.data:
            vec = [float(x) for x in item.embedding]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        self.dims = len(out[0]) if out else self.dims
        return out


_EMBEDDERS: dict[str, Embedder] = {}


def embedder_problem(spec: str) -> str | None:
    """What is wrong with an embedder `spec` (see `get_embedder`), or None."""
    kind, sep, arg = spec.partition(":")
    known = "use 'hashing', 'hashing:DIMS', 'sentence-transformers:MODEL' or 'openai:MODEL'"
    if kind == "hashing":
        if sep and not (arg.isdigit() and 1 <= int(arg) <= 65536):
            return f"embedder {spec!r}: DIMS must be a whole number from 1 to 65536"
        return None
    if kind in ("sentence-transformers", "openai"):
        if sep and not arg.strip():
            return f"embedder {spec!r} names no model; write {kind}:MODEL or just {kind}"
        return None
    return f"unknown embedder {spec!r}; {known}"


def get_embedder(spec: str = "hashing") -> Embedder:
    """The embedder named by `spec`, created once per process.

    Args:
        spec: `hashing`, `hashing:DIMS`, `sentence-transformers:MODEL` or `openai:MODEL`.

    Raises:
        ValueError: for an unknown kind (the message lists the valid ones).
        ImportError: when the optional package of the chosen kind is not installed.
    """
    if spec in _EMBEDDERS:
        return _EMBEDDERS[spec]
    problem = embedder_problem(spec)
    if problem is not None:
        raise ValueError(problem)
    kind, _, arg = spec.partition(":")
    embedder: Embedder
    if kind == "hashing":
        embedder = HashingEmbedder(int(arg) if arg else 256)
    elif kind == "sentence-transformers":
        embedder = _SentenceTransformerEmbedder(arg or "all-MiniLM-L6-v2")
    else:
        embedder = _OpenAIEmbedder(arg or "text-embedding-3-small")
    _EMBEDDERS[spec] = embedder
    return embedder
