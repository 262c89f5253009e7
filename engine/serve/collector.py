"""What the garbage collector walks while a server runs: as little of the startup heap as can be.

A server collects, then freezes what is alive once its graphs are open (`gc.freeze`,
`engine.serve.listen`): those objects live as long as the server, and a full collection
that walks them is a pause for every request in flight. What a graph's first request
would import has to be alive by then too: the `openai` provider's modules (the SDK, its
types, aiohttp) are ~90,000 tracked objects, and imported on the first request they
stayed in the collected heap, where each full collection walked them (~70 ms of CPU per
full collection in a profile of `moat serve` under load, bench/RESULTS.md).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable

from engine.graph.spec import ModelSpec

__all__ = ["import_providers"]


def import_providers(specs: Iterable[ModelSpec]) -> None:
    """Import the modules the providers of `specs` will need on their first call."""
    if any(spec.provider == "openai" for spec in specs):
        importlib.import_module("engine.models.openai_provider")
        if importlib.util.find_spec("aiohttp") is not None:
            importlib.import_module("engine.models._direct_http")
