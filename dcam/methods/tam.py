"""Token Activation Map: the image tokens' last hidden states against each
token's LM-head row, no gradient.

Class activations ``relu(H_img @ W_c)`` for every explained token's class
``c``; estimated causal inference removes from each map the logit-weighted
mean of the OTHER explained tokens' maps (tokens with the same id excluded),
scaled by least squares, ``alpha = clamp(<m, I> / <I, I>, 0, 1)``,
``m' = relu(m - alpha I)``; then the rank Gaussian filter with ``k = 3``
(capped to the grid as in AKD) and min-max normalisation.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ..errors import InputError
from ..ops.reference import EPS_NORM, rank_gaussian_filter
from ..ops.validation import check_grid
from .base import CamMethod, MapResult, MethodInputs, minmax_or_zero, refuse_nonfinite, register_method

#: TAM's rank Gaussian filter size
TAM_KERNEL = 3


def tam(image_hidden: Tensor, lm_head_rows: Tensor, token_ids, logit_weights: Tensor, grid,
        kernel_size: int = TAM_KERNEL) -> Tensor:
    """Token Activation Maps ``[T, h, w]`` of one response.

    image_hidden: ``[N, H]`` last hidden states (after the final norm) of the
        image tokens. lm_head_rows: ``[T, H]`` the LM-head row of each explained
        token's id (of a word of several tokens: the sum of their rows, the
        class of the sum of their logits). token_ids: ``[T]`` those ids, or per
        item the list of its tokens' ids. logit_weights: ``[T, T]``
        non-negative, ``[t, i]`` how strongly token ``t``'s class fires at token
        ``i``'s position (e.g. ``relu(logit[pos_i, id_t])``); the diagonal and
        the entries of items sharing an id are ignored. kernel_size: odd, >= 1.
    """
    H_img = image_hidden.float()
    W = lm_head_rows.float()
    if H_img.dim() != 2 or W.dim() != 2 or H_img.shape[1] != W.shape[1]:
        raise InputError(f"image_hidden must be [N,H] and lm_head_rows [T,H], got {tuple(H_img.shape)} "
                         f"and {tuple(W.shape)}")
    N, T = H_img.shape[0], W.shape[0]
    h, w = check_grid(grid, N)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise InputError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
    pieces = [[int(i) for i in (t if isinstance(t, (list, tuple)) else [t])] for t in
              (token_ids.tolist() if isinstance(token_ids, Tensor) else list(token_ids))]
    lw = torch.as_tensor(logit_weights, dtype=torch.float32)
    if len(pieces) != T or not all(pieces) or tuple(lw.shape) != (T, T):
        raise InputError(f"token_ids must be [{T}] (or {T} lists of ids) and logit_weights [{T},{T}], got "
                         f"{len(pieces)} items and {tuple(lw.shape)}")
    refuse_nonfinite(image_hidden=H_img, lm_head_rows=W, logit_weights=lw)
    if bool((lw < 0).any()):
        raise InputError("logit_weights must be non-negative")
    maps = (W @ H_img.T).clamp(min=0)  # [T, N] class activation of every token's class
    if not bool(torch.isfinite(maps).all()):
        raise InputError("image_hidden, lm_head_rows: their product overflows float32")
    same = torch.tensor([[bool(set(a) & set(b)) for b in pieces] for a in pieces])  # includes the diagonal
    wts = torch.where(same, torch.zeros_like(lw), lw)
    wts = wts / (wts.sum(dim=1, keepdim=True) + EPS_NORM)
    interference = wts @ maps  # [T, N]
    ii = (interference * interference).sum(dim=1)
    ok = ii > 0
    alpha = ((maps * interference).sum(dim=1) / torch.where(ok, ii, torch.ones_like(ii))).clamp(0.0, 1.0)
    alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
    maps = (maps - alpha[:, None] * interference).clamp(min=0).reshape(T, h, w)
    k = min(int(kernel_size), 2 * min(h, w) - 1)
    if k > 1:
        maps = rank_gaussian_filter(maps, torch.full((T,), k, dtype=torch.long))
    return minmax_or_zero(maps.reshape(T, N)).reshape(T, h, w)


@register_method
class Tam(CamMethod):
    name = "tam"
    needs_gradients = False
    needs_last_hidden = True
    probes = ("full", "masked")

    def compute_maps(self, inputs: MethodInputs) -> MapResult:
        r = inputs.result
        head = inputs.adapter.lm_head_weight().detach()
        # a word of several tokens: the class of the sum of their logits, as its score is for the
        # gradient methods (the first token's row alone ignored the rest of the word)
        rows = torch.stack([head[torch.tensor(ids)].float().sum(0) for ids in inputs.item_token_ids])
        maps = tam(r.last_hidden[0], rows, inputs.item_token_ids, r.context_weights, inputs.grid).float()
        return MapResult(maps, self.zero_map_stats(maps))
