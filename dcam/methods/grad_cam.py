"""Grad-CAM (Selvaraju et al.) on the same probe as Diffusion-CAM.

Channel weights are the mean gradient over the image tokens (positive and
negative gradients alike), ``map = relu(sum_d w_d A[:, d])``, min-max
normalised; no refinement.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import (CamMethod, MapResult, MethodInputs, batched_pool_inputs, minmax_or_zero, register_method,
                   single_image_maps)


def grad_cam(acts: Tensor, grads: Tensor, grid) -> Tensor:
    """Grad-CAM maps ``[B, T, h, w]`` from acts ``[B, N, D]`` and grads
    ``[B, T, N, D]`` (``[N, D]`` / ``[T, N, D]`` accepted for one image)."""
    acts, grads, h, w = batched_pool_inputs(acts, grads, grid)
    B, T, N, D = grads.shape
    weights = grads.float().mean(dim=2)  # [B, T, D]
    cam = torch.bmm(weights, acts.float().transpose(1, 2)).clamp(min=0)  # [B, T, N]
    return minmax_or_zero(cam.reshape(B * T, N)).reshape(B, T, h, w)


@register_method
class GradCam(CamMethod):
    name = "grad-cam"

    def compute_maps(self, inputs: MethodInputs) -> MapResult:
        T = inputs.result.scores.shape[0]
        maps = single_image_maps(grad_cam(inputs.result.acts, inputs.result.grads, inputs.grid), T)
        return MapResult(maps, self.zero_map_stats(maps))
