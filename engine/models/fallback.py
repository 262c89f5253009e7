"""Offline fallback: when a remote model may not or cannot be reached, its `fallback:` answers.

Two moments decide it. Before a call to a remote model, `EdgeGuard.held_back` reads the
pinned policy's `egress:` section (`engine.policy.signals`): `offline: true`, a gate whose
signal is out of bounds (battery, uplink bandwidth, metered link), or a connectivity probe
that fails hold the call back. During the call, an open circuit breaker or a connection
that cannot be made (`ConnectFailed`: nothing was sent, so nothing is billed) mean the
endpoint is unreachable. Either way, a model with a `fallback:` hands the call to it (at
once: retrying an unreachable endpoint only adds latency), records `MODEL_FALLBACK` with the
reason code and marks the request degraded; a remote model without one is refused
(`EgressBlocked`) when held back, and fails as before when unreachable.

Readings of file and command signals, and probe results, are kept for their `every_s`, so
the check costs a dictionary lookup per call; environment variables are read every time.
The blocking reads run on a worker thread, one per source at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
import anyio.to_thread

from engine.errors import CircuitOpen, EgressBlocked
from engine.events import EventType
from engine.models.base import ConnectFailed
from engine.policy.signals import (
    EgressSettings,
    Gate,
    Probe,
    egress_settings,
    read_signal,
    run_probe,
)

__all__ = [
    "EdgeGuard",
    "FallbackReason",
    "HeldBack",
    "announce_fallback",
    "refuse_held",
    "unreachable_reason",
]


class FallbackReason(StrEnum):
    """Why a fallback answered (the `MODEL_FALLBACK` event's reason code)."""

    POLICY_OFFLINE = "POLICY_OFFLINE"
    """The policy's `egress.offline` is true."""
    SIGNAL_GATE = "SIGNAL_GATE"
    """A gate's signal (battery, bandwidth, ...) was out of bounds."""
    PROBE_FAILED = "PROBE_FAILED"
    """The connectivity probe failed."""
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    """The remote model's circuit breaker was open."""
    CONNECT_FAILED = "CONNECT_FAILED"
    """No connection to the remote endpoint could be made."""


@dataclass(frozen=True, slots=True)
class HeldBack:
    """A call the policy holds back from a remote model, and the details for its event."""

    reason: FallbackReason
    detail: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """Words for error messages: `gate 'battery' (reading 12 < min 20)`."""
        if self.reason is FallbackReason.POLICY_OFFLINE:
            return "the policy sets `egress.offline: true`"
        if self.reason is FallbackReason.PROBE_FAILED:
            return f"the connectivity probe failed ({self.detail.get('probe')})"
        d = self.detail
        bounds = " ".join(f"{k} {d[k]:g}" for k in ("min", "max") if d.get(k) is not None)
        reading = "unreadable" if d.get("reading") is None else f"{d['reading']:g}"
        return f"gate '{d.get('gate')}' is closed (reading {reading}; allowed: {bounds})"


def unreachable_reason(exc: BaseException) -> FallbackReason | None:
    """The fallback reason an error of a remote call stands for, or None if it is not one
    that means the endpoint is unreachable."""
    if isinstance(exc, CircuitOpen):
        return FallbackReason.CIRCUIT_OPEN
    if isinstance(exc, ConnectFailed):
        return FallbackReason.CONNECT_FAILED
    return None


def announce_fallback(
    emit: Callable[..., int],
    degrade: Callable[[str], None],
    model: str,
    fallback: str,
    reason: FallbackReason,
    detail: Mapping[str, Any],
) -> None:
    """Record `MODEL_FALLBACK` for the node and mark its request degraded."""
    emit(
        EventType.MODEL_FALLBACK,
        decision="fallback",
        reason_codes=(reason.value,),
        payload={"model": model, "fallback": fallback, **detail},
    )
    degrade(reason.value)


def refuse_held(emit: Callable[..., int], node_id: str, model: str, held: HeldBack) -> None:
    """A remote model without a fallback, held back by the policy: record it and refuse.

    Raises:
        EgressBlocked: always.
    """
    emit(
        EventType.EGRESS_BLOCKED,
        decision="blocked",
        reason_codes=(held.reason.value,),
        payload={"component": "gateway", "model": model, **held.detail},
    )
    raise EgressBlocked(
        f"node '{node_id}': model '{model}' is remote and {held.describe()}; give it a "
        "`fallback:` model under `models:`, or change the policy's `egress:` section"
    )


class EdgeGuard:
    """Decides, per call, whether the pinned policy holds remote calls back."""

    def __init__(self) -> None:
        self._settings: dict[int, tuple[object, EgressSettings]] = {}
        self._readings: dict[tuple[Any, ...], tuple[float, float | None]] = {}
        self._probes: dict[tuple[Any, ...], tuple[float, bool]] = {}
        self._locks: dict[tuple[Any, ...], anyio.Lock] = {}

    def settings(self, policy: Mapping[str, Any]) -> EgressSettings:
        """The policy's `egress:` settings, parsed once per snapshot body."""
        raw = policy.get("egress")
        cached = self._settings.get(id(raw))
        if cached is not None and cached[0] is raw:
            return cached[1]
        parsed = egress_settings(policy)
        if raw is not None:
            self._settings[id(raw)] = (raw, parsed)
        return parsed

    async def held_back(self, policy: Mapping[str, Any]) -> HeldBack | None:
        """Why remote calls are held back under `policy` right now, or None if they may go."""
        settings = self.settings(policy)
        if settings.offline:
            return HeldBack(FallbackReason.POLICY_OFFLINE)
        for name, gate in sorted(settings.gates.items()):
            reading = await self._reading(gate)
            if not gate.allows(reading):
                detail = {"gate": name, "reading": reading, "min": gate.min, "max": gate.max}
                return HeldBack(FallbackReason.SIGNAL_GATE, detail)
        if settings.probe is not None and not await self._probe(settings.probe):
            target = settings.probe.tcp or " ".join(settings.probe.command or ())
            return HeldBack(FallbackReason.PROBE_FAILED, {"probe": target})
        return None

    async def _reading(self, gate: Gate) -> float | None:
        if gate.env is not None:
            return read_signal(gate)  # an environment lookup: always current
        key = ("signal", gate.file, tuple(gate.command or ()))
        kept = self._readings.get(key)
        if kept is not None and anyio.current_time() - kept[0] < gate.every_s:
            return kept[1]
        async with self._lock(key):
            kept = self._readings.get(key)
            if kept is not None and anyio.current_time() - kept[0] < gate.every_s:
                return kept[1]
            value = await anyio.to_thread.run_sync(read_signal, gate)
            self._readings[key] = (anyio.current_time(), value)
            return value

    async def _probe(self, probe: Probe) -> bool:
        key = ("probe", probe.tcp, tuple(probe.command or ()))
        kept = self._probes.get(key)
        if kept is not None and anyio.current_time() - kept[0] < probe.every_s:
            return kept[1]
        async with self._lock(key):
            kept = self._probes.get(key)
            if kept is not None and anyio.current_time() - kept[0] < probe.every_s:
                return kept[1]
            online = await anyio.to_thread.run_sync(run_probe, probe)
            self._probes[key] = (anyio.current_time(), online)
            return online

    def _lock(self, key: tuple[Any, ...]) -> anyio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        return lock
