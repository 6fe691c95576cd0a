"""The gradients of a trajectory: every item on every recorded state, batched.

A trajectory needs, for each state ``s`` (the response slots entering step
``s``, plus the finished response for the final maps) and each item ``g`` (a
word; its score is the sum of its tokens' logits of their final ids, as in an
explanation), the gradient of that score with respect to the hooked block's
image-token states, computed on state ``s`` with ``g``'s slots masked:

* *state rows*: when every slot of ``g`` is still masked in ``s``, that is the
  state itself, shared by all such items of ``s``;
* *remask rows*: otherwise, the state with ``g``'s slots masked again, one
  row per (state, item), as the remask probe does.

Two kinds of batch, each one forward with autograd only above the hooked
block (:class:`dcam.probe.hooks.Tap`):

* up to ``chunk_size`` state rows in one forward; cotangent ``k`` selects the
  ``k``-th still-masked item of *every* row at once
  (:func:`dcam.probe.gradients.batched_grad`: the rows never interact, so row
  ``r``'s slice of the gradient is that row's item's own), run ``chunk_size
  // rows`` at a time. A vmapped backward works on every row of the batch for
  every cotangent, so a batch costs ``rows x max_s |masked items of s|``
  row-backwards; states are grouped by their masked counts
  (:func:`_state_groups`) so that padding stays under :data:`STATE_PADDING`;
* up to ``chunk_size`` remask rows in one forward and one backward of their
  summed scores.

Each chunk of gradients is pooled (:func:`dcam.pool_gradients`) as soon as it
exists, so at most ``chunk_size`` rows of gradients are alive at once, the
peak of one explanation's probe. The result is raw maps ``[S', G, h, w]``,
ready for one :func:`dcam.refine` over all states.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .. import ops
from ..probe.adapters.base import ModelAdapter, Prepared
from ..probe.compiled import eager_on_donated_buffers
from ..probe.gradients import batched_grad, head_logit_scores, logits_runner, depends_on_leaf
from ..probe.hooks import Tap, probing
from ..profiling import stage


@dataclass
class TrajectoryGradients:
    """Pooled raw maps and what refinement needs, for ``S'`` states and ``G`` items.

    raw: float32 ``[S', G, h, w]`` min-max normalised pooled maps.
    degenerate: bool ``[S', G]``.
    scores: ``[S', G]`` the item scores.
    token_logits: ``[S', n, n]`` (``n`` tokens of all items, item after item):
        ``[s, i, t]`` = the logit of token ``t``'s id at token ``i``'s slot, in
        the row token ``i``'s item was read from (context weights, as a probe's).
    remasked: bool ``[S', G]``: the item was read from a remask row.
    cost: forwards, rows, backward passes and cotangents used.
    """

    raw: Tensor
    degenerate: Tensor
    scores: Tensor
    token_logits: Tensor
    remasked: Tensor
    cost: Dict[str, int] = field(default_factory=dict)


def _spans(n: int, size: int) -> List[Tuple[int, int]]:
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _forward_rows(adapter: ModelAdapter, prep: Prepared, ids: Tensor, positions: Tensor, layer: int
                  ) -> Tuple[Tensor, Tensor]:
    """(logits ``[R, P, V]`` at ``positions [R, P]``, the hooked block's output ``[R, L, D]`` as a grad
    leaf). The model runs under no_grad up to the hooked block (the tap switches autograd on there)."""
    inputs, want = adapter.batch_inputs(prep, ids.shape[0]), adapter.logit_positions(positions)
    run = logits_runner(adapter, layer, None, ids, inputs, want, prep.response_start)
    tap = Tap(adapter.blocks()[layer], None, make_leaf=True)
    adapter.scored_rows = None  # set by this forward where the head's input is recorded
    try:
        prev = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            with stage("dcam.forward"):
                logits = run(ids, inputs, want, prep.response_start)
        finally:
            torch.set_grad_enabled(prev)
        return logits, tap.output()
    finally:
        tap.remove()


#: Padding a batch of state rows may add: the cotangents of a batch run over all its rows, so a row with
#: fewer still-masked items than the batch's most idles through the extra ones.
STATE_PADDING = 0.25


def _state_groups(masked: Tensor, chunk_size: int) -> List[List[int]]:
    """Batches of the states with a still-masked item: at most ``chunk_size``
    rows, states of similar masked counts together (most first), a batch
    growing only while its padded work ``rows x max count`` stays within
    ``1 + STATE_PADDING`` of the work it needs (the sum of the counts)."""
    counts = masked.sum(1).tolist()
    live = sorted((s for s in range(len(counts)) if counts[s] > 0), key=lambda s: (-counts[s], s))
    groups: List[List[int]] = []
    for s in live:
        g = groups[-1] if groups else None
        if g is not None and len(g) < chunk_size and \
                counts[g[0]] * (len(g) + 1) <= (1 + STATE_PADDING) * (sum(counts[x] for x in g) + counts[s]):
            g.append(s)
        else:
            groups.append([s])
    return groups


class _Layout:
    """Items as token columns: ``tok_slot [n]`` response slot and ``tok_id [n]`` final id of every token,
    ``item_of [n]`` its item, ``cols[g]`` the token columns of item ``g``."""

    def __init__(self, items: Sequence[Sequence[int]], response_ids: Sequence[int]):
        self.cols, k = [], 0
        for g in items:
            self.cols.append(list(range(k, k + len(g))))
            k += len(g)
        self.tok_slot = torch.tensor([s for g in items for s in g], dtype=torch.long)
        self.tok_id = torch.tensor([int(response_ids[s]) for g in items for s in g], dtype=torch.long)
        self.item_of = torch.tensor([j for j, g in enumerate(items) for _ in g], dtype=torch.long)

    def rows_of(self, item_lists: List[List[int]]) -> Tuple[Tensor, Tensor]:
        """For rows reading ``item_lists[r]``: token columns ``[R, P]`` (padded with the first) and the
        item-of-column matrix ``[R, K, P]`` (1 where column p belongs to the row's k-th item)."""
        cols = [[c for g in its for c in self.cols[g]] for its in item_lists]
        P, K = max(len(c) for c in cols), max(len(its) for its in item_lists)
        col_t = torch.tensor([c + [c[0]] * (P - len(c)) for c in cols], dtype=torch.long)
        member = torch.zeros(len(item_lists), K, P)
        for r, its in enumerate(item_lists):
            p = 0
            for k, g in enumerate(its):
                member[r, k, p:p + len(self.cols[g])] = 1.0
                p += len(self.cols[g])
        return col_t, member


@eager_on_donated_buffers  # (compiled code the look before the probe did not find: once more, eagerly)
def trajectory_gradients(adapter: ModelAdapter, prep: Prepared, states: Tensor, items: Sequence[Sequence[int]],
                         layer: int, grad_relu: bool, chunk_size: int = 16, backend: str = "auto"
                         ) -> TrajectoryGradients:
    # long: the two batch kinds share their bookkeeping (raw maps, scores, logits, cost)
    """Pooled raw maps of every item on every state (see the module docstring).

    prep: the example with the finished response (its input ids give the
        prompt and image; the response slots are replaced by each state).
    states: int64 ``[S', Lr]`` response slots per state (mask id where masked).
    items: the response slots of each item; the scored ids are ``prep``'s.
    """
    mask_id = int(adapter.mask_token_id)
    S, G = int(states.shape[0]), len(items)
    lay = _Layout(items, prep.response_ids)
    start, img, (h, w) = prep.response_start, prep.image_positions, prep.grid
    base = prep.input_ids[0]
    rows_ids = base.expand(S, base.shape[0]).clone()
    rows_ids[:, start:start + states.shape[1]] = states.to(base.dtype)
    tok_masked = states[:, lay.tok_slot] == mask_id  # [S, n]
    masked = torch.stack([tok_masked[:, c].all(1) for c in lay.cols], 1)  # [S, G] every slot still masked

    n = lay.tok_slot.numel()
    raw, degenerate = torch.zeros(S, G, h, w), torch.ones(S, G, dtype=torch.bool)
    scores, token_logits = torch.zeros(S, G), torch.zeros(S, n, n)
    cost = dict(forwards=0, rows=0, backward_passes=0, cotangents=0)

    def run(ids: Tensor, item_lists: List[List[int]]):
        col, member = lay.rows_of(item_lists)
        logits, leaf = _forward_rows(adapter, prep, ids, start + lay.tok_slot[col], layer)
        dev = logits.device
        tok = logits.gather(2, lay.tok_id[col][..., None].to(dev))[..., 0]  # [R, P]
        tok = head_logit_scores(adapter, lay.tok_id[col], tok)  # gradients through the head's input
        item_scores = torch.einsum("rp,rkp->rk", tok, member.to(dev, tok.dtype))  # padding: no column, score 0
        read = logits.detach()[..., lay.tok_id.to(dev)].float().cpu()  # [R, P, n]
        cost["forwards"] += 1
        cost["rows"] += ids.shape[0]
        return col, item_scores, read, leaf

    def keep(s: int, g: int, score, cols, read_rows, raw_map, deg):
        raw[s, g], degenerate[s, g], scores[s, g] = raw_map.cpu(), bool(deg), float(score.detach())
        token_logits[s, lay.cols[g]] = read_rows[cols]

    with probing(adapter):
        for sts in _state_groups(masked, chunk_size):  # state rows
            its = [torch.nonzero(masked[s]).reshape(-1).tolist() for s in sts]
            with torch.enable_grad():
                col, sc, read, leaf = run(rows_ids[sts], its)
                acts = leaf.detach()[:, img.to(leaf.device)]

                def pool_chunk(k0, k1, g):
                    with stage("dcam.reduce"):
                        pooled = ops.pool_gradients(acts, g.transpose(0, 1), (h, w), grad_relu=grad_relu,
                                                    backend=backend)
                    for r, s in enumerate(sts):
                        for k in range(k0, min(k1, len(its[r]))):
                            p0 = sum(len(lay.cols[x]) for x in its[r][:k])
                            cols = torch.arange(p0, p0 + len(lay.cols[its[r][k]]))
                            keep(s, its[r][k], sc[r, k], cols, read[r], pooled.maps[r, k - k0],
                                 pooled.degenerate[r, k - k0])
                    cost["backward_passes"] += 1
                    cost["cotangents"] += k1 - k0

                batched_grad(sc, leaf, max(1, chunk_size // len(sts)), img.to(leaf.device), pool_chunk)
            del leaf, sc
        pairs = torch.nonzero(~masked).tolist()  # remask rows: (state, item)
        for p0, p1 in _spans(len(pairs), chunk_size):
            chunk = pairs[p0:p1]
            ids = rows_ids[[s for s, _ in chunk]].clone()
            for r, (s, g) in enumerate(chunk):
                ids[r, start + lay.tok_slot[lay.cols[g]]] = mask_id
            with torch.enable_grad():
                col, sc, read, leaf = run(ids, [[g] for _, g in chunk])
                depends_on_leaf(sc)  # (a RuntimeError when they do not)
                with stage("dcam.backward"):
                    grad = torch.autograd.grad(sc.sum(), leaf)[0]
            at = img.to(leaf.device)
            with stage("dcam.reduce"):
                pooled = ops.pool_gradients(leaf.detach()[:, at], grad[:, at][:, None], (h, w),
                                            grad_relu=grad_relu, backend=backend)
            for r, (s, g) in enumerate(chunk):
                keep(s, g, sc[r, 0], torch.arange(len(lay.cols[g])), read[r], pooled.maps[r, 0],
                     pooled.degenerate[r, 0])
            cost["backward_passes"] += 1
            cost["cotangents"] += 1
            del leaf, grad
    return TrajectoryGradients(raw=raw, degenerate=degenerate, scores=scores, token_logits=token_logits,
                               remasked=~masked, cost=cost)


__all__ = ["TrajectoryGradients", "trajectory_gradients"]
