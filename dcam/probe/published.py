"""The published procedure, kept as the slow reference: for every explained
item, one full forward and one full backward with parameter gradients
(autograd through the whole model). The tests compare :func:`dcam.probe.probe`
with it and the benchmarks time it."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .adapters.base import ModelAdapter, Prepared
from .hooks import Tap, eval_mode
from .modes import build_probe_inputs, pick_distractor


def published_gradients(adapter: ModelAdapter, prep: Prepared, positions: Sequence[int],
                        token_ids: Sequence[int], layer: int, probe: str = "full", target_score: str = "logit",
                        groups: Optional[Sequence[Sequence[int]]] = None) -> torch.Tensor:
    """The image-span gradients ``[G, N, D]`` at block ``layer`` of every item
    (``groups`` of ``positions``; default one item per position; an item's
    score is the sum of its tokens' scores), one forward and backward each
    (row ``g`` from the input the probe mode gives item ``g``)."""
    blocks = adapter.blocks()
    layer = adapter.resolve_layer(layer)
    groups = [[k] for k in range(len(positions))] if groups is None else [list(g) for g in groups]
    ids = build_probe_inputs(adapter, prep, positions, probe, groups)
    img = prep.image_positions
    distractor = pick_distractor(prep, positions, adapter) if target_score == "contrastive" else None
    model = adapter.model
    flags = [(p, p.requires_grad) for p in model.parameters()]
    out = []
    with eval_mode(model):
        try:
            for p, _ in flags:
                p.requires_grad_(True)
            for g, members in enumerate(groups):
                row = g if probe == "remask" else 0
                pos = [int(positions[k]) for k in members] + ([distractor] if distractor is not None else [])
                want = adapter.logit_positions(torch.tensor(pos))
                tap = Tap(blocks[layer], None, make_leaf=False, retain=True)
                try:
                    model.zero_grad(set_to_none=True)
                    with torch.enable_grad():
                        logits = adapter.logits_at(ids[row:row + 1], adapter.batch_inputs(prep, 1), want,
                                                  prep.response_start)[0]
                        if distractor is None:
                            s = sum(logits[j, int(token_ids[k])] for j, k in enumerate(members))
                        else:
                            s = sum(logits[j].sum() - logits[-1].sum() for j in range(len(members)))
                        s.backward()
                    out.append(tap.output().grad[0, img].detach().clone())
                finally:
                    tap.remove()
            model.zero_grad(set_to_none=True)
        finally:
            for p, f in flags:
                p.requires_grad_(f)
            adapter.scored_rows = None  # (the head's input of the last forward: see dcam.probe.hooks.probing)
    return torch.stack(out)
