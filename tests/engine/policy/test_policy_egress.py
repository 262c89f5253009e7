"""The policy's `egress:` section is checked when a policy is applied: located errors naming
the setting, the choices and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import PolicyError
from engine.policy.signals import Gate, SignalSource, check_egress_section, read_signal
from engine.policy.validate import load_policy_file, validate_policy


def _apply(tmp_path: Path, text: str) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    _, body, located = load_policy_file(path)
    validate_policy(body, located, previous=None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: edge\negress:\n  ofline: true\n",
            r"edge.yaml:3:3: unknown setting `egress.ofline` \(did you mean 'offline'\?\); "
            r"settings: allow_unredacted, gates, offline, probe, redact",
        ),
        (
            "name: edge\negress:\n  gates:\n    battery: {env: BATTERY, mni: 20}\n",
            r"edge.yaml:4:29: unknown setting `egress.gates.battery.mni` \(did you mean 'min'",
        ),
        (
            "name: edge\negress:\n  gates:\n    battery: {env: BATTERY}\n",
            r"edge.yaml:4:14: `egress.gates.battery`: a gate needs `min`, `max` or both",
        ),
        (
            "name: edge\negress:\n  gates:\n    battery: {env: B, file: /x, min: 1}\n",
            r"give exactly one of `file`, `env`, `command` \(got file, env\)",
        ),
        (
            "name: edge\negress:\n  probe: {tcp: 'no port here'}\n",
            r"edge.yaml:3:\d+: `egress.probe.tcp`: String should match pattern",
        ),
        ("name: edge\negress: offline\n", r"`egress:` must be a mapping"),
    ],
)
def test_a_malformed_egress_section_is_refused_where_it_is_wrong(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        _apply(tmp_path, text)


def test_a_well_formed_egress_section_passes(tmp_path: Path) -> None:
    _apply(
        tmp_path,
        "name: edge\negress:\n  redact: true\n  offline: false\n"
        "  gates:\n    battery: {file: /sys/class/power_supply/BAT0/capacity, min: 20}\n"
        "  probe: {tcp: 'api.openai.com:443', every_s: 30}\n",
    )
    assert check_egress_section({"name": "x"}) is None


def test_a_signal_is_the_first_number_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLINK", "  512.5 kbps")
    assert read_signal(SignalSource(env="UPLINK")) == 512.5
    monkeypatch.setenv("UPLINK", "down")
    assert read_signal(SignalSource(env="UPLINK")) is None
    assert read_signal(SignalSource(command=["false"])) is None
    assert Gate(env="UPLINK", max=0).allows(0)
