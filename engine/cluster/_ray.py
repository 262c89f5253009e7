"""Importing and connecting Ray: the one place that says how to install it when it is missing.

Ray is an optional extra (`pip install 'moat[ray]'`): nothing outside `engine.cluster`
imports it, and `engine.cluster` imports it only through `require_ray`, so a local run never
loads it (a test checks `sys.modules`).

An address is checked before Ray is asked to join it: its form when the arguments are read
(`parse_address`), then whether anything answers there (`connect`), since Ray itself retries
a head node that is not there for minutes before it gives up.
"""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

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
        SpecError: the value is a file (the graph, caught by an optional `--ray ADDRESS`),
            a web URL, or not of a form Ray joins (`auto`, HOST:PORT, ray://HOST[:PORT]).
    """
    if value == LOCAL:
        return None
    if value.endswith((".yaml", ".yml", ".jsonl")) or os.path.isfile(value):
        raise SpecError(
            f"--ray {value}: that is a file, not a cluster address; put --ray after the "
            "graph and --input, or write --ray=ADDRESS (`auto`, HOST:PORT, ray://HOST:10001)"
        )
    scheme, sep, _ = value.partition("://")
    if scheme.lower() in ("http", "https") and sep:
        raise SpecError(
            f"--ray {value}: that is a web URL (the dashboard's, for `ray job submit`), not "
            "the address a driver joins; give HOST:6379 (the head node's GCS port) or "
            "ray://HOST:10001 (Ray Client)"
        )
    if value != "auto" and (not sep or scheme == "ray") and _endpoint(value) is None:
        raise SpecError(
            f"--ray {value!r}: not a Ray cluster address; give `auto` (the cluster of this "
            "environment), HOST:PORT (the head node's GCS port, 6379 by default), "
            "ray://HOST:10001 (Ray Client), or --ray alone for a local instance"
        )
    return value


_CLIENT_PORT = 10001
"""Ray Client's port when a `ray://HOST` address names none."""
_PROBE_S = 5.0
"""How long `connect` waits for a head node to accept a connection."""


def _endpoint(address: str) -> tuple[str, int] | None:
    """The host and port `address` names (`HOST:PORT`, `[IPv6]:PORT`, `ray://HOST[:PORT]`),
    or None when it is not an address of that form."""
    scheme, sep, _ = address.partition("://")
    if sep and scheme != "ray":
        return None
    try:
        parts = urlsplit(address if sep else f"ray://{address}")
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    host = parts.hostname
    if not host or any(c.isspace() for c in address) or parts.path.strip("/"):
        return None
    if port is None:
        return (host, _CLIENT_PORT) if sep else None
    return (host, port) if port > 0 else None


def _check_reachable(address: str | None) -> None:
    """Refuse an address nothing answers at (`auto`: `RAY_ADDRESS`'s, when it is set)
    before Ray tries it: Ray retries a missing head node for minutes.

    Raises:
        SpecError: naming the address, why it cannot be reached and the fix.
    """
    named, probed = f"--ray {address}", address
    if address == "auto" and os.environ.get("RAY_ADDRESS", "").strip():
        probed = os.environ["RAY_ADDRESS"].strip()
        named = f"--ray auto: RAY_ADDRESS={probed}"
    why = None if probed is None or probed == "auto" else _unreachable(probed)
    if why is not None:
        raise SpecError(
            f"{named}: cannot reach a Ray cluster there: {why}. Start the head node "
            "(`ray start --head`) or give the address of a running one (HOST:6379, "
            "ray://HOST:10001), `auto` inside a cluster, or no address for a local instance"
        )


def _unreachable(address: str) -> str | None:
    """Why nothing at `address` can be a head node (None: something accepts connections)."""
    found = _endpoint(address)
    if found is None:
        return None  # `auto`, or a scheme Ray's client builders know: Ray decides
    host, port = found
    try:
        with socket.create_connection((host, port), timeout=_PROBE_S):
            return None
    except socket.gaierror:
        return f"no host is named {host}"
    except ConnectionRefusedError:
        return f"nothing listens on port {port} of {host} (connection refused)"
    except TimeoutError:
        return f"{host}:{port} did not answer within {_PROBE_S:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


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
    _check_reachable(address)
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "WARNING",
        "configure_logging": True,
    }
    if address is None:  # a new instance even where RAY_ADDRESS names a cluster
        options["address"] = LOCAL
        options["num_cpus"] = num_cpus or os.cpu_count() or 1
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SpecError(
            f"--ray{f' {address}' if address else ''}: cannot start or join {where}: {exc}. "
            "Give the address "
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
