"""The sync wire format: one table's batch as JSON, compressed with zstd (gzip without it).

A batch body is `{"v": 1, "origin", "table", "columns", "rows"}` as UTF-8 JSON; byte values
travel as `{"$b64": "..."}`. Every value is one SQLite can store: null, a boolean, an integer
of 64 bits, a float, a string of Unicode text (no lone surrogates) or bytes; anything else
(an object, a list, a larger integer) is refused here with the row and column it is in,
rather than left to fail inside a merge. The body is compressed and the codec named in
`Content-Encoding` (`zstd` or `gzip`). zstd (the `zstandard` package, a dependency of moat
since the store compresses its large payloads with it) compresses these repetitive rows
better than gzip and faster (bench/RESULTS.md, "Deferred sync"); gzip stays accepted, and is
used should `zstandard` fail to import. Decompression is
bounded (`MAX_BATCH_BYTES`), so a hostile body cannot inflate without limit.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from engine.errors import SyncError

zstandard: ModuleType | None
try:  # the `edge` extra
    import zstandard
except ImportError:  # pragma: no cover - exercised where the extra is missing
    zstandard = None


__all__ = [
    "MAX_BATCH_BYTES",
    "PROTOCOL_VERSION",
    "SyncPayload",
    "WireError",
    "available_codecs",
    "codec_name",
    "compress",
    "decode_batch",
    "encode_batch",
]

PROTOCOL_VERSION = 1
MAX_BATCH_BYTES = 64 << 20
"""The most a batch may inflate to (64 MiB)."""
_ZSTD_LEVEL = 6
_GZIP_LEVEL = 6


class WireError(SyncError):
    """An upload the receiving side cannot read (bad encoding, shape or size)."""


@dataclass(frozen=True, slots=True)
class SyncPayload:
    """One decoded batch."""

    origin: str
    table: str
    columns: list[str]
    rows: list[list[Any]]


def available_codecs() -> tuple[str, ...]:
    """The compressions this process can write, best first."""
    return ("zstd", "gzip") if zstandard is not None else ("gzip",)


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    raise TypeError(f"cannot send a value of type {type(value).__name__}")


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$b64" in obj:
        try:
            return base64.b64decode(obj["$b64"], validate=True)
        except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            raise WireError(f"a `$b64` value is not base64 text: {exc}") from exc
    return obj


_INT_RANGE = range(-(2**63), 2**63)
"""The integers SQLite stores (64-bit signed)."""


def _problem(value: Any) -> str | None:
    """Why `value` cannot be stored in a SQLite column (None: it can)."""
    if value is None or isinstance(value, bool | float | bytes):
        return None
    if isinstance(value, int):
        return None if value in _INT_RANGE else "an integer beyond 64 bits"
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode()
        except UnicodeEncodeError:
            return "text with a lone surrogate (not UTF-8)"
        return None
    return f"a JSON {'object' if isinstance(value, dict) else 'array'}"


def _check_values(columns: list[str], rows: list[list[Any]]) -> None:
    for i, row in enumerate(rows):
        for column, value in zip(columns, row, strict=True):
            problem = _problem(value)
            if problem is not None:
                raise WireError(
                    f"rows[{i}], column {column!r}: {problem} is not a value a store holds; "
                    "send null, a boolean, a 64-bit integer, a float, text or bytes"
                )


def encode_batch(
    origin: str,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    codec: str = "zstd",
) -> tuple[bytes, int]:
    """The compressed body of a batch and its uncompressed size.

    Args:
        codec: `zstd` or `gzip`; `zstd` falls back to `gzip` when `zstandard` is missing.
    """
    body = {"v": PROTOCOL_VERSION, "origin": origin, "table": table}
    body |= {"columns": list(columns), "rows": [list(r) for r in rows]}
    raw = json.dumps(body, default=_default, separators=(",", ":")).encode()
    return compress(raw, codec), len(raw)


def compress(raw: bytes, codec: str) -> bytes:
    """`raw` compressed with `codec` (`zstd`, or `gzip` when zstd is unavailable)."""
    if codec == "zstd" and zstandard is not None:
        return bytes(zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw))
    return gzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0)


def codec_name(codec: str) -> str:
    """What `compress(…, codec)` actually writes (the `Content-Encoding`)."""
    return "zstd" if codec == "zstd" and zstandard is not None else "gzip"


def _inflate(body: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        if zstandard is None:
            raise WireError("body is zstd but `zstandard` is not installed here; send gzip")
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
            raw = bytes(reader.read(MAX_BATCH_BYTES + 1))
            declared = zstandard.frame_content_size(body)  # -1: the header does not say
        except zstandard.ZstdError as exc:
            raise WireError(f"body is not valid zstd: {exc}") from exc
        if len(raw) <= MAX_BATCH_BYTES and 0 <= declared != len(raw):
            raise _truncated(f"its zstd frame inflates to {len(raw)} of its {declared} bytes")
    elif encoding == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            raw = inflater.decompress(body, MAX_BATCH_BYTES + 1)
        except zlib.error as exc:
            raise WireError(f"body is not valid gzip: {exc}") from exc
        if len(raw) <= MAX_BATCH_BYTES and not inflater.eof:
            raise _truncated(f"its gzip stream stops after {len(raw)} bytes, short of its end")
    elif encoding in ("", "identity"):
        raw = body
    else:
        raise WireError(f"Content-Encoding {encoding!r} is not supported; use zstd or gzip")
    if len(raw) > MAX_BATCH_BYTES:
        raise WireError(f"batch inflates past {MAX_BATCH_BYTES} bytes; send smaller batches")
    return raw


def _truncated(what: str) -> WireError:
    return WireError(f"body is cut short: {what}; send the whole batch")


def decode_batch(body: bytes, encoding: str) -> SyncPayload:
    """Read a batch body.

    Raises:
        WireError: the body is not a batch this version reads.
    """
    try:
        data = json.loads(_inflate(body, encoding), object_hook=_hook)
    except RecursionError as exc:
        raise WireError("body is not JSON this side reads: it nests too deeply") from exc
    except json.JSONDecodeError as exc:
        raise WireError(f"body is not JSON: {exc}") from exc
    except ValueError as exc:  # not UTF-8, or an integer of over 4300 digits
        raise WireError(f"body is not JSON a store holds: {str(exc).split(';')[0]}") from exc
    if not isinstance(data, dict) or data.get("v") != PROTOCOL_VERSION:
        raise WireError(f"not a sync batch of protocol version {PROTOCOL_VERSION}")
    origin, table = data.get("origin"), data.get("table")
    columns, rows = data.get("columns"), data.get("rows")
    if not (isinstance(origin, str) and origin.isalnum() and len(origin) <= 64):
        raise WireError("`origin` must be an alphanumeric id of at most 64 characters")
    if not isinstance(table, str):
        raise WireError("`table` must be a string")
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise WireError("`columns` must be a list of names")
    if len(set(columns)) != len(columns):
        twice = sorted(c for c, n in Counter(columns).items() if n > 1)
        raise WireError(f"`columns` names {twice} more than once; name each column once")
    if not (isinstance(rows, list) and all(isinstance(r, list) for r in rows)):
        raise WireError("`rows` must be a list of lists")
    if any(len(r) != len(columns) for r in rows):
        raise WireError("every row must have one value per column")
    _check_values(columns, rows)
    return SyncPayload(origin, table, columns, rows)
