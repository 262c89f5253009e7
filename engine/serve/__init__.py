"""`moat serve`: graphs behind an OpenAI-compatible HTTP endpoint (Starlette + uvicorn).

Importing this package needs the `serve` extra (`pip install 'moat[serve]'`); the rest of
the engine never imports it.
"""

from __future__ import annotations

from engine.serve.app import MoatServer
from engine.serve.auth import KeyRing, hash_key, keys_from_env, load_keys
from engine.serve.shaping import ShapingLimits
from engine.serve.wire import ApiError

__all__ = [
    "ApiError",
    "KeyRing",
    "MoatServer",
    "ShapingLimits",
    "hash_key",
    "keys_from_env",
    "load_keys",
]
