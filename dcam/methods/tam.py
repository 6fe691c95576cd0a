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

import torch
from torch import Tensor

from ..errors import InputError
from ..ops.reference import EPS_NORM, rank_gaussian_filter
from .base import CamMethod, MapResult, MethodInputs, check_grid, minmax_or_zero, register_method

#: TAM's rank Gaussian filter size
TAM_KERNEL = 3


def tam(image_hidden: Tensor, lm_head_rows: Tensor, token_ids, logit_weights: Tensor, grid,
        kernel_size: int = TAM_KERNEL) -> Tensor:
    """Token Activation Maps ``[T, h, w]`` of one response.

    image_hidden: ``[N, H]`` last hidden states (after the final norm) of the
        image tokens. lm_head_rows: ``[T, H]`` the LM-head row of each explained
        token's id. token_ids: ``[T]`` those ids. logit_weights: ``[T, T]``
        non-negative, ``[t, i]`` how strongly token ``t``'s class fires at token
        ``i``'s position (e.g. ``relu(logit[pos_i, id_t])``); the diagonal and
        same-id entries are ignored.
    """
    H_img = image_hidden.float()
    W = lm_head_rows.float()
    if H_img.dim() != 2 or W.dim() != 2 or H_img.shape[1] != W.shape[1]:
        raise InputError(f"image_hidden must be [N,H] and lm_head_rows [T,H], got {tuple(H_img.shape)} "
                         f"and {tuple(W.shape)}")
    N, T = H_img.shape[0], W.shape[0]
    h, w = check_grid(grid, N)
    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    lw = torch.as_tensor(logit_weights, dtype=torch.float32)
    if ids.numel() != T or tuple(lw.shape) != (T, T):
        raise InputError(f"token_ids must be [{T}] and logit_weights [{T},{T}], got {tuple(ids.shape)} "
                         f"and {tuple(lw.shape)}")
    if bool((lw < 0).any()):
        raise InputError("logit_weights must be non-negative")
    maps = (W @ H_img.T).clamp(min=0)  # [T, N] class activation of every token's class
    same = ids[:, None] == ids[None, :]  # includes the diagonal
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
        rows = inputs.adapter.lm_head_weight().detach()[inputs.token_ids]
        maps = tam(r.last_hidden[0], rows, inputs.token_ids, r.context_weights, inputs.grid).float()
        return MapResult(maps, self.zero_map_stats(maps))
