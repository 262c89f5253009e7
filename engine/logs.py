"""Logging: structlog configured once, JSON lines to a file or stderr, prompts only as hashes.

Loggers are bound with `run_id`, `request_id` and `node` where they are known. Any field
named like a prompt or response (`prompt`, `messages`, `response`, `text`, ...) is replaced
by its sha256 prefix before it is written, so raw text never reaches a log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "hash_text", "redact_fields"]

_TEXT_FIELDS = frozenset(
    {"prompt", "messages", "response", "text", "completion", "system", "draft", "answer"}
)


def hash_text(text: str) -> str:
    """A short stable fingerprint of `text` (`sha256:` + 16 hex digits)."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]


def redact_fields(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor replacing prompt and response text by its hash."""
    for key in _TEXT_FIELDS & event.keys():
        value = event[key]
        if value is not None and not (isinstance(value, str) and value.startswith("sha256:")):
            event[key] = hash_text(value if isinstance(value, str) else repr(value))
    return event


class _Stderr:
    """Writes to whatever `sys.stderr` is at the time of each write (not at configuration)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    path: str | None = None, *, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog once per process.

    Args:
        path: append JSON lines to this file (default: `$MOAT_LOG`, else stderr).
        level: minimum level name (default: `$MOAT_LOG_LEVEL` or `warning`).
        stream: write to this stream instead of a file (tests).
    """
    target = path or os.environ.get("MOAT_LOG")
    out: Any = stream or (open(target, "a", encoding="utf-8") if target else _Stderr())  # noqa: SIM115
    name = (level or os.environ.get("MOAT_LOG_LEVEL") or "warning").upper()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_fields,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(name, logging.WARNING)
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
