"""The trace id of a request: shared by the span builder and the hub without either
importing the other (the hub must not load OpenTelemetry until tracing is on)."""

from __future__ import annotations

import hashlib

__all__ = ["trace_id_of"]


def trace_id_of(request_id: str) -> int:
    """The trace id moat gives request `request_id` (when no caller's trace is continued):
    the first 128 bits of its SHA-256, as a number (`format(id, "032x")` for the hex)."""
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:16], "big") or 1
