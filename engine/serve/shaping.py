"""Traffic shaping: a per-tenant rate and concurrency limit, and a global in-flight cap.

A tenant over its rate or its concurrency gets a 429 at once, with `Retry-After`; the
server as a whole admits at most `max_inflight` requests and lets at most `max_queue` more
wait for a slot (backpressure), refusing the rest with a 503 rather than queueing without
bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from cachetools import LRUCache

from engine.serve.wire import ApiError

__all__ = ["MAX_BUCKETS", "Shaper", "ShapingLimits"]

MAX_BUCKETS = 100_000
"""Tenants whose rate is tracked at once (the most recent)."""


@dataclass(frozen=True, slots=True)
class ShapingLimits:
    """The server's limits (`moat serve --rate --burst --tenant-concurrency ...`)."""

    rate: float | None = None
    """Requests per second per tenant (a token bucket); None: no rate limit."""
    burst: int = 10
    """Requests a tenant may send at once above its rate (the bucket's size)."""
    tenant_concurrency: int = 64
    """Requests of one tenant in flight at most."""
    max_inflight: int = 256
    """Requests in flight at most, over all tenants."""
    max_queue: int = 256
    """Requests waiting for an in-flight slot at most; more are refused with a 503."""


class _Bucket:
    """A token bucket: `rate` tokens a second, at most `size` kept."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, size: float, stamp: float) -> None:
        self.tokens = size
        self.stamp = stamp


class Shaper:
    """Admits requests under the limits, or raises the 429/503 `ApiError`."""

    def __init__(self, limits: ShapingLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        # the tenant may be any `user` on an open server: keep the recent buckets only
        # (a forgotten one comes back full, as an idle tenant's would be)
        self._buckets: LRUCache[str, _Bucket] = LRUCache(maxsize=MAX_BUCKETS)
        self._active: dict[str, int] = {}
        self._slots = anyio.Semaphore(max(1, limits.max_inflight))
        self._waiting = 0

    def _take_token(self, tenant: str) -> None:
        rate = self.limits.rate
        if rate is None:
            return
        size = float(max(1, self.limits.burst))
        stamp = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(size, stamp)
        bucket.tokens = min(size, bucket.tokens + (stamp - bucket.stamp) * rate)
        bucket.stamp = stamp
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / rate)
            raise ApiError(
                429,
                f"tenant {tenant!r} is over its rate of {rate:g} requests/s; retry in {wait} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        bucket.tokens -= 1.0

    def _enter_tenant(self, tenant: str) -> None:
        active = self._active.get(tenant, 0)
        if active >= self.limits.tenant_concurrency:
            raise ApiError(
                429,
                f"tenant {tenant!r} has {active} requests in flight, its limit; retry when "
                "one finishes",
                type="rate_limit_error",
                code="concurrency_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self._active[tenant] = active + 1

    def _leave_tenant(self, tenant: str) -> None:
        left = self._active[tenant] - 1
        if left:
            self._active[tenant] = left
        else:
            del self._active[tenant]

    def active(self, tenant: str) -> int:
        """The tenant's requests in flight now."""
        return self._active.get(tenant, 0)

    @property
    def in_flight(self) -> int:
        """Requests admitted and not finished, over all tenants."""
        return sum(self._active.values()) - self._waiting

    @property
    def waiting(self) -> int:
        """Requests waiting for an in-flight slot now."""
        return self._waiting

    @asynccontextmanager
    async def admit(self, tenant: str) -> AsyncIterator[None]:
        """Hold a tenant slot and a global in-flight slot while the request runs."""
        self._take_token(tenant)
        self._enter_tenant(tenant)
        try:
            await self._global_slot()
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._leave_tenant(tenant)

    async def _global_slot(self) -> None:
        try:
            self._slots.acquire_nowait()
            return
        except anyio.WouldBlock:
            pass
        if self._waiting >= self.limits.max_queue:
            raise ApiError(
                503,
                f"the server has {self.limits.max_inflight} requests in flight and "
                f"{self._waiting} waiting, its limits; retry shortly",
                type="server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
