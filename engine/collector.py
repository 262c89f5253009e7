"""The heap of a process that answers requests for a long time: what the garbage
collector walks, and the freed memory it keeps.

`moat run` and `moat serve` collect once their graphs are open, then freeze what is alive
(`gc.freeze`): those objects live as long as the process, and a full collection that walks
them is a pause for every request in flight. What a graph's first request would import
has to be alive by then too: the `openai` provider's modules (the SDK, its types, aiohttp)
are ~90,000 tracked objects, and imported on the first request they stayed in the
collected heap, where each full collection walked them (~70 ms of CPU per full
collection in a profile of `moat serve` under load, bench/RESULTS.md).

The young generation is also let grow to 20,000 objects rather than 700. Every collection
walks the young objects still alive, and such a process's live set is its requests in
flight (thousands of objects at 100 concurrent requests), so at 700 it walked them again
every few hundred allocations and promoted them, for a full collection later; cycles are
freed as surely, later. An application that embeds `Pipeline` in a long-lived process can
enter `settled_heap` the same way, once its pipelines are open.

Freed memory: such a process's resident memory grew with the requests it answered and did
not fall when the load stopped, yet it was not live: neither Python objects
(`tracemalloc`) nor pymalloc's arenas. It is what glibc's allocator keeps on its free lists
after bursts of allocations from several threads (the event loop, the store writer, the
threads that wait for commits; a semantic cache that evicts as it fills leaves holes among
live chunks): glibc gives back only the top of its heap by itself, never free pages below
live chunks. `trimmer()` returns the call that releases them (`malloc_trim(0)`); `moat
serve` and `Pipeline.run_batch` make it off the event loop at each heartbeat, a few
milliseconds of one thread per call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import anyio

from engine.graph.spec import ModelSpec

__all__ = ["THRESHOLDS", "import_providers", "settled_heap", "trim_every", "trimmer"]

THRESHOLDS = (20_000, 10, 10)
"""The collector's thresholds once the heap is settled (see the module docstring)."""


def import_providers(specs: Iterable[ModelSpec]) -> None:
    """Import the modules the providers of `specs` will need on their first call."""
    if any(spec.provider == "openai" for spec in specs):
        importlib.import_module("engine.models.openai_provider")
        if importlib.util.find_spec("httptools") is not None:
            importlib.import_module("engine.models._direct_http")


@contextmanager
def settled_heap(specs: Iterable[ModelSpec] = ()) -> Iterator[None]:
    """Import what the providers of `specs` need, collect, freeze what is alive and raise
    the young generation's threshold (`THRESHOLDS`); on exit, unfreeze and restore the
    thresholds (a process that goes on, such as a test session, gets its collector back
    as it was). Enter it once the graphs are open."""
    import_providers(specs)
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@functools.cache
def trimmer() -> Callable[[], None] | None:
    """The function that gives free heap pages back (glibc's `malloc_trim(0)`), or None
    where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def run() -> None:
        trim(0)

    return run


async def trim_every(interval_s: float, trim: Callable[[], None] | None) -> None:
    """Call `trim` (what `trimmer()` gives) every `interval_s` in a worker thread until
    cancelled; return at once when there is none."""
    if trim is None:
        return
    while True:
        await anyio.sleep(interval_s)
        await anyio.to_thread.run_sync(trim)
