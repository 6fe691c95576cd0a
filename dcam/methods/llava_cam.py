"""LLaVA-CAM, the published base extractor: the pooling of section 1
(positive gradients averaged over tokens, ``relu(A * w)`` averaged over
channels, min-max) fed by the contrastive target score, then a fixed
threshold: values below :data:`LLAVA_CAM_THRESHOLD` become 0. No denoising,
gating, attenuation or renormalisation."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ..errors import InputError
from ..ops.api import pool_gradients
from .base import CamMethod, MethodInputs, batched_pool_inputs, register_method

#: LLaVA-CAM's fixed threshold on the normalised map
LLAVA_CAM_THRESHOLD = 0.4


def llava_cam(acts: Tensor, grads: Tensor, grid, threshold: float = LLAVA_CAM_THRESHOLD) -> Tensor:
    """LLaVA-CAM maps ``[B, T, h, w]``: section 1 pooling, then values below
    ``threshold`` set to 0. Feed it gradients of the contrastive score to
    reproduce the published method."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be a number in [0, 1] (the maps are min-max normalised), got "
                         f"{threshold!r}")  # (NaN turned the threshold off, 5 zeroed every map)
    acts, grads, h, w = batched_pool_inputs(acts, grads, grid)
    # the reference pooling through the public op: its checks refuse a product past float32's range,
    # which the bare reference turned into all-zero "degenerate" maps
    pooled = pool_gradients(acts, grads, (h, w), grad_relu=True, backend="torch")
    maps, degenerate = pooled.maps, pooled.degenerate
    maps = torch.where(maps < threshold, torch.zeros_like(maps), maps)
    return torch.where(degenerate[:, :, None, None], torch.zeros_like(maps), maps)


@register_method
class LlavaCam(CamMethod):
    name = "llava-cam"
    default_target_score = "contrastive"

    def reduce_gradients(self, acts, grads, inputs: MethodInputs):
        maps = llava_cam(acts, grads, inputs.grid).reshape(-1, *inputs.grid).float()
        return maps, self.zero_map_stats(maps)["degenerate"]
