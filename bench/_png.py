"""Draws the cost-versus-p95 scatter chart as a PNG, with only zlib and struct.

A `Canvas` is an RGB pixel buffer with the few primitives a scatter plot needs (axis-aligned
lines, filled discs, text in a built-in 5x7 bitmap font); `write_png` encodes it;
`cost_vs_p95` lays out the chart, one labelled point per configuration.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["Canvas", "cost_vs_p95", "cost_vs_quality", "write_png"]

Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)
GREY: Color = (225, 225, 225)
WHITE: Color = (255, 255, 255)
PALETTE: tuple[Color, ...] = (
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip

# Rows of each glyph as 5-bit values, two hex digits per row (7 rows).
_FONT_HEX = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F",
    "3": "1F02040201110E", "4": "02060A121F0202", "5": "1F101E0101110E",
    "6": "0608101E11110E", "7": "1F010204080808", "8": "0E11110E11110E",
    "9": "0E11110F01020C", "A": "0E1111111F1111", "B": "1E11111E11111E",
    "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F",
    "F": "1F10101E101010", "G": "0E11101711110F", "H": "1111111F111111",
    "I": "0E04040404040E", "J": "0702020202120C", "K": "11121418141211",
    "L": "1010101010101F", "M": "111B1515111111", "N": "11111915131111",
    "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D",
    "R": "1E11111E141211", "S": "0F10100E01011E", "T": "1F040404040404",
    "U": "1111111111110E", "V": "11111111110A04", "W": "1111111515150A",
    "X": "11110A040A1111", "Y": "1111110A040404", "Z": "1F01020408101F",
    "-": "0000001F000000", ".": "00000000000C0C", ",": "000000000C0408",
    ":": "000C0C000C0C00", "/": "00010204081000", "$": "040F140E051E04",
    "%": "18190204081303", "(": "02040808080402", ")": "08040202020408",
    "_": "0000000000001F", "=": "00001F001F0000", "+": "0004041F040400",
    ">": "08040201020408", "<": "02040810080402", " ": "00000000000000",
}  # fmt: skip
FONT: dict[str, tuple[int, ...]] = {
    ch: tuple(int(rows[i : i + 2], 16) for i in range(0, 14, 2)) for ch, rows in _FONT_HEX.items()
}


class Canvas:
    """An RGB image, white to start with; (0, 0) is the top left corner."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(WHITE * (width * height))

    def set(self, x: int, y: int, color: Color) -> None:
        """Paint one pixel (ignored outside the image)."""
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i : i + 3] = bytes(color)

    def hline(self, x0: int, x1: int, y: int, color: Color = BLACK) -> None:
        """A horizontal line from x0 to x1 inclusive."""
        for x in range(min(x0, x1), max(x0, x1) + 1):
            self.set(x, y, color)

    def vline(self, x: int, y0: int, y1: int, color: Color = BLACK) -> None:
        """A vertical line from y0 to y1 inclusive."""
        for y in range(min(y0, y1), max(y0, y1) + 1):
            self.set(x, y, color)

    def disc(self, cx: int, cy: int, r: int, color: Color) -> None:
        """A filled disc."""
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r + r:
                    self.set(cx + dx, cy + dy, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color = BLACK) -> None:
        """A straight segment (Bresenham), two pixels thick."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.set(x0, y0, color)
            self.set(x0, y0 + 1, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> None:
        """`text` (upper-cased) with its top left corner at (x, y)."""
        for n, ch in enumerate(text.upper()):
            rows = FONT.get(ch, FONT[" "])
            for row, bits in enumerate(rows):
                for col in range(5):
                    if bits & (0x10 >> col):
                        self._block(x + (6 * n + col) * scale, y + row * scale, scale, color)

    def _block(self, x: int, y: int, size: int, color: Color) -> None:
        for dy in range(size):
            for dx in range(size):
                self.set(x + dx, y + dy, color)


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of `text` drawn at `scale`."""
    return max(0, 6 * len(text) - 1) * scale


def write_png(canvas: Canvas, path: Path) -> None:
    """Encode `canvas` as an 8-bit RGB PNG at `path`."""
    stride = 3 * canvas.width
    raw = b"".join(
        b"\x00" + bytes(canvas.pixels[y * stride : (y + 1) * stride]) for y in range(canvas.height)
    )
    header = struct.pack(">IIBBBBB", canvas.width, canvas.height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks if span > 0 else 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _axis(values: Sequence[float]) -> tuple[float, float]:
    top = max((v for v in values if math.isfinite(v)), default=1.0) * 1.1 or 1.0
    step = _nice_step(top)
    return step, step * math.ceil(top / step)


def cost_vs_p95(
    points: Mapping[str, tuple[float, float]], path: Path, title: str = "COST PER CASE VS P95"
) -> None:
    """Scatter of `{name: (p95_ms, cost_per_case)}` to a PNG at `path`."""
    canvas = Canvas(800, 520)
    left, right, top, bottom = 90, 770, 50, 460
    xs = [p95 / 1000 for p95, _ in points.values()]
    ys = [cost * 1000 for _, cost in points.values()]
    xstep, xmax = _axis(xs)
    ystep, ymax = _axis(ys)

    def px(x: float) -> int:
        return round(left + (right - left) * x / xmax)

    def py(y: float) -> int:
        return round(bottom - (bottom - top) * y / ymax)

    _grid(canvas, (left, right, top, bottom), (xstep, xmax, ystep, ymax), (px, py))
    canvas.text(left, 10, title, scale=2)
    canvas.text((left + right) // 2 - 80, bottom + 40, "P95 LATENCY (S)", scale=2)
    canvas.text(6, top - 14, "COST PER 1,000 CASES ($)")
    shown = [
        (n, name, px(x), py(y))
        for n, (name, x, y) in enumerate(zip(points, xs, ys, strict=True))
        if math.isfinite(x) and math.isfinite(y)
    ]
    taken = [(cx - 6, cy - 6, cx + 6, cy + 6) for _, _, cx, cy in shown]
    for n, name, cx, cy in shown:
        color = PALETTE[n % len(PALETTE)]
        canvas.disc(cx, cy, 5, color)
        lx, ly = _place_label(cx, cy, text_width(name), taken, right)
        canvas.text(lx, ly, name, color)
    write_png(canvas, path)


def _grid(
    canvas: Canvas,
    box: tuple[int, int, int, int],
    steps: tuple[float, ...],
    f: tuple[Callable[[float], int], Callable[[float], int]],
) -> None:
    left, right, top, bottom = box
    xstep, xmax, ystep, ymax = steps
    px, py = f
    for i in range(round(xmax / xstep) + 1):
        x = px(i * xstep)
        canvas.vline(x, top, bottom, GREY)
        label = f"{i * xstep:g}"
        canvas.text(x - text_width(label) // 2, bottom + 8, label)
    for i in range(round(ymax / ystep) + 1):
        y = py(i * ystep)
        canvas.hline(left, right, y, GREY)
        label = f"{i * ystep:.4g}"
        canvas.text(left - 8 - text_width(label), y - 3, label)
    canvas.hline(left, right, bottom)
    canvas.vline(left, top, bottom)


def _place_label(
    cx: int, cy: int, width: int, taken: list[tuple[int, int, int, int]], right: int
) -> tuple[int, int]:
    """A spot beside the point that does not overlap earlier labels."""
    x = cx + 9 if cx + 9 + width <= right + 25 else cx - 9 - width
    for dy in (-3, 7, -13, 17, -23, 27, -33, 37):
        box = (x, cy + dy, x + width, cy + dy + 7)
        if not any(_overlaps(box, other) for other in taken):
            taken.append(box)
            return x, cy + dy
    return x, cy - 3


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] + 1 and b[1] <= a[3] + 1


def cost_vs_quality(
    figures: Mapping[str, Mapping[str, object]], path: Path, *, simulated: bool = True
) -> None:
    """Quality against cost per case: one labelled point per configuration (its default
    policy), its threshold sweep as a line through the swept points, and the oracle as a
    ring: the frontier no router with these models can pass."""
    canvas = Canvas(900, 560)
    left, right, top, bottom = 90, 860, 50, 490
    points: dict[str, tuple[float, float]] = {}
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, row in figures.items():
        cost, quality = row.get("cost_per_case"), row.get("quality")
        if isinstance(cost, float | int) and isinstance(quality, float | int):
            points[name] = (float(cost) * 1000, float(quality))
        sweep = row.get("sweep")
        if isinstance(sweep, list) and sweep:
            curves[name] = sorted((p["cost_per_case"] * 1000, p["quality"]) for p in sweep)
    every = [*points.values(), *(p for c in curves.values() for p in c)]
    xstep, xmax = _axis([x for x, _ in every] or [1.0])
    low = min((y for _, y in every), default=0.0)
    ystep = _nice_step(max(1.0, 100.0 - low), 5)
    ymin = max(0.0, ystep * math.floor((low - 2) / ystep))

    def px(x: float) -> int:
        return round(left + (right - left) * x / xmax)

    def py(y: float) -> int:
        return round(bottom - (bottom - top) * (y - ymin) / (100.0 - ymin))

    _grid_quality(canvas, (left, right, top, bottom), (xstep, xmax, ystep, ymin), (px, py))
    kind = "SIMULATED" if simulated else "REAL ENDPOINTS"
    canvas.text(left, 10, f"QUALITY VS COST PER CASE ({kind})", scale=2)
    canvas.text((left + right) // 2 - 120, bottom + 40, "COST PER 1,000 CASES ($)", scale=2)
    canvas.text(6, top - 14, "QUALITY (POINTS OF 100)")
    names = list(points)
    taken: list[tuple[int, int, int, int]] = []
    for n, name in enumerate(names):
        color = PALETTE[n % len(PALETTE)]
        curve = curves.get(name, [])
        for (x0, y0), (x1, y1) in itertools.pairwise(curve):
            canvas.line(px(x0), py(y0), px(x1), py(y1), color)
        for x, y in curve:
            canvas.disc(px(x), py(y), 2, color)
        cx, cy = px(points[name][0]), py(points[name][1])
        canvas.disc(cx, cy, 6 if name == "oracle" else 5, BLACK if name == "oracle" else color)
        if name == "oracle":
            canvas.disc(cx, cy, 3, WHITE)
        lx, ly = _place_label(cx, cy, text_width(name.upper()), taken, right)
        canvas.text(lx, ly, name.upper(), BLACK if name == "oracle" else color)
    write_png(canvas, path)


def _grid_quality(
    canvas: Canvas,
    box: tuple[int, int, int, int],
    steps: tuple[float, float, float, float],
    f: tuple[Callable[[float], int], Callable[[float], int]],
) -> None:
    left, right, top, bottom = box
    xstep, xmax, ystep, ymin = steps
    px, py = f
    for i in range(round(xmax / xstep) + 1):
        x = px(i * xstep)
        canvas.vline(x, top, bottom, GREY)
        label = f"{i * xstep:g}"
        canvas.text(x - text_width(label) // 2, bottom + 8, label)
    value = ymin
    while value <= 100.0 + 1e-9:
        y = py(value)
        canvas.hline(left, right, y, GREY)
        label = f"{value:g}"
        canvas.text(left - 8 - text_width(label), y - 3, label)
        value += ystep
    canvas.hline(left, right, bottom)
    canvas.vline(left, top, bottom)
