"""A request's decisions as OTLP `Span.Event` bytes, each written from a plan kept per kind.

A flagship request records about 47 orchestration events: a dozen memo hits (counted on
the request's span, not written) and about 34 decisions, each a span event of its node's
span (else the request's). What an event's bytes hold is fixed by its signature (type,
decision, status, reason codes) and where it goes by its node and cycle; only its time and
its payload's numbers vary. So each signature and place gets a plan once (`_plan`): the
encoded opening (tag, length, time tag), name, reason codes, decision and status, and a
`struct` that writes the opening, the time and the rest in one call. A decision without
numbers is then one dict lookup and one `pack`; one with numbers joins its kept prefix,
time, signature and the numbers (`numbers`: a kept `KeyValue` per int or boolean, a kept
key prefix and 8 bytes per double). A cache lookup is also a span of its own
(`lookup_span`).

Event payloads contribute only their numbers and booleans, never strings (they may hold
request text).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.events import OrchestrationEvent
from engine.telemetry.otlp_wire import (
    LENGTHS,
    Kept,
    Pairs,
    double_prefix,
    field,
    key_value,
    text,
    varint,
)

__all__ = ["CACHE_LOOKUPS", "NOT_DECISIONS", "EventPlan", "lookup_span", "numbers", "write_events"]

_SPAN = b"\x12"  # ScopeSpans.spans
_ATTR = b"\x4a"  # Span.attributes
_EVENT_ATTR = b"\x1a"  # Span.Event.attributes
_EVENT = b"\x5a"  # Span.events
_INTERNAL = b"\x30\x01"
_NO_STATUS = b"\x7a\x00"  # the reference encoder always writes a status, UNSET when empty
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)  # HAS_IS_REMOTE, parent local
_TIMES = struct.Struct("<BQBQ").pack
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_NS = 1e9
"""Nanoseconds a second, as the float `seconds * 1_000_000_000` multiplies by: `floor` of a
non-negative product is its `int`, at about a quarter of the cost."""

CACHE_LOOKUPS = {"CACHE_HIT": "hit", "CACHE_MISS": "miss", "CACHE_NEGATIVE_HIT": "negative"}
"""The events that are also a cache lookup's span, and its `moat.cache.result`."""
NOT_DECISIONS = frozenset({"RESULT_REUSED", "PRINCIPLES_REUSED"})
"""Memo hits, a dozen per request: counted on the request's span, not one event each."""

_EVENT_PAIRS = {
    tag: (
        Pairs(tag, "moat.event.reason_codes"),
        Pairs(tag, "moat.event.decision"),
        Pairs(tag, "moat.event.status"),
    )
    for tag in (_EVENT_ATTR, _ATTR)  # a cache lookup's span has its event's attributes
}
_LOOKUP = {
    result: key_value(_ATTR, "moat.cache.result", result) for result in CACHE_LOOKUPS.values()
}

EventPlan = tuple[Callable[[bytes, int, bytes], bytes], bytes, bytes, tuple[str, int], str | None]
"""What a decision of one signature at one place is written from: `pack(opening, time,
signature)`, the opening (the `Span.events` tag, the length without numbers, the time's
tag), the signature's bytes (name, reason codes, decision, status), the node and cycle
whose span holds it, and the result of the cache lookup it is (else None)."""


def _plan(key: tuple[str, str | None, str | None, tuple[str, ...], str, int]) -> EventPlan:
    """The plan of an event of type `kind`, `decision`, `status` and reason `codes`, of
    node `stage` in `cycle`."""
    kind, decision, status, codes, stage, cycle = key
    reasons, decisions, statuses = _EVENT_PAIRS[_EVENT_ATTR]
    signature = text(b"\x12", kind)
    if codes:
        signature += reasons[codes]
    if decision is not None:
        signature += decisions[decision]
    if status is not None:
        signature += statuses[status]
    opening = _EVENT + varint(9 + len(signature)) + b"\x09"
    pack = struct.Struct(f"<{len(opening)}sQ{len(signature)}s").pack
    return pack, opening, signature, (stage, cycle), CACHE_LOOKUPS.get(kind)


_PLANS: Kept[EventPlan] = Kept(_plan)
"""Plans by (type, decision, status, reason codes, node, cycle): a few hundred recur."""

Lookups = list[tuple[OrchestrationEvent, tuple[str, int], str]]
"""The cache lookups among a request's events: the event, its node and cycle, its result."""


def write_events(
    events: Sequence[OrchestrationEvent],
    by_node: Mapping[tuple[str, int], list[bytes]],
    root_events: list[bytes],
    lookups: Lookups,
) -> int:
    """Append each decision's encoded `Span.Event` to its node's list in `by_node` (else to
    `root_events`), each cache lookup to `lookups`; returns how many memo hits were counted.
    """
    reused = 0
    plans, floor, lengths, stamp = _PLANS, math.floor, LENGTHS, _FIXED64
    for event in events:
        if event.event_type in NOT_DECISIONS:
            reused += 1
            continue
        codes = event.reason_codes
        if type(codes) is not tuple:  # a list from a plugin: the key must be hashable
            codes = tuple(codes)
        key = (event.event_type, event.decision, event.status, codes, event.stage, event.cycle)
        pack, opening, signature, where, lookup = plans[key]
        payload = event.payload
        found = numbers(payload) if payload else b""
        if found:
            n = 9 + len(signature) + len(found)
            encoded = b"".join(
                (_EVENT, lengths[n] if n < 0x4000 else varint(n), b"\x09",
                 stamp(floor(event.started_at * _NS)), signature, found)
            )  # fmt: skip
        else:
            encoded = pack(opening, floor(event.started_at * _NS), signature)
        by_node.get(where, root_events).append(encoded)
        if lookup is not None:
            lookups.append((event, where, lookup))
    return reused


_DOUBLE_KEYS: dict[Any, bytes] = {}
_INT_PAIRS: dict[Any, dict[int, bytes]] = {}
_TRUE_PAIRS: dict[Any, bytes] = {}
_FALSE_PAIRS: dict[Any, bytes] = {}


def numbers(payload: Mapping[str, Any]) -> bytes:
    """A payload's numbers and booleans as event attributes (strings may hold request text:
    never): a double is its key's kept prefix and 8 bytes, an int or a boolean a kept
    pair (counts and flags recur)."""
    parts: list[bytes] = []
    for key, value in payload.items():
        kind = type(value)
        if kind is str:
            continue
        if kind is float:
            prefix = _DOUBLE_KEYS.get(key)
            if prefix is None:
                prefix = _double_key(key)
            if prefix:
                parts.append(prefix + _DOUBLE(value))
        elif kind is bool:
            pair = (_TRUE_PAIRS if value else _FALSE_PAIRS).get(key)
            if pair is None:
                pair = _bool_pair(key, value)
            parts.append(pair)
        elif kind is int:
            ints = _INT_PAIRS.get(key)
            pair = ints.get(value) if ints is not None else None
            if pair is None:
                pair = _int_pair(key, value)
            parts.append(pair)
    return b"".join(parts)


def _double_key(key: Any) -> bytes:
    if type(key) is not str:
        return b""
    prefix = double_prefix(_EVENT_ATTR, f"moat.event.{key}")
    if len(_DOUBLE_KEYS) < 4096:
        _DOUBLE_KEYS[key] = prefix
    return prefix


def _bool_pair(key: Any, value: bool) -> bytes:
    if type(key) is not str:
        return b""
    pair = key_value(_EVENT_ATTR, f"moat.event.{key}", value)
    kept = _TRUE_PAIRS if value else _FALSE_PAIRS
    if len(kept) < 4096:
        kept[key] = pair
    return pair


def _int_pair(key: Any, value: int) -> bytes:
    if type(key) is not str:
        return b""
    pair = key_value(_EVENT_ATTR, f"moat.event.{key}", value)
    ints = _INT_PAIRS.get(key)
    if ints is None:
        if len(_INT_PAIRS) >= 4096:
            return pair
        ints = _INT_PAIRS[key] = {}
    if len(ints) >= 1024:  # open-ended counts: start again rather than grow
        ints.clear()
    ints[value] = pair
    return pair


def _event_attributes(event: OrchestrationEvent, tag: bytes) -> bytes:
    """An event's attributes under `tag`, one by one (for a cache lookup's span: the fast
    path for span events is `write_events`)."""
    reasons, decision, status = _EVENT_PAIRS[tag]
    parts = []
    if event.reason_codes:
        parts.append(reasons[tuple(event.reason_codes)])
    if event.decision is not None:
        parts.append(decision[event.decision])
    if event.status is not None:
        parts.append(status[event.status])
    payload = event.payload
    if payload:
        for key, value in payload.items():
            kind = type(value)
            if (kind is float or kind is int or kind is bool) and type(key) is str:
                parts.append(key_value(tag, f"moat.event.{key}", value))
    return b"".join(parts)


def lookup_span(
    head: bytes, span_id: bytes, parent: bytes, event: OrchestrationEvent, result: str
) -> bytes:
    """A cache lookup's span: the event's attributes (as span attributes) and its result."""
    start = int(event.started_at * 1_000_000_000)
    end = start + int((event.duration_ms or 0.0) * 1_000_000)
    return field(
        _SPAN,
        b"".join(
            [
                head,
                b"\x12\x08",
                span_id,
                b"\x22\x08",
                parent,
                text(b"\x2a", f"cache.lookup {event.stage}"),
                _INTERNAL,
                _TIMES(0x39, start, 0x41, end),
                _event_attributes(event, _ATTR),
                _LOOKUP[result],
                _NO_STATUS,
                _FLAGS_LOCAL,
            ]
        ),
    )
