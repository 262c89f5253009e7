"""Copies of the shipped graphs whose simulated models run 50x faster (for CLI tests)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "graphs"


def fast_copy(name: str, dest: Path, *, time_scale: float = 0.02) -> Path:
    """Write `graphs/NAME.yaml` to `dest` with every sim model's latency scaled down."""
    text = (GRAPHS / f"{name}.yaml").read_text()
    text = re.sub(
        r"\{provider: sim, profile: (\w+)\}",
        rf"{{provider: sim, profile: \1, time_scale: {time_scale}}}",
        text,
    )
    text = text.replace("policy: ../policies/", f"policy: {ROOT / 'policies'}/")
    path = dest / f"{name}.yaml"
    path.write_text(text)
    return path
