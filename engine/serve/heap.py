"""Giving freed heap memory back to the system while a server runs.

A server's resident memory grew with the requests it answered (about 0.1-1.3 KiB a
request over tens of thousands) and did not fall when the load stopped, yet it was not
live memory: neither Python objects (`tracemalloc`) nor pymalloc's arenas, and glibc's
`malloc_trim` handed all of it back at once. It is memory glibc's allocator keeps on its
free lists after a burst of allocations from several threads (the event loop, the store
writer, the worker threads that wait for commits): glibc returns only the top of a heap
by itself, never free pages below live chunks. `trim` asks for those pages to be
released; the server calls it off the event loop every few seconds, which costs a few
milliseconds of one thread per call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

__all__ = ["trimmer"]


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
