"""Turning request lines into validated inputs: the one JSON reader, limits, the input schema.

A request is a JSON object: the graph's input fields, plus optional meta fields that never
reach expressions:

- `_labels`: hidden labels for benchmarking; only the `sim` provider reads them.
- `conversation_id`, `turn_index`, `parent_request_id`: recorded on the request row; kept
  in the input only when the graph's `input` schema declares them. The ids are strings
  (an integer id is recorded as its digits), `turn_index` a whole number from 0 to 2**63-1
  (what the store's column holds); `null` is the same as leaving one out.

Every source of requests (lines of an `--input` file, `--json`, `--prompt`, the Python API)
goes through the same checks, so a hostile request is that request's `invalid_input` and
never aborts a batch: at most `max_request_bytes` of JSON (a longer line is skipped without
being held in memory), at most `max_depth` levels of nesting, finite numbers, no lone
surrogates (text that cannot be stored or written as UTF-8) and JSON types only.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from engine._quick_schema import surely_valid

__all__ = [
    "DEFAULT_LIMITS",
    "BatchItem",
    "InputValidator",
    "RequestLimits",
    "count_requests",
    "decode_request",
    "parse_request",
    "read_jsonl",
    "show_value",
]

META_FIELDS = ("conversation_id", "turn_index", "parent_request_id")
_EXAMPLE = ', such as {"prompt": "..."}'
_SURROGATE = re.compile("[\ud800-\udfff]")
_SKIP_CHUNK = 1 << 16
_UTF16_BOMS = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}
"""The byte order marks of UTF-16, and the encodings they mark."""
_MAX_INT_BITS = 13_000
"""About 3,900 decimal digits: Python refuses to print (or write as JSON) longer integers."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one request may be at most (the graph's `limits:`, or `--max-request-bytes`)."""

    max_request_bytes: int = 1 << 20
    """Bytes of JSON (UTF-8) in one request; longer ones are `invalid_input` unread."""
    max_depth: int = 64
    """Levels of nested objects and lists in one request."""


DEFAULT_LIMITS = RequestLimits()
"""1 MiB and 64 levels."""


@dataclass(slots=True)
class BatchItem:
    """One request of a batch, parsed (or not) from its source.

    Not frozen (a frozen dataclass costs several times more to build, and one is built
    for every request), but treated as immutable: copy with `dataclasses.replace`.
    """

    seq: int
    """0-based position in the batch."""
    input: Mapping[str, Any] | None
    """The request input; None when it could not be parsed."""
    labels: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    """Why the request is unusable (it becomes an `invalid_input` result)."""
    line: int | None = None
    """1-based line in the input file, when it came from one."""
    source: str = "request"
    """Where the request came from (the input file, `--json`), for error messages."""


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


def _kind(value: Any) -> str:
    """What a value is, in the words of the graph language (`none`, `true`, a list)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def show_value(value: Any, limit: int = 60) -> str:
    """A value as the graph language writes it (`none`, `true`, `'text'`), shortened."""
    text = _show(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return _kind(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_show(k)}: {_show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _value_problem(value: Any, limits: RequestLimits) -> str | None:
    """Why a decoded value is not a usable request body, or None. Iterative: a value nested
    far deeper than the stack allows is reported, not a crash."""
    return _walk(value, limits)[0]


def _walk(value: Any, limits: RequestLimits) -> tuple[str | None, int]:
    """`_value_problem`, and a bound on the bytes of the value's JSON (`json.dumps` with
    its default separators, `ensure_ascii=False`): at most 6 bytes per character of text
    (an escape such as \\u0000), so a request whose bound is under the limit needs no
    encoding to be measured. Where an item is only labelled (`input prompt`) when it has
    a problem, the label is built then, not for every item."""
    # (item, depth, label of its container, its key there; None for the request itself)
    stack: list[tuple[Any, int, str, Any]] = [(value, 1, "", None)]
    size = 0
    while stack:
        item, depth, parent, key = stack.pop()
        kind = type(item)
        if kind is str:
            size += 6 * len(item) + 2
            if item.isascii() or _SURROGATE.search(item) is None:
                continue
        elif kind is int or kind is float or kind is bool or item is None:
            size += 26 if kind is not int else item.bit_length() // 3 + 3
        if not isinstance(item, Mapping | list | tuple):
            problem = _scalar_problem(item, _label(parent, key))
            if problem is not None:
                return problem, size
            continue
        if depth > limits.max_depth:
            return _too_deep(limits), size
        at = _label(parent, key)
        size += 2
        if isinstance(item, Mapping):
            problem = _key_problem(item, at)
            if problem is not None:
                return problem, size
            for name, child in item.items():
                size += 6 * len(name) + 6
                stack.append((child, depth + 1, at, name))
        else:
            for index, child in enumerate(item):
                size += 2
                stack.append((child, depth + 1, at, index))
    return None, size


def _key_problem(item: Mapping[Any, Any], at: str) -> str | None:
    for name in item:
        if not isinstance(name, str):
            return f"{at} has the key {show_value(name)}; JSON keys are strings"
        if not name.isascii() and _SURROGATE.search(name):
            return f"{at} has a key with a lone surrogate (\\ud800-\\udfff), not text"
    return None


def _label(parent: str, key: Any) -> str:
    """How messages name the item under `key` of the container labelled `parent`."""
    if key is None:
        return "the request"
    return f"input {key}" if parent == "the request" else f"{parent}/{key}"


def _scalar_problem(item: Any, at: str) -> str | None:
    if isinstance(item, str):
        if _SURROGATE.search(item):
            return f"{at} has a lone surrogate (\\ud800-\\udfff), not text"
    elif isinstance(item, bool) or item is None:
        return None
    elif isinstance(item, int):
        if item.bit_length() > _MAX_INT_BITS:
            return f"{at} is a number of more than 3,900 digits"
    elif isinstance(item, float):
        if not math.isfinite(item):
            return f"{at} is {item}, not a JSON number"
    else:
        return f"{at} is {_kind(item)}, which JSON cannot hold"
    return None


def _too_deep(limits: RequestLimits) -> str:
    return (
        f"nested more than {limits.max_depth} levels deep; flatten the request or raise "
        "`limits: {max_depth: ...}` in the graph"
    )


def _too_big(size: int | str, limits: RequestLimits) -> str:
    return (
        f"the request is {size} bytes, over the limit of {limits.max_request_bytes}; "
        "shorten it, or raise `limits: {max_request_bytes: ...}` in the graph "
        "(or `moat run --max-request-bytes N`)"
    )


def parse_request(
    value: Any,
    *,
    seq: int,
    line: int | None = None,
    source: str = "request",
    declared: frozenset[str] = frozenset(),
    limits: RequestLimits = DEFAULT_LIMITS,
) -> BatchItem:
    """Check a decoded request (as `decode_request` does) and split it into input, hidden
    labels and meta fields. Problems become an item with an `error`, never an exception."""
    flat = _flat_size(value, limits)
    problem, bound = _walk(value, limits) if flat is None else (None, flat)
    if problem is None and bound > limits.max_request_bytes and isinstance(value, Mapping):
        text = json.dumps(value, ensure_ascii=False, default=dict)
        size = len(text.encode("utf-8"))
        if size > limits.max_request_bytes:
            problem = _too_big(size, limits)
    if problem is not None:
        where = _where(source, line)
        return BatchItem(seq, None, error=f"{where}: {problem}", line=line, source=source)
    if flat is None and isinstance(value, Mapping):  # (a flat one holds no container)
        value = {name: _own(child) for name, child in value.items()}
    return _split(value, seq=seq, line=line, source=source, declared=declared)


def _own(value: Any) -> Any:
    """`value` with its dicts and lists copied all the way down (a checked request is at
    most `max_depth` deep): what a node changes in its request's input is that request's
    own, never its caller's objects, nor another request's that shares them."""
    kind = type(value)
    if kind is dict:
        return {name: _own(child) for name, child in value.items()}
    if kind is list:
        return [_own(child) for child in value]
    if kind is tuple:
        return tuple(_own(child) for child in value)
    return value


def _flat_size(value: Any, limits: RequestLimits) -> int | None:
    """`_walk`'s size bound of the common request, a dict of ASCII keys to ASCII strings,
    integers, booleans and nulls, which has no problem to find; None for any other value
    (then `_walk` looks at it)."""
    if type(value) is not dict or limits.max_depth < 1:
        return None
    size = 2
    for name, child in value.items():
        if type(name) is not str or not name.isascii():
            return None
        size += 6 * len(name) + 6
        kind = type(child)
        if kind is str:
            if not child.isascii():
                return None
            size += 6 * len(child) + 2
        elif kind is int:
            bits = child.bit_length()
            if bits > _MAX_INT_BITS:
                return None
            size += bits // 3 + 3
        elif kind is bool or child is None:
            size += 26
        else:
            return None
    return size


def _split(
    value: Any, *, seq: int, line: int | None, source: str, declared: frozenset[str]
) -> BatchItem:
    if (
        type(value) is dict
        and "_labels" not in value
        and "conversation_id" not in value  # the META_FIELDS, spelt out: checked per request
        and "turn_index" not in value
        and "parent_request_id" not in value
    ):  # the common request: nothing to split off
        return BatchItem(seq, dict(value), {}, {}, None, line, source)
    where = _where(source, line)
    if not isinstance(value, Mapping):
        error = f"{where}: a request must be a JSON object{_EXAMPLE}, not {_kind(value)}"
        return BatchItem(seq, None, error=error, line=line, source=source)
    data = dict(value)
    labels = data.pop("_labels", None) or {}
    if not isinstance(labels, Mapping):
        error = f"{where}: `_labels` must be an object, not {_kind(labels)}"
        return BatchItem(seq, None, error=error, line=line, source=source)
    meta = {k: data[k] for k in META_FIELDS if k in data}
    problem = _meta_problem(meta)
    if problem is not None:
        return BatchItem(seq, None, error=f"{where}: {problem}", line=line, source=source)
    for key in META_FIELDS:
        if key in data and key not in declared:
            del data[key]
    return BatchItem(seq, data, labels=labels, meta=meta, line=line, source=source)


_MAX_TURN = (1 << 63) - 1
"""The largest `turn_index` the store's INTEGER column holds."""


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """Why a meta field cannot be recorded on the request row, or None; an integer id is
    turned into its digits in `meta` (the row's column is text)."""
    for key in ("conversation_id", "parent_request_id"):
        value = meta.get(key)
        if value is None or type(value) is str:
            continue
        if type(value) is int and abs(value) <= _MAX_TURN:
            meta[key] = str(value)
            continue
        return f"`{key}` must be a string, not {_kind(value)} ({show_value(value, 30)})"
    turn = meta.get("turn_index")
    if turn is not None and (type(turn) is not int or not 0 <= turn <= _MAX_TURN):
        shown = f"{_kind(turn)} ({show_value(turn, 30)})"
        return f"`turn_index` must be a whole number from 0 to {_MAX_TURN}, not {shown}"
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_request(
    text: str | bytes,
    *,
    seq: int,
    line: int | None = None,
    source: str = "request",
    declared: frozenset[str] = frozenset(),
    limits: RequestLimits = DEFAULT_LIMITS,
) -> BatchItem:
    """The one JSON reader: one request's JSON text (a file line, `--json`) as a `BatchItem`.

    Whatever the text holds, the result is an item; an unusable request carries an `error`
    naming its source (and line) and how to fix it, and becomes an `invalid_input` result.
    """
    where = _where(source, line)
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > limits.max_request_bytes:
        return _bad(seq, line, source, f"{where}: {_too_big(len(raw), limits)}")
    try:
        decoded = raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        if line is None:  # an argument (`--json`, `--prompt`), not a line of a file
            at = "" if source == "--prompt" else f" (byte {exc.start + 1})"
            message = (
                f"{where}: not UTF-8 text{at}; pass it as UTF-8 (the encoding of the terminal "
                "or of the program that calls moat)"
            )
        else:
            message = f"{where}: not UTF-8 text (byte {exc.start + 1}); {_save_as_utf8(raw)}"
        return _bad(seq, line, source, message)
    try:
        try:
            value = json.loads(decoded, parse_constant=_reject_constant)
        except json.JSONDecodeError:
            if not decoded.startswith("\ufeff"):
                raise
            # a byte order mark on a later line: files joined with `cat`, each with its own
            value = json.loads(decoded.lstrip("\ufeff"), parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        at = f"{where}:{exc.colno}" if line is not None else f"{where}: column {exc.colno}"
        message = f"{at}: invalid JSON: {exc.msg}; {_json_fix(raw, decoded, exc)}"
        return _bad(seq, line, source, message)
    except RecursionError:
        return _bad(seq, line, source, f"{where}: {_too_deep(limits)}")
    except ValueError as exc:  # a number of more digits than Python converts, NaN, Infinity
        return _bad(seq, line, source, f"{where}: invalid JSON: {_number_problem(str(exc))}")
    problem = _value_problem(value, limits)
    if problem is not None:
        return _bad(seq, line, source, f"{where}: {problem}")
    return _split(value, seq=seq, line=line, source=source, declared=declared)


def _number_problem(message: str) -> str:
    """`json`'s refusal of a number, in words that say what to do."""
    if "integer string conversion" in message:
        return "a number with more than 4300 digits; send it as a string"
    return message.split(";")[0]


_LOOKS_UTF16 = "the file looks UTF-16: save it as UTF-8"


def _save_as_utf8(raw: bytes) -> str:
    """How to fix a line that is not UTF-8 (or not JSON for holding NUL bytes): a file
    saved as UTF-16 (Windows' "Unicode") has a NUL beside every ASCII character; the line
    left by splitting such a file at its newlines may start with the other half of one."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or 3 * raw.count(b"\x00") >= len(raw):
        return _LOOKS_UTF16
    if b"\x00" in raw:
        return "the line holds NUL bytes: remove them (in a string, write \\u0000)"
    return "save the file as UTF-8"


def _json_fix(raw: bytes, text: str, exc: json.JSONDecodeError) -> str:
    """How to fix a line that is not JSON: the common causes, else the expected shape."""
    if "\x00" in text:
        return _save_as_utf8(raw)
    if exc.msg == "Extra data" and "\r" in text[: exc.pos]:  # (JSON reads \r as a space)
        return (
            "the line holds a carriage return (\\r) where a line should end: end each line "
            "with \\n (convert the file's CR line ends to LF)"
        )
    return f"each line must be one JSON object{_EXAMPLE}"


def _bad(seq: int, line: int | None, source: str, error: str) -> BatchItem:
    return BatchItem(seq, None, error=error, line=line, source=source)


def _request_lines(fh: IO[bytes] | _Utf16Lines, limit: int) -> Iterator[tuple[int, bytes | int]]:
    """(line number, its bytes) of every non-blank line; (line number, its size) for a line
    over `limit` bytes, which is skipped in chunks and never held whole in memory.

    A UTF-16 file (`_Utf16Lines`) gives one line per line of its text, and one blank but
    for NULs (white space, a U+0000) and the byte order mark is blank."""
    number = 0
    limit = min(limit, sys.maxsize - 2)
    utf16 = isinstance(fh, _Utf16Lines)
    while True:
        raw = fh.readline(limit + 2)  # the line, its "\r\n", and one byte to see it is over
        if not raw:
            return
        number += 1
        more = len(raw) == limit + 2 and not raw.endswith(b"\n")  # the line goes on
        body = raw.rstrip(b"\r\n")
        # (the byte order mark is no request either)
        blank = _blank(body[2:] if utf16 and number == 1 else body, utf16)
        if not more and len(body) <= limit:
            if not blank:
                yield number, body
            continue
        size = len(body)
        while not raw.endswith(b"\n"):
            raw = fh.readline(_SKIP_CHUNK)
            if not raw:
                break
            size += len(raw.rstrip(b"\r\n"))
            blank = blank and _blank(raw, utf16)
        if not blank:
            yield number, size


def _blank(raw: bytes, utf16: bool) -> bool:
    """Whether a line holds no request: only white space (and NULs, in a UTF-16 file)."""
    if utf16 and b"\x00" in raw:
        raw = raw.replace(b"\x00", b"")
    return not raw.strip()


class _Utf16Lines:
    """A UTF-16 file (one that starts with a byte order mark) split at its newline
    characters, not at each 0x0A byte (half of many a character and of every `\n`): each
    line in the file's own encoding, ending in `b"\n"`, as `_request_lines` reads lines.
    Its lines are then refused as any line that is not UTF-8 is, one per request."""

    def __init__(self, fh: IO[bytes], encoding: str) -> None:
        self._text = io.TextIOWrapper(fh, encoding=encoding, errors="surrogatepass", newline="\n")
        self._encoding = encoding
        self._pending = b""

    def readline(self, size: int) -> bytes:
        """At most `size` bytes of the line (no more of it is held in memory)."""
        if not self._pending:
            try:
                line = self._text.readline(max(size // 2, 1))
            except UnicodeDecodeError:  # an odd last byte (a NUL pad): no character
                line = ""
            body = line.removesuffix("\n")
            end = b"\n" if len(body) < len(line) else b""
            self._pending = body.encode(self._encoding, "surrogatepass") + end
        raw, self._pending = self._pending[:size], self._pending[size:]
        return raw

    def detach(self) -> None:
        """Let go of the file without closing it."""
        self._text.detach()


@contextlib.contextmanager
def _open_lines(path: str | Path) -> Iterator[IO[bytes] | _Utf16Lines]:
    """The file to read request lines from: itself, or its text if it is UTF-16."""
    with open(path, "rb") as fh:
        encoding = _UTF16_BOMS.get(fh.peek(2)[:2])
        if encoding is None:
            yield fh
            return
        lines = _Utf16Lines(fh, encoding)
        try:
            yield lines
        finally:
            lines.detach()  # the file is closed with `fh`, not by the text wrapper


def count_requests(path: str | Path, *, limits: RequestLimits = DEFAULT_LIMITS) -> int:
    """How many requests `read_jsonl` yields for the file (its non-blank lines)."""
    with _open_lines(path) as fh:
        return sum(1 for _ in _request_lines(fh, limits.max_request_bytes))


def read_jsonl(
    path: str | Path,
    *,
    declared: frozenset[str] = frozenset(),
    limits: RequestLimits = DEFAULT_LIMITS,
) -> Iterator[BatchItem]:
    """Yield one `BatchItem` per non-blank line; bad lines become items with an error."""
    # the name as the errors show it: bytes of a file name that are not UTF-8 (which Python
    # keeps as lone surrogates) written `\xff`, as no text can hold them
    source = os.fsencode(path).decode("utf-8", "backslashreplace")
    with _open_lines(path) as fh:
        for seq, (number, raw) in enumerate(_request_lines(fh, limits.max_request_bytes)):
            if isinstance(raw, int):
                yield _bad(seq, number, source, f"{source}:{number}: {_too_big(raw, limits)}")
                continue
            if isinstance(fh, _Utf16Lines):  # (whatever its bytes look like as UTF-8)
                yield _bad(
                    seq, number, source, f"{source}:{number}: not UTF-8 text; {_LOOKS_UTF16}"
                )
                continue
            yield decode_request(
                raw, seq=seq, line=number, source=source, declared=declared, limits=limits
            )


class InputValidator:
    """Validates request inputs against the graph's `input` JSON Schema, filling defaults.

    Args:
        schema: the graph's `input` schema.
    """

    def __init__(self, schema: Mapping[str, Any]) -> None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(dict(schema))
        self._validator = cls(dict(schema))
        props = schema.get("properties", {})
        self._defaults = {
            k: v["default"] for k, v in props.items() if isinstance(v, dict) and "default" in v
        }
        self.declared = frozenset(props)
        self._surely_valid = surely_valid(schema)

    def validate(
        self, item: BatchItem, source: str = "request"
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The input with defaults applied, or the reason it is invalid."""
        if item.input is None:
            return None, item.error
        data = {**self._defaults, **item.input}
        tenant = data.get("tenant")
        if tenant is not None and (type(tenant) is not str or tenant not in _GOOD_TENANTS):
            # it names the request's cache partition and audit identity, whatever the schema
            problem = _tenant_problem(tenant)
            if problem is None and type(tenant) is str and len(_GOOD_TENANTS) < 4096:
                _GOOD_TENANTS.add(tenant)  # tenants repeat: judged once each
            if problem is not None:
                where = _where(item.source, item.line)
                return None, f"{where}: input tenant: {problem}"
        check = self._surely_valid
        if check is not None and check(data):
            return data, None
        where = _where(item.source, item.line)
        try:
            error = best_match(self._validator.iter_errors(data))
        except Exception as exc:  # e.g. a `$ref` to nothing (`moat check` reports those)
            return None, f"{where}: the graph's input schema cannot check it: {exc}"
        if error is None:
            return data, None
        at = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return None, f"{where}: input {at}: {_schema_message(error)}"


_GOOD_TENANTS: set[str] = set()
"""Tenant strings judged fine already (bounded): the common request's one lookup."""


def _tenant_problem(tenant: Any) -> str | None:
    """Why `tenant` cannot name a cache partition and an audit identity, or None."""
    if type(tenant) is int:
        return None
    if type(tenant) is not str:
        return f"must be a string or an integer, not {show_value(tenant)}"
    if not tenant.strip():
        return "is empty; name the tenant, or leave `tenant` out for `public`"
    if len(tenant) > 256:
        return f"is {len(tenant)} characters long; a tenant name has at most 256"
    if _CONTROL.search(tenant):
        return f"{show_value(tenant)} holds control characters; name the tenant in plain text"
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _schema_message(error: ValidationError) -> str:
    """jsonschema's message with the values written as the graph language writes them
    (`none`, `true`), and long values shortened."""
    message = error.message
    for value in (error.instance, error.validator_value):
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            if isinstance(value, str) and len(value) > 60:
                message = message.replace(repr(value), show_value(value))
            continue
        text = repr(value)
        if text in message:
            message = message.replace(text, show_value(value))
    return message
