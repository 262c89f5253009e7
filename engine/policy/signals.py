"""The policy's `egress:` section, and the signals that gate remote calls on an edge box.

An edge box decides per call whether text may leave for a remote model at all:

```yaml
egress:
  redact: true                 # redact personal data before it leaves (engine/models/_egress.py)
  offline: false               # true: no remote calls; models with a `fallback:` use it
  gates:                       # no remote calls while a signal is out of bounds
    battery: {file: /sys/class/power_supply/BAT0/capacity, min: 20}
    uplink_kbps: {env: MOAT_UPLINK_KBPS, min: 64}
    metered: {command: [/usr/local/bin/is-metered], max: 0, every_s: 60}
  probe: {tcp: "api.openai.com:443", every_s: 30, timeout_s: 2}
```

A signal is a number read from a file (its first word), an environment variable, or the
first word a command prints (a command that fails or prints no number gives no reading). A
reading is kept `every_s` seconds, so a gate costs nothing per call. A signal that cannot be
read is *unknown*: by default the gate lets calls through (`unknown: allow`; a box without
a battery is not on low battery), or holds them (`unknown: block`). The probe checks the
uplink itself: a TCP connection to `host:port`, or a command that must exit 0.

`egress_settings` validates the section when a policy is applied (located errors, exit 2);
the gateway's `engine.models.fallback` reads the signals at run time.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import subprocess
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.expr.wording import bools_read_as_numbers

__all__ = [
    "EgressSettings",
    "Gate",
    "Probe",
    "SignalSource",
    "check_egress_section",
    "egress_settings",
    "read_signal",
    "run_probe",
]

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignalSource(_Strict):
    """Where a number comes from: exactly one of `file`, `env`, `command`."""

    file: str | None = None
    """A file whose first word is the number (`/sys/class/power_supply/BAT0/capacity`)."""
    env: str | None = None
    """An environment variable holding the number."""
    command: list[str] | None = Field(default=None, min_length=1)
    """A command (argv, no shell) whose output's first number is the reading."""
    every_s: float = Field(default=10.0, ge=0)
    """How long a reading is kept before the source is read again."""
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    """How long a command may take (then: no reading)."""

    @model_validator(mode="after")
    def _one_source(self) -> SignalSource:
        given = [k for k in ("file", "env", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of `file`, `env`, `command` (got {', '.join(given) or 'none'})"
            )
        return self


class Gate(SignalSource):
    """Remote calls pass only while the signal is within `[min, max]`."""

    min: float | None = None
    """The lowest reading at which remote calls pass (battery percent, uplink kbps)."""
    max: float | None = None
    """The highest reading at which remote calls pass (cost per MB, temperature)."""
    unknown: Literal["allow", "block"] = "allow"
    """What an unreadable signal means."""

    @model_validator(mode="after")
    def _bounded(self) -> Gate:
        if self.min is None and self.max is None:
            raise ValueError("a gate needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"`min` ({self.min:g}) is above `max` ({self.max:g})")
        return self

    def allows(self, reading: float | None) -> bool:
        """Whether a call may go out at this reading."""
        if reading is None:
            return self.unknown == "allow"
        if self.min is not None and reading < self.min:
            return False
        return self.max is None or reading <= self.max


class Probe(_Strict):
    """A connectivity check: exactly one of `tcp` (`host:port`) or `command` (exit 0)."""

    tcp: str | None = Field(default=None, pattern=r"^\[?[\w.:-]+\]?:\d{1,5}$")
    """Open a TCP connection to `host:port`."""
    command: list[str] | None = Field(default=None, min_length=1)
    """Run a command (argv, no shell); exit status 0 means online."""
    every_s: float = Field(default=30.0, ge=0)
    """How long a result is kept."""
    timeout_s: float = Field(default=2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _one_way(self) -> Probe:
        if (self.tcp is None) == (self.command is None):
            raise ValueError("give exactly one of `tcp` or `command`")
        return self


class EgressSettings(_Strict):
    """The policy's `egress:` section."""

    redact: bool = False
    """Redact personal data in prompts bound for remote models."""
    allow_unredacted: bool = True
    """False: a remote call whose prompt holds personal data is blocked."""
    offline: bool = False
    """No remote calls at all; models with a `fallback:` answer from it."""
    gates: dict[str, Gate] = Field(default_factory=dict)
    """Named signals that must be within bounds for remote calls."""
    probe: Probe | None = None
    """A connectivity check that must pass for remote calls."""


def egress_settings(policy: Mapping[str, Any]) -> EgressSettings:
    """The `egress:` settings of a policy body (defaults where it has none).

    Raises:
        ValidationError: the section is malformed (`check_egress_section` words it).
    """
    raw = policy.get("egress")
    return EgressSettings.model_validate(dict(raw)) if isinstance(raw, Mapping) else _DEFAULT


_DEFAULT = EgressSettings()


def check_egress_section(body: Mapping[str, Any]) -> tuple[tuple[str | int, ...], str] | None:
    """None if `egress:` is absent or well formed; else where it is wrong and why."""
    if "egress" not in body:
        return None
    raw = body["egress"]
    if not isinstance(raw, Mapping):
        return ("egress",), "`egress:` must be a mapping such as `{redact: true, offline: false}`"
    errors: list[Any]
    try:
        made = EgressSettings.model_validate(dict(raw))
    except ValidationError as exc:
        errors = exc.errors()
    else:  # `min: true` would pass as 1.0
        errors = [err for _, err in bools_read_as_numbers(raw, made)]
    for err in errors[:1]:
        loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
        where = ".".join(str(p) for p in ("egress", *loc))
        if err["type"] == "extra_forbidden":
            settings = _settings_at(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), settings, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            listed = ", ".join(settings)
            return ("egress", *loc), f"unknown setting `{where}`{hint}; settings: {listed}"
        return ("egress", *loc), f"`{where}`: {err['msg'].removeprefix('Value error, ')}"
    return None


def _settings_at(loc: tuple[str | int, ...]) -> list[str]:
    if not loc:
        return sorted(EgressSettings.model_fields)
    if loc[0] == "probe":
        return sorted(Probe.model_fields)
    return sorted(Gate.model_fields)


def read_signal(source: SignalSource) -> float | None:
    """The source's current number, or None when it cannot be read (blocking: a file read
    or a short subprocess; callers off the event loop)."""
    try:
        if source.file is not None:
            with open(source.file, encoding="utf-8", errors="replace") as fh:
                text = fh.read(4096)
        elif source.env is not None:
            text = os.environ.get(source.env, "")
        else:
            assert source.command is not None
            done = subprocess.run(
                source.command,
                capture_output=True,
                text=True,
                timeout=source.timeout_s,
                check=False,
            )
            if done.returncode != 0:
                return None
            text = done.stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _NUMBER.search(text)
    return float(match.group()) if match else None


def run_probe(probe: Probe) -> bool:
    """Whether the uplink answers the probe now (blocking; callers off the event loop)."""
    try:
        if probe.tcp is not None:
            host, _, port = probe.tcp.rpartition(":")
            with socket.create_connection((host.strip("[]"), int(port)), probe.timeout_s):
                return True
        assert probe.command is not None
        done = subprocess.run(
            probe.command, capture_output=True, timeout=probe.timeout_s, check=False
        )
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError, ValueError):
        return False
