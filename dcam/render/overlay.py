"""Heatmap colouring and blending (pytorch-grad-cam's ``show_cam_on_image`` style).

    heat = colormap(upsampled map)                    # uint8 RGB
    out  = (1 - alpha) * image + alpha * heat         # alpha: weight of the heatmap

Maps are upsampled to the image bilinearly with half-pixel centres and no
antialiasing (``torch.nn.functional.interpolate(..., "bilinear",
align_corners=False)``), the resize the metrics use (SPEC section 8).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Shortest side (pixels) small images are scaled up to by ``Explanation.save``.
DISPLAY_MIN_SIDE = 256
#: Longest side (pixels) of a saved overlay (``--max-side``).
DISPLAY_MAX_SIDE = 1024


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def upsample_map(cam: ArrayLike, size: Tuple[int, int]) -> np.ndarray:
    """``[h, w]`` map -> float32 ``[H, W]`` (size = (H, W)), bilinear, clipped to [0, 1]."""
    m = torch.as_tensor(_to_numpy(cam), dtype=torch.float32)
    if m.dim() != 2:
        raise InputError(f"cam: a map must be 2-D [h, w], got shape {tuple(m.shape)}")
    H, W = int(size[0]), int(size[1])
    if tuple(m.shape) != (H, W):
        m = F.interpolate(m[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return m.clamp(0.0, 1.0).numpy()


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
    m = np.clip(_to_numpy(cam), 0.0, 1.0)
    rgb = cmap(m)[..., :3]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def check_alpha(alpha) -> float:
    """``alpha`` (a heatmap's opacity) as a float in [0, 1], else an InputError naming it."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def show_cam_on_image(image: ArrayLike, cam: ArrayLike, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a heatmap onto an image.

    image: ``[H, W, 3]`` uint8, or float in [0, 1]. cam: ``[h, w]`` in [0, 1]
    (upsampled to ``H x W`` if needed). alpha: weight of the heatmap in [0, 1].
    Returns uint8 ``[H, W, 3]``.
    """
    check_alpha(alpha)
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"image must be [H, W, 3], got shape {img.shape}")
    if img.min() < 0 or img.max() > 1:
        raise InputError("image: a float image must be in [0, 1]")
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


def map_on_image(cam: ArrayLike, size: Tuple[int, int], box=FULL_BOX) -> np.ndarray:
    """``[h, w]`` map -> float32 ``[H, W]`` over the whole image (size = (H, W)):
    upsampled into ``box`` (the part of the image the model saw, fractions
    ``(x0, y0, x1, y1)``), zero outside it."""
    if tuple(box) == FULL_BOX:
        return upsample_map(cam, size)
    x0, y0, x1, y1 = box_pixels(box, size)
    H, W = int(size[0]), int(size[1])
    out = np.zeros((H, W), dtype=np.float32)
    up = upsample_map(cam, (y1 - y0, x1 - x0))  # the whole box, then the part on the image
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
            size: Optional[Tuple[int, int]] = None, box=FULL_BOX) -> Image.Image:
    """PIL overlay of ``cam`` on ``image``. size: ``(W, H)`` to render at
    (the image is resized bicubically first); default: the image's size.
    box: the part of the image the map covers (fractions; default all of it)."""
    img = image.convert("RGB")
    size = check_render_size(size)
    if size is not None and size != img.size:
        img = img.resize(size, Image.BICUBIC)
    cam = map_on_image(cam, (img.height, img.width), box) if tuple(box) != FULL_BOX else cam
    return Image.fromarray(show_cam_on_image(np.asarray(img), cam, alpha, colormap))


def display_size(image_size: Tuple[int, int], min_side: int = DISPLAY_MIN_SIDE,
                 max_side: int = DISPLAY_MAX_SIDE) -> Tuple[int, int]:
    """``(W, H)`` to render an image of ``image_size`` (W, H) at: a small image
    is scaled up by a whole factor until its shortest side reaches
    ``min_side`` (its pixels stay crisp), a large one down; in both cases the
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


__all__ = ["check_alpha", "check_colormap", "map_on_image", "box_pixels", "FULL_BOX", "upsample_map", "colorize", "show_cam_on_image", "overlay", "display_size", "DISPLAY_MIN_SIDE",
           "DISPLAY_MAX_SIDE"]
