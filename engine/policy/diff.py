"""Comparing two policy bodies key by key, as dotted paths (`router.threshold`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["KeyChange", "changed_keys", "diff_policies", "flatten", "key_part"]

_AMBIGUOUS = re.compile(r'[."]|^$').search


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One difference between two policy bodies.

    Attributes:
        kind: `added`, `removed` or `changed`.
        key: the dotted key, e.g. `router.threshold`.
        old: the value before (None when added).
        new: the value after (None when removed).
    """

    kind: Literal["added", "removed", "changed"]
    key: str
    old: Any = None
    new: Any = None


def key_part(key: object) -> str:
    """One key of a dotted path as `flatten` writes it: quoted when it holds a dot or a
    quote (or is empty), so it never reads as the path of a nested key."""
    text = str(key)
    return json.dumps(text, ensure_ascii=False) if _AMBIGUOUS(text) else text


def flatten(body: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a body as `(dotted_key, value)`; an empty mapping is a leaf too.

    A key that holds a dot (or a quote) is quoted, `"gpt-4.1".limit`, so it never reads
    as the path of a nested key: `{"router.x": 2}` and `{"router": {"x": 1}}` are two leaves.
    """
    for key, value in body.items():
        dotted = prefix + key_part(key)
        if isinstance(value, Mapping) and value:
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python; a policy that swaps them did change. NaN is never
    # equal to itself, yet a NaN that stays NaN did not change.
    return type(a) is type(b) and (a == b or (a != a and b != b))


def diff_policies(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[KeyChange]:
    """The differences from `old` to `new`, sorted by key.

    Example:
        >>> diff_policies({"router": {"threshold": 0.4}}, {"router": {"threshold": 0.5}})
        [KeyChange(kind='changed', key='router.threshold', old=0.4, new=0.5)]
    """
    before = dict(flatten(old))
    after = dict(flatten(new))
    changes: list[KeyChange] = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            changes.append(KeyChange("removed", key, old=before[key]))
        elif key not in before:
            changes.append(KeyChange("added", key, new=after[key]))
        elif not _same(before[key], after[key]):
            changes.append(KeyChange("changed", key, before[key], after[key]))
    return changes


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """The dotted keys that differ between two bodies (added, removed or changed).

    A cache that depends on `cache.*` and `tenants` stays warm across a policy switch when
    none of these keys changed:

        changed = changed_keys(old.body, new.body)
        if not any(k == p or k.startswith(p + ".") for k in changed for p in deps):
            ...  # keep the entries
    """
    return {change.key for change in diff_policies(old, new)}
