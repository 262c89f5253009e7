"""How long a simulated call takes: time to first token, prefill, decode, and correlated tails.

A call's latency is

    (ttft + prefill_ms_per_1k * input_tokens / 1000 + output_tokens * 1000 / tokens_per_s)
        * request_slowness * minute_slowness * call_jitter

- `call_jitter` ~ log-normal(0, `CALL_SIGMA`): fresh for every attempt, so a retry never
  replays the draw that made the first attempt slow.
- `request_slowness`: one draw per request and run seed, shared by every call the request
  makes (long contexts, a cold cache on the provider's side, a routing to a busy replica).
  Log-normal(0, `REQUEST_SIGMA`), and for `REQUEST_TAIL_RATE` of requests a further
  `REQUEST_TAIL` factor: the tail that makes p99 several times p50 ("The Tail at Scale",
  Dean and Barroso 2013; public API latency dashboards show p99/p50 of 3-5x).
- `minute_slowness`: one draw per profile, run seed and minute of the clock: for
  `SLOW_MINUTE_RATE` of the minutes a provider is slow for everyone (a "slow provider
  minute": every call started in it is `SLOW_MINUTE` times slower). Concurrent calls to the
  same model therefore share their bad luck, as they do on a real shared endpoint. The
  rate is of the order of the degraded-performance minutes on public status pages
  (status.openai.com lists several partial-degradation incidents a month).

Everything is a pure function of its arguments and a seeded generator, so the embedded
provider and `moat sim-server` compute the same latency for the same call and start time.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from statistics import NormalDist

__all__ = [
    "CALL_SIGMA",
    "REQUEST_SIGMA",
    "REQUEST_TAIL",
    "REQUEST_TAIL_RATE",
    "SLOW_MINUTE",
    "SLOW_MINUTE_RATE",
    "call_latency_ms",
    "minute_slowness",
    "request_slowness",
]

CALL_SIGMA = 0.2
"""Spread of one attempt's own jitter (log-normal sigma): token-to-token speed varies by
10-20 % between calls of the same size on one endpoint (the min/max t/s of repeated runs
in public speed tests)."""
REQUEST_SIGMA = 0.25
"""Spread of the per-request slowness shared by the request's calls."""
REQUEST_TAIL_RATE = 0.03
"""Share of requests whose calls all land in the tail."""
REQUEST_TAIL = (2.0, 4.0)
"""How much slower (uniform range) a tail request's calls are."""
SLOW_MINUTE_RATE = 0.05
"""Share of a provider's minutes that are slow for every call started in them."""
SLOW_MINUTE = (1.5, 3.0)
"""How much slower (uniform range) a slow minute is."""
_NORMAL = NormalDist()


def _unit(what: str, seed: str, *parts: object) -> float:
    """A deterministic draw in (0, 1) from the text of the tuple `(what, seed, *parts)`,
    `seed` given as its repr."""
    text = ", ".join([repr(what), seed, *map(repr, parts)])
    digest = hashlib.blake2b(f"({text})".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def request_slowness(seed: object, request_id: str) -> float:
    """The factor every call of one request shares (see the module docstring)."""
    return _request_slowness(repr(seed), request_id)


@functools.lru_cache(maxsize=1024)
def _request_slowness(seed: str, request_id: str) -> float:
    """`request_slowness` by the repr of the seed (a seed equal to another of another
    type, `1.0` and `1`, is another seed): every call of a request asks for the same
    one, so those of the latest requests are kept."""
    factor = math.exp(REQUEST_SIGMA * _NORMAL.inv_cdf(_unit("request-slow", seed, request_id)))
    if _unit("request-tail", seed, request_id) < REQUEST_TAIL_RATE:
        lo, hi = REQUEST_TAIL
        factor *= lo + (hi - lo) * _unit("request-tail-size", seed, request_id)
    return factor


def minute_slowness(seed: object, profile: str, clock_s: float) -> float:
    """The factor every call to `profile` started in the clock's current minute shares."""
    return _minute_slowness(repr(seed), profile, math.floor(clock_s / 60.0))


@functools.lru_cache(maxsize=256)
def _minute_slowness(seed: str, profile: str, minute: int) -> float:
    """`minute_slowness` by the repr of the seed and the minute: every call started in a
    minute asks for the same one."""
    if _unit("slow-minute", seed, profile, minute) >= SLOW_MINUTE_RATE:
        return 1.0
    lo, hi = SLOW_MINUTE
    return lo + (hi - lo) * _unit("slow-minute-size", seed, profile, minute)


def call_latency_ms(
    *,
    ttft_ms: float,
    prefill_ms_per_1k: float,
    tokens_per_s: float,
    input_tokens: int,
    output_tokens: int,
    shared: float,
    rng: random.Random,
) -> tuple[float, float]:
    """(latency, time to first token) in ms of one attempt; `shared` is the product of the
    request's and the minute's slowness, `rng` the attempt's own generator."""
    jitter = rng.lognormvariate(0.0, CALL_SIGMA) * shared
    first = (ttft_ms + prefill_ms_per_1k * input_tokens / 1000.0) * jitter
    decode = output_tokens * 1000.0 / tokens_per_s * jitter
    return round(first + decode, 3), round(first, 3)
