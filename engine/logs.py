"""Logging: engine loggers that write only where the caller configured, prompts only as hashes.

The engine is a library, so it configures nothing global and writes nothing by itself:
every engine logger (`get_logger`) is a structlog logger whose lines end in the standard
`logging` logger of the same name (under `moat`, which carries only a `NullHandler`). An
application sees them by configuring `logging` (or structlog's processors) as it likes; the
`moat` CLI calls `configure_logging`, which writes JSON lines to stderr or `$MOAT_LOG`.

A line that carries a `notice` field is also meant for the person running the command
(a store being converted, say): where `configure_logging` writes to stderr it appears there
as `moat: note: NOTICE`, in the words of the CLI's other messages, rather than as JSON;
where it writes to a file, the file gets the JSON line and stderr the note.

Loggers are bound with `run_id`, `request_id` and `node` where they are known. Any field
named like a prompt or response (`prompt`, `messages`, `response`, `text`, ...) is replaced
by its sha256 prefix before any processor sees it, so raw text never reaches a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from engine.errors import printable

__all__ = [
    "announce",
    "configure_logging",
    "get_logger",
    "hash_text",
    "log_thread_failure",
    "redact_fields",
]

_ROOT = "moat"
_TEXT_FIELDS = frozenset(
    {"prompt", "messages", "response", "text", "completion", "system", "draft", "answer"}
)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The library convention: a NullHandler keeps Python's last-resort handler from printing
# moat's warnings when the application configured no logging at all.
logging.getLogger(_ROOT).addHandler(logging.NullHandler())


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


def _json_processors(notices: Processor | None = None) -> list[Processor]:
    return [
        *([notices] if notices is not None else []),
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_fields,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(sort_keys=True),
    ]


def _notices_on_stderr(*, only: bool) -> Processor:
    """A structlog processor writing the `notice` of a line to stderr as the CLI's other
    messages are written (`moat: note: ...`); with `only`, the line goes no further (its
    JSON would land on the same stderr)."""

    def note(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        text = event.get("notice")
        if text is None:
            return event
        with contextlib.suppress(OSError, ValueError):  # (a closed stderr)
            print(f"moat: note: {printable(str(text))}", file=sys.stderr, flush=True)
        if only:
            raise structlog.DropEvent
        return event

    return note


_UNCONFIGURED = _json_processors()
"""Used while structlog is unconfigured, instead of its console renderer (colours, no
redaction): what an application that configured only `logging` receives."""


class _EngineLogger(structlog.BoundLoggerBase):
    """A bound logger that asks the stdlib logger first whether anyone listens, so a
    library run pays nothing for lines nobody configured, and redacts before processing."""

    _logger: logging.Logger

    def _log(self, method: str, event: str | None, kw: dict[str, Any]) -> Any:
        if not self._logger.isEnabledFor(_LEVELS[method]):
            return None
        redact_fields(None, method, kw)
        if method == "exception":
            kw.setdefault("exc_info", True)
            method = "error"
        return self._proxy_to_logger(method, event, **kw)

    def _process_event(
        self, method_name: str, event: str | None, event_kw: dict[str, Any]
    ) -> tuple[Any, ...] | tuple[tuple[Any, ...], Mapping[str, Any]]:
        if not structlog.is_configured():
            self._processors = _UNCONFIGURED
        return super()._process_event(method_name, event, event_kw)

    def debug(self, event: str | None = None, **kw: Any) -> Any:
        """Log at debug level."""
        return self._log("debug", event, kw)

    def info(self, event: str | None = None, **kw: Any) -> Any:
        """Log at info level."""
        return self._log("info", event, kw)

    def warning(self, event: str | None = None, **kw: Any) -> Any:
        """Log at warning level."""
        return self._log("warning", event, kw)

    warn = warning

    def error(self, event: str | None = None, **kw: Any) -> Any:
        """Log at error level."""
        return self._log("error", event, kw)

    def exception(self, event: str | None = None, **kw: Any) -> Any:
        """Log at error level with the current exception."""
        return self._log("exception", event, kw)

    def critical(self, event: str | None = None, **kw: Any) -> Any:
        """Log at critical level."""
        return self._log("critical", event, kw)


def get_logger(name: str) -> Any:
    """The structlog logger engine code logs through; `name` is under `moat.` (`moat.node`).

    Its lines go to the standard `logging` logger `name` (rendered as JSON unless the
    application configured structlog's processors), so nothing is written unless the
    application (or the CLI, through `configure_logging`) set up a handler.
    """
    return structlog.wrap_logger(logging.getLogger(name), wrapper_class=_EngineLogger)


class _Stderr:
    """Writes to whatever `sys.stderr` is at the time of each write (not at configuration)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_handler: logging.Handler | None = None
"""The handler `configure_logging` installed, replaced on the next call."""


def configure_logging(
    path: str | None = None, *, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Send moat's log lines to stderr or a file, as JSON; for the CLI and applications
    that want moat's own format. Calling it again replaces the previous destination.

    Lines with a `notice` field are written to stderr as `moat: note: NOTICE` (see the
    module docstring), unless `stream` is given.

    Args:
        path: append JSON lines to this file (default: `$MOAT_LOG`, else stderr).
        level: minimum level name (default: `$MOAT_LOG_LEVEL` or `warning`).
        stream: write to this stream instead of a file (tests).
    """
    global _handler
    target = path or os.environ.get("MOAT_LOG")
    handler: logging.Handler
    if stream is not None:
        handler = logging.StreamHandler(stream)
    elif target:
        handler = logging.FileHandler(target, encoding="utf-8")
    else:
        handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(logging.Formatter("%(message)s"))
    name = (level or os.environ.get("MOAT_LOG_LEVEL") or "warning").lower()
    root = logging.getLogger(_ROOT)
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = handler
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(name, logging.WARNING))
    root.propagate = False  # the CLI's lines are JSON on their own; no second copy
    # Code that calls `structlog.get_logger` itself (a plugin) lands in the same place.
    notices = None if stream is not None else _notices_on_stderr(only=not target)
    structlog.configure(
        processors=_json_processors(notices),
        logger_factory=lambda *_: logging.getLogger(_ROOT),
        wrapper_class=structlog.make_filtering_bound_logger(root.level),
        cache_logger_on_first_use=False,
    )


def log_thread_failure(args: threading.ExceptHookArgs) -> None:
    """`threading.excepthook` for the CLI: a thread that dies of an exception (a plugin's
    own thread that outlived its node, say) becomes one `thread.failed` log line naming
    the thread, not a traceback on stderr; `MOAT_DEBUG=1` prints the traceback too."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    get_logger("moat.threads").error(
        "thread.failed",
        thread=name,
        error=f"{args.exc_type.__name__}: {args.exc_value}",
        fix="a node's own thread raised after moat stopped waiting for it; catch errors in "
        "the thread, or set MOAT_DEBUG=1 for the traceback",
    )
    if os.environ.get("MOAT_DEBUG"):
        traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)


def announce(address: str, banner: str) -> None:
    """What a server prints once it listens: `address` alone on stdout (scripts read that
    line), then `banner` on stderr.

    A server does not need its stdout: a reader that took the address and closed the pipe
    (`moat sim-server --port 0 | head -1`) does not stop it; stdout goes to the null device
    from then on, so what is still buffered cannot fail again at exit.
    """
    try:
        print(address, flush=True)
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
    with contextlib.suppress(OSError):
        print(banner, file=sys.stderr, flush=True)
