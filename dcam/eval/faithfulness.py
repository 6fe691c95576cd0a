"""Causal faithfulness: deletion and insertion curves (beyond the paper).

The image is cut into the map's ``h x w`` grid cells; cells are blanked (set
to the image's per-channel mean colour by default, or a fixed colour) in the
order of the word's map, most important first (deletion), or the blank image
gets its cells back in that order (insertion); at each fraction the model is
re-run (masked probe: every response slot masked, the probability of the
word's token at its position; the ``full`` probe for models without a mask
token; a word of several tokens averages them) and the area under each curve
(trapezoid over the fraction in ``[0, 1]``) is reported per method, plus a
random order (seeded). Lower deletion AUC and higher insertion AUC are better.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import InputError
from ..probe.gradients import build_probe_inputs
from ..render.cells import check_cells, pixel_cells
from ..render.overlay import FULL_BOX, box_pixels
from .report import log as _log

def patch_orders(maps: Tensor) -> Tensor:
    """Grid cells of each map ``[R, h, w]`` from most to least important
    (ties: raster order) -> int64 ``[R, h*w]``."""
    flat = maps.reshape(maps.shape[0], -1).float()
    return torch.sort(-flat, dim=1, stable=True).indices


def _cell_index(H: int, W: int, grid: Tuple[int, int], box=FULL_BOX, cells=None) -> np.ndarray:
    """The grid cell of every pixel of an ``H x W`` image whose part ``box`` (fractions
    ``(x0, y0, x1, y1)``) the model saw as the ``grid``; -1 outside it (pixels the model
    never sees, left as they are). ``cells``: a stitched map's column and row centres
    (:func:`dcam.render.cells.pixel_cells`: each pixel goes to the nearest); None: even cells."""
    h, w = grid
    cells = check_cells(cells, grid, box)
    x0, y0, x1, y1 = box_pixels(box, (H, W))
    cy = pixel_cells(y1 - y0, h, None if cells is None else cells.y, box[1], box[3])
    cx = pixel_cells(x1 - x0, w, None if cells is None else cells.x, box[0], box[2])
    out = np.full((H, W), -1, dtype=np.int64)
    iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
    if iy1 > iy0 and ix1 > ix0:
        out[iy0:iy1, ix0:ix1] = cy[iy0 - y0:iy1 - y0, None] * w + cx[None, ix0 - x0:ix1 - x0]
    return out


def curve_auc(values: np.ndarray) -> np.ndarray:
    """Trapezoid area under curves sampled at equally spaced fractions of
    ``[0, 1]``: ``values [..., K+1]`` -> ``[...]``."""
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"values must be numbers, got {values!r:.60}") from None
    if v.ndim == 0 or v.shape[-1] == 0:  # (an empty curve raised an IndexError)
        raise InputError(f"values must hold at least one point per curve, got shape {v.shape}")
    K = v.shape[-1] - 1
    if K < 1:
        return v[..., 0]
    return (v[..., 1:] + v[..., :-1]).sum(axis=-1) / (2.0 * K)


def faithfulness_probe(adapter) -> str:
    """``"masked"`` when the model has a mask token, else ``"full"``."""
    return "masked" if adapter.mask_token_id is not None and "masked" in adapter.probes else "full"


@torch.no_grad()
def token_probabilities(adapter, images: Sequence[Image.Image], response_ids: Sequence[int],
                        indices: Sequence[int], prompt: Optional[str] = None, probe: Optional[str] = None,
                        batch_size: int = 16) -> Tensor:
    """Probability of the response token at each response index in
    ``indices``, for every image: ``[len(images), len(indices)]`` float32.
    ``probe="masked"``: every response slot masked; ``"full"``: the response
    visible (teacher forcing)."""
    probe = probe or faithfulness_probe(adapter)
    idx = [int(i) for i in indices]
    out = []
    for s in range(0, len(images), batch_size):
        chunk = images[s:s + batch_size]
        preps = [adapter.prepare(im, prompt, list(response_ids)) for im in chunk]
        tok = torch.tensor([preps[0].response_ids[i] for i in idx], dtype=torch.long)
        same = all(torch.equal(p.input_ids, preps[0].input_ids) for p in preps[1:])
        groups = [preps] if same else [[p] for p in preps]
        for g in groups:
            # each group's own sequence and response positions (images of other sizes have other
            # layouts: the first image's were expanded over them, and failed)
            ids0 = build_probe_inputs(adapter, g[0], [], probe)
            ids = ids0.expand(len(g), ids0.shape[1])
            pos = adapter.logit_positions(torch.tensor([g[0].response_start + i for i in idx], dtype=torch.long))
            logits = adapter.logits_at_rows(ids, adapter.stack_inputs(g), pos, g[0].response_start)  # [B, P, V]
            lp = torch.log_softmax(logits.float(), dim=-1)
            out.append(lp.gather(2, tok.to(lp.device)[None, :, None].expand(len(g), -1, 1))[..., 0].exp().cpu())
    return torch.cat(out, dim=0)


def check_fill(fill, name: str = "fill"):
    """``"mean"`` or an (r, g, b) tuple of numbers in [0, 255]; else an InputError naming
    ``name`` (a colour of (300, -5, 0) wrapped round to (44, 251, 0) in the uint8 image)."""
    if isinstance(fill, str):
        if fill != "mean":
            raise InputError(f"{name} must be 'mean' or an (r, g, b) colour, got {fill!r}")
        return fill
    try:
        vals = tuple(float(v) for v in fill)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be 'mean' or an (r, g, b) colour, got {fill!r}") from None
    if len(vals) != 3 or not all(0 <= v <= 255 for v in vals) or any(isinstance(v, bool) for v in fill):
        raise InputError(f"{name} must be 'mean' or an (r, g, b) colour of numbers in 0..255, got {fill!r}")
    return vals


def perturbation_curves(adapter, image: Image.Image, response_ids: Sequence[int], orders: Tensor,
                        row_tokens: Sequence[Sequence[int]], grid: Tuple[int, int], prompt: Optional[str] = None,
                        steps: int = 10, fill: Union[str, Sequence[float]] = "mean", probe: Optional[str] = None,
                        batch_size: int = 16, box=FULL_BOX, cells=None) -> Tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves ``[R, steps+1]`` for ``R`` cell orders.

    orders: int64 ``[R, h*w]`` (most important first); row_tokens[r]: the
    response indices whose mean probability row ``r`` tracks. At step ``k``
    the first ``round(k/steps * h*w)`` cells are blanked (deletion) or the only
    ones kept (insertion). The intact and the blank image are shared by all
    rows; everything else is scored in batches. ``box``: the part of the image the model
    sees as ``grid`` (a crop; the explanation's ``box``): the cells are laid over it (at
    ``cells``, the explanation's, where a stitched map has them) and the pixels outside it
    are never changed ("blank" blanks only the box)."""
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    H, W = img.shape[:2]
    fill = check_fill(fill)
    colour = img.reshape(-1, 3).mean(axis=0) if fill == "mean" else np.asarray(fill, dtype=np.float32)
    cell = _cell_index(H, W, grid, box, cells)
    blank = np.where((cell >= 0)[..., None], np.broadcast_to(colour, img.shape), img)
    N = grid[0] * grid[1]
    R = orders.shape[0]
    counts = [int(round(k / steps * N)) for k in range(steps + 1)]
    images = [Image.fromarray(np.rint(img).astype(np.uint8)), Image.fromarray(np.rint(blank).astype(np.uint8))]
    slots = []  # (row, step, kind) -> image index
    ords = orders.cpu().numpy()
    for r in range(R):
        for k in range(1, steps):
            top = np.zeros(N + 1, dtype=bool)  # the last entry: cell -1, outside the box, never on
            top[ords[r, :counts[k]]] = True
            m = top[cell][..., None]
            images.append(Image.fromarray(np.rint(np.where(m, blank, img)).astype(np.uint8)))  # deletion
            images.append(Image.fromarray(np.rint(np.where(m, img, blank)).astype(np.uint8)))  # insertion
            slots.append((r, k))
    needed = sorted({int(t) for toks in row_tokens for t in toks})
    col = {t: c for c, t in enumerate(needed)}
    probs = token_probabilities(adapter, images, response_ids, needed, prompt, probe, batch_size).numpy()

    def row_prob(i, r):
        return float(np.mean([probs[i, col[int(t)]] for t in row_tokens[r]]))

    dele = np.zeros((R, steps + 1))
    ins = np.zeros((R, steps + 1))
    for r in range(R):
        dele[r, 0], dele[r, steps] = row_prob(0, r), row_prob(1, r)
        ins[r, 0], ins[r, steps] = row_prob(1, r), row_prob(0, r)
    for s, (r, k) in enumerate(slots):
        dele[r, k] = row_prob(2 + 2 * s, r)
        ins[r, k] = row_prob(3 + 2 * s, r)
    return dele, ins


def faithfulness_report(adapter, items: List[dict], methods: List[str], prompt, steps: int, fill, batch_size: int,
                  rng: np.random.Generator, verbose: bool) -> dict:
    probe = faithfulness_probe(adapter)
    names = list(methods) + ["random"]
    dels = {m: [] for m in names}
    inss = {m: [] for m in names}
    for it in items:
        rec = it["record"]
        W_ = len(it["words"])
        N = it["grid"][0] * it["grid"][1]
        orders = [patch_orders(it["maps"][m]) for m in methods]
        orders.append(torch.stack([torch.from_numpy(rng.permutation(N)) for _ in range(W_)]))
        allo = torch.cat(orders, dim=0)
        row_tokens = [tk for _ in names for tk in it["tokens"]]
        d, i = perturbation_curves(adapter, rec.image, it["response_ids"], allo, row_tokens, it["grid"], prompt,
                                   steps, fill, probe, batch_size, box=it.get("box", FULL_BOX),
                                   cells=it.get("cells"))
        for k, m in enumerate(names):
            dels[m].append(d[k * W_:(k + 1) * W_])
            inss[m].append(i[k * W_:(k + 1) * W_])
        _log(f"faithfulness: record {rec.record_id} done", verbose)
    out = {"probe": probe, "steps": steps, "fill": fill if isinstance(fill, str) else list(fill),
           "records": len(items), "methods": {}}
    for m in names:
        if not dels[m]:
            continue
        D, I = np.concatenate(dels[m]), np.concatenate(inss[m])
        out["methods"][m] = {"deletion_auc": float(curve_auc(D).mean()), "insertion_auc": float(curve_auc(I).mean()),
                             "deletion_curve": D.mean(axis=0).tolist(), "insertion_curve": I.mean(axis=0).tolist(),
                             "words": int(D.shape[0])}
        out["methods"][m]["insertion_minus_deletion"] = (out["methods"][m]["insertion_auc"]
                                                         - out["methods"][m]["deletion_auc"])
    return out
