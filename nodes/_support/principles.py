"""Principles the critic reviews against: the default set, loading from files, relevance retrieval.

A principle source is a YAML file (a list, or a mapping with `principles:`, of entries with
`id`, `text` and optional `tags`, `hard`, `core`), a text file (one principle per line, `#`
comments), or an inline list of strings or mappings in the graph. Without a source the
small built-in `DEFAULT_PRINCIPLES` is used. `PrincipleIndex.relevant` returns the
principles most similar to a request (hashing embedder), always including `core` ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine import read_text_file
from nodes._support.embed import HashingEmbedder, cosines

__all__ = ["DEFAULT_PRINCIPLES", "Principle", "PrincipleIndex", "load_principles", "source_key"]


@dataclass(frozen=True, slots=True)
class Principle:
    """One reviewable principle."""

    id: str
    text: str
    tags: tuple[str, ...] = field(default=())
    hard: bool = False
    """Violating it can never be fixed by rewording: the critic should refuse."""
    core: bool = False
    """Always relevant, whatever the request."""


DEFAULT_PRINCIPLES: tuple[Principle, ...] = (
    Principle("helpful", "Answer the question that was asked, clearly and completely, when it "
              "is safe to do so.", ("helpfulness",), core=True),
    Principle("honest", "Be honest about uncertainty; never fabricate facts, citations, "
              "quotes or credentials.", ("honesty", "facts"), core=True),
    Principle("violence", "Do not give operational instructions that meaningfully help "
              "someone make weapons, explosives or poisons or hurt people.",
              ("weapons", "explosives", "poison", "violence", "attack"), hard=True),
    Principle("cyber", "Do not provide working malware, exploits, or instructions for "
              "unauthorised access to computers, accounts or networks.",
              ("hacking", "malware", "exploit", "password", "phishing"), hard=True),
    Principle("self_harm", "Meet self-harm or suicide with care and point to support; never "
              "describe methods.", ("suicide", "self-harm", "overdose"), hard=True),
    Principle("minors", "Never produce sexual content involving minors.",
              ("minors", "children", "sexual"), hard=True),
    Principle("privacy", "Do not reveal, infer or compile personal data about private "
              "individuals (addresses, phone numbers, identity numbers).",
              ("privacy", "personal data", "doxxing", "address")),
    Principle("fraud", "Do not help with fraud, scams, impersonation, forgery or evading "
              "law enforcement.", ("fraud", "scam", "fake", "forge", "launder")),
    Principle("advice", "For medical, legal or financial questions give general information "
              "and recommend a qualified professional for personal decisions.",
              ("medical", "legal", "financial", "dose", "lawsuit", "invest")),
    Principle("fairness", "Avoid demeaning, hateful or discriminatory content about people or "
              "groups.", ("hate", "discrimination", "race", "religion", "gender")),
    Principle("autonomy", "Respect the user's autonomy: inform rather than lecture, and do not "
              "moralise about lawful choices.", ("autonomy", "tone")),
)  # fmt: skip


def source_key(source: str | Sequence[Any] | None) -> str:
    """A short stable id of a principle source (for memo and index keys)."""
    if source is None:
        return "default"
    if isinstance(source, str):
        return "file:" + source
    digest = hashlib.sha256(json.dumps(list(source), sort_keys=True, default=str).encode())
    return "inline:" + digest.hexdigest()[:16]


def load_principles(source: str | Sequence[Any] | None) -> tuple[Principle, ...]:
    """The principles of a source (path, inline list, or None for the defaults).

    Raises:
        ValueError: for an unreadable file or a malformed entry (names the entry).
    """
    if source is None:
        return DEFAULT_PRINCIPLES
    if isinstance(source, str):
        path = Path(source)
        raw = read_text_file(source, "principles file")
        if path.suffix in (".yaml", ".yml", ".json"):
            try:
                data = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ValueError(f"principles file {source}: not YAML or JSON: {exc}") from None
            entries = data.get("principles", []) if isinstance(data, dict) else data
        else:
            entries = [ln.strip() for ln in raw.splitlines() if ln.strip()]
            entries = [e for e in entries if not e.startswith("#")]
    else:
        entries = list(source)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"principles source {source!r} holds no principles")
    return tuple(_entry(i, e) for i, e in enumerate(entries, 1))


def _entry(i: int, entry: Any) -> Principle:
    if isinstance(entry, str):
        return Principle(f"p{i}", entry)
    if isinstance(entry, dict) and isinstance(entry.get("text"), str):
        return Principle(
            id=str(entry.get("id", f"p{i}")),
            text=entry["text"],
            tags=tuple(str(t) for t in entry.get("tags", ())),
            hard=bool(entry.get("hard", False)),
            core=bool(entry.get("core", False)),
        )
    raise ValueError(f"principle #{i} must be a string or a mapping with 'text', got {entry!r}")


class PrincipleIndex:
    """Principles with their embeddings, for relevance retrieval."""

    def __init__(self, principles: Sequence[Principle]) -> None:
        self._embedder = HashingEmbedder()
        self.principles = tuple(principles)
        self._vectors = [
            self._embedder.embed_one(f"{p.text} {' '.join(p.tags)}") for p in self.principles
        ]

    def relevant(self, query: str, k: int) -> list[tuple[Principle, float]]:
        """Core principles plus the `k` most similar others, best first."""
        q, nonzero = self._embedder.embed_sparse(query)
        scores = cosines(q, nonzero, self._vectors)
        lowered = query.lower()
        boosted = [
            (p, s + (0.2 if any(t in lowered for t in p.tags) else 0.0))
            for p, s in zip(self.principles, scores, strict=True)
        ]
        core = [(p, s) for p, s in boosted if p.core]
        others = sorted((x for x in boosted if not x[0].core), key=lambda x: -x[1])
        return core + others[:k]
