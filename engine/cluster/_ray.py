"""Importing and connecting Ray: the one place that says how to install it when it is missing.

Ray is an optional extra (`pip install 'moat[ray]'`): nothing outside `engine.cluster`
imports it, and `engine.cluster` imports it only through `require_ray`, so a local run never
loads it (a test checks `sys.modules`).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from engine.errors import SpecError

__all__ = [
    "INSTALL_HINT",
    "LOCAL",
    "WORKERS_PER_CPU",
    "cluster_cpus",
    "connect",
    "parse_address",
    "require_ray",
]

INSTALL_HINT = "pip install 'moat[ray]'"
LOCAL = "local"
"""`--ray` given without an address: start a local instance."""


def parse_address(value: str) -> str | None:
    """The cluster address of `--ray [ADDRESS]` (None: a local instance).

    Raises:
        SpecError: the value is a file (the graph, caught by an optional `--ray ADDRESS`).
    """
    if value == LOCAL:
        return None
    if value.endswith((".yaml", ".yml", ".jsonl")) or os.path.isfile(value):
        raise SpecError(
            f"--ray {value}: that is a file, not a cluster address; put --ray after the "
            "graph and --input, or write --ray=ADDRESS (`auto`, HOST:PORT, ray://HOST:10001)"
        )
    return value


def require_ray(feature: str = "--ray") -> ModuleType:
    """The `ray` module.

    Raises:
        SpecError: Ray (or Ray Serve, for `serve`) is not installed; says how to install it.
    """
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise SpecError(
            f"{feature}: Ray is not installed; install it with: {INSTALL_HINT}"
        ) from exc


def connect(address: str | None, *, num_cpus: int | None = None) -> ModuleType:
    """Join the Ray cluster at `address` (`auto`: the environment's), or start a local
    instance without a dashboard when `address` is None; a Ray already connected in this
    process (a test fixture, a notebook) is used as it is.

    Raises:
        SpecError: Ray is missing, or the cluster cannot be reached.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "WARNING",
        "configure_logging": True,
    }
    if address is None:
        options["num_cpus"] = num_cpus or os.cpu_count() or 1
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SpecError(
            f"--ray {address or ''}: cannot start or join {where}: {exc}. Give the address "
            "of a running head node (ray://HOST:10001, HOST:6379), `auto` inside a cluster, "
            "or no address for a local instance"
        ) from exc
    return ray


WORKERS_PER_CPU = 16
"""Most worker actors (or Serve replicas) a cluster CPU is asked to host: each is a Python
process of its own, holding the graph, its models and a cache. `--workers 100000` once
asked Ray for that many processes."""


def cluster_cpus() -> int:
    """CPUs the connected cluster offers (the default number of workers), at least 1."""
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
