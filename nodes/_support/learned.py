"""A small learned routing model: per-model logistic regressions on request-time text features.

The `router` node's `weights:` option loads one of these. For each logical model it holds
a logistic regression predicting the chance that the model's answer checks out, from
features the router can compute before any model is called: the dense signals of
`nodes._support.features` and a hashed bag of words and word pairs (`BUCKETS` buckets).
Weights are stored int8-quantized with one float scale per model, as JSON: a few
kilobytes, read with the standard library only, evaluated in plain Python (a dot product
of ~150 terms per model, microseconds). `python -m bench.router_train` fits and writes
them from recorded runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from engine import read_text_file
from nodes._support.features import features

__all__ = [
    "BUCKETS",
    "BUILTIN",
    "DENSE",
    "LearnedRouter",
    "dequantize",
    "load_router",
    "quantize_int8",
    "vector",
]

BUCKETS = 128
"""Hashed word and word-pair buckets: enough to tell request templates apart, small enough
that the shipped file stays a few kilobytes."""
DENSE = (
    "bias_one", "log_words", "lines", "list_items", "reasoning", "factual", "code",
    "steps", "questions", "complexity", "digits", "quotes",
)  # fmt: skip
"""Names of the dense features, in vector order (the hashed buckets follow)."""
BUILTIN = "builtin"
"""The `weights:` value that loads the shipped model (`nodes/_support/router_weights.json`)."""

_WORD = re.compile(r"[a-z][a-z'-]+|\d+")


def _bucket(token: str) -> int:
    digest = hashlib.blake2b(token.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def vector(text: str) -> list[float]:
    """The feature vector of `text`: `DENSE` then `BUCKETS` hashed word/pair indicators."""
    f = features(text)
    dense = [
        1.0,
        math.log1p(f.words) / 6.0,
        min(f.lines, 20) / 20.0,
        min(f.list_items, 10) / 10.0,
        float(f.reasoning),
        float(f.factual),
        float(f.code),
        min(f.steps, 5) / 5.0,
        min(f.questions, 5) / 5.0,
        f.complexity,
        min(sum(c.isdigit() for c in text), 20) / 20.0,
        float('"' in text),
    ]
    hashed = [0.0] * BUCKETS
    tokens = _WORD.findall(text.lower())[:200]
    for token in tokens:
        hashed[_bucket(token)] = 1.0
    for a, b in itertools.pairwise(tokens):
        hashed[_bucket(f"{a} {b}")] = 1.0
    return dense + hashed


def quantize_int8(weights: Sequence[float]) -> tuple[float, list[int]]:
    """Symmetric int8 quantization: (scale, q) with `w ~ scale * q`, q in [-127, 127]."""
    peak = max((abs(w) for w in weights), default=0.0)
    scale = peak / 127.0
    if scale == 0.0:  # all zeros, or so small (subnormal) that a step underflows: all zeros
        return 1.0, [0] * len(weights)
    return scale, [max(-127, min(127, round(w / scale))) for w in weights]


def dequantize(scale: float, q: Sequence[int]) -> list[float]:
    """The weights an int8 vector stands for."""
    return [scale * x for x in q]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


@dataclass(frozen=True, slots=True)
class LearnedRouter:
    """Per-model weights (dequantized) and what they were trained on."""

    weights: Mapping[str, tuple[float, ...]]
    meta: Mapping[str, Any]

    def predict(self, text: str) -> dict[str, float]:
        """Each model's predicted chance that its answer to `text` checks out."""
        x = vector(text)
        return {
            model: _sigmoid(sum(w * v for w, v in zip(ws, x, strict=True)))
            for model, ws in self.weights.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> LearnedRouter:
        """Read the file format `bench.router_train` writes; ValueError names what is wrong."""
        expected = len(DENSE) + BUCKETS
        if data.get("format") != "moat-router/1":
            raise ValueError(f"{where}: not a router weights file (format moat-router/1)")
        models = data.get("models")
        if not isinstance(models, Mapping) or not models:
            raise ValueError(f"{where}: `models` must map model names to weights")
        weights: dict[str, tuple[float, ...]] = {}
        for name, entry in models.items():
            q = entry.get("q") if isinstance(entry, Mapping) else None
            scale = entry.get("scale") if isinstance(entry, Mapping) else None
            if not isinstance(q, list) or len(q) != expected or not isinstance(scale, float | int):
                raise ValueError(
                    f"{where}: model {name!r} needs `scale` and {expected} int8 values in `q`"
                )
            if any(not isinstance(v, int) or not -128 <= v <= 127 for v in q):
                raise ValueError(f"{where}: model {name!r} has a value outside int8 in `q`")
            weights[str(name)] = tuple(dequantize(float(scale), q))
        return cls(weights, {k: v for k, v in data.items() if k != "models"})


_CACHE: dict[str, LearnedRouter] = {}


def load_router(source: str | Path) -> LearnedRouter:
    """The router model at `source` (a path, or `builtin`), read once per process."""
    key = str(source)
    if key in _CACHE:
        return _CACHE[key]
    if key == BUILTIN:
        text = resources.files("nodes._support").joinpath("router_weights.json").read_text()
    else:
        text = read_text_file(key, "router weights file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{key}: not JSON ({exc.msg} at line {exc.lineno})") from None
    router = LearnedRouter.from_json(data, key)
    _CACHE[key] = router
    return router
