"""The fault profiles the bench runs simulated models under (`python -m bench --faults`).

A real provider answers some calls with a 429 (with `Retry-After`), some with a 5xx, and
lets a few hang until the client gives up; it also caps how many calls run at once. The
default profile puts every benchmarked configuration under the same such weather, so
retries, backoff and timeouts cost what they cost in production:

| profile | 429    | 5xx    | hang   | per-model concurrency | call timeout |
|---------|--------|--------|--------|-----------------------|--------------|
| none    | 0      | 0      | 0      | unlimited             | none         |
| default | 2 %    | 0.5 %  | 0.2 %  | 128                   | 10 s         |
| heavy   | 10 %   | 3 %    | 1 %    | 64                    | 10 s         |

The default rates are of the order public status pages and API gateways report for the
large hosted providers on an ordinary day (error rates of a fraction of a percent, 429s of
a few percent for a busy tenant near its limits); they are not fitted to any graph. A hang
lasts 30 simulated seconds (`engine.models.sim.TIMEOUT_HANG_S`), so the call timeout cuts
it and the gateway retries it. The concurrency limit is a per-model, per-configuration
stand-in for a provider's rate limits: calls beyond it wait in the gateway for a slot, and
that wait is part of the request's latency. Only `sim` models are given faults; a real
endpoint brings its own.

`--faults rate_limit=0.05,error=0.01,timeout=0.005,concurrency=32,timeout_s=5` sets each
figure by hand (unnamed ones keep the default profile's value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from engine.graph.spec import FaultRates, ModelSpec

__all__ = ["PROFILES", "FaultProfile", "apply_faults", "parse_faults"]


@dataclass(frozen=True, slots=True)
class FaultProfile:
    """The weather simulated models run in."""

    name: str
    rate_limit: float = 0.0
    error: float = 0.0
    timeout: float = 0.0
    concurrency: int | None = None
    timeout_s: float | None = None

    def describe(self) -> str:
        """One line for reports."""
        if self.name == "none":
            return "no injected faults, no concurrency limit"
        limit = (
            f"at most {self.concurrency} calls in flight per model"
            if self.concurrency
            else ("no concurrency limit")
        )
        cut = f"call timeout {self.timeout_s:g} s" if self.timeout_s else "no call timeout"
        return (
            f"faults `{self.name}`: {self.rate_limit:.1%} 429 (Retry-After 0.5 s), "
            f"{self.error:.1%} 5xx, {self.timeout:.1%} hangs; {limit}; {cut}"
        )


PROFILES: Mapping[str, FaultProfile] = {
    "none": FaultProfile("none"),
    "default": FaultProfile("default", 0.02, 0.005, 0.002, 128, 10.0),
    "heavy": FaultProfile("heavy", 0.10, 0.03, 0.01, 64, 10.0),
}
"""The named profiles (see the module docstring)."""

_FIELDS = {"rate_limit": float, "error": float, "timeout": float, "concurrency": int,
           "timeout_s": float}  # fmt: skip


def parse_faults(text: str) -> FaultProfile:
    """A named profile, or `key=value,...` over the default one.

    Raises:
        ValueError: an unknown name or key, or a value out of range.
    """
    text = text.strip()
    if text in PROFILES:
        return PROFILES[text]
    if "=" not in text:
        raise ValueError(
            f"--faults: unknown profile {text!r}; use {', '.join(PROFILES)} or key=value,... "
            f"with keys {', '.join(_FIELDS)}"
        )
    profile = replace(PROFILES["default"], name="custom")
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        key = key.strip()
        kind = _FIELDS.get(key)
        if kind is None:
            raise ValueError(f"--faults: unknown key {key!r}; keys: {', '.join(_FIELDS)}")
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"--faults: {key} needs a number, got {value!r}") from None
        if not 0 <= number < math.inf or (kind is float and key != "timeout_s" and number > 1):
            raise ValueError(f"--faults: {key}={value} is out of range")
        unlimited = key in ("concurrency", "timeout_s") and number == 0
        profile = replace(profile, **{key: None if unlimited else number})
    return profile


def apply_faults(models: Mapping[str, ModelSpec], profile: FaultProfile) -> dict[str, ModelSpec]:
    """`models` with every `sim` model put under `profile` (other providers unchanged)."""
    out: dict[str, ModelSpec] = {}
    for name, spec in models.items():
        if spec.provider != "sim" or profile.name == "none":
            out[name] = spec
            continue
        rates = FaultRates(
            rate_limit=profile.rate_limit,
            error=profile.error,
            timeout=profile.timeout,
            malformed=spec.faults.malformed if spec.faults is not None else None,
        )
        out[name] = spec.model_copy(
            update={
                "faults": rates,
                "max_concurrency": profile.concurrency or spec.max_concurrency,
                "timeout_s": profile.timeout_s or spec.timeout_s,
            }
        )
    return out
