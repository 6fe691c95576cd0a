"""Diffusion-CAM: gradient pooling refined by AKD, DACG, CBA and SICD
(docs/ALGORITHM.md sections 1-7), computed by the operators of :mod:`dcam.ops`."""
from __future__ import annotations

from typing import Tuple

from torch import Tensor

from .. import ops
from .base import CamMethod, ChunkReducer, MapResult, MethodInputs, register_method


@register_method
class DiffusionCam(CamMethod):
    """Reduce each item's gradients to its channel weights (as soon as they
    exist), then pool the activations with the weights of all items at once
    (one product for the whole response, not one per chunk of gradients) and
    refine the raw maps with the explanation's steps, image height and repeat
    ratio (and, for ``sicd="context"``, the probe's context weights)."""

    name = "diffusion-cam"
    uses_config = True

    def reduce_gradients(self, acts: Tensor, grads: Tensor, inputs: MethodInputs) -> Tuple[Tensor]:
        w = ops.channel_weights(grads, grad_relu=inputs.config.grad_relu, backend=inputs.backend)
        return (w.reshape(-1, w.shape[-1]),)

    def reducer(self, inputs: MethodInputs, items: int) -> "WeightReducer":
        return WeightReducer(self, inputs, items)

    def finish(self, reduced: Tuple[Tensor], inputs: MethodInputs) -> MapResult:
        (weights,) = reduced  # [T, D]
        acts = inputs.result.acts  # [1, N, D], or one row per item ([T, N, D]) from the remask probe
        h, w = inputs.grid
        T = weights.shape[0]
        raw = ops.weighted_maps(acts, weights.reshape(acts.shape[0], -1, weights.shape[-1]), inputs.grid,
                                backend=inputs.backend)
        maps, degenerate = raw.maps.reshape(1, T, h, w), raw.degenerate.reshape(1, T)
        cw = inputs.result.context_weights[None].float() if inputs.config.sicd == "context" else None
        out = ops.refine(maps, config=inputs.config, steps=inputs.steps,
                         image_size=inputs.image_size, repeat_ratio=inputs.repeat_ratio, context_weights=cw,
                         degenerate=degenerate, backend=inputs.backend,
                         check_finite=False)  # pooled maps are finite and in [0, 1]
        stats = {k: v[0] for k, v in out.stats().items()}
        return MapResult(out.maps[0].contiguous(), stats, maps[0])


class WeightReducer(ChunkReducer):
    """The explainer's streamed Diffusion-CAM: every chunk's channel weights written into
    one table of all items (:class:`dcam.ops.WeightStream`, made at the first chunk, which
    gives the hidden size and device), then :meth:`DiffusionCam.finish` on the table. The
    same weights as :meth:`DiffusionCam.reduce_gradients` per chunk, bit for bit, with
    no table per chunk and no ``torch.cat`` (each cost tens of microseconds per chunk)."""

    def __init__(self, method: DiffusionCam, inputs: MethodInputs, items: int):
        super().__init__(method, inputs)
        self.items, self.stream = items, None

    def add(self, items: Tensor, acts: Tensor, grads: Tensor) -> None:
        if self.stream is None:
            self.stream = ops.WeightStream(1, self.items, grads.shape[-1], grad_relu=self.inputs.config.grad_relu,
                                           backend=self.inputs.backend, device=grads.device)
        if int(items[0]) != self.stream.added:  # (a probe hands its chunks over in item order)
            raise AssertionError(f"chunk of items from {int(items[0])} after {self.stream.added} items")
        # [r, k', N, D] (r rows of the remask probe): its r * k' items in order, one image's table
        self.stream.add(grads if grads.shape[0] == 1 else grads.reshape(1, -1, *grads.shape[2:]))

    def finish(self, inputs: MethodInputs) -> MapResult:
        return self.method.finish((self.stream.weights[0],), inputs)
