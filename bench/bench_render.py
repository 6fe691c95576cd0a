"""What placing a stitched map through its cells costs, against the even box's upsampling.

    OMP_NUM_THREADS=1 python bench/bench_render.py [--sizes 1024 4096 8192] [--rounds 5]

A stitched anyres map (52 x 81 cells, LLaVA-NeXT's 3 x 2 tiles of a 1100 x 700
image) is drawn on an image whose longer side is each size, three ways, each
once per round in one process (so they share the machine's state):

- ``even``: ``map_on_image`` without cells (torch's bilinear ``F.interpolate``),
  what every map without cells gets; the baseline;
- ``cells``: ``map_on_image`` through the map's cell centres (the shipped path:
  separable, two ``np.repeat`` gathers per band of rows);
- ``dense``: the same interpolation as one dense ``[H, h] @ m @ [w, W]`` product
  (session 28's first version), to show what the separable path saves.

Printed: the median time of each over the rounds and the ratios cells / even
and dense / cells, with the largest difference between cells and dense.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from dcam.render.cells import Cells, axis_coordinates
from dcam.render.overlay import box_pixels, map_on_image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # script_support, as `python bench/<this>.py` has it
from script_support import require_at_least  # noqa: E402


def dense_placement(m: np.ndarray, size, box, cells: Cells) -> np.ndarray:
    """The same bilinear placement as a dense product of two weight matrices (float64)."""
    def weights(u, count):
        i0 = np.minimum(np.floor(u).astype(np.int64), count - 1)
        i1 = np.minimum(i0 + 1, count - 1)
        out = np.zeros((u.shape[0], count))
        np.add.at(out, (np.arange(u.shape[0]), i0), 1.0 - (u - i0))
        np.add.at(out, (np.arange(u.shape[0]), i1), u - i0)
        return out

    x0, y0, x1, y1 = box
    px0, py0, px1, py1 = box_pixels(box, size)
    wy = weights(axis_coordinates(py1 - py0, m.shape[0], cells.y, y0, y1), m.shape[0])
    wx = weights(axis_coordinates(px1 - px0, m.shape[1], cells.x, x0, x1), m.shape[1])
    out = np.zeros(size, dtype=np.float32)
    out[py0:py1, px0:px1] = np.clip(wy @ m.astype(np.float64) @ wx.T, 0.0, 1.0)
    return out


def stitched_case(side: int):
    """A 52 x 81 map with uneven cells (tiles' strips between them), the image's size at ``side``."""
    rng = np.random.default_rng(0)
    m = rng.random((52, 81)).astype(np.float32)

    def centres(count, tiles):
        per = count // tiles
        # each tile reads 378 of its 384 px: cells bunch inside the tiles, 6-px gaps between
        return tuple(float(v) for v in ((np.arange(count) // per) * 384 + (np.arange(count) % per + 0.5)
                                        * 378 / per) / (384 * tiles))

    cells = Cells(centres(81, 3), centres(52, 2))
    H, W = (round(side * 700 / 1100), side)
    return m, (H, W), (0.0, 0.0, 1.0, 1.0), cells


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192],
                    help="longer sides of the image, in pixels (default 1024 4096 8192)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every path (default 5)")
    args = ap.parse_args(argv)
    require_at_least(ap, args, ["sizes"], minimum=2)
    require_at_least(ap, args, ["rounds"])
    print(f"{'side':>6} {'even ms':>9} {'cells ms':>9} {'dense ms':>9} {'cells/even':>10} {'dense/cells':>11} "
          f"{'max |cells-dense|':>17}")
    for side in args.sizes:
        m, size, box, cells = stitched_case(side)
        paths = {"even": lambda: map_on_image(m, size, box),
                 "cells": lambda: map_on_image(m, size, box, cells),
                 "dense": lambda: dense_placement(m, size, box, cells)}
        times = {k: [] for k in paths}
        for _ in range(args.rounds):
            for k, fn in paths.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = float(np.abs(paths["cells"]() - paths["dense"]()).max())
        print(f"{side:>6} {med['even'] * 1e3:>9.1f} {med['cells'] * 1e3:>9.1f} {med['dense'] * 1e3:>9.1f} "
              f"{med['cells'] / med['even']:>10.2f} {med['dense'] / med['cells']:>11.2f} {diff:>17.2e}")


if __name__ == "__main__":
    main()
