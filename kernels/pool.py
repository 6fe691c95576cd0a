"""Triton pooling of gradients into raw Diffusion-CAM maps (SPEC section 1).

Three kernels, launched back to back on the same stream with no host sync:

1. ``_grad_mean_kernel``: the memory-bound pass. Streams the gradients
   ``G [B, T, N, D]`` (fp32/fp16/bf16) once, accumulating in float32, and
   writes ``W[b, t, d] = mean_n relu(G)`` (plain mean when ``grad_relu`` is
   off). Grid: (D blocks, B*T); each program walks N with coalesced
   ``[BLOCK_N, BLOCK_D]`` tiles (D is the contiguous axis). With
   ``check_grads`` each program also records whether its tiles held a
   NaN/Inf (explicit comparisons, before the relu), so the input check costs
   no second read of the gradients.
2. ``_pool_product_kernel``: ``raw[b, t, n] = (1/D) sum_d max(A[b,n,d] * W[b,t,d], 0)``.
   ``max(a * w, 0) = relu(a) relu(w) + min(a, 0) min(w, 0)`` exactly, so this
   is ``(relu(A) @ W+^T + min(A, 0) @ W-^T) / D``: two ``tl.dot`` in IEEE fp32
   (no TF32: the contract is float32 atol 1e-5), every term >= 0. With
   ``NONNEG`` (weights of relu'd gradients, ``W- = 0``) the first alone; else
   the second runs for the tiles that hold a negative weight.
   Grid: (N blocks, T blocks, B): A is read once per T block.
3. ``_minmax_normalise_kernel``: one program per map, min/max over the map,
   ``r = (raw - min) / (max - min + 1e-8)`` if ``max > min`` else 0 and the
   degenerate flag. Normalises in place.

The launchers are in :mod:`dcam.ops.triton_launch`: ``pool_gradients_triton``
(all three), ``channel_weights_triton`` (kernel 1) and ``weighted_maps_triton``
(kernels 2 and 3, weights of either sign).
"""
if __package__ != "dcam.kernels":  # see kernels/README.md: the top-level name `kernels` is a PyPI package's
    raise ImportError(f"{__name__}: dcam's Triton kernels are imported as dcam.kernels, not as a top-level "
                      "'kernels' package")

import triton
import triton.language as tl


@triton.jit
def _grad_mean_kernel(
    g_ptr, w_ptr, bad_ptr,
    T, N, D,
    s_gb, s_gt, s_gn, s_gd,
    GRAD_RELU: tl.constexpr, CHECK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """w[bt, d] = (1/N) sum_n relu?(G[b, t, n, d]) for one D block of one (b, t);
    with CHECK, bad[bt, d block] = 1 if that block of G held a NaN/Inf, else 0."""
    pid_d = tl.program_id(0)
    pid_bt = tl.program_id(1)
    b = pid_bt // T
    t = pid_bt % T
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    base = g_ptr + b.to(tl.int64) * s_gb + t.to(tl.int64) * s_gt
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    bad = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.int32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask = (offs_n[:, None] < N) & mask_d[None, :]
        ptrs = base + offs_n[:, None].to(tl.int64) * s_gn + offs_d[None, :] * s_gd
        g = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        if CHECK:  # comparisons, not arithmetic: nothing for a compiler to fold away
            bad = tl.maximum(bad, ((g != g) | (tl.abs(g) == float("inf"))).to(tl.int32))
        if GRAD_RELU:
            g = tl.maximum(g, 0.0)
        acc += g
    w = tl.sum(acc, axis=0) / N
    tl.store(w_ptr + pid_bt.to(tl.int64) * D + offs_d, w, mask=mask_d)
    if CHECK:
        flag = tl.max(tl.max(bad, axis=1), axis=0)
        tl.store(bad_ptr + pid_bt.to(tl.int64) * tl.num_programs(0) + pid_d, flag)


@triton.jit
def _pool_product_kernel(
    a_ptr, w_ptr, raw_ptr,
    T, N, D,
    s_ab, s_an, s_ad,
    NONNEG: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """raw[b, t, n] = (1/D) sum_d max(A[b, n, d] * W[b, t, d], 0) for a
    [BLOCK_T, BLOCK_N] tile of one image."""
    pid_n = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_n = offs_n < N
    mask_t = offs_t < T
    a_base = a_ptr + b.to(tl.int64) * s_ab
    w_rows = (b * T + offs_t).to(tl.int64) * D  # W is [B*T, D] contiguous float32
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        wt = tl.load(w_ptr + w_rows[:, None] + offs_d[None, :],
                     mask=mask_t[:, None] & mask_d[None, :], other=0.0)  # [BT, BD]
        # a NaN/Inf weight (of a NaN/Inf gradient) makes its token's whole map 0 and degenerate in
        # _minmax_normalise_kernel, which reads the weights: 0 here changes no output, and the
        # interpreter's matmul no longer warns "invalid value" on its inf * 0
        wt = tl.where((wt != wt) | (tl.abs(wt) == float("inf")), 0.0, wt)
        a = tl.load(a_base + offs_n[:, None].to(tl.int64) * s_an + offs_d[None, :] * s_ad,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)  # [BN, BD]
        # IEEE fp32 dots (fp32 operands: the interpreter's bf16 dot is wrong, and
        # TF32 would break atol 1e-5)
        if NONNEG:  # W >= 0: max(A*W, 0) = relu(A) * W
            acc = tl.dot(wt, tl.trans(tl.maximum(a, 0.0)), acc, input_precision="ieee")
        else:
            acc = tl.dot(tl.maximum(wt, 0.0), tl.trans(tl.maximum(a, 0.0)), acc, input_precision="ieee")
            # the negative side only where this tile has a negative weight (given weights of
            # unknown sign: non-negative ones then cost one dot, as with NONNEG)
            if tl.min(tl.min(wt, axis=1), axis=0) < 0.0:
                acc = tl.dot(tl.minimum(wt, 0.0), tl.trans(tl.minimum(a, 0.0)), acc, input_precision="ieee")
    raw = acc / D
    out = raw_ptr + (b * T + offs_t).to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out, raw, mask=mask_t[:, None] & mask_n[None, :])


@triton.jit
def _minmax_normalise_kernel(
    raw_ptr, deg_ptr, w_ptr,
    N, D,
    EPS: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """In-place per-map min-max normalisation; constant maps become 0 and are
    flagged degenerate. So are maps with a NaN (the reference's min and max
    are NaN then) and maps of a token with a NaN or infinite weight (unchecked
    input: every pixel's sum meets 0 * inf or NaN in the reference, which the
    dots' relu'd operands drop)."""
    pid = tl.program_id(0)
    base = raw_ptr + pid.to(tl.int64) * N
    lo_v = tl.full((BLOCK,), float("inf"), tl.float32)
    hi_v = tl.full((BLOCK,), float("-inf"), tl.float32)
    nan_v = tl.zeros((BLOCK,), tl.int32)
    for n0 in range(0, N, BLOCK):
        offs = n0 + tl.arange(0, BLOCK)
        mask = offs < N
        x = tl.load(base + offs, mask=mask, other=0.0)
        lo_v = tl.minimum(lo_v, tl.where(mask, x, float("inf")))
        hi_v = tl.maximum(hi_v, tl.where(mask, x, float("-inf")))
        nan_v = tl.maximum(nan_v, (x != x).to(tl.int32))
    w_row = w_ptr + pid.to(tl.int64) * D
    wbad_v = tl.zeros((BLOCK_D,), tl.int32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        wv = tl.load(w_row + offs_d, mask=offs_d < D, other=0.0)
        # NaN or +-inf, by comparisons (no libdevice isfinite in the interpreter; wv - wv, NaN for both,
        # made numpy warn "invalid value" there)
        wbad_v = tl.maximum(wbad_v, ((wv != wv) | (tl.abs(wv) == float("inf"))).to(tl.int32))
    lo = tl.min(lo_v, axis=0)
    hi = tl.max(hi_v, axis=0)
    ok = (hi > lo) & (tl.max(nan_v, axis=0) == 0) & (tl.max(wbad_v, axis=0) == 0)
    # a map that is not ok (constant, NaN, +-inf) comes out 0: its (x - lo) / denom, inf / inf or
    # inf - inf, is not computed (numpy warned "invalid value" under TRITON_INTERPRET)
    lo = tl.where(ok, lo, 0.0)
    denom = tl.where(ok, (hi - lo) + EPS, 1.0)
    # every program reads back only what its own threads stored: no barrier needed
    for n0 in range(0, N, BLOCK):
        offs = n0 + tl.arange(0, BLOCK)
        mask = offs < N
        x = tl.load(base + offs, mask=mask, other=0.0)
        r = tl.where(ok, (tl.where(ok, x, 0.0) - lo) / denom, 0.0)
        tl.store(base + offs, r, mask=mask)
    tl.store(deg_ptr + pid, ok == 0)
