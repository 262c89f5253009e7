"""Policy actions the TUI offers: diff two snapshots, apply a file, roll back.

Everything goes through the engine's policy manager (`engine.policy.manager`), so the TUI validates
and records exactly what `moat policy` does. Each action opens its own short-lived
writable `Store` and returns a one-line message for the user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine import Graph, PolicyError, Store, apply_policy, diff_policies, load_policy_file
from engine import rollback_policy as _rollback_policy

__all__ = ["apply_policy_file", "change_lines", "rollback_policy"]


def change_lines(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """One line per changed key from `old` to `new`: `+ key: v`, `- key: v`, `~ key: a -> b`."""
    lines = []
    for change in diff_policies(old or {}, new):
        if change.kind == "added":
            lines.append(f"+ {change.key}: {change.new!r}")
        elif change.kind == "removed":
            lines.append(f"- {change.key}: {change.old!r}")
        else:
            lines.append(f"~ {change.key}: {change.old!r} -> {change.new!r}")
    return lines


def apply_policy_file(
    db_path: str | Path, file_path: str | Path, graphs: Iterable[Graph] = ()
) -> str:
    """Validate the policy file and make it the active version.

    Args:
        db_path: the store.
        file_path: the policy YAML.
        graphs: graphs that read the policy; those of the same policy name are checked.

    Raises:
        MoatError: the file is missing or invalid, no graph reads it, or the store
            refused it.
    """
    name, _, _ = load_policy_file(file_path)
    # (a graph with no `policy:` reads none: checked against it, the policy would seem
    # to serve a graph that never reads it, as `moat policy apply --graph` refuses)
    readers = tuple(g for g in graphs if g.policy_name == name)
    if not readers:  # as `moat policy apply` refuses it: nothing could catch a bad value
        raise PolicyError(
            f"{file_path}: no graph to check policy '{name}' against among this store's "
            f"runs; apply it with `moat policy apply {file_path} --graph GRAPH` (the graph "
            "that reads it), so a value it cannot take is refused before it goes live"
        )
    with Store.open(db_path) as store:
        applied = apply_policy(store, file_path, graphs=readers, reason="apply (tui)")
    return applied.message


def rollback_policy(db_path: str | Path, name: str, to: int | None = None) -> str:
    """Reactivate version `to`, or the previous good version.

    Raises:
        PolicyError: nothing to roll back to, or `to` is unknown or already active.
    """
    with Store.open(db_path) as store:
        return _rollback_policy(store, name, to=to).message
