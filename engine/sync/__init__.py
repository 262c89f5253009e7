"""Deferred sync of an edge store to a central one (`moat sync`, `moat sync-server`).

The wire format (codec.py), the bandwidth cap (bucket.py), the uploading side (client.py)
and the receiving side (server.py, which needs the `serve` extra and is imported only by
`engine/cli/sync.py`). The SQL of both sides lives in `engine/store/sync_ops.py`.
"""

from __future__ import annotations

from engine.sync.bucket import TokenBucket
from engine.sync.client import EdgeSync, SyncReport
from engine.sync.codec import WireError, available_codecs, decode_batch, encode_batch

__all__ = [
    "EdgeSync",
    "SyncReport",
    "TokenBucket",
    "WireError",
    "available_codecs",
    "decode_batch",
    "encode_batch",
]
