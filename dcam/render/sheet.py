"""Contact sheets: the image and every word's overlay on one picture, with a
title (the response) and a colour bar (the heatmap's value scale).

A sheet is tiled so that no side exceeds ``max_side`` pixels (4096 by
default): with many words the tiles shrink instead of the sheet growing, so
every sheet opens with Pillow's default image-size limits.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError, positive_int
from .fonts import draw_text, font, text_bbox, text_length
from .overlay import colorize

#: Longest side of a contact sheet, pixels.
SHEET_MAX_SIDE = 4096
#: Title lines at most (18 px each): a 27,000-character response wrapped to ~900 lines and
#: left no room for a tile ("cannot fit 4096 pixels")
MAX_TITLE_LINES = 8

#: Narrowest contact sheet, pixels: room for the title and the colour bar
#: when the tiles are thin (a 2 x 200 image).
SHEET_MIN_WIDTH = 320
#: Widest a cell of thin tiles grows to hold its label, pixels (about 14 letters of a 24-pixel
#: label); labels wider than their cell end in an ellipsis.
LABEL_CELL_WIDTH = 192


def sheet_layout(n: int, tile: Tuple[int, int], cols: Optional[int] = None, pad: int = 4,
                 label_height: int = 0) -> Tuple[int, int]:
    """``(W, H)`` of the tile grid of ``n`` tiles of size ``tile`` (no title, no colour bar)."""
    W, H = tile
    cols = int(cols) if cols else int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    return cols * (W + pad) + pad, rows * (H + label_height + pad) + pad


def fit_tile(n: int, tile: Tuple[int, int], max_side: int = SHEET_MAX_SIDE, pad: int = 4,
             reserve: int = 0, label_height: int = 0, cols: Optional[int] = None) -> Tuple[int, int]:
    """The largest tile size (aspect kept, at most ``tile``) whose grid of ``n``
    tiles in ``cols`` columns (default: as :func:`sheet_layout`), each with ``label_height``
    pixels of label under it, plus ``reserve`` pixels of title and colour bar, fits ``max_side``."""
    W, H = tile
    # (sqrt(n) always: cols=100 ran past max_side; 0 and 2.5 were taken as the default and 2)
    cols = positive_int("cols", cols) or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    room_w = (max_side - pad) / cols - pad
    room_h = (max_side - reserve - pad) / rows - pad - label_height
    scale = min(1.0, room_w / W, room_h / H)
    if room_w < 1 or room_h < 1:  # (not even a 1-pixel tile: the 1-pixel floor below would run past max_side)
        raise InputError(f"a contact sheet of {n} tiles in {cols} columns cannot fit {max_side} pixels")
    return max(1, int(W * scale)), max(1, int(H * scale))


def _fit_with_labels(n: int, tile: Tuple[int, int], max_side: int, pad: int, reserve: int, cols: int,
                     labelled: bool) -> Tuple[int, int]:
    """:func:`fit_tile` with room for the label of the tile it gives (a shrunk tile's label is shorter:
    the room of the full-size tile's label refused sheets that fit, or halved their tiles)."""
    room = _label_height(tile[1]) if labelled else 0
    best = None
    while True:
        try:
            W, H = fit_tile(n, tile, max_side, pad, reserve=reserve, label_height=room, cols=cols)
        except InputError:
            if best is not None or room == _label_height(1) or not labelled:
                break
            room = _label_height(1)  # the shortest label: the tile it allows may need no more
            continue
        drawn = _label_height(H) if labelled else 0
        if drawn > room:  # its label would not fit the room left for it
            break
        best = (W, H)
        if drawn == room:
            break
        room = drawn
    if best is None:
        raise InputError(f"a contact sheet of {n} tiles in {cols} columns cannot fit {max_side} pixels")
    return best


def _label_height(tile_height: int) -> int:
    """Pixels of label under a tile: a tenth of the tile, 12 to 28."""
    return min(28, max(12, tile_height // 10))


def _text_width(text: str, f) -> int:
    return int(math.ceil(text_length(text, f)))


def _longest_start(text: str, f, width: float, suffix: str = "") -> int:
    """Letters of the longest start of ``text`` that, followed by ``suffix``, is at most ``width``
    pixels wide in font ``f`` (0 if none), found by bisection."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _text_width(text[:mid] + suffix, f) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _ellipsized(text: str, f, width: float) -> str:
    """The longest start of ``text`` followed by "…" at most ``width`` pixels wide in font ``f``."""
    return text[:_longest_start(text, f, width, "…")].rstrip() + "…"


def _fitting_start(text: str, f, width: float) -> int:
    """Letters of the longest start of ``text`` at most ``width`` pixels wide in font ``f``, at least 1."""
    return max(1, _longest_start(text, f, width))


def wrap_text(text: str, f, width: float, max_lines: int) -> List[str]:
    """``text`` in lines each at most ``width`` pixels wide in font ``f`` (measured: a wrap by letter
    count ran lines of capitals off the sheet), broken at whitespace (line breaks included), a word
    wider than a line broken where it reaches the edge; at most ``max_lines``, the last ending in
    "…" when text is left over. A width narrower than "…" holds nothing: no line."""
    max_lines = positive_int("max_lines", max_lines)  # (-1 was an IndexError, 0 gave a line)
    if max_lines is None:
        raise InputError("max_lines must be a positive int, got None")
    if _text_width("…", f) > width:  # (a letter was kept all the same, and the line ran past width)
        return []
    lines: List[str] = []
    line = ""
    words = text.split()[::-1]
    while words and len(lines) <= max_lines:
        word = words.pop()
        joined = f"{line} {word}" if line else word
        if _text_width(joined, f) <= width:
            line = joined
        elif line:  # the word starts the next line
            lines.append(line)
            line = ""
            words.append(word)
        else:  # a word wider than a line (a URL, a language written without spaces): broken at the edge
            k = _fitting_start(word, f, width)
            lines.append(word[:k])
            words.append(word[k:])
    if line:
        lines.append(line)
    if len(lines) > max_lines:  # text left over: the last line kept ends in an ellipsis
        lines = lines[:max_lines - 1] + [_ellipsized(lines[max_lines - 1], f, width)]
    return lines


def fit_text(text: str, f, width: float) -> str:
    """``text``, or its longest start followed by "…" that is at most ``width`` pixels wide in
    font ``f`` ("" if not even "…" fits)."""
    if _text_width(text, f) <= width:
        return text
    cut = _ellipsized(text, f, width)
    return cut if _text_width(cut, f) <= width else ""


def check_labels(labels, n: int) -> Optional[List[str]]:
    """``labels`` as a list of ``n`` strings (one per tile), or None; else an InputError naming it
    (two tiles and one label was an IndexError, a string was taken letter by letter)."""
    if labels is None:
        return None
    if not isinstance(labels, (list, tuple)) or not all(isinstance(t, str) for t in labels):
        raise InputError(f"labels must be a list of strings, one per tile, got {type(labels).__name__}")
    if len(labels) != n:
        raise InputError(f"labels: {len(labels)} label(s) for {n} tile(s); give one label per tile")
    return list(labels)


def colour_bar(width: int, height: int, colormap: str = "jet") -> Image.Image:
    """A horizontal colour bar: the colormap from 0 (left) to 1 (right), with ticks."""
    bar_h = max(6, height // 2)
    ramp = np.tile(np.linspace(0.0, 1.0, max(2, width - 20))[None, :], (bar_h, 1))
    img = Image.new("RGB", (width, height), (255, 255, 255))
    img.paste(Image.fromarray(colorize(ramp, colormap)), (10, 0))
    draw = ImageDraw.Draw(img)
    f = font(max(8, height - bar_h - 2))
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = 10 + int(round(v * (width - 21)))
        draw.line([(x, bar_h), (x, bar_h + 2)], fill=(0, 0, 0))
        label = f"{v:g}"
        tw = text_length(label, f)
        draw.text((min(max(0, x - tw / 2), width - tw), bar_h + 2), label, fill=(0, 0, 0), font=f)
    return img


def contact_sheet(tiles: Sequence[Image.Image], labels: Optional[Sequence[str]] = None, cols: Optional[int] = None,
                  pad: int = 4, title: Optional[str] = None, colormap: Optional[str] = None,
                  max_side: int = SHEET_MAX_SIDE, background=(255, 255, 255)) -> Image.Image:
    """Tiles (resized to the first tile's size, shrunk to fit ``max_side``) on
    a grid, each with its label underneath (``labels``: one string per tile; a
    cell of thin tiles is widened up to :data:`LABEL_CELL_WIDTH` for its label,
    a label wider than its cell ends in "…"); ``title`` wrapped on top and, with ``colormap``,
    a colour bar at the bottom. At least :data:`SHEET_MIN_WIDTH` wide."""
    if not tiles:
        raise InputError("contact_sheet needs at least one tile")
    n = len(tiles)
    for k, tile in enumerate(tiles):  # (a 0 x 0 tile was a ZeroDivisionError)
        if not isinstance(tile, Image.Image) or min(tile.size) < 1:
            what = f"{tile.width} x {tile.height} pixels" if isinstance(tile, Image.Image) else type(tile).__name__
            raise InputError(f"tiles: tile {k} is {what}; every tile must be a PIL image of at least 1 x 1 pixel")
    labels = check_labels(labels, n)
    if labels is not None:  # each on one line (Pillow cannot measure a label with a line break in it)
        labels = [" ".join(t.splitlines()) for t in labels]
    if title is not None and not isinstance(title, str):  # (123 was textwrap's AttributeError)
        raise InputError(f"title must be a string or None, got {type(title).__name__}")
    cols = positive_int("cols", cols) or int(math.ceil(math.sqrt(n)))  # (-1 was Pillow's ValueError)
    W0, H0 = tiles[0].size
    probe_w = min(max_side, max(SHEET_MIN_WIDTH, cols * (W0 + pad) + pad))
    # a long response would leave no room for the tiles: the title is cut to MAX_TITLE_LINES
    title_font = font(14)
    title_lines = wrap_text(title, title_font, probe_w - 2 * pad, MAX_TITLE_LINES) if title else []
    title_w = max((_text_width(t, title_font) for t in title_lines), default=0) + 2 * pad
    title_h = 18 * len(title_lines) + (6 if title_lines else 0)
    bar_h = 26 if colormap else 0
    W, H = _fit_with_labels(n, (W0, H0), max_side, pad, title_h + bar_h, cols, bool(labels))
    lh = _label_height(H) if labels else 0
    label_font = font(max(10, lh - 4)) if lh else None
    label_w = max(_text_width(t, label_font) for t in labels) + 4 if lh else 0
    # thin tiles' cells widen for their labels, up to LABEL_CELL_WIDTH; a longer label is cut with an
    # ellipsis (one 300-letter word widened every cell to ~1,000 pixels and still ran off the sheet)
    cell_w = max(W, min(label_w, LABEL_CELL_WIDTH, (max_side - pad) // cols - pad))
    grid_w, grid_h = sheet_layout(n, (cell_w, H), cols, pad, lh)
    # (tiles shrunk to fit max_side keep the title the width it was wrapped to)
    sheet_w = max(grid_w, min(max(SHEET_MIN_WIDTH, title_w), max_side))
    sheet = Image.new("RGB", (sheet_w, title_h + grid_h + bar_h), background)
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(title_lines):
        draw_text(draw, (pad, 3 + 18 * i), line, title_font, (0, 0, 0))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        x, y = pad + c * (cell_w + pad), title_h + pad + r * (H + lh + pad)
        t = tile.convert("RGB")
        if t.size != (W, H):
            t = t.resize((W, H), Image.BICUBIC)
        sheet.paste(t, (x + (cell_w - W) // 2, y))
        if labels is not None and lh:
            text = fit_text(labels[k], label_font, cell_w - 2)
            # its ink starts below the tile: stacked accents (Ễ, Ẫ) rise above the font's ascender, and
            # drawn at the ascender's line they overwrote the tile's bottom row
            ink_top = text_bbox(text, label_font)[1] if text else 0
            draw_text(draw, (x + 2, y + H + 1 + max(0, -ink_top)), text, label_font, (0, 0, 0))
    if colormap:
        bar = colour_bar(min(sheet_w - 2 * pad, 512), bar_h - 4, colormap)
        sheet.paste(bar, (pad, title_h + grid_h))
    return sheet


__all__ = ["contact_sheet", "sheet_layout", "fit_tile", "fit_text", "wrap_text", "check_labels", "colour_bar", "font",
           "SHEET_MAX_SIDE", "SHEET_MIN_WIDTH", "LABEL_CELL_WIDTH"]
