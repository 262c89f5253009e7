"""Turning request lines into validated inputs: JSONL parsing, meta fields, the input schema.

A request is a JSON object: the graph's input fields, plus optional meta fields that never
reach expressions:

- `_labels`: hidden labels for benchmarking; only the `sim` provider reads them.
- `conversation_id`, `turn_index`, `parent_request_id`: recorded on the request row; kept
  in the input only when the graph's `input` schema declares them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

__all__ = ["BatchItem", "InputValidator", "parse_request", "read_jsonl"]

META_FIELDS = ("conversation_id", "turn_index", "parent_request_id")


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One request of a batch, parsed (or not) from its source."""

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


def parse_request(
    value: Any,
    *,
    seq: int,
    line: int | None = None,
    source: str = "request",
    declared: frozenset[str] = frozenset(),
) -> BatchItem:
    """Split a decoded request into input, hidden labels and meta fields."""
    where = f"{source}:{line}" if line is not None else source
    if not isinstance(value, dict):
        return BatchItem(
            seq,
            None,
            error=f"{where}: a request must be a JSON object, not {type(value).__name__}",
            line=line,
        )
    data = dict(value)
    labels = data.pop("_labels", None) or {}
    if not isinstance(labels, dict):
        return BatchItem(seq, None, error=f"{where}: `_labels` must be an object", line=line)
    meta = {k: data[k] for k in META_FIELDS if k in data}
    for key in META_FIELDS:
        if key in data and key not in declared:
            del data[key]
    return BatchItem(seq, data, labels=labels, meta=meta, line=line, source=source)


def read_jsonl(path: str | Path, *, declared: frozenset[str] = frozenset()) -> Iterator[BatchItem]:
    """Yield one `BatchItem` per non-blank line; bad lines become items with an error."""
    seq = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield BatchItem(
                    seq,
                    None,
                    error=(
                        f"{path}:{number}:{exc.colno}: invalid JSON: {exc.msg}; each line must"
                        ' be one JSON object, such as {"prompt": "..."}'
                    ),
                    line=number,
                )
            else:
                yield parse_request(
                    value, seq=seq, line=number, source=str(path), declared=declared
                )
            seq += 1


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

    def validate(
        self, item: BatchItem, source: str = "request"
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The input with defaults applied, or the reason it is invalid."""
        if item.input is None:
            return None, item.error
        data = {**self._defaults, **item.input}
        error = best_match(self._validator.iter_errors(data))
        if error is None:
            return data, None
        where = f"{item.source}:{item.line}" if item.line is not None else item.source
        at = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return None, f"{where}: input {at}: {error.message}"
