"""Diffusion-CAM: gradient pooling refined by AKD, DACG, CBA and SICD
(docs/ALGORITHM.md sections 1-7), computed by the operators of :mod:`dcam.ops`."""
from __future__ import annotations

from typing import Tuple

from torch import Tensor

from .. import ops
from .base import CamMethod, MapResult, MethodInputs, register_method


@register_method
class DiffusionCam(CamMethod):
    """Pool each item's gradients into a raw map (as soon as they exist),
    then refine all raw maps with the explanation's steps, image height and
    repeat ratio (and, for ``sicd="context"``, the probe's context weights)."""

    name = "diffusion-cam"

    def reduce_gradients(self, acts: Tensor, grads: Tensor, inputs: MethodInputs) -> Tuple[Tensor, Tensor]:
        h, w = inputs.grid
        raw = ops.pool_gradients(acts, grads, inputs.grid, grad_relu=inputs.config.grad_relu, backend=inputs.backend)
        return raw.maps.reshape(-1, h, w), raw.degenerate.reshape(-1)

    def finish(self, maps: Tensor, degenerate: Tensor, inputs: MethodInputs) -> MapResult:
        T, h, w = maps.shape
        cw = inputs.result.context_weights[None].float() if inputs.config.sicd == "context" else None
        out = ops.refine(maps.reshape(1, T, h, w), config=inputs.config, steps=inputs.steps,
                         image_size=inputs.image_size, repeat_ratio=inputs.repeat_ratio, context_weights=cw,
                         degenerate=degenerate.reshape(1, T), backend=inputs.backend,
                         check_finite=False)  # pooled maps are finite and in [0, 1]
        stats = {k: v[0] for k, v in out.stats().items()}
        return MapResult(out.maps[0].contiguous(), stats, maps)
