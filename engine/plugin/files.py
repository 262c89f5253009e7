"""Files a node's `with:` names, checked by `moat check` rather than by every request.

`moat check` (and loading a graph, which checks it) validates each node's constant `with:`
values against the node type's `Config` with a pydantic validation context that carries the
graph file's folder. A config validator that reads a file (a corpus, a principles list,
weights) asks `graph_file` for its path: while checking, it gets the path resolved as
`NodeContext.resolve_path` resolves it and reads the file, so a missing or malformed file is
an error at its `with:` key; at run time it gets None and leaves the reading to `run`.

    @field_validator("corpus")
    @classmethod
    def _corpus_reads(cls, value: str | None, info: ValidationInfo) -> str | None:
        path = graph_file(value, info) if value else None
        if path is not None:
            load_corpus(path)  # raises ValueError naming the file (and line) and the fix
        return value
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from pydantic import ValidationInfo

__all__ = ["CHECK_CONTEXT", "LATER_CONTEXT", "at_check", "graph_file", "read_text_file"]

CHECK_CONTEXT = "moat.graph_dir"
"""The key of the validation context `moat check` passes: the graph file's folder (None
for a graph given as text)."""


LATER_CONTEXT = "moat.later"
"""The key of the validation context `moat check` passes beside `CHECK_CONTEXT`: the
`with:` keys whose values are expressions, known only per request."""


def at_check(info: ValidationInfo, *keys: str) -> bool:
    """Whether this validation is `moat check`'s (the time to read files and judge inline
    data once), not a request's.

    With `keys`, also whether each of them is settled at check time: written as a constant
    or left out (its default), not a `{{ }}` expression. A rule that relates several fields
    (`mode: feedback` needs a `route:`) is decided at check time only when all of them are;
    a field an expression sets holds a stand-in default while `moat check` validates.

        @field_validator("route", mode="after")
        @classmethod
        def _route_given(cls, value: str | None, info: ValidationInfo) -> str | None:
            if at_check(info, "mode", "route") and info.data.get("mode") == "feedback":
                ...
    """
    context = info.context
    if not isinstance(context, Mapping) or CHECK_CONTEXT not in context:
        return False
    later = context.get(LATER_CONTEXT, ())
    return not any(key in later for key in keys)


def graph_file(path: str, info: ValidationInfo) -> str | None:
    """The file `path` names, resolved against the graph's folder, while `moat check`
    validates the config; None at run time (the node reads the file then)."""
    context = info.context
    if not isinstance(context, Mapping) or CHECK_CONTEXT not in context:
        return None
    base = context[CHECK_CONTEXT]
    path = os.path.expanduser(path)
    if base is None or os.path.isabs(path):
        return path
    return os.path.join(os.fspath(base), path)


def read_text_file(path: str, what: str) -> str:
    """The UTF-8 text of the file `what` names (`corpus`, `principles file`, ...).

    Raises:
        ValueError: it is missing, a folder, unreadable or not UTF-8; the message names
            the file and says what to fix.
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError(f"{what} {path!r} is a folder; name a file")
        if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
            raise ValueError(f"{what} {path!r} is not a regular file; name a file")
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot read {what} {path!r}: {reason}; check the path") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{what} {path}:{line}: not UTF-8 text; save the file as UTF-8") from None
