"""Diffusion-CAM: gradient pooling refined by AKD, DACG, CBA and SICD
(docs/ALGORITHM.md sections 1-7), computed by the operators of :mod:`dcam.ops`."""
from __future__ import annotations

from .. import ops
from .base import CamMethod, MapResult, MethodInputs, register_method


@register_method
class DiffusionCam(CamMethod):
    """Pool the probe's gradients into raw maps, then refine them with the
    explanation's steps, image height and repeat ratio (and, for
    ``sicd="context"``, the probe's context weights)."""

    name = "diffusion-cam"

    def compute_maps(self, inputs: MethodInputs) -> MapResult:
        r = inputs.result
        T = r.scores.shape[0]
        h, w = inputs.grid
        raw = ops.pool_gradients(r.acts, r.grads, inputs.grid, grad_relu=inputs.config.grad_relu,
                                 backend=inputs.backend)
        raw_maps = raw.maps.reshape(1, T, h, w)
        degenerate = raw.degenerate.reshape(1, T)
        cw = r.context_weights[None].float() if inputs.config.sicd == "context" else None
        out = ops.refine(raw_maps, config=inputs.config, steps=inputs.steps, image_size=inputs.image_size,
                         repeat_ratio=inputs.repeat_ratio, context_weights=cw, degenerate=degenerate,
                         backend=inputs.backend, check_finite=False)  # pooled maps are finite, in [0, 1]
        stats = {k: v[0] for k, v in out.stats().items()}
        return MapResult(out.maps[0].contiguous(), stats, raw_maps[0])
