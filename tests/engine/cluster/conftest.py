"""A local Ray instance per test module (`num_cpus=2`, no dashboard), and small graphs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]

# Ray warns about its own internals (deprecations, resource leaks at shutdown): not ours.
RAY_WARNINGS = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """Start one local Ray instance for the module; its GCS address, for subprocesses."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


def flagship(dest: Path, time_scale: float = 0.0) -> Path:
    """The flagship graph with its simulated models' latency scaled by `time_scale`."""
    text = (ROOT / "graphs" / "governed-answer.yaml").read_text()
    text = re.sub(
        r"\{provider: sim, profile: (\w+)\}",
        rf"{{provider: sim, profile: \1, time_scale: {time_scale}}}",
        text,
    )
    text = text.replace("policy: ../policies/", f"policy: {ROOT / 'policies'}/")
    path = dest / "governed-answer.yaml"
    path.write_text(text)
    return path


def prompts(n: int) -> list[dict[str, Any]]:
    """`n` distinct requests over five tenants."""
    topics = ["invoices", "passwords", "exports", "refunds", "shipping", "accounts", "reports"]
    return [
        {"prompt": f"How do I manage {topics[i % 7]} for team {i}?", "tenant": f"t{i % 5}"}
        for i in range(n)
    ]
