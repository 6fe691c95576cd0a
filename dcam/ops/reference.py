"""Pure-PyTorch reference of Diffusion-CAM: the executable form of the math.

Every function here is vectorised over a batch of maps (no Python loop over
pixels) and is written for readability first; the C++ and Triton backends are
tested against it. The entry points have exactly the signatures of the
registered ops (see :mod:`dcam.ops.library`):

    pool_gradients_reference(acts, grads, h, w, grad_relu) -> (maps, degenerate)
    channel_weights_reference(grads, grad_relu) -> weights
    weighted_maps_reference(acts, weights, h, w) -> (maps, degenerate)
    refine_reference(raw, degenerate, steps, image_size, repeat_ratio,
                     context_maps, context_weights, akd_kernel, akd, dacg, cba,
                     sicd, dacg_params, cba_params)
        -> (maps, kernel_size, dacg_strategy, dacg_threshold, cba_threshold, sicd_alpha)

The individual stages (`rank_gaussian_filter`, `confidence_gate`,
`background_attenuation`, `clip_and_normalise`, `causal_debias`,
`adaptive_kernel_size`, `percentile`) work on flattened batches of maps
`[M, h, w]` and are public so tests and users can call each one alone.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .constants import (AKD_BASE, AKD_K_MAX, AKD_K_MIN, AKD_SIZE_CAP, AKD_SIZE_SCALE, AKD_STD_CAP,
                        AKD_STD_SCALE, AKD_STEP_CAP, AKD_STEP_SCALE, EPS_NORM, SICD_ALPHA_MAX, SICD_BASE,
                        SICD_RANGE_GUARD, SICD_SPIKE, SICD_SPIKE_STDS, ZETA_MIN)


# --------------------------------------------------------------------------- helpers

def reflect_index(n: int, offsets: Tensor) -> Tensor:
    """Index of a read at position `offsets` (any int tensor) on an axis of
    length n, with numpy-style reflect padding (edge not repeated). Only one
    reflection is ever needed: windows never reach further than n-1 past an
    edge."""
    if n == 1:
        return torch.zeros_like(offsets)
    i = torch.where(offsets < 0, -offsets, offsets)
    return torch.where(i >= n, 2 * n - 2 - i, i)


def window_values(maps: Tensor, k: int) -> Tensor:
    """All k*k reflect-padded neighbours of every pixel: [M, h, w] -> [M, h*w, k*k]
    (window in raster order, dy outer, dx inner)."""
    M, h, w = maps.shape
    r = (k - 1) // 2
    d = torch.arange(-r, r + 1, device=maps.device)
    rows = reflect_index(h, torch.arange(h, device=maps.device)[:, None] + d[None, :])  # [h, k]
    cols = reflect_index(w, torch.arange(w, device=maps.device)[:, None] + d[None, :])  # [w, k]
    # flat index of (row(y, dy), col(x, dx)) -> [h, w, k, k]
    flat = rows[:, None, :, None] * w + cols[None, :, None, :]
    flat = flat.reshape(h * w * k * k)
    return maps.reshape(M, h * w)[:, flat].reshape(M, h * w, k * k)


def population_std(x: Tensor, dim) -> Tensor:
    mean = x.mean(dim=dim, keepdim=True)
    return ((x - mean) ** 2).mean(dim=dim).sqrt()


# Rounding model shared by every backend: element-wise arithmetic is float32,
# but every reduction over a map or a window (sums, means, standard deviations,
# AKD's rank-weighted mean) is accumulated in float64 and rounded to float32
# once. A float32 sum of a few hundred values carries several ulps of
# order-dependent noise, and DACG's gate (`f > zeta`, zeta an order statistic of
# f) and strategy thresholds turn that noise into different outputs; rounding
# once makes the result independent of summation order, so backends agree.

def sum64(x: Tensor, dim) -> Tensor:
    """Sum in float64 (not rounded)."""
    return x.double().sum(dim=dim)


def mean_std64(flat: Tensor) -> Tuple[Tensor, Tensor]:
    """Population mean and std of each row of [M, N], two-pass in float64 (not rounded)."""
    x = flat.double()
    mu = x.mean(dim=1)
    return mu, ((x - mu[:, None]) ** 2).mean(dim=1).sqrt()


def mean_std32(flat: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`mean_std64`, each rounded once to float32."""
    mu, sd = mean_std64(flat)
    return mu.float(), sd.float()


def percentile(values: Tensor, valid: Tensor, q: Tensor) -> Tensor:
    """q-th percentile (numpy 'linear') of the valid entries of each row.

    values [M, N], valid bool [M, N], q [M] (0..100). Rows with no valid
    entry return 0."""
    return percentile_and_floor(values, valid, q)[0]


def percentile_and_floor(values: Tensor, valid: Tensor, q: Tensor) -> Tuple[Tensor, Tensor]:
    """(:func:`percentile`, the sorted valid value at its position's floor ``s_lo``).

    The position ``q (n - 1) / 100`` is floored exactly (``q (n - 1)`` is exact in
    float64; ``q / 100`` first made 7.0 into 6.999...). ``s_lo`` is what a test
    ``v > percentile`` of the row's own values comes down to in exact arithmetic: the
    percentile lies in ``[s_lo, s_hi)`` and no value lies strictly between the two,
    while the float32 percentile may round up to ``s_hi`` itself."""
    big = torch.finfo(values.dtype).max
    s = torch.sort(torch.where(valid, values, torch.full_like(values, big)), dim=1).values
    n = valid.sum(dim=1)
    qn = q.double() * (n - 1).clamp(min=0).double()
    lo = torch.floor(qn / 100.0)
    lo = lo - (lo * 100.0 > qn).double() + ((lo + 1.0) * 100.0 <= qn).double()
    frac = ((qn - lo * 100.0) / 100.0).float()
    lo = lo.long()
    hi = torch.minimum(lo + 1, (n - 1).clamp(min=0))
    s_lo = s.gather(1, lo[:, None])[:, 0]
    s_hi = s.gather(1, hi[:, None])[:, 0]
    p = s_lo + torch.where(frac > 0, frac * (s_hi - s_lo), torch.zeros_like(frac))
    return torch.where(n > 0, p, torch.zeros_like(p)), torch.where(n > 0, s_lo, torch.zeros_like(s_lo))


def minmax_normalise(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-map min-max normalisation of [M, ...]: returns (normalised, constant)
    where constant maps are left as they are."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    const = ~(hi > lo)
    shape = (-1,) + (1,) * (x.dim() - 1)
    y = (x - lo.view(shape)) / (hi - lo + EPS_NORM).view(shape)
    return torch.where(const.view(shape), x, y), const


# --------------------------------------------------------------------------- section 1 (docs/ALGORITHM.md)


def channel_weights_reference(grads: Tensor, grad_relu: bool = True) -> Tensor:
    """The first line of section 1: grads [B, T, N, D] (any float dtype) ->
    channel weights float32 [B, T, D], the mean over the image tokens of the
    (with ``grad_relu``, positive parts of the) gradients."""
    g = grads.float()
    if grad_relu:
        g = g.clamp(min=0)
    return g.mean(dim=2)


def identical_rows(acts: Tensor) -> Tensor:
    """acts [B, N, D] -> bool [B]: every image token's state of image b equals the first one's, so each
    of its raw maps is constant by section 1's formula, whatever the weights. A matrix product may round
    identical rows apart by an ulp (BLAS and ``tl.dot`` tile rows by position), which min-max normalising
    grows into a map of 0s and 0.4s where the contract has a degenerate one; the backends that pool with
    such a product decide these maps from the states themselves (the C++ product sums every row alike)."""
    return (acts == acts[:, :1]).all(dim=2).all(dim=1)


def normalised_raw_maps(raw: Tensor, B: int, T: int, h: int, w: int,
                        constant: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Raw pooled maps [B, T, N] -> (min-max normalised maps [B, T, h, w], degenerate [B, T]);
    a constant map comes out all 0 and is flagged (``constant`` [B]: images whose maps are
    constant by construction, :func:`identical_rows`)."""
    raw = raw.reshape(B * T, h * w)  # (sizes given: -1 cannot be inferred with no maps)
    lo = raw.min(dim=1, keepdim=True).values
    hi = raw.max(dim=1, keepdim=True).values
    degenerate = ~(hi > lo)[:, 0]
    if constant is not None:
        degenerate = degenerate | constant.repeat_interleave(T)
    maps = torch.where(degenerate[:, None], torch.zeros_like(raw), (raw - lo) / (hi - lo + EPS_NORM))
    return maps.reshape(B, T, h, w), degenerate.reshape(B, T)


def weighted_maps_reference(acts: Tensor, weights: Tensor, h: int, w: int) -> Tuple[Tensor, Tensor]:
    """The rest of section 1 from given channel weights of either sign:
    acts [B, N, D] (any float dtype), weights [B, T, D] -> maps float32
    [B, T, h, w] (min-max normalised), degenerate bool [B, T].

    ``max(a * w, 0) = relu(a) * relu(w) + min(a, 0) * min(w, 0)`` exactly, so
    the pooled sum is two matrix products, every term of both >= 0 (for
    weights >= 0 the second is exactly zero and this is the product of
    :func:`pool_gradients_reference` with ``grad_relu``)."""
    B, N, D = acts.shape
    T = weights.shape[1]
    a = acts.float()
    wt = weights.float()
    raw = torch.bmm(wt.clamp(min=0), a.clamp(min=0).transpose(1, 2))
    raw = raw + torch.bmm(wt.clamp(max=0), a.clamp(max=0).transpose(1, 2))
    return normalised_raw_maps(raw / D, B, T, h, w, identical_rows(acts))


def pool_gradients_reference(acts: Tensor, grads: Tensor, h: int, w: int, grad_relu: bool = True
                             ) -> Tuple[Tensor, Tensor]:
    """Gradient-weighted activation pooling, min-max normalised.

    acts [B, N, D], grads [B, T, N, D] (any float dtype) ->
    maps float32 [B, T, h, w], degenerate bool [B, T]."""
    B, N, D = acts.shape
    T = grads.shape[1]
    a = acts.float()
    weights = channel_weights_reference(grads, grad_relu)  # [B, T, D]
    if grad_relu:
        # weights >= 0, so relu(a * w) = relu(a) * w: one matrix product
        raw = torch.bmm(weights, a.clamp(min=0).transpose(1, 2)) / D  # [B, T, N]
    else:
        raw = (a[:, None, :, :] * weights[:, :, None, :]).clamp(min=0).mean(dim=3)
    return normalised_raw_maps(raw, B, T, h, w, identical_rows(acts))


# --------------------------------------------------------------------------- section 2

def adaptive_kernel_size(maps: Tensor, steps: Tensor, image_size: Tensor, akd_kernel: int) -> Tensor:
    """AKD kernel size per map (int64 [M]); maps [M, h, w], steps/image_size [M]."""
    M, h, w = maps.shape
    if akd_kernel > 0:
        k = torch.full((M,), akd_kernel, dtype=torch.long, device=maps.device)
    else:
        f_step = torch.clamp(steps.float() / AKD_STEP_SCALE, max=AKD_STEP_CAP)
        f_std = torch.clamp(AKD_STD_SCALE * mean_std32(maps.reshape(M, -1))[1], max=AKD_STD_CAP)
        f_size = torch.clamp(image_size.float() / AKD_SIZE_SCALE, max=AKD_SIZE_CAP)
        k = torch.floor(AKD_BASE * f_step * f_std * f_size).long()
        k = torch.where(k % 2 == 0, k + 1, k).clamp(AKD_K_MIN, AKD_K_MAX)
    return k.clamp(max=2 * min(h, w) - 1)


def rank_gaussian_filter(maps: Tensor, kernel_size: Tensor) -> Tensor:
    """AKD: each pixel becomes a rank-weighted mean of its k x k window, with
    Gaussian weights over sorted positions whose width is the window's
    coefficient of variation. maps [M, h, w], kernel_size [M] (odd).

    Evaluated in float64 and rounded once (see the rounding model above)."""
    out = torch.empty_like(maps)
    for k in torch.unique(kernel_size).tolist():  # one vectorised pass per distinct size
        sel = kernel_size == k
        m = maps[sel]
        win = window_values(m.double(), k)  # [m, N, K]
        K = k * k
        mu = win.mean(dim=2)
        sd = population_std(win, dim=2)
        s = torch.sort(win, dim=2).values
        sigma = sd / torch.where(mu > 0, mu, torch.ones_like(mu))
        inv = 1.0 / (2.0 * sigma * sigma)  # inf when sigma underflows: only the centre rank survives
        d = torch.arange(K, device=maps.device, dtype=torch.float64) - (K - 1) / 2.0
        expo = -(d * d)[None, None, :] * inv[:, :, None]
        u = torch.where(d[None, None, :] == 0, torch.ones_like(expo), torch.exp(expo))
        val = (u * s).sum(dim=2) / u.sum(dim=2)
        val = torch.where(sd > 0, val, mu)
        val = torch.where(mu > 0, val, torch.zeros_like(val))
        out[sel] = val.float().reshape(m.shape)
    return out


# --------------------------------------------------------------------------- section 3

def gaussian_weights3_values(sigma: float) -> List[float]:
    """The 9 normalised weights of DACG's 3x3 Gaussian (raster order, dy outer),
    float32 values as Python floats, rounded step by step: ``den =
    float32(2 sigma^2)``, each ``exp(float32(-(dy^2+dx^2) / den))`` rounded once
    to float32 (evaluated in float64: correctly rounded, unlike torch's
    vectorised float32 exp or some libm expf, whose last bit varies), divided by
    their float32 sum taken in raster order. One definition for every backend
    (the Triton launcher passes these numbers to its kernel): a one-ulp
    difference here is magnified by the final normalisation of a nearly
    constant map far beyond atol 1e-5. Plain numpy scalars, so a launcher
    traced with fake tensors can call it."""
    f32 = np.float32
    s = f32(sigma)
    den = f32(2.0 * float(s) * float(s))
    e = [f32(math.exp(float(f32(-float(dy * dy + dx * dx)) / den))) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    tot = e[0]
    for v in e[1:]:
        tot = f32(tot + v)
    return [float(f32(v / tot)) for v in e]


def gaussian_weights3(sigma: float) -> Tensor:
    """:func:`gaussian_weights3_values` as a float32 tensor [9]."""
    return torch.tensor(gaussian_weights3_values(sigma), dtype=torch.float32)


def gaussian_blur3(maps: Tensor, sigma: float) -> Tensor:
    """Normalised 3x3 Gaussian of every pixel, neighbours read through reflect:
    a float32 sum of the 9 weighted neighbours in raster order (dy outer, dx
    inner), as the C++ and Triton kernels add them."""
    win = window_values(maps, 3)  # [M, N, 9] dy outer, dx inner
    g = gaussian_weights3(sigma).to(maps.device)
    acc = win[..., 0] * g[0]
    for j in range(1, 9):
        acc = acc + win[..., j] * g[j]
    return acc.reshape(maps.shape)


def confidence_gate(maps: Tensor, dacg_params: List[float]) -> Tuple[Tensor, Tensor, Tensor]:
    """DACG: keep pixels above a distribution-dependent percentile of the
    positive values, blur the rest. Returns (maps, threshold [M], strategy int [M])."""
    std_hi, mean_hi, mean_lo, p0, p1, p2, p3, sigma = dacg_params
    M = maps.shape[0]
    flat = maps.reshape(M, -1)
    # the strategy decided as in exact arithmetic: the float64 mean and std against the thresholds as the
    # kernels take them (float32); rounded to float32 first, a mean of 0.3500000071 was not "above 0.35"
    mu, sd = mean_std64(flat)
    std_hi, mean_hi, mean_lo = (float(torch.tensor(v, dtype=torch.float32)) for v in (std_hi, mean_hi, mean_lo))
    nz = flat > 0
    has_nz = nz.any(dim=1)
    strategy = torch.where(sd > std_hi, 0, torch.where(mu > mean_hi, 1, torch.where(mu < mean_lo, 2, 3)))
    q = torch.tensor([p0, p1, p2, p3], device=maps.device, dtype=torch.float32)[strategy]
    p, s_lo = percentile_and_floor(flat, nz, q)
    zeta = torch.clamp(p, min=ZETA_MIN)
    # f > zeta decided as in exact arithmetic: f > max(s_lo, ZETA_MIN) (zeta rounded up to the next
    # value blurred a pixel the exact zeta keeps)
    gate = torch.clamp(s_lo, min=ZETA_MIN)
    blurred = gaussian_blur3(maps, sigma).reshape(M, -1)
    gated = torch.where(flat > gate[:, None], flat, blurred)
    out = torch.where(has_nz[:, None], gated, flat).reshape(maps.shape)
    zeta = torch.where(has_nz, zeta, torch.zeros_like(zeta))
    strategy = torch.where(has_nz, strategy, torch.full_like(strategy, -1))
    return out, zeta, strategy


# --------------------------------------------------------------------------- section 4

def background_attenuation(maps: Tensor, cba_params: List[float]) -> Tuple[Tensor, Tensor]:
    """CBA: softly scale down pixels under a background threshold built from
    robust statistics of the map. Returns (maps, threshold [M])."""
    w0, w1, w2, w3, floor = cba_params
    M = maps.shape[0]
    flat = maps.reshape(M, -1)
    nz = flat > 0
    has_nz = nz.any(dim=1)
    n_nz = nz.sum(dim=1).clamp(min=1)
    med_nz = percentile(flat, nz, torch.full((M,), 50.0, device=maps.device))
    p60 = percentile(flat, torch.ones_like(nz), torch.full((M,), 60.0, device=maps.device))
    mean_nz = sum64(torch.where(nz, flat, torch.zeros_like(flat)), 1).float() / n_nz.float()
    mx = flat.max(dim=1).values
    tau = w0 * med_nz + w1 * p60 + w2 * mean_nz + w3 * mx
    scale = torch.clamp(flat / torch.clamp(tau, min=EPS_NORM)[:, None], min=floor)
    att = torch.where(flat < tau[:, None], flat * scale, flat)
    out = torch.where(has_nz[:, None], att, flat).reshape(maps.shape)
    return out, torch.where(has_nz, tau, torch.zeros_like(tau))


# --------------------------------------------------------------------------- section 5

def clip_and_normalise(maps: Tensor, raw: Tensor) -> Tensor:
    """Clip to [0, max(raw)] and min-max normalise (constant maps unchanged)."""
    M = maps.shape[0]
    top = raw.reshape(M, -1).max(dim=1).values.view(M, 1, 1)
    c = torch.minimum(maps.clamp(min=0), top)
    return minmax_normalise(c)[0]


# --------------------------------------------------------------------------- section 6

def _debias(m: Tensor, interference: Tensor, alpha: Tensor, apply: Tensor) -> Tuple[Tensor, Tensor]:
    """Subtract alpha * interference, undo where the range shrinks too much."""
    M = m.shape[0]
    mf = m.reshape(M, -1)
    sub = (mf - alpha[:, None] * interference).clamp(min=0)
    rng_new = sub.max(dim=1).values - sub.min(dim=1).values
    rng_old = mf.max(dim=1).values - mf.min(dim=1).values
    keep = apply & ~(rng_new < SICD_RANGE_GUARD * rng_old)
    out = torch.where(keep[:, None], sub, mf).reshape(m.shape)
    return out, torch.where(keep, alpha, torch.zeros_like(alpha))


def causal_debias_reference(m: Tensor, repeat_ratio: Tensor) -> Tuple[Tensor, Tensor]:
    """SICD, reference mode: remove a repetition-driven constant plus a small
    spike on outlier pixels, scaled by least squares. m [M, h, w], repeat_ratio [M]."""
    M = m.shape[0]
    mf = m.reshape(M, -1)
    mu, sd = mean_std32(mf)
    spike = (mf > (mu + SICD_SPIKE_STDS * sd)[:, None]).float()
    interference = SICD_BASE * repeat_ratio.float()[:, None] + SICD_SPIKE * spike
    ii = sum64(interference * interference, 1).float()
    apply = interference.max(dim=1).values != 0
    num = sum64(mf * interference, 1).float()  # >= 0: m and I are non-negative
    alpha = torch.clamp(num / torch.where(apply, ii, torch.ones_like(ii)), max=SICD_ALPHA_MAX)
    # num == 0 (an all-zero map) means alpha = 0, also where I*I underflowed to ii = 0 (a tiny
    # repeat ratio: rho = 1e-30 gives I = 5e-32), which would otherwise make it 0/0 = NaN
    alpha = torch.where(apply & (num > 0), alpha, torch.zeros_like(alpha))
    return _debias(m, interference, alpha, apply)


def causal_debias_context(m: Tensor, context_maps: Tensor, context_weights: Tensor) -> Tuple[Tensor, Tensor]:
    """SICD, context mode: remove the weighted mean of the other tokens' raw
    maps of the same response. m [B, T, h, w], context_maps [B, T, h, w],
    context_weights [B, T, T] (non-negative)."""
    B, T = m.shape[:2]
    wts = context_weights.float()
    wts = wts / (sum64(wts, 2).float()[..., None] + EPS_NORM)
    interference = torch.bmm(wts.double(), context_maps.double().reshape(B, T, -1)).float().reshape(B * T, -1)
    mf = m.reshape(B * T, -1)
    # products, sums and their ratio in float64, rounded once: tiny weights (1e-31) make I ~ 1e-23, whose
    # float32 squares underflow to 0 (alpha was reported 0 where exact arithmetic gives 1); float64 holds
    # the square of any float32, so sum(I*I) is 0 only for I = 0
    i64 = interference.double()
    ii = (i64 * i64).sum(1)
    apply = ii != 0
    alpha = ((mf.double() * i64).sum(1) / torch.where(apply, ii, torch.ones_like(ii))).clamp(0.0, 1.0).float()
    alpha = torch.where(apply, alpha, torch.zeros_like(alpha))
    out, alpha = _debias(m.reshape(B * T, *m.shape[2:]), interference, alpha, apply)
    return out, alpha


# --------------------------------------------------------------------------- sections 2-7

def refine_reference(raw: Tensor, degenerate: Tensor, steps: Tensor, image_size: Tensor, repeat_ratio: Tensor,
                     context_maps: Optional[Tensor], context_weights: Optional[Tensor],
                     akd_kernel: int, akd: bool, dacg: bool, cba: bool, sicd: int,
                     dacg_params: List[float], cba_params: List[float]):
    """The whole refinement of [B, T, h, w] raw maps. Per-image scalars
    (steps, image_size, repeat_ratio) are float32 [B]. Returns
    (maps f32 [B,T,h,w], kernel_size i32 [B,T], dacg_strategy i32 [B,T],
    dacg_threshold f32 [B,T], cba_threshold f32 [B,T], sicd_alpha f32 [B,T])."""
    B, T, h, w = raw.shape
    M = B * T
    if M == 0:  # no maps (a direct op call; the public functions refuse them): the outputs' shapes and dtypes
        empty = lambda dt: raw.new_zeros((B, T), dtype=dt)  # noqa: E731
        return (raw.new_zeros((B, T, h, w), dtype=torch.float32), empty(torch.int32), empty(torch.int32),
                empty(torch.float32), empty(torch.float32), empty(torch.float32))
    r = raw.float().reshape(M, h, w)
    deg = degenerate.reshape(M)
    per_map = lambda x: x.float().reshape(B, 1).expand(B, T).reshape(M)  # noqa: E731

    ksize = adaptive_kernel_size(r, per_map(steps), per_map(image_size), akd_kernel)
    x = rank_gaussian_filter(r, ksize) if akd else r
    zeros = torch.zeros(M, device=r.device)
    strategy = torch.full((M,), -1, dtype=torch.long, device=r.device)
    dacg_thr, cba_thr, alpha = zeros, zeros, zeros
    if dacg:
        x, dacg_thr, strategy = confidence_gate(x, dacg_params)
    if cba:
        x, cba_thr = background_attenuation(x, cba_params)
    x = clip_and_normalise(x, r)
    if sicd == 1:
        x, alpha = causal_debias_reference(x, per_map(repeat_ratio))
    elif sicd == 2:
        # the raw maps as context: a degenerate one is 0 everywhere (section 1), whatever values it holds
        ctx = torch.where(deg.view(B, T, 1, 1), 0.0, raw.float()) if context_maps is None else context_maps
        x, alpha = causal_debias_context(x.reshape(B, T, h, w), ctx, context_weights)
        x = x.reshape(M, h, w)

    # a degenerate raw map is passed through every step untouched and comes out 0
    d = deg.view(M, 1, 1)
    x = torch.where(d, torch.zeros_like(x), x)
    strategy = torch.where(deg, torch.full_like(strategy, -1), strategy)
    dacg_thr = torch.where(deg, zeros, dacg_thr)
    cba_thr = torch.where(deg, zeros, cba_thr)
    alpha = torch.where(deg, zeros, alpha)
    bt = lambda v: v.reshape(B, T)  # noqa: E731
    return (x.reshape(B, T, h, w).contiguous(), bt(ksize.int()), bt(strategy.int()),
            bt(dacg_thr.float()), bt(cba_thr.float()), bt(alpha.float()))
