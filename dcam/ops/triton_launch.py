"""Launchers of the Triton kernels in :mod:`dcam.kernels` (the CUDA kernels of
the ops, :mod:`dcam.ops.library`).

The launchers have exactly the signatures of the reference kernels, only
allocate outputs with ``torch.empty`` and launch through
``torch.library.wrap_triton``, so they can also be wrapped in a user's own
``torch.library.triton_op`` and traced by ``torch.compile``. CPU tensors run
only under Triton's interpreter (``TRITON_INTERPRET=1``), which the tests use
where no GPU exists.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
from torch import Tensor
from torch.library import wrap_triton

from ..errors import InputError
from ..kernels import pool as pool_kernels
from ..kernels import refine as refine_kernels
from . import constants as C
from .reference import gaussian_weights3_values, identical_rows

#: The contract's numbers, passed to the refine kernel as ``constexpr`` (compiled to literals).
CONTRACT_CONSTANTS = {name: getattr(C, name) for name in (
    "EPS_NORM", "ZETA_MIN", "SICD_BASE", "SICD_SPIKE", "SICD_SPIKE_STDS", "SICD_ALPHA_MAX", "SICD_RANGE_GUARD",
    "AKD_BASE", "AKD_STEP_SCALE", "AKD_STEP_CAP", "AKD_STD_SCALE", "AKD_STD_CAP", "AKD_SIZE_SCALE",
    "AKD_SIZE_CAP", "AKD_K_MIN", "AKD_K_MAX")}

# Elements of the refine kernel's working tiles (AKD window/rank tiles,
# rank-count chunks). On a GPU they live in registers: 4096 fp32 over 8 warps
# is 16 per thread. The CPU interpreter pays a large fixed cost per tensor op,
# so it gets much bigger tiles (same code, fewer loop iterations); the tests
# also run the GPU sizes in the interpreter.
TILE_GPU = 4096
TILE_INTERPRETER = 1 << 18


def is_available() -> bool:
    """The kernels imported (probe of :mod:`dcam.ops.backends`)."""
    return True


def _grad_mean(grads: Tensor, grad_relu: bool, check_grads: bool) -> Tuple[Tensor, Tensor]:
    """W = mean_n relu?(G) float32 [B, T, D] and the NaN/Inf flag (0-dim bool,
    on the device; False without ``check_grads``): [BLOCK_N, BLOCK_D] tiles of
    4096 elements."""
    B, T, N, D = grads.shape
    dev = grads.device
    weights = torch.empty((B, T, D), device=dev, dtype=torch.float32)
    block_d = min(128, max(16, triton.next_power_of_2(D)))
    block_n = max(1, 4096 // block_d)
    n_dblocks = triton.cdiv(D, block_d)
    bad = torch.empty((B * T, n_dblocks) if check_grads else (1,), device=dev, dtype=torch.int32)
    wrap_triton(pool_kernels._grad_mean_kernel)[(n_dblocks, B * T)](
        grads, weights, bad, T, N, D,
        grads.stride(0), grads.stride(1), grads.stride(2), grads.stride(3),
        GRAD_RELU=grad_relu, CHECK=check_grads, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
    # a device-side reduction of the per-program flags (no host sync)
    nonfinite = (bad.amax().bool() if check_grads and bad.numel()  # (no slices: nothing to flag)
                 else torch.zeros((), device=dev, dtype=torch.bool))
    return weights, nonfinite


def _maps_from_weights(acts: Tensor, weights: Tensor, h: int, w: int, nonneg: bool) -> Tuple[Tensor, Tensor]:
    """raw = mean_d max(A * W, 0), min-max normalised per map: (maps float32
    [B, T, h, w], degenerate bool [B, T]). ``nonneg``: the weights are known
    to be >= 0 (relu'd gradients), so one matrix product suffices."""
    B, N, D = acts.shape
    T = weights.shape[1]
    dev = acts.device
    maps = torch.empty((B, T, h, w), device=dev, dtype=torch.float32)
    degenerate = torch.empty((B, T), device=dev, dtype=torch.bool)
    bt = min(64, max(16, triton.next_power_of_2(T)))  # tl.dot needs every tile side >= 16
    bn, bd = 64, 32
    wrap_triton(pool_kernels._pool_product_kernel)[(triton.cdiv(N, bn), triton.cdiv(T, bt), B)](
        acts, weights, maps, T, N, D,
        acts.stride(0), acts.stride(1), acts.stride(2),
        NONNEG=nonneg, BLOCK_T=bt, BLOCK_N=bn, BLOCK_D=bd, num_warps=4)
    block = min(4096, max(16, triton.next_power_of_2(N)))
    wrap_triton(pool_kernels._minmax_normalise_kernel)[(B * T,)](
        maps, degenerate, weights, N, D, EPS=C.EPS_NORM, BLOCK=block, BLOCK_D=min(1024, triton.next_power_of_2(D)),
        num_warps=4 if block <= 1024 else 8)
    # tl.dot may round identical rows apart: maps constant by construction are degenerate (no host sync)
    constant = identical_rows(acts)
    maps.masked_fill_(constant[:, None, None, None], 0.0)
    return maps, degenerate | constant[:, None]


def pool_gradients_triton(acts: Tensor, grads: Tensor, h: int, w: int, grad_relu: bool = True,
                          check_grads: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradient-weighted activation pooling, min-max normalised (Triton).

    acts [B, N, D], grads [B, T, N, D] (fp32/fp16/bf16, any strides) ->
    maps float32 [B, T, h, w], degenerate bool [B, T], grads_nonfinite bool []
    (with ``check_grads``: whether grads hold a NaN/Inf, found by the
    gradient pass itself, on the device, no host sync; else False)."""
    weights, nonfinite = _grad_mean(grads, grad_relu, check_grads)
    maps, degenerate = _maps_from_weights(acts, weights, h, w, nonneg=grad_relu)
    return maps, degenerate, nonfinite


def channel_weights_triton(grads: Tensor, grad_relu: bool = True, check_grads: bool = False
                           ) -> Tuple[Tensor, Tensor]:
    """The first half of the pooling: (weights float32 [B, T, D], grads_nonfinite bool [])."""
    return _grad_mean(grads, grad_relu, check_grads)


def weighted_maps_triton(acts: Tensor, weights: Tensor, h: int, w: int) -> Tuple[Tensor, Tensor]:
    """The second half: (maps float32 [B, T, h, w], degenerate bool [B, T]) from
    weights of either sign (the two-product form: their signs are not known
    here without a host sync; the kernel skips the negative side of the tiles
    that hold no negative weight)."""
    return _maps_from_weights(acts, weights.float().contiguous(), h, w, nonneg=False)


def refine_triton(raw: Tensor, degenerate: Tensor, steps: Tensor, image_size: Tensor, repeat_ratio: Tensor,
                  context_maps: Optional[Tensor], context_weights: Optional[Tensor],
                  akd_kernel: int, akd: bool, dacg: bool, cba: bool, sicd: int,
                  dacg_params: List[float], cba_params: List[float], tile: Optional[int] = None
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The whole refinement of [B, T, h, w] raw maps (Triton, one program per map).

    Same signature and results as :func:`dcam.ops.reference.refine_reference`:
    returns (maps f32 [B,T,h,w], kernel_size i32 [B,T], dacg_strategy i32 [B,T],
    dacg_threshold f32 [B,T], cba_threshold f32 [B,T], sicd_alpha f32 [B,T]).

    tile: elements of the working tiles (default: :data:`TILE_GPU` for CUDA
    tensors, :data:`TILE_INTERPRETER` for CPU tensors, which only run in the
    interpreter)."""
    B, T, h, w = raw.shape
    N = h * w
    dev = raw.device
    akd_kernel, sicd = int(akd_kernel), int(sicd)
    if sicd not in (0, 1, 2):
        raise InputError(f"refine_triton: sicd must be 0 (off), 1 (reference) or 2 (context), got {sicd}")
    if len(dacg_params) != 8 or len(cba_params) != 5:
        raise InputError("refine_triton: dacg_params needs 8 values and cba_params 5")
    raw = raw.contiguous()
    # [B] / [B, T] inputs are read at b / b*T+t: make any strides (e.g. expand) plain
    degenerate, steps, image_size, repeat_ratio = (
        x.contiguous() for x in (degenerate, steps, image_size, repeat_ratio))
    if sicd == 2:
        if context_weights is None:
            raise InputError("refine_triton: sicd='context' needs context_weights [B, T, T]")
        ctx = raw if context_maps is None else context_maps.contiguous()
        cw = context_weights.contiguous()
    else:  # unused by the compiled kernel
        ctx, cw = raw, raw

    maps = torch.empty((B, T, h, w), device=dev, dtype=torch.float32)
    ksize = torch.empty((B, T), device=dev, dtype=torch.int32)
    strategy = torch.empty((B, T), device=dev, dtype=torch.int32)
    dacg_thr = torch.empty((B, T), device=dev, dtype=torch.float32)
    cba_thr = torch.empty((B, T), device=dev, dtype=torch.float32)
    alpha = torch.empty((B, T), device=dev, dtype=torch.float32)

    # block sizes from the shapes: the largest window this config can use
    kmax = min(akd_kernel if akd_kernel > 0 else C.AKD_K_MAX, 2 * min(h, w) - 1)
    if tile is None:
        tile = TILE_GPU if dev.type == "cuda" else TILE_INTERPRETER
    block = max(16, triton.next_power_of_2(N))
    block_k = max(16, triton.next_power_of_2(kmax * kmax)) if akd else 16
    block_p = max(1, min(block, tile // block_k, 256))
    block_ik = max(1, min(block_k, tile // (block_p * block_k)))
    block_i = max(1, min(block, tile // block))
    block_t = max(16, triton.next_power_of_2(T))

    # DACG's blur weights (centre, edge, corner) from the reference's one definition, not
    # re-derived from sigma in the kernel: a one-ulp difference there is magnified by the
    # final normalisation of a nearly constant map
    g9 = gaussian_weights3_values(float(dacg_params[7]))
    wrap_triton(refine_kernels._refine_kernel)[(B * T,)](
        raw, degenerate, steps, image_size, repeat_ratio, ctx, cw,
        maps, ksize, strategy, dacg_thr, cba_thr, alpha,
        T, h, w,
        *[float(p) for p in dacg_params[:7]], g9[4], g9[1], g9[0], *[float(p) for p in cba_params],
        AKD_KERNEL=akd_kernel, AKD=bool(akd), DACG=bool(dacg), CBA=bool(cba), SICD=sicd,
        CTX_IS_RAW=context_maps is None,
        **CONTRACT_CONSTANTS,
        BLOCK=block, BLOCK_I=block_i, BLOCK_P=block_p, BLOCK_IK=block_ik, BLOCK_K=block_k,
        BLOCK_T=block_t,
        num_warps=8)
    return maps, ksize, strategy, dacg_thr, cba_thr, alpha
