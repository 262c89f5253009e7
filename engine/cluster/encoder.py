"""The Ray worker's side of the store's compact rows: finished requests encoded as
`CompactRows` with the `strings` codes the driver pushes.

It follows the store writer's own encoding (`engine.store.rows`, `Compactor`): names are
codes, times are microseconds after the request's first record, large JSON values are
compressed with the store's dictionary, and short values are asked to be coded the
`INTERN_AT`-th time they are seen. A request naming a text the store has no code for
yet travels as the contract's rows instead (the writer codes it, and the code reaches
the worker with the next push), so nothing waits for a code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.events import DecisionTrace, OrchestrationEvent, Record, RequestRecord
from engine.store.compact import offset_us
from engine.store.rows import (
    INTERN_AT,
    INTERN_MAX_CHARS,
    SEEN_MAX,
    SLOT,
    CompactRows,
    Pack,
    encode_records,
    json_column,
    llm_row,
    node_row,
    reasons_column,
)

__all__ = ["RowEncoder"]

_str = str.__str__  # enum members as exact `str`, as the writer binds them


class _Uncoded(Exception):
    """A text a compact row needs has no code yet."""


class RowEncoder:
    """Encodes finished requests as `CompactRows` with the store's `strings` codes (a Ray
    worker's side; `learn` adds codes as the writer commits more).

    Args:
        codes: `strings` text -> code, as committed in the store.
        pack: compresses large JSON values (`codec.frame_packer`, the store's dictionary).
    """

    def __init__(self, codes: Mapping[str, int], pack: Pack) -> None:
        self.codes = dict(codes)
        self.pack = pack
        self._seen: dict[str, int] = {}
        self._wanted: set[str] = set()

    def learn(self, codes: Mapping[str, int]) -> None:
        """Codes the store committed since."""
        self.codes.update(codes)
        self._wanted.difference_update(codes)

    def encode(self, groups: Sequence[Sequence[Record]], loose: Sequence[Record]) -> CompactRows:
        """`groups` (each one request's records) and `loose` (run-level records) as rows.

        Raises:
            TypeError: a record is not of a stored kind.
        """
        requests: list[tuple[str, str, float] | None] = []
        tables: tuple[list[tuple[Any, ...]], ...] = ([], [], [], [])
        rest: list[Record] = list(loose)
        intern: list[str] = []
        for group in groups:
            final = group[-1]
            if not isinstance(final, RequestRecord) or len(group) == 1:
                rest += group
                continue
            try:
                rows = self._request(len(requests), group[:-1], intern)
            except _Uncoded:
                rest += group
                continue
            t0, built = rows
            requests.append((final.id, final.run_id, t0))
            for table, more in zip(tables, built, strict=True):
                table += more
            rest.append(final)
        return CompactRows(requests, tables, encode_records(rest, self.pack), intern)

    def _request(
        self, index: int, records: Sequence[Record], intern: list[str]
    ) -> tuple[float, tuple[list[tuple[Any, ...]], ...]]:
        """One request's rows under request index `index`, and its `t0` (the first
        event's time, else the first node run's, ...: the key the writer would make)."""
        by_slot: tuple[list[Any], ...] = ([], [], [], [])
        for item in records:
            slot = SLOT.get(type(item))
            if slot is None or slot > 3:
                raise TypeError(f"not a store record: {type(item).__name__}")
            by_slot[slot].append(item)
        t0 = 0.0
        for items in by_slot[:3]:
            if items:
                t0 = round(items[0].started_at, 6)
                break
        code = self.codes.__getitem__  # a text without a code raises KeyError
        try:
            built = (
                [self._event(index, t0, e, intern) for e in by_slot[0]],
                [node_row(code, index, t0, r) for r in by_slot[1]],
                [llm_row(code, index, t0, c) for c in by_slot[2]],
                [self._trace(index, t, intern) for t in by_slot[3]],
            )
        except KeyError as exc:
            raise _Uncoded(exc.args[0]) from None
        return t0, built

    def _maybe(self, text: str, intern: list[str]) -> str | int:
        """`Compactor.maybe` on this side: the code if the store has one, else the text,
        asking for a code once a short text has been seen `INTERN_AT` times."""
        found = self.codes.get(text)
        if found is not None:
            return found
        if len(text) >= INTERN_MAX_CHARS or text in self._wanted:
            return text
        seen = self._seen
        count = seen.get(text, 0) + 1
        if count >= INTERN_AT:
            seen.pop(text, None)
            self._wanted.add(text)
            intern.append(text)
            return text
        if len(seen) >= SEEN_MAX:
            seen.clear()
        seen[text] = count
        return text

    def _value(self, text: str | None, intern: list[str]) -> str | bytes | int | None:
        if text is None:
            return None
        value = self._maybe(text, intern)
        if type(value) is str and len(value) >= 64:
            return self.pack(value)
        return value

    def _event(
        self, index: int, t0: float, e: OrchestrationEvent, intern: list[str]
    ) -> tuple[Any, ...]:
        codes = self.codes
        status = e.status
        decision = e.decision
        return (
            index,
            codes[e.run_id],
            e.cycle,
            codes[e.stage],
            codes[e.component],
            codes[_str(e.event_type)],
            None
            if decision is None
            else self._maybe(decision if type(decision) is str else str(decision), intern),
            None if status is None else codes[_str(status)],
            e.sequence,
            offset_us(e.started_at, t0),
            e.duration_ms,
            codes[reasons_column(e.reason_codes)],
            self._value(json_column(e.inputs), intern),
            self._value(json_column(e.outputs), intern),
            self._value(json_column(e.payload), intern),
        )

    def _trace(self, index: int, t: DecisionTrace, intern: list[str]) -> tuple[Any, ...]:
        return (
            index,
            t.cycle,
            self.codes[t.stage],
            self._value(json_column(t.payload) or "{}", intern),
        )
