"""Heatmap colouring, blending and contact sheets (pytorch-grad-cam's
``show_cam_on_image`` style).

    heat = colormap(upsampled map)                    # uint8 RGB
    out  = (1 - alpha) * image + alpha * heat         # alpha: weight of the heatmap

Maps are upsampled to the image bilinearly with half-pixel centres and no
antialiasing (``torch.nn.functional.interpolate(..., "bilinear",
align_corners=False)``), the resize the metrics use (SPEC section 8).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Shortest side (pixels) overlays are rendered at by ``Explanation.save``.
DISPLAY_MIN_SIDE = 256


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def upsample_map(cam: ArrayLike, size: Tuple[int, int]) -> np.ndarray:
    """``[h, w]`` map -> float32 ``[H, W]`` (size = (H, W)), bilinear, clipped to [0, 1]."""
    m = torch.as_tensor(_to_numpy(cam), dtype=torch.float32)
    if m.dim() != 2:
        raise ValueError(f"a map must be 2-D [h, w], got shape {tuple(m.shape)}")
    H, W = int(size[0]), int(size[1])
    if tuple(m.shape) != (H, W):
        m = F.interpolate(m[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return m.clamp(0.0, 1.0).numpy()


def colorize(cam: ArrayLike, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> uint8 ``[H, W, 3]`` RGB through a matplotlib colormap."""
    import matplotlib

    cmap = matplotlib.colormaps[colormap]
    m = np.clip(_to_numpy(cam), 0.0, 1.0)
    rgb = cmap(m)[..., :3]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def show_cam_on_image(image: ArrayLike, cam: ArrayLike, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a heatmap onto an image.

    image: ``[H, W, 3]`` uint8, or float in [0, 1]. cam: ``[h, w]`` in [0, 1]
    (upsampled to ``H x W`` if needed). alpha: weight of the heatmap in [0, 1].
    Returns uint8 ``[H, W, 3]``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {img.shape}")
    if img.min() < 0 or img.max() > 1:
        raise ValueError("a float image must be in [0, 1]")
    heat = colorize(upsample_map(cam, img.shape[:2]), colormap).astype(np.float32) / 255.0
    out = (1.0 - alpha) * img + alpha * heat
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def overlay(image: Image.Image, cam: ArrayLike, alpha: float = 0.5, colormap: str = "jet",
            size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """PIL overlay of ``cam`` on ``image``. size: ``(W, H)`` to render at
    (the image is resized bicubically first); default: the image's size."""
    img = image.convert("RGB")
    if size is not None and tuple(size) != img.size:
        img = img.resize((int(size[0]), int(size[1])), Image.BICUBIC)
    return Image.fromarray(show_cam_on_image(np.asarray(img), cam, alpha, colormap))


def display_size(image: Image.Image, min_side: int = DISPLAY_MIN_SIDE) -> Tuple[int, int]:
    """``(W, H)``: the image's size scaled up by an integer factor so that its
    shortest side is at least ``min_side`` (unchanged when it already is)."""
    W, H = image.size
    f = max(1, math.ceil(min_side / max(1, min(W, H))))
    return W * f, H * f


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def contact_sheet(tiles: Sequence[Image.Image], labels: Optional[Sequence[str]] = None, cols: Optional[int] = None,
                  pad: int = 4, label_height: Optional[int] = None, background=(255, 255, 255)) -> Image.Image:
    """Tiles (resized to the first tile's size) on a grid, each with its label underneath.

    cols: default ``ceil(sqrt(n))``. The sheet is
    ``cols * (W + pad) + pad`` wide and ``rows * (H + label_height + pad) + pad`` high.
    """
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    W, H = tiles[0].size
    n = len(tiles)
    cols = int(cols) if cols else int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    lh = int(label_height) if label_height is not None else (max(12, H // 10) if labels else 0)
    sheet = Image.new("RGB", (cols * (W + pad) + pad, rows * (H + lh + pad) + pad), background)
    draw = ImageDraw.Draw(sheet)
    font = _font(max(10, lh - 4)) if lh else None
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        x, y = pad + c * (W + pad), pad + r * (H + lh + pad)
        t = tile.convert("RGB")
        if t.size != (W, H):
            t = t.resize((W, H), Image.BICUBIC)
        sheet.paste(t, (x, y))
        if labels is not None and lh:
            draw.text((x + 2, y + H + 1), str(labels[k]), fill=(0, 0, 0), font=font)
    return sheet


def sheet_layout(n: int, tile: Tuple[int, int], cols: Optional[int] = None, pad: int = 4,
                 label_height: int = 0) -> Tuple[int, int]:
    """``(W, H)`` of the sheet :func:`contact_sheet` builds for ``n`` tiles of size ``tile``."""
    W, H = tile
    cols = int(cols) if cols else int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    return cols * (W + pad) + pad, rows * (H + label_height + pad) + pad


__all__ = ["upsample_map", "colorize", "show_cam_on_image", "overlay", "display_size", "contact_sheet",
           "sheet_layout", "DISPLAY_MIN_SIDE"]
