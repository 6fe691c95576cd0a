"""Hooks on a model: the hooked block's output as a gradient leaf, the final
norm's output recorded, parameters frozen for the duration of a probe."""
from __future__ import annotations

from contextlib import contextmanager
from typing import List, Optional

import torch
from torch import Tensor, nn


@contextmanager
def frozen(model: nn.Module):
    """Parameters with ``requires_grad=False`` (restored on exit), eval mode."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(training)


class Tap:
    """Forward hooks: the hooked block's output becomes a grad-requiring leaf
    (and autograd is switched on from there), the final norm's output is
    recorded."""

    def __init__(self, block: nn.Module, norm: Optional[nn.Module], make_leaf: bool, retain: bool = False):
        self.block_outputs: List[Tensor] = []
        self.norm_outputs: List[Tensor] = []
        self.make_leaf = make_leaf
        self.retain = retain
        self.handles = [block.register_forward_hook(self._block_hook)]
        if norm is not None:
            self.handles.append(norm.register_forward_hook(self._norm_hook))

    def _block_hook(self, module, args, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        if self.make_leaf:
            new = h.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # autograd from the hooked block upwards
        else:
            new = h
            if self.retain and h.requires_grad:
                h.retain_grad()
        self.block_outputs.append(new)
        if new is h:
            return None
        if isinstance(output, tuple):
            return (new,) + tuple(output[1:])
        if isinstance(output, list):
            return [new] + list(output[1:])
        return new

    def _norm_hook(self, module, args, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        self.norm_outputs.append(h.detach())

    def remove(self):
        for hd in self.handles:
            hd.remove()

    def output(self) -> Tensor:
        if len(self.block_outputs) != 1:
            raise RuntimeError(f"the hooked block ran {len(self.block_outputs)} times in one forward; expected once")
        return self.block_outputs[0]

    def norm_output(self) -> Tensor:
        if len(self.norm_outputs) != 1:
            raise RuntimeError("the final norm did not run exactly once")
        return self.norm_outputs[0]
