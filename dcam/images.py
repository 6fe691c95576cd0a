"""Reading any image a user hands over into the RGB picture the model sees.

Accepted: a path (any format Pillow reads: PNG, JPEG, WebP, TIFF, BMP, GIF,
...), a PIL image, or a numpy array (``H x W``, ``H x W x 3`` or ``H x W x
4``; uint8, uint16 or float). Conversions, each stated in the returned notes
(and so in ``meta.json``) rather than done silently:

* EXIF orientation is applied (a phone photo stored sideways comes out upright),
  to a file and to a PIL image alike;
* transparency (RGBA, LA, a palette, grey or RGB image with a transparent
  colour) is composited on ``background`` (white by default), never dropped
  to black; an RGBA array's alpha is read as alpha (0..1 for floats, the
  dtype's range for integers), not scaled with the colours;
* 16-bit, 32-bit integer and float images are scaled by their actual range
  (minimum -> 0, maximum -> 255), so a 16-bit PNG is not all white and a float
  TIFF not all black; a float array already in [0, 1] is scaled by 255;
* palette, CMYK, YCbCr, LAB, HSV and 1-bit images are converted to RGB;
* an animated image (GIF, APNG, WebP) gives its first frame;
* a 16-bit RGB or RGBA PNG reaches dcam at 8 bits per channel (Pillow keeps
  each channel's high byte when it decodes one): said in a note.

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
#: the file names a folder of images is read for (`dcam explain DIR`, `dcam run DIR`): the
#: formats Pillow decodes, by their usual extensions (.jfif, .pbm, .ico, .tga were skipped)
IMAGE_EXTENSIONS = (".png", ".apng", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".ico", ".tga")
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


def check_background(background) -> Tuple[int, int, int]:
    """``background`` as an RGB triple: a colour name or text as :func:`parse_colour`
    reads it, or three ints in 0..255 (300 was clamped silently, "black" was a TypeError)."""
    if isinstance(background, str):
        return parse_colour(background)
    try:
        vals = tuple(background)
    except TypeError:
        vals = ()
    if len(vals) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                 and 0 <= v <= 255 for v in vals):
        raise InputError(f"background: expected a colour name, #rrggbb or three ints in 0..255, got {background!r}")
    return tuple(int(v) for v in vals)  # type: ignore[return-value]


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
        raw = np.asarray(im)
        rgb = Image.fromarray(_scale_to_u8(raw, f"{im.mode}-mode", notes)).convert("RGB")
        if isinstance(im.info.get("transparency"), (int, float)):  # a 16-bit grey PNG's transparent value (tRNS)
            alpha = np.where(raw == im.info["transparency"], 0, 255).astype(np.uint8)
            rgb = _composite(Image.merge("RGBA", (*rgb.split(), Image.fromarray(alpha))), background, notes)
        return rgb
    if im.mode in ("P", "L", "RGB", "1") and ("transparency" in im.info):  # a transparent colour (tRNS)
        return _composite(im, background, notes)
    if im.mode == "La":  # premultiplied grey+alpha: Pillow converts it only to LA
        im = im.convert("LA")
    if im.mode in _ALPHA_MODES:
        return _composite(im, background, notes)
    if im.mode != "RGB":
        if im.mode not in ("L", "1", "P"):
            notes.append(f"{im.mode} image converted to RGB")
        return im.convert("RGB")
    return im


def _alpha_to_u8(alpha: np.ndarray) -> np.ndarray:
    """An RGBA array's alpha channel as 0..255: floats in [0, 1], integers over their dtype's range."""
    if alpha.dtype.kind == "f":
        a = alpha.astype(np.float64)
        if not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise InputError("image: the alpha channel of a float RGBA array must lie in [0, 1]")
        return np.rint(a * 255.0).astype(np.uint8)
    info = np.iinfo(alpha.dtype)
    a = alpha.astype(np.float64)
    if a.min() < 0:
        raise InputError("image: the alpha channel of an integer RGBA array must not be negative")
    return np.rint(a * (255.0 / info.max)).astype(np.uint8)


def from_array(arr: np.ndarray, background: Sequence[int] = WHITE, notes: List[str] = None) -> Image.Image:
    notes = [] if notes is None else notes
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or arr.size == 0:
        raise InputError(f"image: an array must be H x W, H x W x 3 or H x W x 4, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        if arr.dtype.kind not in "fiu":
            raise InputError(f"image: unsupported array dtype {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 4:  # the colours scaled by their range, the alpha read as alpha
            arr = np.concatenate([_scale_to_u8(arr[..., :3], f"{arr.dtype}", notes),
                                  _alpha_to_u8(arr[..., 3])[..., None]], axis=2)
        else:
            arr = _scale_to_u8(arr, f"{arr.dtype}", notes)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode), background, notes)


#: Pillow's DecompressionBombWarning, by its message (the CLI, which states it as a note, silences it)
LARGE_IMAGE_WARNING = r"Image size \(\d+ pixels\) exceeds limit of \d+ pixels"


def _large_image_note(im: Image.Image, notes: List[str]) -> None:
    """An image past Pillow's warning size (about 89 megapixels; under its refusal size) stated
    as a note on the conversions, as the other decisions about an image are. Pillow's own
    warning is left as it is (catching it swapped the process's warning state, which two
    threads loading images at once left broken); the CLI silences it."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:
        notes.append(f"large image: {im.width}x{im.height} ({im.width * im.height} pixels) is past Pillow's "
                     f"decompression-bomb warning size of {limit} pixels")


def _open(path, notes: List[str]) -> Image.Image:
    """Decode the first frame of the file at ``path`` (fully, so that a truncated
    file fails here), EXIF orientation applied; a large image's warning in ``notes``."""
    name = os.fspath(path)
    if isinstance(name, bytes):
        if len(name) > 4096 or b"\0" in name:  # file content, not a path: it was echoed whole as "no such file"
            raise InputError(f"image: {len(name)} bytes are not a path; pass a path, a PIL image or an array "
                             "(file content: PIL.Image.open(io.BytesIO(data)))")
        name = os.fsdecode(name)
    if os.path.isdir(name):
        raise InputError(f"image: {name!r} is a folder, not an image file")
    if not os.path.exists(name):
        raise InputError(f"image: no such file {name!r}")
    if not os.path.isfile(name):  # a named pipe or a device: reading one waited for a writer forever
        raise InputError(f"image: {name!r} is not a regular file (a pipe, socket or device)")
    try:
        im, frames, sixteen, orientation = _decode(name)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"image: {name!r} is too large to decode safely ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for a corrupt file
        raise InputError(f"image: cannot read {name!r} ({type(exc).__name__}: {one_line(exc)})") from None
    _large_image_note(im, notes)
    im.info["dcam_frames"] = frames
    im.info["dcam_orientation"] = orientation
    im.info["dcam_16bit_rgb"] = sixteen
    return im


def _decode(name: str):
    """(image, frames, is 16-bit RGB, EXIF orientation applied) of the file ``name``."""
    im = Image.open(name)
    frames = int(getattr(im, "n_frames", 1) or 1)
    im.seek(0)
    # read before decoding: Pillow's TIFF decoder drops the orientation tag, and a PNG's raw
    # mode (16 bits per channel) is gone once its tiles are decoded
    sixteen = _sixteen_bit_rgb_png(im)
    im, orientation = _upright(im)
    im.load()
    return im, frames, sixteen, orientation


def _sixteen_bit_rgb_png(im: Image.Image) -> bool:
    """Whether ``im`` is a 16-bit RGB(A) PNG, which Pillow decodes to 8 bits per channel."""
    tile = getattr(im, "tile", None) or []
    raw = tile[0][3] if tile and len(tile[0]) > 3 else None
    raw = raw[0] if isinstance(raw, tuple) else raw
    return im.format == "PNG" and im.mode in ("RGB", "RGBA") and isinstance(raw, str) and ";16" in raw


def _upright(im: Image.Image) -> Tuple[Image.Image, int]:
    """``im`` turned as its EXIF orientation says, as a new image without the tag (so it is
    never turned twice; the caller's image is left as it is), and that orientation (1: none,
    or a value outside 2..8, which is left alone and not reported as applied). Called before
    the image is decoded: Pillow's TIFF decoder drops the tag."""
    orientation = im.getexif().get(0x0112, 1)
    if orientation not in range(2, 9):
        return im, 1
    return ImageOps.exif_transpose(im), int(orientation)


def _from_pil(image: Image.Image, background, notes: List[str]) -> Image.Image:
    """The RGB image of a caller's PIL image, decoded here (a truncated or closed one is an
    InputError naming the image, as a path's is), the caller's frame position left as found."""
    frames = int(getattr(image, "n_frames", 1) or 1)
    frame = image.tell() if frames > 1 else 0
    try:
        try:
            if frames > 1:
                image.seek(0)
            up, orientation = _upright(image)
            up.load()
        except Image.DecompressionBombError as exc:
            raise InputError(f"image: the PIL image is too large to decode safely ({one_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for a damaged file
            why = f"{type(exc).__name__}: {one_line(exc)}" if str(exc) else f"{type(exc).__name__}; is it closed?"
            raise InputError(f"image: cannot read the PIL image ({why})") from None
        if frames > 1:
            notes.append(f"animated image: its first frame of {frames} is explained")
        if orientation != 1:
            notes.append(f"EXIF orientation {orientation} applied")
        rgb = to_rgb(up, background, notes)
        return rgb.copy() if rgb is image else rgb  # (the caller's object would move with its frame)
    finally:
        if frames > 1 and frame:
            image.seek(frame)


def load_image_with_notes(image, background: Sequence[int] = WHITE) -> Tuple[Image.Image, List[str]]:
    """(RGB PIL image, notes on the conversions made) from a path, a PIL image or an array."""
    notes: List[str] = []
    background = check_background(background)
    if isinstance(image, Image.Image):
        return _from_pil(image, background, notes), notes
    if isinstance(image, np.ndarray):
        return from_array(image, background, notes), notes
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        im = _open(image, notes)
        frames = im.info.get("dcam_frames", 1)
        if frames > 1:
            notes.append(f"animated image: its first frame of {frames} is explained")
        orientation = im.info.get("dcam_orientation", 1)
        if orientation not in (None, 1):
            notes.append(f"EXIF orientation {orientation} applied")
        if im.info.get("dcam_16bit_rgb"):
            notes.append("16-bit RGB PNG: decoded at 8 bits per channel (each channel's high byte)")
        return to_rgb(im, background, notes), notes
    raise InputError(f"image: unsupported type {type(image).__name__}; pass a path, a PIL image or an array")


def load_image(image, background: Sequence[int] = WHITE) -> Image.Image:
    """The RGB PIL image of a path, a PIL image or an array (see the module docstring)."""
    return load_image_with_notes(image, background)[0]


__all__ = ["load_image", "load_image_with_notes", "to_rgb", "from_array", "parse_colour", "check_background", "WHITE",
           "IMAGE_EXTENSIONS"]
