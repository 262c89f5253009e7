"""Which event names a node may record with `ctx.emit`, and who owns each name.

The store's event vocabulary is read by `moat report`, `moat stats` and the policy guard,
so a node must not be able to forge it. A name a node records:

- is a string of 1 to `MAX_CHARS` characters in UPPER_SNAKE_CASE (no spaces, control
  characters or lower case), as the catalogue's names are;
- is not one of the engine's own (`engine.EventType`: the scheduler's, the gateway's,
  the policy manager's), unless the node type declares it in `event_types` and the
  registry allows that (`PII_REDACTED`, which the redact node records as the gateway does);
- is not a name another node type declares as its own (`CACHE_HIT` is the cache node's),
  unless the node's type declares it too.

Node types claim their names when they are registered (`claim`), in any registry of the
process; a name nobody declares is free to use. `problem` decides once per node type and
name, then answers from a set.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from engine.errors import shown
from engine.events import EventType

__all__ = ["ALLOWED", "MAX_CHARS", "claim", "problem"]

MAX_CHARS = 64
"""The longest event name (the catalogue's longest has 36 characters)."""

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_ENGINE = frozenset(EventType)

_owners: dict[str, frozenset[str]] = {}
"""Event name -> the node types that declare it."""
_declared: dict[str, frozenset[str]] = {}
"""Node type -> the event names it declares."""
ALLOWED: set[tuple[str, str]] = set()
"""(node type, name) pairs already judged fine: the request path's one lookup (cleared,
never replaced, when a node type claims names)."""
_lock = threading.Lock()


def claim(node_type: str, names: Iterable[str]) -> None:
    """Record that `node_type` declares `names` (its `event_types`), checked already."""
    names = frozenset(names)
    with _lock:
        before = _declared.get(node_type, frozenset())
        if names <= before:
            return
        _declared[node_type] = before | names
        for name in names - before:
            _owners[name] = _owners.get(name, frozenset()) | {node_type}
        ALLOWED.clear()  # a name free before may be someone's now


def problem(node_type: str, name: object) -> str | None:
    """Why a node of type `node_type` may not record an event named `name`, or None."""
    if isinstance(name, str) and (node_type, name) in ALLOWED:
        return None
    found = _judge(node_type, name)
    if found is None:
        assert isinstance(name, str)
        with _lock:
            ALLOWED.add((node_type, str(name)))
    return found


def _judge(node_type: str, name: object) -> str | None:
    fix = f"list it in the `event_types` of node type '{node_type}'"
    if not isinstance(name, str):
        return (
            f"ctx.emit: the event type must be a string (an UPPER_SNAKE_CASE name like "
            f"'SLEPT'), not {type(name).__name__} {shown(name)}"
        )
    if not name:
        return "ctx.emit: the event type is empty; give the event a name like 'SLEPT'"
    if len(name) > MAX_CHARS:
        return (
            f"ctx.emit: the event type {shown(name)} is {len(name)} characters long; "
            f"give the event a name of at most {MAX_CHARS}"
        )
    if not _NAME.fullmatch(name):
        like = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
        like = like if like[:1].isalpha() else f"EVENT_{like}".rstrip("_")
        return (
            f"ctx.emit: the event type {shown(name)} is not UPPER_SNAKE_CASE (A-Z, digits "
            f"and _, starting with a letter); write it like {like!r}"
        )
    declared = _declared.get(node_type, frozenset())
    if name in declared:
        return None
    if name in _ENGINE:
        return (
            f"ctx.emit: {name!r} is one of the events the engine records itself "
            "(engine.EventType), and `moat report` and the policy guard trust it; a node "
            "cannot record it. Give the node's event a name of its own and " + fix
        )
    owners = _owners.get(name)
    if owners:
        return (
            f"ctx.emit: {name!r} is an event of node type "
            f"{', '.join(repr(o) for o in sorted(owners))}; to record it too, {fix}, or "
            "give the event a name of its own"
        )
    return None
