"""Reading the PNGs that matplotlib draws back into data: where each axes box is (its dark
frame) and whether a series' colour lies where its values say. Tests of pictures assert
with these, so a blank or wrong picture fails, not just one of the wrong size."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

# matplotlib's default colour cycle (C0, C1, ...) and tab:purple, as RGB
CYCLE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
C0, C1 = CYCLE[:2]
PURPLE, BLACK = (148, 103, 189), (0, 0, 0)
DARK = 140  # a pixel whose every channel is below this is part of a frame, a tick or text
MIN_FRAME = 100  # pixels: frames are longer than any tick, dash or letter


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def _runs(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, first column, last column) of every horizontal run of True at least MIN_FRAME long."""
    out = []
    for i, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
        out += [(i, s, e - 1) for s, e in zip(edges[::2], edges[1::2]) if e - s >= MIN_FRAME]
    return out


@dataclass(frozen=True)
class Box:
    """An axes frame in pixels (inclusive), with the data limits it spans."""
    left: int
    top: int
    right: int
    bottom: int

    def pixel(self, x: float, y: float, xlim: tuple[float, float], ylim: tuple[float, float],
              log_y: bool = False) -> tuple[int, int]:
        if log_y:
            y, ylim = math.log10(y), (math.log10(ylim[0]), math.log10(ylim[1]))
        px = self.left + (x - xlim[0]) / (xlim[1] - xlim[0]) * (self.right - self.left)
        py = self.bottom - (y - ylim[0]) / (ylim[1] - ylim[0]) * (self.bottom - self.top)
        return round(px), round(py)


def axes_boxes(img: np.ndarray) -> list[Box]:
    """Every axes frame, left to right: long dark horizontal lines paired with dark vertical ones."""
    dark = img.max(axis=2) < DARK
    rows, cols = _runs(dark), _runs(dark.T)
    boxes = []
    for top, l1, r1 in rows:
        for bottom, l2, r2 in rows:
            if bottom <= top + MIN_FRAME or abs(r1 - r2) > 2:
                continue
            left = max(l1, l2)  # the bottom frame line may start at a tick
            sides = [c for c, t, b in cols if t <= top + 1 and b >= bottom - 1]
            if any(abs(c - left) <= 1 for c in sides) and any(abs(c - r1) <= 1 for c in sides):
                boxes.append(Box(left, top, r1, bottom))
    return sorted(set(boxes), key=lambda b: b.left)


def auto_limits(values: list[float], log: bool = False) -> tuple[float, float]:
    """matplotlib's automatic axis limits: the data range widened by the rcParams margin each side."""
    m = matplotlib.rcParams["axes.xmargin"]
    assert m == matplotlib.rcParams["axes.ymargin"]
    lo, hi = (math.log10(min(values)), math.log10(max(values))) if log else (min(values), max(values))
    span = hi - lo
    lo, hi = lo - m * span, hi + m * span
    return (10 ** lo, 10 ** hi) if log else (lo, hi)


def colour_count(img: np.ndarray, px: int, py: int, colour: tuple[int, int, int], radius: int = 3,
                 tol: int = 40) -> int:
    """Pixels within ``radius`` of (px, py) that have ``colour`` (each channel within ``tol``)."""
    win = img[max(0, py - radius):py + radius + 1, max(0, px - radius):px + radius + 1]
    return int((np.abs(win - np.array(colour)).max(axis=2) < tol).sum())


def inside(img: np.ndarray, box: Box, margin: int = 2) -> np.ndarray:
    return img[box.top + margin:box.bottom - margin + 1, box.left + margin:box.right - margin + 1]


def near_line(px: int, py: int, points: list[tuple[int, int]], radius: int) -> bool:
    """Whether the polyline through ``points`` (pixels) passes within ``radius`` of (px, py)."""
    for (ax, ay), (bx, by) in zip(points, points[1:] or points):
        dx, dy = bx - ax, by - ay
        t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy))) if dx or dy else 0.0
        if math.hypot(ax + t * dx - px, ay + t * dy - py) <= radius:
            return True
    return False


def assert_series_drawn(img: np.ndarray, box: Box, series: list[tuple[tuple[int, int, int], list[tuple[float, float]]]],
                        xlim: tuple[float, float], ylim: tuple[float, float], log_y: bool = False,
                        radius: int = 3, dashed: tuple = (), drawn: list | None = None) -> None:
    """Every point of every series shows its colour at its place in ``box``. Series are given
    in drawing order: where a later series' line passes (nearly) through the same place,
    that series' colour may have covered the earlier one's. ``dashed`` series, drawn last,
    may cover others but are not checked themselves (a point can fall in a gap). ``drawn``:
    the whole lines, in the same order, when ``series`` and ``dashed`` check only some of
    their points."""
    lines = [(colour, [box.pixel(x, y, xlim, ylim, log_y) for x, y in points])
             for colour, points in (drawn if drawn is not None else [*series, *dashed])]
    for i, (colour, points) in enumerate(series):
        for x, y in points:
            px, py = box.pixel(x, y, xlim, ylim, log_y)
            found = colour_count(img, px, py, colour, radius)
            covered = any(near_line(px, py, line, radius) and colour_count(img, px, py, c, radius)
                          for c, line in lines[i + 1:])
            assert found or covered, f"colour {colour} missing at data ({x}, {y}) = pixel ({px}, {py})"
