"""moat beyond one machine, on Ray: cluster batches (`moat run --ray`) and Ray Serve
(`moat serve --ray`). Needs the `ray` extra (`pip install 'moat[ray]'`).

Nothing here imports Ray when imported: `require_ray` does, when a cluster is asked for,
so the local path never loads it (architecture: Layers; docs/scaling.md).
"""

from __future__ import annotations

from engine.cluster._ray import INSTALL_HINT, cluster_cpus, connect, parse_address, require_ray
from engine.cluster.driver import ClusterPipeline, WorkersLost

__all__ = [
    "INSTALL_HINT",
    "ClusterPipeline",
    "WorkersLost",
    "cluster_cpus",
    "connect",
    "parse_address",
    "require_ray",
]
