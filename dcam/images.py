"""Reading any image a user hands over into the RGB picture the model sees.

Accepted: a path (any format Pillow reads: PNG, JPEG, WebP, TIFF, BMP, GIF,
...), a PIL image, or a numpy array (``H x W``, ``H x W x 3`` or ``H x W x
4``; uint8, uint16 or float). Conversions, each stated in the returned notes
(and so in ``meta.json``) rather than done silently:

* EXIF orientation is applied (a phone photo stored sideways comes out upright);
* transparency (RGBA, LA, palette with a transparent colour) is composited on
  ``background`` (white by default), never dropped to black;
* 16-bit, 32-bit integer and float images are scaled by their actual range
  (minimum -> 0, maximum -> 255), so a 16-bit PNG is not all white and a float
  TIFF not all black; a float array already in [0, 1] is scaled by 255;
* palette, CMYK, YCbCr, LAB, HSV and 1-bit images are converted to RGB;
* an animated image (GIF, APNG, WebP) gives its first frame.

Whatever cannot be read (missing file, a folder, not an image, truncated,
NaN in a float image) is a :class:`dcam.InputError` naming the image.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError, one_line

WHITE = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def parse_colour(text: str) -> Tuple[int, int, int]:
    """``"white"``, ``"black"``, ``"#rrggbb"`` or ``"r,g,b"`` (0..255) -> an RGB triple."""
    named = {"white": WHITE, "black": (0, 0, 0), "grey": (128, 128, 128), "gray": (128, 128, 128)}
    t = str(text).strip().lower()
    if t in named:
        return named[t]
    try:
        if t.startswith("#") and len(t) == 7:
            return tuple(int(t[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        vals = [int(v) for v in t.split(",")]
    except ValueError:
        vals = []
    if len(vals) == 3 and all(0 <= v <= 255 for v in vals):
        return tuple(vals)  # type: ignore[return-value]
    raise InputError(f"background: expected white, black, #rrggbb or r,g,b in 0..255, got {text!r}")


def _scale_to_u8(arr: np.ndarray, what: str, notes: List[str]) -> np.ndarray:
    """A wide-range array scaled by its actual range to uint8."""
    a = arr.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"image: the {what} image holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if a.dtype.kind == "f" and arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        notes.append(f"{what} image in [0, 1] scaled by 255")
        return np.rint(a * 255.0).astype(np.uint8)
    if hi > lo:
        notes.append(f"{what} image scaled by its range [{lo:g}, {hi:g}] to 0..255")
        return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    notes.append(f"{what} image is constant ({lo:g}): shown as mid grey")
    return np.full(a.shape, 128, dtype=np.uint8)


def _composite(im: Image.Image, background: Sequence[int], notes: List[str]) -> Image.Image:
    rgba = im.convert("RGBA")
    if rgba.getextrema()[3][0] < 255:
        notes.append(f"transparency composited on rgb{tuple(background)}")
    base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def to_rgb(im: Image.Image, background: Sequence[int] = WHITE, notes: List[str] = None) -> Image.Image:
    """``im`` (any mode) as an RGB image, see the module docstring."""
    notes = [] if notes is None else notes
    if im.mode in _WIDE_MODES:
        return Image.fromarray(_scale_to_u8(np.asarray(im), f"{im.mode}-mode", notes)).convert("RGB")
    if im.mode == "P" and ("transparency" in im.info):
        return _composite(im, background, notes)
    if im.mode in _ALPHA_MODES:
        return _composite(im, background, notes)
    if im.mode != "RGB":
        if im.mode not in ("L", "1", "P"):
            notes.append(f"{im.mode} image converted to RGB")
        return im.convert("RGB")
    return im


def from_array(arr: np.ndarray, background: Sequence[int] = WHITE, notes: List[str] = None) -> Image.Image:
    notes = [] if notes is None else notes
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or arr.size == 0:
        raise InputError(f"image: an array must be H x W, H x W x 3 or H x W x 4, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        if arr.dtype.kind not in "fiu":
            raise InputError(f"image: unsupported array dtype {arr.dtype}")
        arr = _scale_to_u8(arr, f"{arr.dtype}", notes)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode), background, notes)


def _open(path) -> Image.Image:
    """Decode the first frame of the file at ``path`` (fully, so that a truncated
    file fails here), EXIF orientation applied."""
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    if os.path.isdir(name):
        raise InputError(f"image: {name!r} is a folder, not an image file")
    if not os.path.exists(name):
        raise InputError(f"image: no such file {name!r}")
    try:
        im = Image.open(name)
        frames = int(getattr(im, "n_frames", 1) or 1)
        im.seek(0)
        im.load()
        orientation = im.getexif().get(0x0112, 1)
        im = ImageOps.exif_transpose(im) or im
        im.load()
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"image: {name!r} is too large to decode safely ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for a corrupt file
        raise InputError(f"image: cannot read {name!r} ({type(exc).__name__}: {one_line(exc)})") from None
    im.info["dcam_frames"] = frames
    im.info["dcam_orientation"] = orientation
    return im


def load_image_with_notes(image, background: Sequence[int] = WHITE) -> Tuple[Image.Image, List[str]]:
    """(RGB PIL image, notes on the conversions made) from a path, a PIL image or an array."""
    notes: List[str] = []
    if isinstance(image, Image.Image):
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
            notes.append(f"animated image: its first frame of {image.n_frames} is explained")
        return to_rgb(image, background, notes), notes
    if isinstance(image, np.ndarray):
        return from_array(image, background, notes), notes
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        im = _open(image)
        frames = im.info.get("dcam_frames", 1)
        if frames > 1:
            notes.append(f"animated image: its first frame of {frames} is explained")
        orientation = im.info.get("dcam_orientation", 1)
        if orientation not in (None, 1):
            notes.append(f"EXIF orientation {orientation} applied")
        return to_rgb(im, background, notes), notes
    raise InputError(f"image: unsupported type {type(image).__name__}; pass a path, a PIL image or an array")


def load_image(image, background: Sequence[int] = WHITE) -> Image.Image:
    """The RGB PIL image of a path, a PIL image or an array (see the module docstring)."""
    return load_image_with_notes(image, background)[0]


__all__ = ["load_image", "load_image_with_notes", "to_rgb", "from_array", "parse_colour", "WHITE"]
