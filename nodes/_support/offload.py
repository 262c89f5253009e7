"""Keeps CPU-heavy text work off the event loop: inline for small texts, a thread for large.

Redacting or templating a 60 KB prompt takes tens of milliseconds even with linear-time
patterns; on the event loop that stalls every other request of the process. Work on a text
longer than `INLINE_MAX_CHARS` runs in a worker thread; shorter texts stay inline, where a
thread hop would cost more than the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

__all__ = ["INLINE_MAX_CHARS", "off_loop"]

T = TypeVar("T")

INLINE_MAX_CHARS = 4096
"""Texts up to this length are processed inline (well under a millisecond of work)."""


async def off_loop(text: str, fn: Callable[[str], T]) -> T:
    """`fn(text)`, in a worker thread when `text` is long. `fn` must not touch shared state."""
    if len(text) <= INLINE_MAX_CHARS:
        return fn(text)
    return await anyio.to_thread.run_sync(fn, text)
