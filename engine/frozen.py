"""Read-only containers for values every request shares: a pinned policy snapshot's body.

`freeze(value)` copies a JSON-like value once into `FrozenDict` and `FrozenList`, which
are `dict` and `list` subclasses (so `isinstance` checks, equality, `json.dumps`, pydantic
and the expression language read them as before) that refuse every change with
`PolicyReadOnly`, naming where in the snapshot the change was tried. A snapshot is frozen
once per version (`PolicyPin`), never per request: reading costs what reading a dict costs.

Copies are the way to a value of one's own: `dict(view)`, `list(view)`, `view.copy()` and
`copy.copy(view)` give a mutable container of the same (still read-only) values;
`copy.deepcopy(view)` and `thaw(view)` give mutable containers all the way down. Pickling
keeps the view read-only (a snapshot shipped to another process stays a snapshot).

This guards against mistakes, not against code set on defeating it: `dict.__setitem__`
called on the view directly still writes, as nothing in-process can prevent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from engine.errors import PolicyReadOnly

__all__ = ["FrozenDict", "FrozenList", "freeze", "thaw"]


def _refuse(where: FrozenDict | FrozenList, operation: str, part: object = None) -> NoReturn:
    """Raise `PolicyReadOnly`; `{}` in `operation` names the container (or its `part`)."""
    key = object.__getattribute__(where, "_key")
    if part is not None:
        key = _child(key, part)
    raise PolicyReadOnly(key, operation.format(f"policy.{key}" if key else "policy"))


def _part(index: Any) -> object:
    """A list index as a part of a key (`[2]`); a slice is the whole list's business."""
    return index if isinstance(index, int) else None


def _child(key: str, part: object) -> str:
    if isinstance(part, int):
        return f"{key}[{part}]"
    return f"{key}.{part}" if key else str(part)


class FrozenDict(dict[Any, Any]):
    """A read-only `dict`: every mutating method raises `PolicyReadOnly`.

    Args:
        items: the (already frozen) values, by key.
        key: where this mapping stands in the snapshot (`thresholds`), for messages.
    """

    __slots__ = ("_key",)
    _key: str

    def __init__(self, items: Mapping[Any, Any] | Iterable[Any] = (), key: str = "") -> None:
        try:
            object.__getattribute__(self, "_key")
        except AttributeError:  # being built: the one time it is filled
            dict.__init__(self, items)
            object.__setattr__(self, "_key", key)
            return
        _refuse(self, "re-initialise {}")

    def __setitem__(self, key: Any, value: Any) -> NoReturn:
        _refuse(self, "set {}", key)

    def __delitem__(self, key: Any) -> NoReturn:
        _refuse(self, "delete {}", key)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        _refuse(self, f"set the attribute {name!r} of {{}}")

    def __delattr__(self, name: str) -> NoReturn:
        _refuse(self, f"delete the attribute {name!r} of {{}}")

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        _refuse(self, "update {} (|=)")

    def clear(self) -> NoReturn:
        _refuse(self, "clear {}")

    def pop(self, key: Any, *default: Any) -> NoReturn:
        _refuse(self, "pop {}", key)

    def popitem(self) -> NoReturn:
        _refuse(self, "popitem from {}")

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        _refuse(self, "setdefault {}", key)

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self, "update {}")

    def __copy__(self) -> dict[Any, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[Any, Any]:
        return thaw(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self), self._key))


class FrozenList(list[Any]):
    """A read-only `list`: every mutating method raises `PolicyReadOnly`.

    Args:
        items: the (already frozen) values.
        key: where this list stands in the snapshot (`routes`), for messages.
    """

    __slots__ = ("_key",)
    _key: str

    def __init__(self, items: Iterable[Any] = (), key: str = "") -> None:
        try:
            object.__getattribute__(self, "_key")
        except AttributeError:  # being built: the one time it is filled
            list.__init__(self, items)
            object.__setattr__(self, "_key", key)
            return
        _refuse(self, "re-initialise {}")

    def __setitem__(self, index: Any, value: Any) -> NoReturn:
        _refuse(self, "set {}", _part(index))

    def __delitem__(self, index: Any) -> NoReturn:
        _refuse(self, "delete {}", _part(index))

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        _refuse(self, f"set the attribute {name!r} of {{}}")

    def __delattr__(self, name: str) -> NoReturn:
        _refuse(self, f"delete the attribute {name!r} of {{}}")

    def __iadd__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        _refuse(self, "extend {} (+=)")

    def __imul__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        _refuse(self, "repeat {} (*=)")

    def append(self, value: Any) -> NoReturn:
        _refuse(self, "append to {}")

    def extend(self, values: Any) -> NoReturn:
        _refuse(self, "extend {}")

    def insert(self, index: Any, value: Any) -> NoReturn:
        _refuse(self, "insert into {}")

    def pop(self, index: Any = -1) -> NoReturn:
        _refuse(self, "pop from {}")

    def remove(self, value: Any) -> NoReturn:
        _refuse(self, "remove from {}")

    def clear(self) -> NoReturn:
        _refuse(self, "clear {}")

    def sort(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self, "sort {} in place (sorted(...) gives a sorted copy)")

    def reverse(self) -> NoReturn:
        _refuse(self, "reverse {} in place (reversed(...) reads it backwards)")

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return thaw(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self), self._key))


_LEAVES = frozenset({str, int, float, bool, type(None)})
"""Types `freeze` returns as they are, without looking further."""


def freeze(value: Any, key: str = "") -> Any:
    """`value` with every mapping and list in it copied into a read-only one (once).

    Frozen containers are returned as they are; tuples stay tuples, of frozen items;
    anything else (strings, numbers, None) is returned unchanged.

    Args:
        value: a JSON-like value (a policy body).
        key: where `value` stands in the snapshot, for messages.
    """
    kind = type(value)
    if kind in _LEAVES or kind is FrozenDict or kind is FrozenList:
        return value
    # Most of a large body is text and numbers: those items are kept without a call (or
    # a key for messages) each, and containers are built without `__init__`'s guard.
    if kind is dict or (kind is not list and isinstance(value, Mapping)):
        items = {
            k: v if type(v) in _LEAVES else freeze(v, _child(key, k)) for k, v in value.items()
        }
        made: Any = FrozenDict.__new__(FrozenDict)
        dict.__init__(made, items)
    elif isinstance(value, list):
        made = FrozenList.__new__(FrozenList)
        list.__init__(
            made,
            [v if type(v) in _LEAVES else freeze(v, _child(key, i)) for i, v in enumerate(value)],
        )
    else:
        return _freeze_other(value, kind, key)
    object.__setattr__(made, "_key", key)
    return made


def _freeze_other(value: Any, kind: type, key: str) -> Any:
    """`freeze` of what is neither a mapping nor a list."""
    if kind is tuple:
        return tuple(freeze(v, _child(key, i)) for i, v in enumerate(value))
    if isinstance(value, set):
        return frozenset(value)
    return value


def thaw(value: Any) -> Any:
    """A mutable deep copy of `value`: plain dicts and lists in place of frozen ones."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    if type(value) is tuple:
        return tuple(thaw(v) for v in value)
    return value
