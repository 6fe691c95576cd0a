"""Grad-CAM (Selvaraju et al.) on the same probe as Diffusion-CAM.

Channel weights are the mean gradient over the image tokens (positive and
negative gradients alike), ``map = relu(sum_d w_d A[:, d])``, min-max
normalised; no refinement.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .base import CamMethod, MethodInputs, batched_pool_inputs, minmax_or_zero, register_method


def grad_cam(acts: Tensor, grads: Tensor, grid) -> Tensor:
    """Grad-CAM maps ``[B, T, h, w]`` from acts ``[B, N, D]`` and grads
    ``[B, T, N, D]`` (``[N, D]`` / ``[T, N, D]`` accepted for one image)."""
    acts, grads, h, w = batched_pool_inputs(acts, grads, grid)
    B, T, N, D = grads.shape
    weights = grads.float().mean(dim=2)  # [B, T, D]
    cam = torch.bmm(weights, acts.float().transpose(1, 2)).clamp(min=0)  # [B, T, N]
    if not bool(torch.isfinite(cam).all()):  # finite inputs whose product passes float32's range
        raise InputError("acts, grads: their product overflows float32 (finite values too large to pool)")
    return minmax_or_zero(cam.reshape(B * T, N)).reshape(B, T, h, w)


@register_method
class GradCam(CamMethod):
    name = "grad-cam"

    def reduce_gradients(self, acts, grads, inputs: MethodInputs):
        maps = grad_cam(acts, grads, inputs.grid).reshape(-1, *inputs.grid).float()
        return maps, self.zero_map_stats(maps)["degenerate"]
