"""Pictures of a trajectory: one animation per word, a step x word sheet, a frame strip.

* :func:`word_frames`: one frame per step: the word's overlay, under it the
  word, the step number and a timeline of the ``S`` steps (current step
  filled, decision step outlined); the decision-step frame reads "decided"
  and has a red border (on an image at least 8 pixels a side);
* :func:`write_animations`: ``NN_word.gif`` per word (a frame per step;
  :func:`write_animation`: one word's);
* :func:`sheet`: rows = steps, columns = words, the decision step of each
  word framed in red, a title and a colour bar (at most :data:`SHEET_MAX_SIDE`
  pixels a side);
* :func:`strip`: one word's frames side by side (the README picture).
"""
from __future__ import annotations

import math
import os
from typing import List, Tuple

from PIL import Image, ImageDraw

from ..explanation import word_file_names
from ..render.overlay import DISPLAY_MAX_SIDE, DISPLAY_MIN_SIDE, display_size, overlay, rendered_at
from ..render.fonts import draw_text, text_length
from ..render.sheet import SHEET_MAX_SIDE, colour_bar, fit_text, font
from ..words import clean_token

#: Colour of the decision-step marker.
DECIDED = (220, 20, 60)
#: Height of the caption band under a frame, pixels.
BAND = 34
#: Milliseconds per frame of the animations.
FRAME_MS = 600
#: Border width of a decided frame (an image's shorter side / 8 at most) / sheet cell, pixels.
BORDER = 4


def frame_image(traj, side: int = DISPLAY_MIN_SIDE, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
    """The image the frames are drawn on (a trajectory saved alone keeps it as ``image.png``)."""
    # the overlays' rule (display_size): a wide image's longest side ends at max_side; the cap was
    # min-side x aspect, which scaled a 4000 x 100 image up to 8000 pixels wide
    size = display_size(traj.image.size, side, max_side)
    # a loaded explanation's trajectory: drawn on its image.png where that is the size, as the overlays are
    return rendered_at(traj.image, size, getattr(traj, "_saved_rendering", None))


def _timeline(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], S: int, step: int, decided: int):
    x0, y0, x1, y1 = box
    cell = (x1 - x0) / S
    for s in range(S):
        a, b = int(x0 + s * cell), int(x0 + (s + 1) * cell) - 1
        fill = (40, 40, 40) if s == step else (200, 200, 200)
        draw.rectangle([a, y0, max(a, b), y1], fill=fill)
        if s == decided:
            draw.rectangle([a, y0, max(a, b), y1], outline=DECIDED, width=2)


def word_frames(traj, k: int, alpha: float = 0.5, colormap: str = "jet",
                side: int = DISPLAY_MIN_SIDE, max_side: int = DISPLAY_MAX_SIDE) -> List[Image.Image]:
    """The ``S`` frames of word ``k`` (index into ``traj.tokens``), RGB; the image
    sized as the overlays are (:func:`dcam.render.overlay.display_size`: a small
    image's shortest side up to ``side`` by whole factors, the longest side at
    most ``max_side``)."""
    base = frame_image(traj, side, max_side)
    iw, H = base.size
    S, d = traj.steps, int(traj.decided_at[k])
    word = f"{traj.word_numbers[k]}: {clean_token(traj.tokens[k])}"
    f = font(13)
    captions = [f"step {s}/{S - 1}" + ("  decided" if s == d else "") for s in range(S)]
    # a narrow image's frame is widened (the image centred on white) to its longest caption and to a
    # pixel per step of the timeline: a 50-pixel-wide image cut "step 3/11" to "step 3/1", a 1 x 2000
    # one made 1-pixel-wide GIFs
    W = max(iw, int(math.ceil(max(text_length(c, f) for c in captions))) + 8, S + 8)
    x0 = (W - iw) // 2
    # the decided frame's border: at most an eighth of the image's shorter side a side, none under 8 pixels
    # (the caption reads "decided" in red): 4 pixels covered a 1024 x 1 image whole and ran into the caption
    border = min(BORDER, min(iw, H) // 8)
    frames = []
    for s in range(S):
        fr = Image.new("RGB", (W, H + BAND), (255, 255, 255))
        fr.paste(overlay(base, traj.maps[s, k], alpha=alpha, colormap=colormap, box=traj.box,
                         cells=getattr(traj, "cells", None)), (x0, 0))
        draw = ImageDraw.Draw(fr)
        if s == d and border:
            draw.rectangle([x0, 0, x0 + iw - 1, H - 1], outline=DECIDED, width=border)
        text = captions[s]
        if text_length(f"{word}  {text}", f) <= W - 8:  # the word too, where it fits
            text = f"{word}  {text}"
        draw_text(draw, (4, H + 2), text, f, DECIDED if s == d else (0, 0, 0))
        _timeline(draw, (4, H + 20, W - 4, H + BAND - 4), S, s, d)
        frames.append(fr)
    return frames


def write_animation(traj, k: int, path, alpha: float = 0.5, colormap: str = "jet",
                    max_side: int = DISPLAY_MAX_SIDE) -> str:
    """The looping GIF of word ``k`` (index into ``traj.tokens``) at ``path``: :func:`word_frames`,
    :data:`FRAME_MS` each, the decision step's twice as long."""
    frames = word_frames(traj, k, alpha, colormap, max_side=max_side)
    durations = [FRAME_MS * (2 if s == int(traj.decided_at[k]) else 1) for s in range(len(frames))]
    # a fast octree palette per frame (Pillow's default median cut takes ~0.1 s a frame); each frame
    # carries its own step number, so no two are equal and Pillow keeps every one
    pal = [fr.quantize(colors=256, method=Image.Quantize.FASTOCTREE) for fr in frames]
    pal[0].save(path, format="GIF", save_all=True, append_images=pal[1:], duration=durations, loop=0, disposal=1)
    return path


def write_animations(traj, folder: str, alpha: float = 0.5, colormap: str = "jet",
                     max_side: int = DISPLAY_MAX_SIDE) -> List[str]:
    """``folder/NN_word.gif`` for every word (NN: its word number), a frame per step, looping."""
    os.makedirs(folder, exist_ok=True)
    names = word_file_names(traj.word_numbers, traj.tokens, "gif")
    return [write_animation(traj, k, os.path.join(folder, names[k]), alpha, colormap, max_side)
            for k in range(len(traj.tokens))]


LABEL_ROW = 14  # pixels a row needs for its 11-point step label
#: Height of the sheet's title line (the response, the method and layer), pixels
TITLE_BAND = 22
#: Height of the colour bar under the sheet (as the contact sheet's), pixels
BAR_BAND = 26


def sheet_geometry(S: int, T: int, max_side: int = SHEET_MAX_SIDE, tile: int = 96, aspect: float = 1.0) -> dict:
    """Layout of the step x word sheet for images of ``aspect`` (width / height): each cell
    holds the image with its longer side ``tile`` (shrunk to keep the sheet at most
    ``max_side`` a side up to about 2,000 steps or words: tiles go down to one pixel with
    one-pixel gaps; a floor of 8 made 400 words 4,860 wide), columns as wide as the cell,
    rows as high as the cell or a step label (a wide image's 96 x 8 strips sat in 96 x 96
    rows, each label level with the row below its own). A title line of :data:`TITLE_BAND`
    pixels is above the word labels (``top`` counts both), a colour bar of :data:`BAR_BAND`
    pixels at the bottom (``bar``: its top)."""
    left, top = 56, TITLE_BAND + 22

    def layout(t: int, pad: int) -> dict:
        cw, ch = max(1, round(t * min(1.0, aspect))), max(1, round(t * min(1.0, 1 / aspect)))
        row = max(ch, min(LABEL_ROW, t))
        grid_bottom = top + S * (row + pad) + pad
        return dict(tile=t, cell=(cw, ch), row=row, pad=pad, left=left, top=top, bar=grid_bottom,
                    size=(left + T * (cw + pad) + pad, grid_bottom + BAR_BAND))
    for pad in (4, 1):
        for t in range(tile, 0 if pad == 1 else 7, -1):
            g = layout(t, pad)
            if max(g["size"]) <= max_side or (pad == 1 and t == 1):
                return g
    raise AssertionError("unreachable")


def sheet_title(traj) -> str:
    """The title of the step x word sheet: the response, the method and the hooked layer."""
    return f"{' '.join(traj.response.split())}  (diffusion-cam, layer {traj.layer}; rows: denoising steps)"


def sheet(traj, alpha: float = 0.5, colormap: str = "jet", max_side: int = SHEET_MAX_SIDE) -> Image.Image:
    """Rows: steps; columns: words; each word's decision step framed in red; the title
    (:func:`sheet_title`, cut to the sheet's width) on top and a colour bar (the maps'
    values 0 to 1, as the contact sheet's) at the bottom."""
    S, T = traj.steps, len(traj.tokens)
    iw, ih = traj.image.size
    g = sheet_geometry(S, T, max_side, aspect=iw / ih)
    (cw, ch), row, pad, left, top = g["cell"], g["row"], g["pad"], g["left"], g["top"]
    base = frame_image(traj).resize((cw, ch), Image.BOX)
    out = Image.new("RGB", g["size"], (255, 255, 255))
    draw = ImageDraw.Draw(out)
    draw_text(draw, (4, 3), fit_text(sheet_title(traj), font(14), g["size"][0] - 8), font(14), (0, 0, 0))
    if g["size"][0] > 28:  # (room for a bar of a few pixels between its 10-pixel margins)
        out.paste(colour_bar(min(g["size"][0] - 8, 512), BAR_BAND - 4, colormap), (4, g["bar"]))
    f = font(11)
    for k, tok in enumerate(traj.tokens):
        x = left + pad + k * (cw + pad)
        # cut to its column by its drawn width (a cut to cw // 6 letters ran into the next column)
        draw_text(draw, (x + 2, top - 18), fit_text(f"{traj.word_numbers[k]}:{clean_token(tok)}", f, cw + pad - 3),
                  f, (0, 0, 0))
    for s in range(S):
        y = top + pad + s * (row + pad)
        draw.text((4, y + row // 2 - 6), f"step {s}", fill=(0, 0, 0), font=f)  # level with its row's middle
        ty = y + (row - ch) // 2
        for k in range(T):
            x = left + pad + k * (cw + pad)
            out.paste(overlay(base, traj.maps[s, k], alpha=alpha, colormap=colormap, box=traj.box,
                               cells=getattr(traj, "cells", None)), (x, ty))
            if s == int(traj.decided_at[k]):
                draw.rectangle([x - 2, ty - 2, x + cw + 1, ty + ch + 1], outline=DECIDED, width=max(2, BORDER - 1))
    return out


def write_sheet(traj, path: str, alpha: float = 0.5, colormap: str = "jet") -> str:
    sheet(traj, alpha, colormap).save(path)
    return path


def strip(traj, word, alpha: float = 0.5, colormap: str = "jet", gap: int = 4,
          side: int = DISPLAY_MIN_SIDE) -> Image.Image:
    """One word's frames (a word number or the word) side by side, left to right."""
    frames = word_frames(traj, traj.index(word), alpha, colormap, side)
    W, H = frames[0].size
    out = Image.new("RGB", (len(frames) * (W + gap) - gap, H), (255, 255, 255))
    for i, fr in enumerate(frames):
        out.paste(fr, (i * (W + gap), 0))
    return out


__all__ = ["frame_image", "word_frames", "write_animation", "write_animations", "sheet", "sheet_geometry", "sheet_title",
           "write_sheet", "strip"]
