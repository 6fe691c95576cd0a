"""Where every view of an "anyres" image lies in the token sequence.

LLaVA-NeXT, LLaVA-OneVision (transformers) and the ``llava``-package dMLLMs
(LLaDA-V, LaViDa) show the model a *base view* (the whole image squashed to one
tile) and a *high-resolution grid*: the image resized into the best-fitting
"grid pinpoint" resolution, cut into tiles, the tiles' features stitched into
one feature map, the padding cropped away again ("unpad", so the map has the
image's aspect), optionally shrunk (``anyres_max_N``), and an image-newline
token appended to every row. In the sequence: the base view's ``u*u`` tokens
(raster order), then the grid's ``h*(w+1)`` tokens row by row.

Everything here is computed from what the processor gives the model (the
image size, the pinpoints, the tile size, the tokens per tile side) and then
checked against the number of image tokens actually in the sequence: a
mismatch is an error naming both counts, never a silent reshape.

Conventions differ by implementation, so both are parameters:

* ``wh_pinpoints``: the ``llava`` package reads pinpoints as ``(width,
  height)``, transformers as ``(height, width)``;
* ``rounding``: the unpadded side is ``int(side * scale)`` in the ``llava``
  package and ``int(round(side * scale, 7))`` in transformers.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ...errors import InputError
from ...render.cells import Cells
from .base import ImageView


def parse_pinpoints(pinpoints, tile: int) -> List[Tuple[int, int]]:
    """The candidate resolutions as pairs: a list of pairs, its string form,
    or LLaVA-OneVision's range form ``"(1x1),...,(6x6)"`` (tile multiples)."""
    if isinstance(pinpoints, str) and "x" in pinpoints:
        found = re.findall(r"\((\d+)x(\d+)\)", pinpoints)
        if not found:
            raise InputError(f"image_grid_pinpoints: cannot read {pinpoints!r}")
        (a0, b0), (a1, b1) = (tuple(map(int, found[0])), tuple(map(int, found[-1])))
        return [(i * tile, j * tile) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    if isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    out = [(int(p[0]), int(p[1])) for p in pinpoints or []]
    if not out:
        raise InputError("image_grid_pinpoints: no candidate resolution")
    return out


def select_best_resolution(size: Tuple[int, int], candidates: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The candidate that keeps the most of the image's pixels once the image
    is scaled into it (aspect kept), ties broken by the least padding. ``size``
    and the candidates use the same axis order (both (w, h) or both (h, w))."""
    a, b = size
    best, best_eff, best_waste = None, -1, float("inf")
    for ca, cb in candidates:
        scale = min(ca / a, cb / b)
        eff = min(int(a * scale) * int(b * scale), a * b)
        waste = ca * cb - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (ca, cb), eff, waste
    return best


def unpad_crop(height: int, width: int, image_hw: Tuple[int, int], rounding: str = "hf") -> Tuple[int, int]:
    """(rows, columns) the models crop from each side of the ``height x width`` feature
    map of a padded image to give it back the image's aspect."""
    ih, iw = image_hw
    if iw / ih > width / height:  # padding was added above and below
        scaled = ih * (width / iw)
        new = int(round(scaled, 7)) if rounding == "hf" else int(scaled)
        return (height - new) // 2, 0
    scaled = iw * (height / ih)
    new = int(round(scaled, 7)) if rounding == "hf" else int(scaled)
    return 0, (width - new) // 2


def unpadded_shape(height: int, width: int, image_hw: Tuple[int, int], rounding: str = "hf") -> Tuple[int, int]:
    """The ``height x width`` feature map of a padded image cropped back to the
    image's aspect (rows or columns removed symmetrically, as the models do)."""
    rows, cols = unpad_crop(height, width, image_hw, rounding)
    return height - 2 * rows, width - 2 * cols


def placed_in_canvas(image_hw: Tuple[int, int], canvas_hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(height, width, top, left) of the image scaled into the canvas with its aspect kept
    and centred (both the ``llava`` package and transformers round the scaled side up and
    put the odd pixel of padding after the image)."""
    ih, iw = image_hw
    ch, cw = canvas_hw
    if cw / iw < ch / ih:
        nh, nw = min(math.ceil(ih * cw / iw), ch), cw
    else:
        nh, nw = ch, min(math.ceil(iw * ch / ih), cw)
    return nh, nw, (ch - nh) // 2, (cw - nw) // 2


def seen_fraction(tile: int, patch: int) -> float:
    """The share of a ``tile``-pixel side that a vision tower's patch embedding reads: a
    convolution of kernel and stride ``patch`` with no padding drops the last ``tile mod patch``
    pixels. SigLIP at 384 px with 14-px patches reads 27 patches, 378 px: 0.984 of the tile
    (CLIP at 336/14 reads all of it)."""
    tile, patch = int(tile), int(patch)
    return (tile // patch) * patch / tile if 0 < patch <= tile else 1.0


def seen_part(box: Tuple[float, float, float, float], seen_x: float,
              seen_y: Optional[float] = None) -> Tuple[float, float, float, float]:
    """The part of ``box`` (where a tile lies on the image) that the tower reads: the
    left ``seen_x`` of its width and the top ``seen_y`` (default: ``seen_x``) of its
    height (see :func:`seen_fraction`)."""
    x0, y0, x1, y1 = box
    seen_y = seen_x if seen_y is None else seen_y
    return x0, y0, x0 + (x1 - x0) * seen_x, y0 + (y1 - y0) * seen_y


def highres_box(image_hw: Tuple[int, int], canvas_hw: Tuple[int, int], feature_hw: Tuple[int, int],
                crop: Tuple[int, int], unseen: float = 0.0) -> Tuple[float, float, float, float]:
    """The part of the image the unpadded high-resolution map covers, as fractions
    ``(x0, y0, x1, y1)`` of it. The unpad crops whole feature rows, so the map's edges
    miss the image's edges by up to a row: past the image where padding rows are kept,
    short of it where image rows are cropped (a 40x72 image on a 6x12 map: 5.6% short
    at the top and at the bottom).

    ``unseen``: pixels at the end of every tile side the tower does not read (6 for SigLIP's
    384/14). The stitched map then spans the canvas less the last tile's unseen strip; the
    strips between tiles lie inside the span, so a map drawn evenly over it places inner
    cells up to about a third of a cell from the pixels they read (0.21 on 2 tiles a side,
    0.35 on 6): an exact stitch is placed cell by cell instead (:func:`stitched_cells`), a
    map ``anyres_max_N`` shrank keeps this box."""
    nh, nw, top, left = placed_in_canvas(image_hw, canvas_hw)
    (ch, cw), (fh, fw), (rows, cols) = canvas_hw, feature_hw, crop
    sh, sw = ch - unseen, cw - unseen  # the span of the stitched map in canvas pixels
    y0, y1 = rows * sh / fh, (fh - rows) * sh / fh  # the kept rows in canvas pixels
    x0, x1 = cols * sw / fw, (fw - cols) * sw / fw
    return ((x0 - left) / nw, (y0 - top) / nh, (x1 - left) / nw, (y1 - top) / nh)


def stitched_cells(image_hw: Tuple[int, int], canvas_hw: Tuple[int, int], tiles: Tuple[int, int], unit: int,
                   tile: int, seen: float, crop: Tuple[int, int]) -> Tuple[Tuple[float, float, float, float], Cells]:
    """(box, cells) of an unpadded map stitched from ``tiles`` (rows, cols) whose ``unit`` cells a side stand
    for the first ``seen`` of each ``tile``-pixel side (:func:`seen_fraction`): cell ``f`` of a side spans
    ``tile * (f // unit) + (f % unit + [0, 1]) * tile * seen / unit`` canvas pixels, so the strips the tower
    does not read lie between tiles' cells, not under them. ``box``: the first kept cell's start to the last
    one's end; ``cells``: every kept column's and row's centre (fractions of the image, as the box)."""
    nh, nw, top, left = placed_in_canvas(image_hw, canvas_hw)
    step = tile * seen / unit  # canvas pixels per cell

    def side(n_tiles: int, cut: int, offset: int, size: int):
        kept = range(cut, n_tiles * unit - cut)

        def at(f: int, part: float) -> float:
            return (tile * (f // unit) + (f % unit + part) * step - offset) / size
        return at(kept[0], 0.0), tuple(at(f, 0.5) for f in kept), at(kept[-1], 1.0)
    x0, xs, x1 = side(tiles[1], crop[1], left, nw)
    y0, ys, y1 = side(tiles[0], crop[0], top, nh)
    return (x0, y0, x1, y1), Cells(xs, ys)


def anyres_max_shape(height: int, width: int, max_tiles: Optional[int], unit: int) -> Tuple[int, int]:
    """``anyres_max_N``: a map larger than ``N`` tiles (by more than 10% per
    side) is shrunk (bilinear) by ``ratio = sqrt(h*w / (N*unit^2))``."""
    if not max_tiles:
        return height, width
    ratio = math.sqrt(height * width / (max_tiles * unit ** 2))
    if ratio > 1.1:
        return int(height // ratio), int(width // ratio)
    return height, width


def max_tiles_of(aspect_ratio: Optional[str]) -> Optional[int]:
    """``N`` of ``"anyres_max_N"`` (None for plain ``"anyres"``)."""
    m = re.match(r"anyres_max_(\d+)", aspect_ratio or "")
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class AnyresLayout:
    """Token layout of one anyres image: ``base`` (u, u) first (unless
    ``has_base`` is False), then the high-resolution ``grid`` (h, w) with a
    newline token after every row when ``newline``. ``tiles``: (rows, cols) of
    tiles the grid was stitched from."""

    unit: int
    tiles: Tuple[int, int]
    grid: Tuple[int, int]
    newline: bool = True
    has_base: bool = True
    box: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # the grid's part of the image
    base_box: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # the base view's part of it
    cells: Optional[Cells] = None  # where the grid's columns and rows lie in the box (None: evenly)

    @property
    def base_tokens(self) -> int:
        return self.unit * self.unit if self.has_base else 0

    @property
    def total(self) -> int:
        h, w = self.grid
        return self.base_tokens + h * (w + int(self.newline))


def anyres_layout(image_hw: Tuple[int, int], pinpoints, tile: int, unit: int, wh_pinpoints: bool,
                  rounding: str, max_tiles: Optional[int] = None, newline: bool = True,
                  has_base: bool = True, seen: float = 1.0) -> AnyresLayout:
    """The layout of an image of ``image_hw`` pixels: ``tile`` pixels per tile
    side, ``unit`` tokens per tile side (after any pooling), ``seen`` the share of a
    tile's side its tokens stand for (:func:`seen_fraction`), which places the maps
    on the pixels read."""
    ih, iw = int(image_hw[0]), int(image_hw[1])
    cands = parse_pinpoints(pinpoints, tile)
    if wh_pinpoints:  # (width, height) pairs, image size (w, h)
        bw, bh = select_best_resolution((iw, ih), cands)
    else:
        bh, bw = select_best_resolution((ih, iw), cands)
    rows, cols = bh // tile, bw // tile
    crop = unpad_crop(rows * unit, cols * unit, (ih, iw), rounding)
    h, w = rows * unit - 2 * crop[0], cols * unit - 2 * crop[1]
    box = highres_box((ih, iw), (bh, bw), (rows * unit, cols * unit), crop, unseen=tile * (1.0 - seen))
    cells = None
    if seen < 1.0 and rows * cols > 1 and anyres_max_shape(h, w, max_tiles, unit) == (h, w):
        # an exact stitch (not resized): every cell on the pixels its tile's tokens were read from
        box, cells = stitched_cells((ih, iw), (bh, bw), (rows, cols), unit, tile, seen, crop)
    h, w = anyres_max_shape(h, w, max_tiles, unit)  # a resize of the whole map: the same part of the image
    return AnyresLayout(unit=unit, tiles=(rows, cols), grid=(h, w), newline=newline, has_base=has_base, box=box,
                        cells=cells, base_box=seen_part((0.0, 0.0, 1.0, 1.0), seen))  # base: the image squashed


def anyres_views(span: Tensor, layout: AnyresLayout, what: str = "image") -> Tuple[Tensor, Tuple[int, int], dict]:
    """Split the image span (positions of its tokens, in sequence order) into
    views: returns ``(positions, grid)`` of the default view (the stitched
    high-resolution grid, newline column dropped) and every view by name,
    the default first (``"highres"``, ``"base"``)."""
    span = span.reshape(-1)
    if span.numel() != layout.total:
        h, w = layout.grid
        parts = (f"{layout.unit}x{layout.unit} base + " if layout.has_base else "") + \
            f"{h}x{w} grid" + (" + a newline per row" if layout.newline else "")
        raise InputError(f"{what} span has {span.numel()} tokens but the processor's layout ({parts}, tiles "
                         f"{layout.tiles[0]}x{layout.tiles[1]}) needs {layout.total}; the model's anyres settings "
                         "(pinpoints, tile size, pooling) are not the ones dcam read from its config")
    nb = layout.base_tokens
    h, w = layout.grid
    grid_pos = span[nb:].reshape(h, w + int(layout.newline))[:, :w].reshape(-1).clone()
    views = {"highres": ImageView("highres", grid_pos, (h, w), layout.box, layout.cells)}  # the default view first
    if layout.has_base:
        u = layout.unit
        views["base"] = ImageView("base", span[:nb].clone(), (u, u), layout.base_box)
    return grid_pos, (h, w), views


# ---------------------------------------------------------------- pixels (llava-package models)

def resize_and_pad(image, target_wh: Tuple[int, int]):
    """The image scaled into ``target_wh`` with its aspect kept, centred on black."""
    from PIL import Image

    tw, th = target_wh
    w, h = image.size
    nh, nw, top, left = placed_in_canvas((h, w), (th, tw))
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(image.resize((nw, nh)), (left, top))
    return canvas


def anyres_tiles(image, pinpoints, tile: int) -> list:
    """The images the ``llava`` package feeds an anyres model: the whole image
    squashed to one tile, then the tiles (row-major) of the image resized and
    padded into the best pinpoint (pinpoints as (width, height))."""
    bw, bh = select_best_resolution(image.size, parse_pinpoints(pinpoints, tile))
    padded = resize_and_pad(image, (bw, bh))
    tiles = [padded.crop((c, r, c + tile, r + tile)) for r in range(0, bh, tile) for c in range(0, bw, tile)]
    return [image.resize((tile, tile))] + tiles


def stack_pixels(images: list, image_processor, size: Optional[int] = None) -> Tensor:
    """``[n, 3, S, S]`` pixel values of the tiles with the vision tower's own preprocessing:
    its ``preprocess(images, return_tensors)``, which the released ``llava`` packages'
    ``SigLipImageProcessor`` has (it cannot be called) as transformers' processors do.
    ``size``: the tower's S. Any other shape is another family's image processor (LLaVA-NeXT's
    gives ``[1, n, 3, S, S]``, Qwen2-VL's flat patches): an InputError naming ``processor``, not
    the tower's "too many values to unpack"."""
    name = type(image_processor).__name__
    run = getattr(image_processor, "preprocess", None) or image_processor
    if not callable(run):
        raise InputError(f"processor: its image processor ({name}) has no preprocess() and cannot be called")
    out = run(images, return_tensors="pt")
    pix = out.get("pixel_values") if hasattr(out, "get") else None
    if pix is None:
        raise InputError(f"processor: its image processor ({name}) returned no pixel_values")
    pix = torch.as_tensor(pix)
    n = len(images)
    if pix.dim() != 4 or tuple(pix.shape[:2]) != (n, 3) or pix.shape[2] != pix.shape[3] or \
            (size and pix.shape[2] != size):
        want = f"[{n}, 3, {size}, {size}]" if size else f"[{n}, 3, S, S]"
        raise InputError(f"processor: its image processor ({name}) gave pixel values {list(pix.shape)} for {n} "
                         f"tiles, not {want}: it is not this model's (pass the image processor of its checkpoint)")
    return pix


__all__ = ["AnyresLayout", "anyres_layout", "anyres_views", "anyres_tiles", "stack_pixels", "parse_pinpoints",
           "select_best_resolution", "unpadded_shape", "anyres_max_shape", "max_tiles_of", "resize_and_pad",
           "seen_fraction", "seen_part", "stitched_cells"]
