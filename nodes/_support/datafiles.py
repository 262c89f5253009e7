"""Parses the data files nodes read (a corpus, a cache's warm file), naming file and line.

The reading itself is `engine.read_text_file`'s; these turn the text into values and say
where a file goes wrong, for `moat check` and for the run.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

__all__ = ["json_lines", "yaml_data"]


def json_lines(raw: str, where: str, example: str) -> list[Any]:
    """The values of a JSONL text, blank lines skipped.

    Args:
        raw: the file's text.
        where: how messages name the file (`corpus docs.jsonl`).
        example: what one line should hold, for the fix (`{"id": ..., "text": ...}`).

    Raises:
        ValueError: a line that is not JSON, named by its number.
    """
    values = []
    for number, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(
                    f"{where}:{number}: not JSON ({exc}); write one {example} object per line"
                ) from None
    return values


def yaml_data(raw: str, where: str) -> Any:
    """The value of a YAML (or JSON) text.

    Raises:
        ValueError: it does not parse; the message carries the parser's line and column.
    """
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not YAML or JSON: {exc}") from None
