"""Policy actions the TUI offers: diff two snapshots, apply a file, roll back.

Apply and rollback go through the engine's policy manager (`engine.policy`) when it provides
`apply_file` / `rollback`, so the TUI validates and records exactly what `moat policy` does;
without it they fall back to the store's own policy methods. Each action opens its own
short-lived writable `Store` and returns a one-line message for the user.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from engine.errors import PolicyError, StoreError
from engine.store import Store

__all__ = ["apply_policy_file", "body_diff", "rollback_policy"]


def body_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """Unified diff lines from `old` to `new` (policy bodies as sorted, indented JSON)."""
    return list(
        difflib.unified_diff(
            _lines(old), _lines(new), fromfile="active", tofile="selected", lineterm="", n=2
        )
    )


def _lines(body: Mapping[str, Any] | None) -> list[str]:
    if body is None:
        return []
    return json.dumps(dict(body), indent=2, sort_keys=True, default=str).splitlines()


def _manager() -> Any:
    try:
        return importlib.import_module("engine.policy")
    except ModuleNotFoundError:
        return None


def apply_policy_file(db_path: str | Path, file_path: str | Path) -> str:
    """Validate and store the policy file as a new version and activate it.

    Raises:
        MoatError: the file is missing or invalid, or the store refused it.
    """
    manager = _manager()
    with Store.open(db_path) as store:
        if manager is not None and hasattr(manager, "apply_file"):
            result = manager.apply_file(store, Path(file_path))
            return f"applied {file_path}: {result}"
        return _apply_fallback(store, Path(file_path))


def rollback_policy(db_path: str | Path, name: str, to: int | None = None) -> str:
    """Reactivate version `to`, or the one active before the current one.

    Raises:
        MoatError: no such policy or version, or nothing to roll back to.
    """
    manager = _manager()
    with Store.open(db_path) as store:
        if manager is not None and hasattr(manager, "rollback"):
            result = manager.rollback(store, name, to=to)
            return f"rolled back {name}: {result}"
        return _rollback_fallback(store, name, to)


def _apply_fallback(store: Store, path: Path) -> str:
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc}") from exc
    if not isinstance(body, dict):
        raise PolicyError(f"{path}: a policy file must be a YAML mapping of settings")
    name = str(body.get("name") or path.stem)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    content_hash = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    versions = store.policy_versions(name)
    active = store.active_policy(name)
    if active is not None and active["content_hash"] == content_hash:
        return f"{name} v{active['version']} already holds this content; nothing applied"
    version = max((int(v["version"]) for v in versions), default=0) + 1
    parent = int(active["version"]) if active else None
    store.insert_policy_snapshot(name, version, content_hash, body, parent)
    store.activate_policy(name, version, reason=f"applied {path.name} from the TUI")
    return f"applied {path}: {name} v{version} is active"


def _rollback_fallback(store: Store, name: str, to: int | None) -> str:
    history = store.policy_history(name)
    if not history:
        raise StoreError(f"policy '{name}' was never activated; nothing to roll back")
    current = int(history[-1]["version"])
    if to is None:
        earlier = [int(h["version"]) for h in history if int(h["version"]) != current]
        if not earlier:
            raise StoreError(f"policy '{name}' has no earlier active version to roll back to")
        to = earlier[-1]
    store.activate_policy(name, to, reason=f"rolled back from v{current} in the TUI")
    return f"rolled back {name}: v{to} is active (was v{current})"
