"""Plain-text tables whose columns are as wide as their widest cell (`moat runs`, `moat
policy list`, `moat policy history`).

A run id or policy name that arrived by `moat sync` can carry `@ORIGIN`; a fixed column
width would push every cell after it out of line.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Sequence

__all__ = ["columns", "text_width"]

_GAP = "  "


def text_width(text: str) -> int:
    """How many terminal cells `text` takes: wide (CJK) characters two, combining marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def columns(rows: Sequence[Sequence[str]], *, right: Collection[int] = ()) -> str:
    """The rows (the header first) as lines, columns two spaces apart.

    Args:
        rows: the cells of each line, the same number in each.
        right: indexes of the columns aligned right (numbers); the others align left,
            and the last is not padded (no trailing spaces).
    """
    count = len(rows[0])
    widths = [max(text_width(row[i]) for row in rows) for i in range(count)]
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - text_width(cell))
            if i in right:
                cells.append(pad + cell)
            else:
                cells.append(cell if i == count - 1 else cell + pad)
        lines.append(_GAP.join(cells))
    return "\n".join(lines) + "\n"
