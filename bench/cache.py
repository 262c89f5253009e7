"""Benchmark of the semantic cache: lookup latency by size, hit and false-hit rates on paraphrases.

Usage:
    python bench/cache.py [--sizes 10000 100000] [--lookups 3000] [--seed 1] [--json]

Latency: one tenant is filled with N generated prompts (templated questions over a few
thousand words, with numbers, ids and names), then a mix of lookups (a third exact
repeats, a third paraphrases, a third new prompts) is timed one by one, in wall-clock and
in thread CPU time (CPU time is immune to preemption on a busy machine).

Quality: a generated paraphrase set of base questions and rewrites (other function words,
politeness, case and punctuation, dropped or added fillers). `hit_rate` is the share of
paraphrases answered with their base's value; `false_hit_rate` is the share of near-miss
negatives (same wording with another entity or number, or another question on the same
topic) answered at all, by threshold.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._metrics import percentile
from nodes._support.semcache import SemanticCache

TOPICS = [
    "password", "invoice", "refund", "subscription", "shipping", "account", "printer",
    "router", "database", "backup", "vpn", "calendar", "payroll", "mortgage", "visa",
    "passport", "insurance", "warranty", "firmware", "license",
]  # fmt: skip
ACTIONS = [
    "reset", "cancel", "renew", "update", "export", "delete", "transfer", "upgrade",
    "configure", "restore", "download", "verify", "change", "share", "track",
]  # fmt: skip
CITIES = ["Paris", "Berlin", "Madrid", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Dublin"]
OPENERS = [
    ("How do I", ["How can I", "What's the way to", "how do i", "How should I"]),
    ("What is the best way to", ["What's the best way to", "Which is the best way to"]),
    ("Can you help me", ["Could you help me", "Please help me", "Can you please help me"]),
]
FILLERS = ["", " please", " quickly", " today", " for my team"]


def _vocab(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(4, 9))) for _ in range(n)]


def _filler_prompt(rng: random.Random, vocab: list[str], i: int) -> str:
    opener = rng.choice(OPENERS)[0]
    words = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 8)))
    tail = rng.choice(["", f" for order {rng.randint(1, 99999)}", f" in {rng.choice(CITIES)}"])
    return f"{opener} {rng.choice(ACTIONS)} the {rng.choice(TOPICS)} {words}{tail}? #{i % 7}"


def latency(size: int, lookups: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    vocab = _vocab(rng, 5000)
    cache = SemanticCache("bench")
    prompts = [_filler_prompt(rng, vocab, i) for i in range(size)]
    t0 = time.perf_counter()
    for p in prompts:
        cache.store("tenant", p, "v", max_entries=size + 1, max_bytes=1 << 40)
    fill_s = time.perf_counter() - t0
    queries = []
    for _ in range(lookups):
        kind = rng.randrange(3)
        base = rng.choice(prompts)
        if kind == 0:
            queries.append(base)
        elif kind == 1:
            queries.append(base.replace("How do I", "How can I").rstrip("?") + " please")
        else:
            queries.append(_filler_prompt(rng, vocab, rng.randint(0, 10**6)))
    wall, cpu, hits = [], [], 0
    for q in queries:
        w0, c0 = time.perf_counter(), time.thread_time()
        found = cache.lookup("tenant", q, threshold=0.9)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
        hits += found.entry is not None
    return {
        "entries": size,
        "lookups": lookups,
        "fill_us_per_store": round(fill_s / size * 1e6, 1),
        "wall_p50_us": round(_pct(wall, 50) * 1e6, 1),
        "wall_p99_us": round(_pct(wall, 99) * 1e6, 1),
        "cpu_p50_us": round(_pct(cpu, 50) * 1e6, 1),
        "cpu_p99_us": round(_pct(cpu, 99) * 1e6, 1),
        "hit_share": round(hits / lookups, 3),
    }


def _pct(values: list[float], p: int) -> float:
    return percentile(values, p)


def paraphrase_set(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Base questions with paraphrases and near-miss negatives."""
    items = []
    for i in range(n):
        opener, variants = rng.choice(OPENERS)
        action, topic = rng.choice(ACTIONS), rng.choice(TOPICS)
        city = rng.choice(CITIES)
        number = rng.randint(100, 9999)
        base = f"{opener} {action} my {topic} in {city} for account {number}?"
        paraphrases = [
            f"{rng.choice(variants)} {action} my {topic} in {city} for account {number}?",
            f"{opener} {action} my {topic} in {city} for account {number}{rng.choice(FILLERS)}",
            f"{opener.lower()} {action} my {topic} in {city} for account {number}",
            f"{opener} {action} the {topic} in {city} for account {number}?",
        ]
        other_city = rng.choice([c for c in CITIES if c != city])
        other_action = rng.choice([a for a in ACTIONS if a != action])
        negatives = [
            f"{opener} {action} my {topic} in {other_city} for account {number}?",
            f"{opener} {action} my {topic} in {city} for account {number + 1}?",
            f"{opener} {other_action} my {topic} in {city} for account {number}?",
        ]
        items.append({"id": i, "base": base, "paraphrases": paraphrases, "negatives": negatives})
    return items


def quality(thresholds: list[float], n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items = paraphrase_set(rng, n)
    out = []
    for threshold in thresholds:
        cache = SemanticCache("quality")
        for item in items:
            cache.store("t", item["base"], item["id"])
        good = bad = total_p = total_n = wrong = 0
        for item in items:
            for p in item["paraphrases"]:
                found = cache.lookup("t", p, threshold=threshold)
                total_p += 1
                if found.entry is not None and found.entry.value == item["id"]:
                    good += 1
                elif found.entry is not None:
                    wrong += 1
            for q in item["negatives"]:
                total_n += 1
                bad += cache.lookup("t", q, threshold=threshold).entry is not None
        out.append(
            {
                "threshold": threshold,
                "paraphrases": total_p,
                "negatives": total_n,
                "hit_rate": round(good / total_p, 4),
                "wrong_value_rate": round(wrong / total_p, 4),
                "false_hit_rate": round(bad / total_n, 4),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--lookups", type=int, default=3000)
    parser.add_argument("--pairs", type=int, default=500, help="base questions in the quality set")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.85, 0.9, 0.95])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    gc.collect()
    result = {
        "python": sys.version.split()[0],
        "latency": [latency(size, args.lookups, args.seed) for size in args.sizes],
        "quality": quality(args.thresholds, args.pairs, args.seed),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for row in result["latency"]:
        print(
            f"{row['entries']:>7} entries: lookup p50 {row['wall_p50_us']} us, "
            f"p99 {row['wall_p99_us']} us (cpu p50 {row['cpu_p50_us']}, p99 {row['cpu_p99_us']}), "
            f"store {row['fill_us_per_store']} us"
        )
    for row in result["quality"]:
        print(
            f"threshold {row['threshold']}: hit rate {row['hit_rate']}, "
            f"false hits {row['false_hit_rate']}, wrong values {row['wrong_value_rate']}"
        )


if __name__ == "__main__":
    main()
