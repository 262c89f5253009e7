"""The request numbers (`seq`) a run has answered: what keeps request ids unique.

A request id is `f"{run_id}-{seq:06d}"`, so two requests of one run with the same `seq`
would share an id, and the store would keep one of them. `Pipeline` keeps a `SeqSet` per
run it answers under and refuses a `seq` answered already (`DuplicateRequest`) before
anything runs. A bit per `seq` below `DENSE_LIMIT` (a run of a million requests takes
125 kB), a set for the rare ones above it (or below zero).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DENSE_LIMIT", "SeqSet"]

DENSE_LIMIT = 1 << 27
"""Seqs below this are bits (at most 16 MB per run); larger ones go to a set."""


class SeqSet:
    """A set of seqs, compact for the dense numbering runs have.

    Args:
        seqs: the seqs in it at first (a resumed run's stored requests).
    """

    __slots__ = ("_bits", "_sparse")

    def __init__(self, seqs: Iterable[int] = ()) -> None:
        self._bits = bytearray()
        self._sparse: set[int] = set()
        for seq in seqs:
            self.add(seq)

    def add(self, seq: int) -> bool:
        """Add `seq`; False if it was in already."""
        if 0 <= seq < DENSE_LIMIT:
            byte, bit = seq >> 3, 1 << (seq & 7)
            bits = self._bits
            if byte >= len(bits):  # grow by doubling: amortised, never per request
                bits.extend(bytes(max(byte + 1 - len(bits), len(bits), 64)))
            if bits[byte] & bit:
                return False
            bits[byte] |= bit
            return True
        if seq in self._sparse:
            return False
        self._sparse.add(seq)
        return True

    def discard(self, seq: int) -> None:
        """Take `seq` out (a request that left no record may be answered again)."""
        if 0 <= seq < DENSE_LIMIT:
            byte = seq >> 3
            if byte < len(self._bits):
                self._bits[byte] &= ~(1 << (seq & 7)) & 0xFF
        else:
            self._sparse.discard(seq)

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        if 0 <= seq < DENSE_LIMIT:
            byte = seq >> 3
            return byte < len(self._bits) and bool(self._bits[byte] & (1 << (seq & 7)))
        return seq in self._sparse

    def __repr__(self) -> str:
        count = sum(bin(b).count("1") for b in self._bits) + len(self._sparse)
        return f"<SeqSet {count} seqs>"
