"""The `retrieve` node: top-k passages of a small corpus by embedding similarity.

The corpus is a file (`.jsonl` lines of `{id, text}`, YAML list of strings or `{id, text}`
(or a mapping with `passages:`), or plain text with passages separated by blank lines) or
an inline `passages` list. Its index is built once per node instance and source (a file
edited since is read again) and the node keeps the `INDEXES` most recently used, so
`passages` that requests bring (`"{{ input.docs }}"`) cost memory for the few in use,
not for every request answered. A request's retrievals are memoised (`ctx.memo`), so
several consumers with the same query share one search. The default embedder is the
dependency-free hashing embedder; other embedders (`sentence-transformers:MODEL`,
`openai:MODEL`), and the hashing one over more than `INLINE_TEXTS` texts, run in a worker
thread, as a search of more than `INLINE_SEARCH` passages does.

A `corpus:` written in the graph may name any file (relative to the graph file). One an
expression makes (`"{{ input.corpus }}"`, request data) must resolve, symlinks followed,
inside `corpus_root:` (a folder written in the graph) or else the graph file's folder: a
request cannot make the node read `/etc/passwd` or `../../secret`
(`NodeContext.resolve_path`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import anyio
from cachetools import LRUCache
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from engine import Node, NodeContext, at_check, graph_file, read_text_file
from nodes._support.datafiles import json_lines, yaml_data
from nodes._support.embed import Embedder, HashingEmbedder, cosine, embedder_problem, get_embedder

__all__ = ["INDEXES", "INLINE_SEARCH", "INLINE_TEXTS", "Passage", "RetrieveNode"]

INDEXES = 32
"""Corpus indexes a node keeps (the most recently used)."""
INLINE_TEXTS = 64
"""Texts the hashing embedder embeds on the event loop; more go to a worker thread (a
corpus of thousands of passages takes a good part of a second)."""
INLINE_SEARCH = 1000
"""Passages a search compares the query with on the event loop; more, in a worker thread."""


class Passage(BaseModel):
    """One retrieved passage."""

    id: str = Field(description="The passage's id (its position when the corpus gives none).")
    text: str = Field(description="The passage text.")
    score: float = Field(description="Cosine similarity to the query.")


class _Index:
    def __init__(self, ids: list[str], texts: list[str], vectors: list[list[float]]) -> None:
        self.ids = ids
        self.texts = texts
        self.vectors = vectors


class RetrieveNode(Node):
    """Returns the top-k passages of a small corpus most similar to a query."""

    type_name = "retrieve"

    class Config(BaseModel):
        """Settings of a `retrieve` node."""

        query: str = Field(description="What to search for.")
        corpus: str | None = Field(
            default=None, description="Path of the corpus (JSONL, YAML or blank-line text)."
        )
        corpus_root: str | None = Field(
            default=None,
            description="The folder a `corpus` made by an expression (from request data) must "
            "resolve inside, symlinks followed; relative to the graph file, whose folder is "
            "the default. Write it in the graph: a root an expression makes is refused.",
        )
        passages: list[str | dict[str, Any]] | None = Field(
            default=None, validate_default=True, description="An inline corpus instead of `corpus`."
        )
        k: int = Field(default=3, ge=1, le=100, description="How many passages to return.")
        min_score: float = Field(
            default=0.0, ge=-1, le=1, description="Passages under this similarity are dropped."
        )
        embedder: str = Field(
            default="hashing",
            description="`hashing`, `sentence-transformers:MODEL` or `openai:MODEL`.",
        )

        @field_validator("corpus")
        @classmethod
        def _corpus_reads(cls, value: str | None, info: ValidationInfo) -> str | None:
            path = graph_file(value, info) if value is not None else None
            if path is not None:  # `moat check`: a file every request would fail on
                _read_corpus(path)
            return value

        @field_validator("corpus_root")
        @classmethod
        def _root_is_a_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
            path = graph_file(value, info) if value is not None else None
            # (written in the graph: an expression is not checked here)
            if path is not None and not os.path.isdir(path):
                raise ValueError(
                    f"{path!r} is not a folder; name the folder the corpus files that "
                    "requests choose live in"
                )
            return value

        @field_validator("passages")
        @classmethod
        def _passages_usable(
            cls, value: list[Any] | None, info: ValidationInfo
        ) -> list[Any] | None:
            if at_check(info, "corpus", "passages"):  # what every run would refuse (`_load`)
                given = info.data.get("corpus") is not None, value is not None
                if given == (False, False) and "corpus" in info.data:
                    raise ValueError(
                        "nothing to search: give `corpus:` (a file of passages) or an inline "
                        "`passages:` list"
                    )
                if given == (True, True):
                    raise ValueError(
                        "give `corpus:` or `passages:`, not both: the corpus file would be "
                        "searched and these passages ignored"
                    )
            if value is not None:
                if not value:
                    raise ValueError("an empty list; give passages, or a `corpus:` file")
                for i, entry in enumerate(value):
                    _item(i, entry)
            return value

        @field_validator("embedder")
        @classmethod
        def _embedder_known(cls, value: str) -> str:
            problem = embedder_problem(value)
            if problem is not None:
                raise ValueError(problem)
            return value

    class Output(BaseModel):
        """What a `retrieve` node returns."""

        passages: list[Passage] = Field(description="The best passages, best first.")
        top_score: float = Field(description="Similarity of the best passage (0 without any).")

    def __init__(self) -> None:
        self._indexes: LRUCache[str, _Index] = LRUCache(INDEXES)

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Search the (cached) index; reuse the request's earlier identical search."""
        if config.corpus is not None:  # relative to the graph, not the working directory
            path = ctx.resolve_path(
                config.corpus, key="corpus", root=config.corpus_root, root_key="corpus_root"
            )
            config = config.model_copy(update={"corpus": path})
        source = _source_key(config)  # (it reads the file's size and time: raises if gone)
        embedder = get_embedder(config.embedder)
        index = self._indexes.get(source)
        if index is None:
            index = self._indexes[source] = await _build(config, embedder)
        key = hashlib.sha256(
            json.dumps([source, config.embedder, config.query, config.k, config.min_score]).encode()
        ).hexdigest()[:24]

        async def search() -> list[Passage]:
            return await _search(index, embedder, config)

        passages, reused = await ctx.memo("retrieve:" + key, search)
        ctx.log.debug("retrieve.done", passages=len(passages), reused=reused)
        return self.Output(passages=passages, top_score=passages[0].score if passages else 0.0)


async def _embed(embedder: Embedder, texts: list[str]) -> list[list[float]]:
    if isinstance(embedder, HashingEmbedder) and len(texts) <= INLINE_TEXTS:
        return embedder.embed(texts)
    return await anyio.to_thread.run_sync(embedder.embed, texts)


async def _build(config: RetrieveNode.Config, embedder: Embedder) -> _Index:
    items = _load(config)
    ids = [i for i, _ in items]
    texts = [t for _, t in items]
    return _Index(ids, texts, await _embed(embedder, texts))


async def _search(index: _Index, embedder: Embedder, config: RetrieveNode.Config) -> list[Passage]:
    (q,) = await _embed(embedder, [config.query])
    if len(index.vectors) <= INLINE_SEARCH:
        return _best(index, q, config)
    return await anyio.to_thread.run_sync(_best, index, q, config)


def _best(index: _Index, q: list[float], config: RetrieveNode.Config) -> list[Passage]:
    scored = sorted(
        ((cosine(q, v), i) for i, v in enumerate(index.vectors)), key=lambda x: (-x[0], x[1])
    )
    return [
        Passage(id=index.ids[i], text=index.texts[i], score=round(s, 6))
        for s, i in scored[: config.k]
        if s >= config.min_score
    ]


def _source_key(config: RetrieveNode.Config) -> str:
    """What the index is built from: the file as it is now, or the inline passages."""
    if config.corpus is not None:
        try:
            st = os.stat(config.corpus)
        except OSError:
            return "file:" + config.corpus  # (`_read_corpus` says what is wrong with it)
        return f"file:{st.st_mtime_ns}:{st.st_size}:{config.corpus}"
    raw = json.dumps(config.passages, sort_keys=True, default=str)
    return "inline:" + hashlib.sha256(raw.encode()).hexdigest()[:16]


def _load(config: RetrieveNode.Config) -> list[tuple[str, str]]:
    """(id, text) pairs of the configured corpus."""
    if config.corpus is None:
        if not config.passages:
            raise ValueError("retrieve needs `corpus` (a file) or a non-empty `passages` list")
        return [_item(i, p) for i, p in enumerate(config.passages)]
    return _read_corpus(config.corpus)


def _read_corpus(path: str) -> list[tuple[str, str]]:
    """(id, text) pairs of a corpus file.

    Raises:
        ValueError: it cannot be read or parsed, or holds no passages; the message names
            the file (and line) and what to fix.
    """
    raw = read_text_file(path, "corpus")
    suffix = Path(path).suffix
    if suffix == ".jsonl":
        entries: Any = json_lines(raw, f"corpus {path}", '{"id": ..., "text": ...}')
    elif suffix in (".yaml", ".yml", ".json"):
        data = yaml_data(raw, f"corpus {path}")
        entries = data.get("passages", []) if isinstance(data, dict) else data
    else:
        entries = [p.strip() for p in raw.split("\n\n") if p.strip()]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"corpus {path!r} holds no passages")
    try:
        return [_item(i, e) for i, e in enumerate(entries)]
    except ValueError as exc:
        raise ValueError(f"corpus {path!r}: {exc}") from None


def _item(i: int, entry: Any) -> tuple[str, str]:
    if isinstance(entry, str):
        return str(i), entry
    if isinstance(entry, dict) and isinstance(entry.get("text"), str):
        return str(entry.get("id", i)), entry["text"]
    raise ValueError(f"passage #{i} must be a string or a mapping with 'text', got {entry!r}")
