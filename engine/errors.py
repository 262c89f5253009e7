"""The exceptions moat raises, all rooted at `MoatError`.

```
MoatError
├── SpecError (ValueError)            a graph, policy or request file is unusable
│   ├── ExpressionError               an expression that does not parse or check
│   └── PluginError (ImportError)     a `plugins:` module or entry point that fails to load
├── PolicyError (ValueError)          a policy snapshot refused on apply or rollback
├── PolicyReadOnly (TypeError)        code tried to change a pinned policy snapshot
├── DuplicateRequest (ValueError)     a request id (run and seq) that was answered already
├── StoreError (RuntimeError)         the SQLite store is unreadable or of a newer schema
│   └── RequestNotFinished            a request its run has not answered (yet)
├── NodeError (RuntimeError)          a node failed while running a request
│   ├── NodeTimeout (TimeoutError)    an attempt ran past the node's `timeout_ms`
│   └── TransientError                worth retrying: rate limits, 5xx, dropped connections
│       └── RateLimited               the provider said 429, maybe with Retry-After
├── BudgetExceeded (RuntimeError)     a model call would exceed the request's `cost_usd`
├── CircuitOpen (RuntimeError)        a model's circuit breaker refuses calls for now
├── EgressBlocked (PermissionError)   text would leave for a remote provider unredacted
├── EvaluationError (RuntimeError)    an expression failed at run time (bad types, bounds)
└── SyncError (RuntimeError)          `moat sync`: the central side refused or stayed away
```

Every error builds its own message from its fields, so the message always says where
(`FILE:LINE:COL`, node id) and, where it can, how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "BudgetExceeded",
    "CircuitOpen",
    "DuplicateRequest",
    "EgressBlocked",
    "EvaluationError",
    "ExpressionError",
    "MoatError",
    "NodeError",
    "NodeTimeout",
    "PluginError",
    "PolicyError",
    "PolicyReadOnly",
    "RateLimited",
    "RequestNotFinished",
    "SpecError",
    "StoreError",
    "SyncError",
    "TransientError",
    "exception_text",
    "printable",
    "shown",
]


class MoatError(Exception):
    """Base class of every error moat raises on purpose."""


class SpecError(MoatError, ValueError):
    """A graph (or other input file) is unusable; the message is located and actionable.

    Args:
        message: what is wrong and how to fix it, without the location prefix.
        path: the file, as the user named it.
        line: 1-based line, if known.
        column: 1-based column, if known.
        node_id: the node the mistake belongs to, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
        node_id: str | None = None,
    ) -> None:
        self.reason = message
        self.path = path
        self.line = line
        self.column = column
        self.node_id = node_id
        super().__init__(self._format())

    def _format(self) -> str:
        where = ":".join(
            str(part) for part in (self.path, self.line, self.column) if part is not None
        )
        node = f"node '{self.node_id}': " if self.node_id else ""
        return f"{where}: {node}{self.reason}" if where else f"{node}{self.reason}"


class ExpressionError(SpecError):
    """An expression that does not parse, uses forbidden syntax or names something unknown.

    Args:
        message: what is wrong, naming the expression (for a reader who sees nothing else).
        problem: what is wrong without naming the expression, for a message that names
            it already (`in expression '...': `); the message when not given.
        column: 1-based column within the expression, if known.
    """

    def __init__(self, message: str, *, problem: str | None = None, column: int | None = None):
        self.problem = message if problem is None else problem
        super().__init__(message, column=column)


class PluginError(SpecError, ImportError):
    """A plugin module (from `plugins:` or an entry point) could not be imported."""


class PolicyError(MoatError, ValueError):
    """A policy snapshot was refused; nothing changed.

    Args:
        message: what is wrong and how to fix it.
        path: the policy file, if the snapshot came from one.
        line: 1-based line, if known.
        column: 1-based column, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.reason = message
        self.path = path
        self.line = line
        self.column = column
        where = ":".join(str(p) for p in (path, line, column) if p is not None)
        super().__init__(f"{where}: {message}" if where else message)


class PolicyReadOnly(MoatError, TypeError):
    """Code tried to change a pinned policy snapshot (`ctx.policy`, `PolicyPin.body`).

    A snapshot is shared by every request pinned to its version and is what the store
    recorded for it, so it is read-only all the way down.

    Args:
        key: where in the snapshot, dotted (`thresholds.low`; empty for the top level).
        operation: what was tried, naming where (`append to policy.routes`).
    """

    def __init__(self, key: str, operation: str) -> None:
        self.key = key
        self.operation = operation
        super().__init__(
            f"cannot {operation}: the pinned policy snapshot is read-only (every request "
            "pinned to its version shares it, and the store recorded it as it is). Work on "
            "a copy (`dict(...)`, `list(...)`, `copy.deepcopy(...)`), or change the policy "
            "with `moat policy apply`"
        )


class DuplicateRequest(MoatError, ValueError):
    """A request whose id (run and `seq`) was answered already; it was not answered again.

    Args:
        run_id: the run.
        seq: the request's number in the run.
        request_id: the id the two requests would share.
        source: where the duplicate came from (`FILE:LINE`), if known.
        others: the seqs of more duplicates (of the same batch), if any.
    """

    def __init__(
        self,
        run_id: str,
        seq: int,
        request_id: str,
        source: str = "",
        *,
        others: Sequence[int] = (),
    ) -> None:
        self.run_id = run_id
        self.seq = seq
        self.request_id = request_id
        self.source = source
        self.others = tuple(others)
        where = f"{source}: " if source else ""
        more = ""
        if self.others:
            shown = ", ".join(str(s) for s in self.others[:10])
            tail = ", ..." if len(self.others) > 10 else ""
            more = f"; so were {len(self.others)} more of the batch (seq {shown}{tail})"
        super().__init__(
            f"{where}request {request_id} (run {run_id}, seq {seq}) was answered already, "
            f"and request ids are unique, so it was not answered again{more}. Give each "
            "request of a run its own seq, or answer it under another run"
        )


class StoreError(MoatError, RuntimeError):
    """The store cannot be opened, migrated or read."""


class RequestNotFinished(StoreError):
    """A request of a known run that has no stored result: in flight or waiting its turn
    while the run is running, or left unanswered by a run that stopped.

    Args:
        path: the store file.
        request_id: the request.
        run_id: its run.
        standing: where the request stands, without the path (`Summary.note`).
    """

    def __init__(self, path: object, request_id: str, run_id: str, standing: str) -> None:
        self.path = path
        self.request_id = request_id
        self.run_id = run_id
        self.standing = standing
        super().__init__(f"{path}: {standing}")


class NodeError(MoatError, RuntimeError):
    """A node failed while running a request.

    Args:
        message: what went wrong.
        node_id: the failing node.
        request_id: the request it failed in, if known.
    """

    def __init__(
        self, message: str, *, node_id: str | None = None, request_id: str | None = None
    ) -> None:
        self.reason = message
        self.node_id = node_id
        self.request_id = request_id
        prefix = f"node '{node_id}': " if node_id else ""
        super().__init__(f"{prefix}{message}")


class NodeTimeout(NodeError, TimeoutError):
    """One attempt of a node ran longer than its `timeout_ms`."""


class TransientError(NodeError):
    """A failure worth retrying (rate limit, server error, dropped connection, timeout).

    Args:
        message: what went wrong.
        retry_after_s: how long the endpoint asked to wait before a retry (its
            `Retry-After`), if it said.
        node_id: the failing node.
        request_id: the request it failed in, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        node_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, node_id=node_id, request_id=request_id)


class RateLimited(TransientError):
    """The provider refused the call for now (HTTP 429); `retry_after_s` is its
    `Retry-After`, if it sent one."""


class BudgetExceeded(MoatError, RuntimeError):
    """A model call would push the request (or the run) past its cost budget."""


class CircuitOpen(MoatError, RuntimeError):
    """A model's circuit breaker is open: recent calls failed, calls are refused for now."""


class EgressBlocked(MoatError, PermissionError):
    """Text would leave for a remote provider unredacted while the policy forbids it."""


class EvaluationError(MoatError, RuntimeError):
    """An expression failed at run time: wrong types, a value out of bounds, a bad key."""


class SyncError(MoatError, RuntimeError):
    """An upload of `moat sync` the central side refused, or could not take for too long."""


ERROR_CHARS = 2_000
"""The most characters of an exception's own text an error message carries."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def exception_text(error: BaseException, *, with_type: bool = False) -> str:
    """`str(error)` cut to `ERROR_CHARS` with its control characters escaped, so that
    what a plugin's exception says fits a log line, a terminal and a store row; its type's
    name when it has no text (or its `__str__` raises); with `with_type`, `Type: text`."""
    try:
        text = str(error)
    except Exception:
        text = ""
    if not isinstance(text, str):  # (a `str` subclass's own `__str__` may return anything)
        text = ""
    text = _printable(text) or type(error).__name__
    return f"{type(error).__name__}: {text}" if with_type else text


def printable(text: str) -> str:
    """`text` with control characters other than newline and tab escaped (`\\x1b`): a
    message or listing that repeats what the user typed or what a store holds must not
    move the cursor, recolour or retitle the terminal it is printed on."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else repr(ch)[1:-1] for ch in text)


def shown(value: object, limit: int = 60) -> str:
    """`value` as a short literal for a message: its `repr` (or its type, when `repr`
    fails), cut in the middle past `limit` characters, control characters escaped."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = f"{text[: limit - 10]}...{text[-7:]}"
    return printable(text)


def _printable(text: str) -> str:
    if len(text) > ERROR_CHARS:
        text = f"{text[:ERROR_CHARS]}... ({len(text) - ERROR_CHARS} more characters)"
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]
