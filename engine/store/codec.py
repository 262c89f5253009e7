"""How the store encodes JSON columns: compact JSON text, or zstd against a dictionary of
the store's own payloads when that is clearly smaller.

The payloads of one graph repeat their keys and most of their values from request to
request (`modules_planned`, `relevant_principles`, ...), so each one alone compresses
poorly but compresses several times over against a dictionary trained on earlier ones.
The writer trains one (`Packer`) from the first `_SAMPLES` payloads it writes, stores it
in the `meta` table under `zstd_dict:<id>` and from then on writes a payload of at least
`_MIN_BYTES` as a zstd frame (a BLOB naming its dictionary) whenever that saves a quarter
of it. Everything smaller, and everything before the dictionary exists, stays JSON text.

Readers decode through `decode` (which `Store` does for every `*_json` column): a TEXT
value is JSON, a BLOB is a frame whose dictionary is read from `meta` once per process.
Dictionaries are never deleted, so every row stays readable whatever prunes it outlives.

Every JSON column is strict JSON: the writer's rows are encoded with `allow_nan=False`
(`rows.py`), and the other writes (policy snapshots, a run's config, cache entries) go
through `strict_json`, which refuses NaN and the infinities, naming the key that holds one,
rather than store text `json_valid` and every other reader refuse.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any

import zstandard

from engine.errors import StoreError

__all__ = [
    "NUMERIC",
    "SHAPES",
    "Packer",
    "decode",
    "decode_column",
    "decode_rows",
    "frame_packer",
    "load_dictionary",
    "strict_json",
]

_MIN_BYTES = 64
"""Payloads shorter than this stay text: a frame's own header would eat the gain."""
_SAMPLES = 2_000
"""Payloads a dictionary is trained on."""
_DICT_BYTES = 16_384
_KEY = "zstd_dict:"
_LEVEL = 3

_decompressors: dict[tuple[str, int], zstandard.ZstdDecompressor] = {}
_lock = threading.Lock()


def strict_json(value: Any, what: str, *, sort_keys: bool = False) -> str:
    """`value` as compact, strict JSON (other objects as their `str`, as before).

    Args:
        value: what to encode.
        what: what it is, for the message (`policy 'triage' version 3`).
        sort_keys: sort mapping keys (canonical text).

    Raises:
        StoreError: `value` holds NaN or an infinity (or holds itself); the message
            names `what`, the key and the fix.
    """
    try:
        return json.dumps(
            value, separators=(",", ":"), sort_keys=sort_keys, default=str, allow_nan=False
        )
    except ValueError as exc:
        found = _non_finite(value)
        if found is None:  # a mapping holding itself
            raise StoreError(f"{what} cannot be stored as JSON: {exc}") from None
        where, number = found
        raise StoreError(
            f"{what} cannot be stored: {where} is {number}, which strict JSON cannot hold "
            "(readers of the store would get null or refuse the row); give a finite number, "
            "or leave the key out"
        ) from None


def _non_finite(value: Any) -> tuple[str, float] | None:
    """The first NaN or infinity inside `value` (depth first), with where it is."""
    stack: list[tuple[str, Any]] = [("", value)]
    seen: set[int] = set()
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return (f"'{where}'" if where else "the value"), item
        if isinstance(item, Mapping | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            pairs = item.items() if isinstance(item, Mapping) else enumerate(item)
            children = [
                (f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else str(k), v)
                for k, v in pairs
            ]
            stack += reversed(children)
    return None


def _database(conn: sqlite3.Connection) -> str:
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return str(file)
    return ""


def load_dictionary(conn: sqlite3.Connection) -> zstandard.ZstdCompressionDict | None:
    """The store's newest dictionary, or None if it has none yet."""
    row = conn.execute(
        "SELECT value FROM meta WHERE key LIKE ? ORDER BY rowid DESC LIMIT 1", (_KEY + "%",)
    ).fetchone()
    if row is None or not isinstance(row[0], bytes):
        return None
    return zstandard.ZstdCompressionDict(row[0])


def _decompressor(conn: sqlite3.Connection, dict_id: int) -> zstandard.ZstdDecompressor:
    key = (_database(conn), dict_id)
    with _lock:
        found = _decompressors.get(key)
    if found is not None:
        return found
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"{_KEY}{dict_id}",)).fetchone()
    if row is None:
        raise ValueError(f"a compressed payload names dictionary {dict_id}, not in this store")
    made = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(row[0]))
    with _lock:
        _decompressors[key] = made
    return made


def decode(conn: sqlite3.Connection, value: str | bytes) -> Any:
    """A JSON column's value as data: JSON text, or a zstd frame of JSON text.

    Raises:
        ValueError: the value is neither (a damaged page, a hand edit), or holds NaN or
            Infinity, which moat never writes (its JSON is strict) and no strict JSON
            reader downstream would take.
    """
    if isinstance(value, bytes):
        try:
            dict_id = zstandard.get_frame_parameters(value).dict_id
            value = _decompressor(conn, dict_id).decompress(value)
        except zstandard.ZstdError as exc:
            raise ValueError(f"not a compressed payload: {exc}") from exc
    return json.loads(value, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


SHAPES: dict[str, type] = {
    "config": dict,
    "inputs": dict,
    "outputs": dict,
    "payload": dict,
    "reason_codes": list,
}
"""The kind of value moat writes in each JSON column that holds only one (by name without
`_json`); `output` holds whatever a graph's output is."""


def decode_column(conn: sqlite3.Connection, name: str, value: str | bytes) -> tuple[Any, bool]:
    """The value of the JSON column `name` (without `_json`) as data, and whether it read
    as moat writes it. One that does not decode, or is of another kind than the column
    holds, reads as None (like a NULL): a viewer shows the rest of the row and says so."""
    try:
        decoded = decode(conn, value)
    except ValueError:
        return None, False
    kind = SHAPES.get(name)
    if kind is not None and not isinstance(decoded, kind):
        return None, False
    return decoded, True


def frame_packer(dictionary: bytes) -> Callable[[str | None], str | bytes | None]:
    """`Packer.pack` with the store's trained `dictionary` (`load_dictionary(...).as_bytes()`),
    for a process that encodes rows without the store (a Ray worker, `encode_records`)."""
    compressor = Packer._make(zstandard.ZstdCompressionDict(dictionary))

    def pack(text: str | None) -> str | bytes | None:
        if text is None or len(text) < _MIN_BYTES:
            return text
        frame = compressor.compress(text.encode())
        return frame if len(frame) * 4 < len(text) * 3 else text

    return pack


class Packer:
    """The writer's side: encodes JSON text, compressing large payloads once the store
    has a dictionary (and training one from the first payloads if it has none)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        found = load_dictionary(conn)
        self._compressor = self._make(found) if found is not None else None
        self._samples: list[bytes | bytearray | memoryview[int]] | None = (
            [] if found is None else None
        )
        self._pending: zstandard.ZstdCompressionDict | None = None

    @staticmethod
    def _make(dictionary: zstandard.ZstdCompressionDict) -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(
            level=_LEVEL,
            dict_data=dictionary,
            write_checksum=False,
            write_content_size=True,
            write_dict_id=True,
        )

    def pack(self, text: str | None) -> str | bytes | None:
        """`text`, or a smaller zstd frame of it."""
        if text is None or len(text) < _MIN_BYTES:
            return text
        compressor = self._compressor
        if compressor is None:
            if self._samples is not None and len(self._samples) < _SAMPLES:
                self._samples.append(text.encode())
            return text
        frame = compressor.compress(text.encode())
        return frame if len(frame) * 4 < len(text) * 3 else text

    def maybe_train(self, conn: sqlite3.Connection) -> None:
        """Once enough payloads were seen, train the dictionary and record it in `meta`
        (inside the caller's write transaction), unless another writer already did; it is
        used from `committed()` on, so no row ever names a dictionary that was rolled back."""
        samples = self._samples
        if samples is None or len(samples) < _SAMPLES:
            return
        self._samples = None
        existing = load_dictionary(conn)
        if existing is None:
            try:
                existing = zstandard.train_dictionary(_DICT_BYTES, samples, level=_LEVEL)
            except zstandard.ZstdError:
                return  # too few distinct payloads to learn from: stay with text
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (f"{_KEY}{existing.dict_id()}", existing.as_bytes()),
            )
        self._pending = existing

    def committed(self) -> None:
        """The transaction that recorded a new dictionary committed: compress from now on."""
        if self._pending is not None:
            self._compressor = self._make(self._pending)
            self._pending = None


_DAMAGED_KEPT = 20
"""Damaged values `decode_rows` names at most: a viewer re-reading a damaged row every
second (the TUI) must not grow the list without end."""


def decode_rows(cursor: sqlite3.Cursor, damaged: list[str]) -> list[dict[str, Any]]:
    """The cursor's rows as dicts keyed by column name, a JSON column's decoded under its
    name without `_json` (`payload_json` -> `payload`); a JSON value that does not read as moat
    writes it is None, named in `damaged` (`payload_json of row 12`)."""
    names = [
        (d[0][:-5], _JSON)
        if d[0].endswith("_json")
        else (d[0], _NUMBER if d[0] in NUMERIC else _PLAIN)
        for d in cursor.description
    ]
    out: list[dict[str, Any]] = []
    conn = cursor.connection
    for values in cursor.fetchall():
        row: dict[str, Any] = {}
        bad: list[str] = []
        for (name, kind), value in zip(names, values, strict=True):
            if value is not None and kind is not _PLAIN:
                if kind is _JSON:
                    value, ok = decode_column(conn, name, value)
                    if not ok:
                        bad.append(f"{name}_json")
                elif type(value) is str or type(value) is bytes:  # no number moat wrote
                    value = None
                    bad.append(name)
            row[name] = value
        if bad and len(damaged) < _DAMAGED_KEPT:
            rid = row.get("id")
            for name in bad:
                label = f"{name} of row {rid}" if rid is not None else f"a value read as {name!r}"
                if label not in damaged:
                    damaged.append(label)
        out.append(row)
    return out


_JSON, _NUMBER, _PLAIN = "json", "number", "plain"
NUMERIC = frozenset(
    {
        "started_at", "finished_at", "latency_ms", "cost_usd", "duration_ms", "seq",
        "cycle", "sequence", "attempts", "input_tokens", "output_tokens", "turn_index",
        "requests_total", "requests_done", "policy_version", "version", "parent_version",
        "created_at", "activated_at", "v", "n",  # (the aliases of figures read alone)
    }
)  # fmt: skip
"""Columns (and the read queries' aliases `v`, `n`) that hold numbers: a text or blob in
one (a hand edit, another program's row) reads as None, named like a damaged JSON value."""
