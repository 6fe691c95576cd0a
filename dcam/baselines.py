"""The baselines of the paper's comparison, as pure functions over tensors.

Each function turns what a probe produced (activations and gradients of the
image-token span, or the image tokens' last hidden states and LM-head rows)
into one map per explained token, float32 in ``[0, 1]``. The explainer wraps
them as ``method="grad-cam" | "llava-cam" | "tam"``; the evaluation feeds every
gradient method from the same probe (layer, probe mode, target score).

``grad_cam``
    Canonical Grad-CAM (Selvaraju et al.): channel weights are the mean
    gradient over the image tokens (positive and negative gradients alike),
    ``map = relu(sum_d w_d A[:, d])``, min-max normalised.

``llava_cam``
    The published LLaVA-CAM base extractor: the gradient pooling of SPEC
    section 1 (positive gradients averaged over tokens, ``relu(A * w)`` averaged
    over channels, min-max), fed by the explainer with the contrastive target
    score, then a fixed threshold: values below ``LLAVA_CAM_THRESHOLD`` (0.4)
    are set to 0 after normalisation. No other refinement (no denoising,
    gating, attenuation or renormalisation).

``tam``
    Token Activation Map: class activations of the image tokens' last hidden
    states ``relu(H_img @ W_c)`` for every explained token's class ``c``;
    estimated causal inference removes from each map the logit-weighted mean of
    the OTHER explained tokens' maps (tokens with the same id excluded) scaled
    by least squares, ``alpha = clamp(<m, I> / <I, I>, 0, 1)``,
    ``m' = relu(m - alpha I)``; then the rank Gaussian filter with ``k = 3``
    (``dcam.reference.rank_gaussian_filter``, capped to the grid as in AKD) and
    min-max normalisation.

A map that is constant (before normalisation) comes out as all zeros in every
method, as a degenerate Diffusion-CAM map does.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .reference import EPS_NORM, pool_gradients_reference, rank_gaussian_filter

__all__ = ["grad_cam", "llava_cam", "tam", "LLAVA_CAM_THRESHOLD", "TAM_KERNEL"]

#: LLaVA-CAM's fixed threshold on the normalised map
LLAVA_CAM_THRESHOLD = 0.4
#: TAM's rank Gaussian filter size
TAM_KERNEL = 3


def _grid(grid, N: int) -> Tuple[int, int]:
    h, w = int(grid[0]), int(grid[1])
    if h * w != N:
        raise ValueError(f"grid {h}x{w} does not match {N} image tokens")
    return h, w


def _check_pool_inputs(acts: Tensor, grads: Tensor, grid):
    if acts.dim() == 2:
        acts = acts[None]
    if grads.dim() == 3:
        grads = grads[None]
    if acts.dim() != 3 or grads.dim() != 4:
        raise ValueError(f"acts must be [B,N,D] and grads [B,T,N,D], got {tuple(acts.shape)} and {tuple(grads.shape)}")
    if grads.shape[0] != acts.shape[0] or grads.shape[2:] != acts.shape[1:]:
        raise ValueError(f"grads {tuple(grads.shape)} do not match acts {tuple(acts.shape)}")
    h, w = _grid(grid, acts.shape[1])
    return acts, grads, h, w


def _minmax_or_zero(x: Tensor) -> Tensor:
    """Per-row min-max of [M, N]; constant rows become 0."""
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    const = ~(hi > lo)
    y = (x - lo) / (hi - lo + EPS_NORM)
    return torch.where(const, torch.zeros_like(y), y)


def grad_cam(acts: Tensor, grads: Tensor, grid) -> Tensor:
    """Grad-CAM maps ``[B, T, h, w]`` from acts ``[B, N, D]`` and grads
    ``[B, T, N, D]`` (``[N, D]`` / ``[T, N, D]`` accepted for one image)."""
    acts, grads, h, w = _check_pool_inputs(acts, grads, grid)
    B, T, N, D = grads.shape
    weights = grads.float().mean(dim=2)  # [B, T, D]
    cam = torch.bmm(weights, acts.float().transpose(1, 2)).clamp(min=0)  # [B, T, N]
    return _minmax_or_zero(cam.reshape(B * T, N)).reshape(B, T, h, w)


def llava_cam(acts: Tensor, grads: Tensor, grid, threshold: float = LLAVA_CAM_THRESHOLD) -> Tensor:
    """LLaVA-CAM maps ``[B, T, h, w]``: SPEC section 1 pooling, then values
    below ``threshold`` set to 0. Feed it gradients of the contrastive score
    to reproduce the published method."""
    acts, grads, h, w = _check_pool_inputs(acts, grads, grid)
    maps, degenerate = pool_gradients_reference(acts, grads, h, w, grad_relu=True)
    maps = torch.where(maps < threshold, torch.zeros_like(maps), maps)
    return torch.where(degenerate[:, :, None, None], torch.zeros_like(maps), maps)


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
        raise ValueError(f"image_hidden must be [N,H] and lm_head_rows [T,H], got {tuple(H_img.shape)} "
                         f"and {tuple(W.shape)}")
    N, T = H_img.shape[0], W.shape[0]
    h, w = _grid(grid, N)
    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    lw = torch.as_tensor(logit_weights, dtype=torch.float32)
    if ids.numel() != T or tuple(lw.shape) != (T, T):
        raise ValueError(f"token_ids must be [{T}] and logit_weights [{T},{T}], got {tuple(ids.shape)} "
                         f"and {tuple(lw.shape)}")
    if bool((lw < 0).any()):
        raise ValueError("logit_weights must be non-negative")
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
    return _minmax_or_zero(maps.reshape(T, N)).reshape(T, h, w)
