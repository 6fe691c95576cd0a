"""Label masks from COCO annotations: RLE (list or compressed string) and polygons."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
from PIL import Image, ImageDraw

def rle_string_to_counts(s) -> List[int]:
    """Decode COCO's compressed RLE string into run lengths.

    Each count is written in 5-bit groups, least significant first, as
    characters ``48 + group`` with bit 0x20 meaning "another group follows"
    and bit 0x10 of the last group the sign; from the third count on, the
    value is stored as the difference to the count two places before."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: List[int] = []
    p = 0
    n = len(s)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("truncated RLE string")
            c = ord(s[p]) - 48
            if c < 0 or c > 63:
                raise ValueError(f"invalid character {s[p]!r} in RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _run_length(c) -> int:
    """One RLE count: a whole number (a run of 1.2 pixels was truncated, moving every later pixel)."""
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not float(c).is_integer():
        raise ValueError(f"RLE run length {c!r} is not a whole number")
    return int(c)


def decode_rle(rle: Dict[str, Any]) -> np.ndarray:
    """Binary mask ``uint8 [h, w]`` of a COCO RLE dict (``size`` ``[h, w]``,
    ``counts`` a list of ints or a compressed string). Runs alternate 0/1,
    starting with 0, in column-major order."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed RLE {str(rle)[:80]}") from exc
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    elif not isinstance(counts, (list, tuple)):
        raise ValueError(f"RLE counts must be a list of ints or a compressed string, got {type(counts).__name__}")
    counts = [_run_length(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError("negative run length in RLE")
    if sum(counts) != h * w:
        raise ValueError(f"RLE run lengths sum to {sum(counts)}, expected {h}x{w}={h * w}")
    vals = np.zeros(len(counts), dtype=np.uint8)
    vals[1::2] = 1
    flat = np.repeat(vals, counts)
    return flat.reshape(w, h).T.copy()


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Binary mask ``uint8 [height, width]`` of COCO polygons (each a flat
    ``[x1, y1, x2, y2, ...]`` list in pixel coordinates), filled with PIL.
    A polygon with fewer than 3 points (or an odd number of coordinates) is
    a ValueError: its object would silently lose its ground truth."""
    img = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        try:
            pts = [float(v) for v in poly]
        except (TypeError, ValueError):
            raise ValueError(f"polygon coordinates must be numbers, got {str(poly)[:60]}") from None
        if not all(np.isfinite(pts)):  # PIL painted a NaN vertex somewhere
            raise ValueError(f"polygon with a coordinate that is NaN or infinite ({str(poly)[:60]})")
        if len(pts) < 6 or len(pts) % 2:
            raise ValueError(f"polygon with {len(pts)} coordinates (needs >= 3 x,y points)")
        xy = list(zip(pts[0::2], pts[1::2]))
        draw.polygon(xy, fill=1, outline=1)
    return np.asarray(img, dtype=np.uint8).copy()
