"""Where each cell of a map lies on the image.

A map of ``h x w`` cells is drawn over its box (fractions ``(x0, y0, x1, y1)`` of the image), evenly
by default: column ``k`` centred at ``x0 + (k + 0.5) * (x1 - x0) / w``. A map stitched from tiles a
vision tower reads only in part is not even: SigLIP at 384 px with 14-px patches reads 378 px of
every tile, so between two tiles' cells lies a 6-px strip no cell stands for. :class:`Cells` then
gives the centre of every column (``x``) and every row (``y``) as fractions of the image, and the
map is interpolated through those centres: a pixel's fractional cell coordinate is the
piecewise-linear interpolation of the centres (clamped at the first and last), then bilinear along
each axis; zero outside the box, as for an even map. With evenly spaced centres this is
``F.interpolate(..., "bilinear", align_corners=False)`` over the box, today's even drawing.

Along an axis with fewer pixels than cells (a 32 x 5 image under 16 rows, a 5000 x 40 one drawn
448 x 4), bilinear reads only the two cells around each pixel's centre and skips the others: a word
whose evidence lies on a skipped row drew nothing. There each pixel is instead the mean of the cells
over its span (area resampling; a cell spans ``[k n / count, (k + 1) n / count)`` pixels evenly, or
halfway to its neighbours' centres), so every cell reaches a pixel with its share of it
(:func:`axis_weights`). An axis with at least a pixel per cell is bilinear, as before.

The box is snapped to whole pixels first (:func:`dcam.render.overlay.box_pixels`) and the centres
moved with it, so the cells of a map drawn at any size keep their place relative to the box edges.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, one_line


class Cells(NamedTuple):
    """Centres of a map's columns (``x``, one per column) and rows (``y``, one per row), fractions of
    the image, increasing."""

    x: Tuple[float, ...]
    y: Tuple[float, ...]

    def as_dict(self) -> dict:
        """The JSON form (meta.json, the viewer's record data): ``{"x": [...], "y": [...]}``; read back with
        :func:`check_cells` (a run's index, :class:`dcam.runs.reader.RunRecord`), which refuses damaged ones."""
        return {"x": list(self.x), "y": list(self.y)}


def _axis(values, count: int, lo: float, hi: float, name: str) -> Tuple[float, ...]:
    values = values.tolist() if hasattr(values, "tolist") else values
    ok = isinstance(values, (tuple, list)) and len(values) == count and all(
        isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v) for v in values)
    out = tuple(float(v) for v in values) if ok else ()
    if not ok or any(b <= a for a, b in zip(out, out[1:])) or out[0] <= lo or out[-1] >= hi:
        raise InputError(f"{name} must be {count} finite increasing centres inside the box ({lo:g}, {hi:g}), "
                         f"got {one_line(repr(values))}")
    return out


def check_cells(cells, grid: Sequence[int], box, name: str = "cells") -> Optional[Cells]:
    """``cells`` (None, a :class:`Cells`, a dict ``{"x", "y"}`` or a pair ``(x, y)``) as :class:`Cells` of a
    ``grid = (h, w)`` map drawn over ``box``, or None; else an InputError naming ``name``."""
    if cells is None:
        return None
    if isinstance(cells, dict):
        if set(cells) != {"x", "y"}:
            raise InputError(f"{name} must have the keys x and y, got {sorted(map(str, cells))}")
        cells = (cells["x"], cells["y"])
    if not isinstance(cells, (tuple, list)) or len(cells) != 2:
        raise InputError(f"{name} must be the column and row centres (x, y), got {one_line(repr(cells))}")
    h, w = int(grid[0]), int(grid[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    return Cells(_axis(cells[0], w, x0, x1, f"{name}.x"), _axis(cells[1], h, y0, y1, f"{name}.y"))


def even_cells(box, grid: Sequence[int]) -> Cells:
    """The centres of an evenly drawn ``grid = (h, w)`` map over ``box`` (what None stands for)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = int(grid[0]), int(grid[1])
    return Cells(tuple(x0 + (k + 0.5) * (x1 - x0) / w for k in range(w)),
                 tuple(y0 + (k + 0.5) * (y1 - y0) / h for k in range(h)))


def _centres_in_pixels(n: int, count: int, centres, lo: float, hi: float) -> np.ndarray:
    """The centres along one axis in pixels from the start of the box, which is ``n`` pixels long
    (even: ``(k + 0.5) * n / count``)."""
    if centres is None:
        return (np.arange(count) + 0.5) * (n / count)
    return (np.asarray(centres, dtype=np.float64) - lo) / (hi - lo) * n


def axis_coordinates(n: int, count: int, centres=None, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """The fractional cell coordinate (float64 ``[n]``, in ``[0, count - 1]``) of the centre of every
    pixel of a box ``n`` pixels long that ``count`` cells cover, centred at ``centres`` (fractions of
    the image; the box runs from ``lo`` to ``hi``) or evenly (None)."""
    at = _centres_in_pixels(n, count, centres, lo, hi)
    return np.interp(np.arange(n) + 0.5, at, np.arange(count, dtype=np.float64))  # (clamped at both ends)


def axis_weights(n: int, count: int, centres=None, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """float64 ``[n, count]``: each pixel's weights over the cells along one axis of a box ``n`` pixels
    long (each row sums to 1). ``n >= count``: bilinear, the two cells around the pixel's centre
    (:func:`axis_coordinates`); ``n < count``: the mean of the cells over the pixel's span ``[i, i + 1)``,
    each cell spanning ``[k n / count, (k + 1) n / count)`` (evenly) or from halfway to the previous
    centre to halfway to the next (``centres``), so no cell is skipped."""
    out = np.zeros((n, count), dtype=np.float64)
    if n >= count:
        i0, i1, lam = _lerp_pairs(axis_coordinates(n, count, centres, lo, hi), count)
        rows = np.arange(n)
        np.add.at(out, (rows, i0), 1.0 - lam)
        np.add.at(out, (rows, i1), lam)
        return out
    if centres is None:
        inner = np.arange(1, count) * n / count
    else:
        at = _centres_in_pixels(n, count, centres, lo, hi)
        inner = (at[:-1] + at[1:]) / 2.0
    edges = np.concatenate([[0.0], inner, [float(n)]])
    px = np.arange(n, dtype=np.float64)[:, None]
    return np.clip(np.minimum(px + 1.0, edges[None, 1:]) - np.maximum(px, edges[None, :-1]), 0.0, None)


def resample_area(m: np.ndarray, size: Tuple[int, int], box=(0.0, 0.0, 1.0, 1.0),
                  cells: Optional[Cells] = None) -> np.ndarray:
    """``[h, w]`` map -> float32 ``[H, W]`` (the box in pixels) through :func:`axis_weights` along each
    axis: the area mean along an axis with fewer pixels than cells, bilinear along the other. One axis
    is then shorter than the map's, so the dense product ``[H, h] @ m @ [w, W]`` stays small."""
    h, w = m.shape
    H, W = int(size[0]), int(size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    wy = axis_weights(H, h, None if cells is None else cells.y, y0, y1)
    wx = axis_weights(W, w, None if cells is None else cells.x, x0, x1)
    return (wy @ m.astype(np.float64) @ wx.T).astype(np.float32)


def _lerp_pairs(u: np.ndarray, count: int):
    """The two cells around each coordinate and the weight of the second: ``(i0, i1, lam)``."""
    i0 = np.minimum(np.floor(u).astype(np.int64), count - 1)
    return i0, np.minimum(i0 + 1, count - 1), u - i0


#: output elements per block of the column pass (float64 temporaries of ~32 MB each), so an 8192 x 8192
#: overlay needs its float32 result and a few blocks, not a full-size float64 array beside it
_BLOCK_ELEMENTS = 1 << 22


def upsample_through(m: np.ndarray, size: Tuple[int, int], box, cells: Cells) -> np.ndarray:
    """``[h, w]`` map -> float32 ``[H, W]`` (size = (H, W), the box in pixels) interpolated bilinearly
    through the cells' centres (``box``: the fractions the box spans, which ``cells`` are given in).

    Separable, as the bilinear weights are: each output row blends two map rows, then each output column
    two of those columns (in float64). The coordinates only grow along an axis, so the column gathers are
    ``np.repeat`` runs. A dense ``[H, h] @ m @ [w, W]`` product gives the same sums but multiplies by all
    the zero weights: 3.2x slower at 8192 px (``python bench/bench_render.py``). Fewer pixels than cells
    along an axis: :func:`resample_area` (the mean over each pixel's span there)."""
    h, w = m.shape
    H, W = int(size[0]), int(size[1])
    if H < h or W < w:
        return resample_area(m, (H, W), box, cells)
    x0, y0, x1, y1 = (float(v) for v in box)
    ry0, ry1, ly = _lerp_pairs(axis_coordinates(H, h, cells.y, y0, y1), h)
    rx0, rx1, lx = _lerp_pairs(axis_coordinates(W, w, cells.x, x0, x1), w)
    m64 = m.astype(np.float64)
    rows = m64[ry0] * (1.0 - ly)[:, None] + m64[ry1] * ly[:, None]  # [H, w]
    runs0, runs1 = np.bincount(rx0, minlength=w), np.bincount(rx1, minlength=w)
    kx = 1.0 - lx
    out = np.empty((H, W), dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // max(W, 1))
    for r in range(0, H, step):
        left, right = np.repeat(rows[r:r + step], runs0, axis=1), np.repeat(rows[r:r + step], runs1, axis=1)
        left *= kx
        right *= lx
        left += right
        out[r:r + step] = left
    return out


def pixel_cells(n: int, count: int, centres=None, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """The cell (int64 ``[n]``) of every pixel of a box ``n`` pixels long: evenly, the cell whose span
    ``[k n / count, (k + 1) n / count)`` holds the pixel's first edge; with ``centres``, the cell
    whose centre is nearest the pixel's centre (the spans then meet halfway between centres)."""
    if centres is None:
        return np.minimum((np.arange(n) * count) // max(n, 1), count - 1)
    at = _centres_in_pixels(n, count, centres, lo, hi)
    return np.searchsorted((at[:-1] + at[1:]) / 2.0, np.arange(n) + 0.5, side="right")


__all__ = ["Cells", "check_cells", "even_cells", "axis_coordinates", "axis_weights", "resample_area",
           "upsample_through", "pixel_cells"]
