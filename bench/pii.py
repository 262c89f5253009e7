"""Recall and false positives of the PII detector on the seeded multi-locale corpus.

Run: python -m bench.pii [--per-kind N] [--prose N]. The corpus generator is the one the
tests use (tests/support/pii_corpus.py): values of many locales inside varied sentences,
and number-heavy prose that holds no personal data. The rules and the corpus were written
together, so the figures say what the rules cover, not real-world recall.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from engine.pii import detect
from tests.support.pii_corpus import labelled_corpus, ordinary_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=5000)
    parser.add_argument("--prose", type=int, default=50_000)
    args = parser.parse_args()
    started = time.perf_counter()
    totals: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for text, kind, value in labelled_corpus(args.per_kind, seed=7):
        totals[kind] += 1
        start = text.index(value)
        spans = detect(text)
        hits[kind] += any(
            s.kind == kind and s.start == start and s.end == start + len(value) for s in spans
        )
    flagged = sum(1 for text in ordinary_corpus(args.prose, seed=11) if detect(text))
    print("| kind | values | recall |\n|---|---|---|")
    for kind in sorted(totals):
        print(f"| {kind} | {totals[kind]} | {hits[kind] / totals[kind]:.4f} |")
    print(f"\nfalse positives: {flagged} of {args.prose} sentences ({flagged / args.prose:.4%})")
    print(f"took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
