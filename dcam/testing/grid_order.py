"""Whether an adapter's grid puts its image tokens where the image is, asked of the model itself:
:func:`check_grid_order`, for adapter authors (docs/FAMILIES.md, "Bring your own dMLLM").

A grid given as ``(columns, rows)`` (``(8, 6)`` for 6 rows of 8) or positions listed column by column
hold as many tokens as the right ones, so no count dcam makes can tell them apart, and the maps come out
transposed or scrambled without a word. Here the image's left half, then its top half, is changed
(its colours inverted) and the hooked block's input states at the image positions are compared with
those of the image as it was: the tokens that changed most must lie in the grid's left columns, then
its top rows, more clearly than under the other readings of the same tokens (the swapped grid, the
column-by-column order). It needs a model whose states there still keep the place of each image
patch (a patch embedding, a vision tower's output): a model that mixes the image wholly before that
block cannot be checked this way, and the check says the contrast was too weak to tell.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image


class _Captured(Exception):
    """Raised by the hook once the block's input is kept: the rest of the model need not run."""


def _states(adapter, image: Image.Image, layer: int) -> torch.Tensor:
    """The input states of block ``layer`` at the image positions ``[N, D]`` (float64) for ``image``."""
    prep = adapter.prepare(image, None, sorted(int(i) for i in adapter.eos_token_ids)[:1] or None,
                           None if adapter.eos_token_ids else 1)
    kept = {}

    def keep(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        kept["states"] = hidden[0, prep.image_positions].detach().double()
        raise _Captured

    handle = adapter.blocks()[layer].register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.logits_at(prep.input_ids, adapter.batch_inputs(prep, 1),
                              torch.tensor([prep.response_start]), prep.response_start)
    except _Captured:
        pass
    finally:
        handle.remove()
    return kept["states"], tuple(int(v) for v in prep.grid)


def _contrast(changed: np.ndarray, axis: int) -> float:
    """(first half's mean - last half's mean) / the mean, along ``axis`` of a 2-D array (the middle row or
    column of an odd count left out): 2 where only the first half changed, 0 where both alike."""
    n = changed.shape[axis] // 2
    if n == 0:
        return 0.0
    first, last = np.take(changed, range(n), axis), np.take(changed, range(changed.shape[axis] - n,
                                                                            changed.shape[axis]), axis)
    return float((first.mean() - last.mean()) / (changed.mean() + 1e-12))


def grid_order_scores(adapter, image: Optional[Image.Image] = None, layer: int = 0) -> Dict[str, float]:
    """{reading: score} of the image tokens' changes read as the adapter's grid ``h x w`` ("grid"), as
    ``w x h`` ("swapped") and as ``h x w`` listed column by column ("columns"), each the left-right
    contrast of the change of the left half plus the top-bottom contrast of the change of the top half
    (4 for a model whose states at that block are each its own patch's, read in the right order).
    ``image``: a 4:3 image of seeded noise by default (a model that sizes its grid by the image needs one
    of its usual shape: give one)."""
    return _scores(adapter, image, layer)[0]


def _scores(adapter, image, layer) -> Tuple[Dict[str, float], Tuple[int, int]]:
    if image is None:
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (336, 448, 3), dtype=np.uint8))
    pixels = np.asarray(image.convert("RGB")).copy()
    H, W = pixels.shape[:2]
    left, top = pixels.copy(), pixels.copy()
    left[:, :W // 2] = 255 - left[:, :W // 2]
    top[:H // 2] = 255 - top[:H // 2]
    base, (h, w) = _states(adapter, Image.fromarray(pixels), layer)
    change = {name: (_states(adapter, Image.fromarray(p), layer)[0] - base).norm(dim=-1).numpy()
              for name, p in (("left", left), ("top", top))}
    readings = {"grid": lambda c: c.reshape(h, w), "swapped": lambda c: c.reshape(w, h),
                "columns": lambda c: c.reshape(w, h).T}
    return {name: _contrast(read(change["left"]), 1) + _contrast(read(change["top"]), 0)
            for name, read in readings.items()}, (h, w)


def check_grid_order(adapter, image: Optional[Image.Image] = None, layer: int = 0) -> Tuple[int, int]:
    """The adapter's grid, checked by :func:`grid_order_scores`: AssertionError where another reading of the
    tokens places the changes better than the grid does (another reading that is the same, a square grid's
    swap, is not one), or where the grid's score is under 0.5 (too weak a contrast to tell: 4 is a patch's
    own state per token; the stand-ins of docs/FAMILIES.md score 3.1 to 3.8 at block 0, but Gemma 3's 0.84)."""
    scores, (h, w) = _scores(adapter, image, layer)
    others = {k: v for k, v in scores.items() if k != "grid" and not (k == "swapped" and h == w)}
    shown = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
    best = max(others, key=others.get)
    assert scores["grid"] > others[best], \
        f"{type(adapter).__name__}: the image tokens read as its {h}x{w} grid place the changed half of the " \
        f"image worse than read {best} ({shown}): its grid is (columns, rows) or its positions are out of order"
    assert scores["grid"] >= 0.5, f"{type(adapter).__name__}: too weak a contrast to tell ({shown}) at block " \
                                f"{layer}: check a block whose states still keep each patch's place"
    return int(h), int(w)


__all__ = ["check_grid_order", "grid_order_scores"]
