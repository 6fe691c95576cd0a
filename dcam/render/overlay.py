"""Heatmap colouring and blending (pytorch-grad-cam's ``show_cam_on_image`` style).

    heat = colormap(upsampled map)                    # uint8 RGB
    out  = (1 - alpha) * image + alpha * heat         # alpha: weight of the heatmap

Maps are upsampled to the image bilinearly with half-pixel centres and no
antialiasing (``torch.nn.functional.interpolate(..., "bilinear",
align_corners=False)``), the resize the metrics use (docs/ALGORITHM.md section 8).
Along a side with fewer pixels than the map has cells (a 32 x 5 image under a
16 x 16 map) each pixel is the mean of the cells it covers instead
(:func:`dcam.render.cells.resample_area`): bilinear there skips cells, and a
word's evidence on a skipped row was not drawn at all.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError, one_line
from .cells import check_cells, resample_area, upsample_through

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Shortest side (pixels) small images are scaled up to by ``Explanation.save``.
DISPLAY_MIN_SIDE = 256
#: Longest side (pixels) of a saved overlay (``--max-side``).
DISPLAY_MAX_SIDE = 1024


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":  # ("abc" was float()'s ValueError; None in an object array read as NaN)
        raise InputError(f"cam: a map must be an array of numbers, got {type(x).__name__} of dtype {a.dtype}")
    return a.astype(np.float32)


def check_map_size(size) -> Tuple[int, int]:
    """``size`` as ``(H, W)`` ints >= 1, else an InputError naming it (0 was torch's RuntimeError, -3
    numpy's ValueError, 2.7 taken as 2)."""
    ok = isinstance(size, (tuple, list)) and len(size) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= 1 for v in size)
    if not ok:
        raise InputError(f"size must be (H, W), two ints >= 1, got {size!r}")
    return int(size[0]), int(size[1])


#: How far past [0, 1] a map's value may lie and still be drawn (as 0 or 1): float32 rounding of the
#: backends' min-max normalisation, a unit in the last place or so, not a wrong map.
MAP_TOLERANCE = 1e-6


def check_map(m: np.ndarray, name: str = "cam") -> np.ndarray:
    """``m`` if it is a non-empty map of finite values in [0, 1] (within :data:`MAP_TOLERANCE`), else an
    InputError naming ``name`` (NaN was drawn as 0, Inf and 5.0 as 1, -1 as 0: the README promises values are
    checked, never clamped silently)."""
    if m.size == 0:
        raise InputError(f"{name}: a map must hold at least one value, got shape {tuple(m.shape)}")
    bad = ~np.isfinite(m)
    if bad.any():
        raise InputError(f"{name}: a map must be finite, got {int(bad.sum())} NaN/Inf value(s)")
    lo, hi = float(m.min()), float(m.max())
    if lo < -MAP_TOLERANCE or hi > 1.0 + MAP_TOLERANCE:
        raise InputError(f"{name}: a map's values must be in [0, 1], got values in [{lo:g}, {hi:g}]")
    return m


def _checked_map(cam: ArrayLike) -> np.ndarray:
    m = _to_numpy(cam)
    if m.ndim != 2:
        raise InputError(f"cam: a map must be 2-D [h, w], got shape {tuple(m.shape)}")
    return np.ascontiguousarray(check_map(m))


def upsample_map(cam: ArrayLike, size: Tuple[int, int]) -> np.ndarray:
    """``[h, w]`` map of values in [0, 1] -> float32 ``[H, W]`` (size = (H, W)), bilinear; along a side
    shorter than the map's, the mean of the cells over each pixel (every cell keeps its share)."""
    m = torch.from_numpy(_checked_map(cam))
    H, W = check_map_size(size)
    if H < m.shape[0] or W < m.shape[1]:
        return np.clip(resample_area(m.numpy(), (H, W)), 0.0, 1.0)  # (means of checked values: the rounding)
    if tuple(m.shape) != (H, W):
        m = F.interpolate(m[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return m.clamp(0.0, 1.0).numpy()  # (a bilinear mean of checked values: this only drops the rounding)


def check_colormap(colormap):
    """The matplotlib Colormap ``colormap`` names (or is), else an InputError naming it."""
    import matplotlib

    if isinstance(colormap, matplotlib.colors.Colormap):
        return colormap
    try:
        return matplotlib.colormaps[colormap]
    except (KeyError, TypeError):  # matplotlib's KeyError lists near names over several lines
        raise InputError(f"colormap: {colormap!r} is not a matplotlib colormap name (e.g. jet, viridis, "
                         "inferno, turbo) or Colormap") from None


def colorize(cam: ArrayLike, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> uint8 ``[H, W, 3]`` RGB through a matplotlib colormap."""
    cmap = check_colormap(colormap)
    m = _to_numpy(cam)
    if m.ndim != 2:  # (a number was a TypeError inside the colormap)
        raise InputError(f"cam: a map must be 2-D [H, W], got shape {tuple(m.shape)}")
    m = np.clip(check_map(m), 0.0, 1.0)  # (checked: the clip only drops the rounding)
    rgb = cmap(m)[..., :3]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def check_alpha(alpha) -> float:
    """``alpha`` (a heatmap's opacity) as a float in [0, 1], else an InputError naming it."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def check_picture_args(alpha, colormap) -> None:
    """The options every labelled picture of a map takes, checked before anything is drawn: ``alpha``
    (:func:`check_alpha`), then ``colormap`` (:func:`check_colormap`), then the font file the
    environment variable ``DCAM_FONT`` names, if any (:func:`dcam.render.fonts.check_font_option`)."""
    from .fonts import check_font_option

    check_alpha(alpha)
    check_colormap(colormap)
    check_font_option()


def show_cam_on_image(image: ArrayLike, cam: ArrayLike, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a heatmap onto an image.

    image: ``[H, W, 3]`` uint8, or float in [0, 1]. cam: ``[h, w]`` in [0, 1]
    (upsampled to ``H x W`` if needed). alpha: weight of the heatmap in [0, 1].
    Returns uint8 ``[H, W, 3]``.
    """
    check_alpha(alpha)
    if isinstance(image, torch.Tensor):  # (numpy has no bfloat16: such an image was a TypeError)
        image = image.detach().cpu()
        image = (image.float() if image.dtype in (torch.bfloat16, torch.float16) else image).numpy()
    img = np.asarray(image)
    if img.dtype.kind not in "biuf":
        raise InputError(f"image must be an array of numbers, got {type(image).__name__} of dtype {img.dtype}")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        raise InputError(f"image must be [H, W, 3] with H, W >= 1, got shape {img.shape}")
    if not np.isfinite(img).all() or img.min() < 0 or img.max() > 1:  # (NaN passed both comparisons)
        raise InputError("image: a float image must be in [0, 1], with no NaN or Inf")
    heat = colorize(upsample_map(cam, img.shape[:2]), colormap).astype(np.float32) / 255.0
    out = (1.0 - alpha) * img + alpha * heat
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


FULL_BOX = (0.0, 0.0, 1.0, 1.0)


def box_pixels(box, size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` in pixels of a fractional box on an image of ``size`` (H, W),
    at least one pixel wide; not clipped: a box past the image's edges (a map of the
    image padded to a square) keeps its full size, and what lies on the image is
    where it meets ``[0, W) x [0, H)``."""
    H, W = int(size[0]), int(size[1])
    x0, y0 = int(round(box[0] * W)), int(round(box[1] * H))
    return x0, y0, max(x0 + 1, int(round(box[2] * W))), max(y0 + 1, int(round(box[3] * H)))


def check_box(box) -> Tuple[float, float, float, float]:
    """``box`` (4 numbers: a tuple, list, array or tensor) as 4 floats ``(x0, y0, x1, y1)``, else an
    InputError naming it: finite, x0 < x1, y0 < y1, and overlapping the image. Not confined to [0, 1]:
    the map of an image padded to a square (:func:`dcam.probe.adapters.llava_dmllm.padded_square_box`)
    runs past its edges.
    (NaN was a ValueError, an inverted box an overlay with no heatmap at all.)"""
    values = box.tolist() if isinstance(box, (np.ndarray, torch.Tensor)) else box  # (as read from a file)
    ok = isinstance(values, (tuple, list)) and len(values) == 4 and all(
        isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v) for v in values)
    if ok:
        x0, y0, x1, y1 = (float(v) for v in values)
        ok = x0 < x1 and y0 < y1 and x0 < 1.0 and x1 > 0.0 and y0 < 1.0 and y1 > 0.0
    if not ok:
        raise InputError(f"box must be 4 finite fractions (x0, y0, x1, y1) with x0 < x1 and y0 < y1 that "
                         f"overlap the image [0, 1] x [0, 1], got {one_line(repr(box))}")
    return x0, y0, x1, y1


def map_on_image(cam: ArrayLike, size: Tuple[int, int], box=FULL_BOX, cells=None) -> np.ndarray:
    """``[h, w]`` map -> float32 ``[H, W]`` over the whole image (size = (H, W)):
    upsampled into ``box`` (the part of the image the model saw, fractions
    ``(x0, y0, x1, y1)``), zero outside it. ``cells``: where each column and row of the
    map lies (:class:`dcam.render.cells.Cells`, a stitched map's); None: evenly over the box."""
    box = check_box(box)
    H, W = check_map_size(size)
    if cells is not None:
        m = _checked_map(cam)
        cells = check_cells(cells, m.shape, box)
    if box == FULL_BOX and cells is None:
        return upsample_map(cam, size)
    x0, y0, x1, y1 = box_pixels(box, size)
    out = np.zeros((H, W), dtype=np.float32)
    # the whole box, then the part on the image
    up = upsample_map(cam, (y1 - y0, x1 - x0)) if cells is None else \
        np.clip(upsample_through(m, (y1 - y0, x1 - x0), box, cells), 0.0, 1.0)
    iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
    if iy1 > iy0 and ix1 > ix0:
        out[iy0:iy1, ix0:ix1] = up[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    return out


#: the largest side an overlay is rendered at (as dcam explain's --max-side): every PNG then
#: opens with Pillow's default size limit, and (100000, 100000) cannot exhaust the memory
RENDER_MAX_SIDE = 8192


def check_render_size(size) -> Optional[Tuple[int, int]]:
    """``size`` as ``(W, H)`` ints in [1, RENDER_MAX_SIDE], or None (PIL raised on 0 or a
    negative side, 10.7 was truncated, a 3-tuple passed, a huge one ran out of memory)."""
    if size is None:
        return None
    ok = isinstance(size, (tuple, list)) and len(size) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and 1 <= v <= RENDER_MAX_SIDE
        for v in size)
    if not ok:
        raise InputError(f"size must be (W, H), two ints in [1, {RENDER_MAX_SIDE}], got {size!r}")
    return int(size[0]), int(size[1])


def overlay(image: Image.Image, cam: ArrayLike, alpha: float = 0.5, colormap: str = "jet",
            size: Optional[Tuple[int, int]] = None, box=FULL_BOX, cells=None) -> Image.Image:
    """PIL overlay of ``cam`` on ``image``. size: ``(W, H)`` to render at
    (the image is resized first: a whole-factor enlargement repeats each pixel, others are
    bicubic, :func:`upscale_filter`); default: the image's size.
    box: the part of the image the map covers (fractions; default all of it);
    cells: where its columns and rows lie in it (:func:`map_on_image`; default evenly).
    ``image``: a PIL image, an array or a path, read as :func:`dcam.load_image` reads them."""
    # a PIL image as dcam.load_image reads one too (for an RGB one, a copy: ~3 ms of a ~130 ms 1024 x 1024
    # overlay): .convert("RGB") drew a transparent pixel's hidden colour and clipped 16-bit grey to white,
    # where the same image as an array or a path was composited on white / scaled
    from ..images import load_image

    img = load_image(image)
    size = check_render_size(size)
    box = check_box(box)
    if size is not None and size != img.size:
        img = img.resize(size, upscale_filter(img.size, size, Image.BICUBIC))
    cam = map_on_image(cam, (img.height, img.width), box, cells) if box != FULL_BOX or cells is not None else cam
    return Image.fromarray(show_cam_on_image(np.asarray(img), cam, alpha, colormap))


def display_size(image_size: Tuple[int, int], min_side: int = DISPLAY_MIN_SIDE,
                 max_side: int = DISPLAY_MAX_SIDE) -> Tuple[int, int]:
    """``(W, H)`` to render an image of ``image_size`` (W, H) at: a small image
    is scaled up by a whole factor until its shortest side reaches
    ``min_side`` (each pixel drawn as a square block: :func:`rendered_at`), a large one down; in both cases the
    longest side ends at most ``max_side``, the aspect ratio is kept and each
    side is at least 1 pixel."""
    W, H = int(image_size[0]), int(image_size[1])
    cap = max_side / max(W, H)
    if min(W, H) >= min_side:
        scale = min(1.0, cap)
    else:
        scale = min(float(math.ceil(min_side / max(1, min(W, H)))), cap)
        if scale >= 1.0:
            scale = float(math.floor(scale))
    return max(1, int(round(W * scale))), max(1, int(round(H * scale)))


def upscale_filter(image_size: Tuple[int, int], size: Tuple[int, int], otherwise):
    """The Pillow filter to resize an image of ``image_size`` (W, H) to ``size`` (W, H) with: NEAREST where
    ``size`` enlarges each side by a whole factor (each pixel becomes a block of equal pixels: crisp, and a box
    shrink by that factor gives the image back exactly: a saved explanation's image.png), else ``otherwise``."""
    (w, h), (W, H) = image_size, size
    whole = W >= w and H >= h and W % w == 0 and H % h == 0 and (W, H) != (w, h)
    return Image.NEAREST if whole else otherwise


def rendered_at(image: Image.Image, size: Tuple[int, int], saved=None) -> Image.Image:
    """``image`` as RGB at ``size`` (W, H) for the files a save writes: up by a whole factor, each pixel
    repeated (:func:`upscale_filter`; :func:`display_size` gives a small image a whole factor); up by
    another, bicubic; down, box (the mean of the pixels each covers). ``saved``:
    ``(the image a loaded explanation was given, its image.png)`` (:mod:`dcam.saved`). The loaded image is
    image.png scaled back to the size explained; rendered again at image.png's size it would differ from
    image.png by two resamplings, so image.png itself is returned there (not once the image is another)."""
    if saved is not None and saved[0] is image and saved[1].size == tuple(size):
        return saved[1]
    img = image.convert("RGB")
    return img.resize(size, upscale_filter(img.size, size, Image.BICUBIC if size[0] > img.width else Image.BOX))


__all__ = ["check_alpha", "check_colormap", "check_picture_args", "check_box", "check_map", "check_map_size", "map_on_image", "box_pixels",
           "FULL_BOX", "MAP_TOLERANCE", "upsample_map", "colorize", "show_cam_on_image", "overlay", "display_size",
           "rendered_at", "upscale_filter",
           "DISPLAY_MIN_SIDE", "DISPLAY_MAX_SIDE"]
