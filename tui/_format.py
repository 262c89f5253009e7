"""Formatting of numbers, times and states for display, with theme-aware colours.

Colours come from the running app's theme (`$success`, `$warning`, `$error`, ...) so the
TUI reads well on light and dark terminals; nothing here hard-codes a colour.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from rich.console import JustifyMethod
from rich.text import Text
from textual.app import App

__all__ = [
    "NOT_A_NUMBER",
    "NOT_A_TIME",
    "STATE_COLOURS",
    "bar",
    "ellipsize",
    "fit_widths",
    "ms",
    "pct",
    "plain",
    "printable",
    "styled",
    "usd",
    "utc",
    "utc_short",
]

_CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0))
_BIDI = (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_UNPRINTABLE = {code: f"\\x{code:02x}" for code in _CONTROLS} | {
    code: f"\\u{code:04x}" for code in _BIDI
}
"""C0 and C1 control characters (ESC starts a terminal command) and the bidirectional
overrides (they reorder what follows on screen), each written as its escape."""
_UNPRINTABLE_LINES = {code: text for code, text in _UNPRINTABLE.items() if code != 0x0A}

STATE_COLOURS: Mapping[str, str] = {
    "ok": "success",
    "succeeded": "success",
    "finished": "success",
    "active": "success",
    "partial": "warning",
    "cancelled": "warning",
    "discarded": "warning",
    "running": "accent",
    "interrupted": "warning",
    "pruning": "warning",
    "failed": "error",
    "timed_out": "error",
    "deadline_exceeded": "error",
    "invalid_input": "error",
    "bad": "error",
}
"""Theme variable per status or state; states not listed are shown dimmed."""

NOT_A_NUMBER = "?"
"""What `ms`, `usd` and `pct` show for a stored figure that is no number (hand-edited text)."""
NOT_A_TIME = "not a time"
"""What `utc` shows for a stored timestamp no clock can show (text, NaN, beyond year 9999)."""


def printable(text: object, *, lines: bool = False) -> str:
    """`text` safe to put on screen as it is: control characters and bidirectional
    overrides written as escapes (`\\x1b`), so text read from a store can neither drive
    the terminal nor reorder the screen. Rich and Textual markup stays literal as long as
    the result goes into `Text`, `Content` or a widget made with `markup=False`.

    Args:
        text: the value (not a string: its `str`).
        lines: keep line breaks (for multi-line panels); otherwise they are escaped too.
    """
    return str(text).translate(_UNPRINTABLE_LINES if lines else _UNPRINTABLE)


def plain(value: object, *, justify: JustifyMethod | None = None) -> Text:
    """A table cell: `value` as unstyled, printable text (`-` for None)."""
    return Text("-" if value is None else printable(value), justify=justify)


def styled(app: App[object], text: str, state: str | None = None) -> Text:
    """`text` as Rich text coloured for `state` (default: `text` itself) from the theme."""
    name = STATE_COLOURS.get(state if state is not None else text)
    colour = app.theme_variables.get(name) if name else None
    return Text(printable(text), style=colour or "dim")


def ms(value: float | None) -> str:
    """Milliseconds, compact: `842ms`, `1.24s`, `-` when unknown."""
    if not isinstance(value, int | float):
        return "-" if value is None else NOT_A_NUMBER
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def usd(value: float | None) -> str:
    """Dollars with enough digits for per-request costs."""
    if not isinstance(value, int | float):
        return "-" if value is None else NOT_A_NUMBER
    return f"${value:.4f}"


def pct(value: float | None) -> str:
    """A ratio as a percentage, `-` when unknown."""
    if not isinstance(value, int | float):
        return "-" if value is None else NOT_A_NUMBER
    return f"{value * 100:.0f}%"


def utc(at: float | None) -> str:
    """A store timestamp as `YYYY-MM-DD HH:MM:SS` UTC (stable across time zones)."""
    return _strftime("%Y-%m-%d %H:%M:%S", at)


def utc_short(at: float | None) -> str:
    """A store timestamp as `MM-DD HH:MM:SS` UTC, for narrow columns."""
    return _strftime("%m-%d %H:%M:%S", at)


def _strftime(layout: str, at: float | None) -> str:
    if at is None:
        return "-"
    try:
        return time.strftime(layout, time.gmtime(at))
    except (TypeError, ValueError, OverflowError, OSError):  # a hand-edited or damaged row
        return NOT_A_TIME


def ellipsize(text: str, width: int, *, middle: bool = False) -> str:
    """`text` cut to `width` cells with an ellipsis, at the end or (`middle`) in the middle.

    A middle cut keeps both ends, which is what tells ids such as `r-20240501-…-c3d4` apart.
    """
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    if not middle:
        return text[: width - 1] + "…"
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + (text[-tail:] if tail else "")


def fit_widths(
    natural: Sequence[int], minimum: Sequence[int], shrink_order: Sequence[int], available: int
) -> list[int]:
    """Column widths that fit `available` cells, shrinking only the columns that may shrink.

    Args:
        natural: the width each column's content needs.
        minimum: the narrowest each column may become (its natural width for columns
            that must never be cut).
        shrink_order: the columns that may shrink, least important first; each is cut
            down to its minimum before the next one is touched.
        available: the cells there are for all columns together.

    Returns:
        The widths: never below `min(natural, minimum)`; summing to at most `available`
        whenever the minimums allow it.
    """
    widths = list(natural)
    excess = sum(widths) - available
    for column in shrink_order:
        if excess <= 0:
            break
        cut = min(excess, max(0, widths[column] - minimum[column]))
        widths[column] -= cut
        excess -= cut
    return widths


def bar(offset: float, length: float, total: float, width: int) -> tuple[int, int]:
    """Start column and cell count of a bar for [offset, offset+length] on a `total` axis."""
    if total <= 0:
        return 0, 1
    start = min(width - 1, max(0, int(offset / total * width)))
    cells = max(1, min(width - start, round(length / total * width)))
    return start, cells
