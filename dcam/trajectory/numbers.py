"""Per-word numbers of a trajectory that a person can read.

* the Otsu mask of a map: the map's cells above its Otsu threshold, the
  threshold of :mod:`dcam.eval.metrics` (``u8 = floor(255 * map)``,
  prediction ``u8 > t``) taken at the map's own grid (no resize);
* movement between consecutive steps: ``1 - IoU`` of the two Otsu masks (two
  empty masks: 0, nothing moved) and the shift of the map's centre of mass,
  in grid cells (NaN when either map is all zero);
* agreement of the decision-step map with the final map: IoU of their Otsu
  masks, and ``agrees`` when it is at least :data:`AGREE_IOU`.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from ..eval.metrics import otsu_threshold, to_u8

#: IoU of the Otsu masks from which two maps count as agreeing.
AGREE_IOU = 0.5


def otsu_masks(maps: Tensor) -> Tensor:
    """bool ``[..., h, w]``: each map's cells above its Otsu threshold."""
    shape = maps.shape
    u8 = to_u8(maps.float().reshape(-1, shape[-2] * shape[-1]).clamp(0.0, 1.0))
    t = otsu_threshold(u8)
    return (u8 > t[:, None]).reshape(shape)


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of bool masks ``[..., h, w]`` -> float64 ``[...]`` (two empty masks: 1)."""
    inter = (a & b).flatten(-2).sum(-1).double()
    union = (a | b).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def centroids(maps: Tensor) -> Tensor:
    """float64 ``[..., 2]`` (row, column) centre of mass in cells; NaN for an all-zero map."""
    m = maps.double().clamp(min=0)
    h, w = m.shape[-2:]
    total = m.flatten(-2).sum(-1)
    rows = (m.sum(-1) * torch.arange(h, dtype=torch.float64)).sum(-1)
    cols = (m.sum(-2) * torch.arange(w, dtype=torch.float64)).sum(-1)
    c = torch.stack([rows, cols], -1) / total[..., None]
    return torch.where((total > 0)[..., None], c, torch.full_like(c, float("nan")))


def per_word_numbers(maps: Tensor, decided_at: Tensor, final_maps: Tensor) -> Dict[str, Tensor]:
    """The per-word numbers of ``maps [S, T, h, w]`` (see the module docstring).

    Returns ``movement_iou`` and ``centroid_shift`` float64 ``[T, S-1]``
    (step ``s`` to ``s+1``), their per-word means ``mean_movement`` and
    ``mean_shift`` ``[T]`` (NaN for a single step), ``decision_final_iou``
    ``[T]`` and ``agrees`` bool ``[T]``."""
    S, T = maps.shape[:2]
    masks = otsu_masks(maps)  # [S, T, h, w]
    move = (1.0 - mask_iou(masks[:-1], masks[1:])).t().contiguous()  # [T, S-1]
    cen = centroids(maps)  # [S, T, 2]
    shift = (cen[1:] - cen[:-1]).norm(dim=-1).t().contiguous()  # [T, S-1]
    idx = decided_at.long()
    decision = masks[idx, torch.arange(T)]  # [T, h, w]
    iou = mask_iou(decision, otsu_masks(final_maps))
    nan = torch.full((T,), float("nan"), dtype=torch.float64)
    return {"movement_iou": move, "centroid_shift": shift,
            "mean_movement": move.mean(1) if S > 1 else nan, "mean_shift": shift.nanmean(1) if S > 1 else nan,
            "decision_final_iou": iou, "agrees": iou >= AGREE_IOU}


__all__ = ["AGREE_IOU", "otsu_masks", "mask_iou", "centroids", "per_word_numbers"]
