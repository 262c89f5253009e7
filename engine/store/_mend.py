"""Records a row builder refused, with their free-form values made plain data.

What a node passes to `ctx.emit` and `ctx.trace` is recorded as it was given, and encoded
only by the store writer, off the request path. A value strict JSON cannot carry (NaN or
an infinity, stored as null; a mapping holding itself, nesting deeper than the encoder's
stack, keys that are not strings, a label that is not text, an object whose `__str__`
raises) makes its row fail to build; rather than drop the record (and fail the run's next
flush), the writer builds it again from `mended(record)`: the same record with each such
value replaced by null or by text that says what it was. Only records that failed to
build come here, so the common path pays nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from engine.events import DecisionTrace, OrchestrationEvent, Record, RequestRecord

__all__ = ["mended"]

_DEEPEST = 64
"""Levels of nesting kept; what is deeper is replaced by a note."""
_LABEL_CHARS = 200
"""The most characters of a label (stage, event type, reason code) made from a non-string."""
_SCALARS = (str, int, float, bool)


def mended(item: Record) -> Record | None:
    """`item` with its free-form values as plain JSON data; None for a record that holds
    none (nothing to mend: its failure is moat's own)."""
    if isinstance(item, OrchestrationEvent):
        return dataclasses.replace(
            item,
            stage=_label(item.stage),
            component=_label(item.component),
            event_type=_label(item.event_type),
            decision=None if item.decision is None else _label(item.decision),
            status=None if item.status is None else _label(item.status),
            reason_codes=_labels(item.reason_codes),
            inputs=_mapping(item.inputs),
            outputs=_mapping(item.outputs),
            payload=_mapping(item.payload),
            duration_ms=item.duration_ms if isinstance(item.duration_ms, int | float) else None,
        )
    if isinstance(item, DecisionTrace):
        return dataclasses.replace(
            item, stage=_label(item.stage), payload=_mapping(item.payload) or {}
        )
    if isinstance(item, RequestRecord):
        return dataclasses.replace(item, output=_mapping(item.output))
    return None


def _mapping(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    plain = _plain(value, 0, set())
    return plain if isinstance(plain, dict) else {"value": plain}


def _plain(value: Any, depth: int, path: set[int]) -> Any:
    """`value` as JSON data: containers walked (cycles and depth cut), the rest as text."""
    if type(value) is float:
        return value if math.isfinite(value) else None  # strict JSON has no NaN, no infinity
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if id(value) in path:
            return f"<{type(value).__name__} holding itself>"
        if depth >= _DEEPEST:
            return f"<{type(value).__name__} nested deeper than {_DEEPEST}>"
        path.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {_label(k): _plain(v, depth + 1, path) for k, v in _items(value)}
            return [_plain(v, depth + 1, path) for v in value]
        except Exception as exc:  # (a container whose iteration raises)
            return f"<{type(value).__name__}: {type(exc).__name__}>"
        finally:
            path.discard(id(value))
    if isinstance(value, _SCALARS):  # a subclass (an enum member): its plain value
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else None
        return _label(value) if isinstance(value, str) else value
    return _label(value)


def _items(value: Mapping[Any, Any]) -> Iterable[tuple[Any, Any]]:
    return list(value.items())


def _labels(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (_label(value),)
    try:
        return tuple(_label(v) for v in value)
    except Exception:
        return (_label(value),)


def _label(value: Any) -> str:
    """`value` as (bounded) text; its type's name when it has none."""
    if type(value) is str:
        return value
    try:
        text = str(value)
    except Exception:
        return f"<{type(value).__name__}>"
    if not isinstance(text, str):
        return f"<{type(value).__name__}>"
    text = str.__str__(text)
    return text if len(text) <= _LABEL_CHARS else f"{text[:_LABEL_CHARS]}..."
