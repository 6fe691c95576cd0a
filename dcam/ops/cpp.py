"""C++ CPU kernels of the ops: thin torch wrappers around the compiled
extension ``dcam._C`` (C API: csrc/include/dcam.h).

The entry points have exactly the signatures of the reference kernels
(:mod:`dcam.ops.library`):

    pool_gradients_cpp(acts, grads, h, w, grad_relu, check_grads) -> (maps, degenerate, grads_nonfinite)
    channel_weights_cpp(grads, grad_relu, check_grads) -> (weights, grads_nonfinite)
    weighted_maps_cpp(acts, weights, h, w) -> (maps, degenerate)
    refine_cpp(raw, degenerate, steps, image_size, repeat_ratio, context_maps,
               context_weights, akd_kernel, akd, dacg, cba, sicd,
               dacg_params, cba_params)
        -> (maps, kernel_size, dacg_strategy, dacg_threshold, cba_threshold, sicd_alpha)

Inputs are CPU tensors already validated by the caller (:mod:`dcam.ops.api`); they are
made contiguous (and cast where the kernel needs float32) here, handed to the
extension as zero-copy numpy views, and the outputs come back as fresh tensors
(`torch.from_numpy`, no copy). bfloat16 travels as its int16 bit pattern. The
extension releases the GIL while it computes.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import InputError

#: What these wrappers need of ``dcam._C`` (csrc/python/bindings.cpp's kInterfaceVersion, bumped together):
#: an extension of another version, an editable install's build left from older sources, is treated as
#: not built (the reference runs, with one warning; backend='cpp' says why) rather than failing mid-call
INTERFACE_VERSION = 2

try:
    from dcam import _C  # type: ignore[attr-defined]
    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # extension not built
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
if _C is not None and getattr(_C, "INTERFACE_VERSION", None) != INTERFACE_VERSION:
    _built = getattr(_C, "INTERFACE_VERSION", None)
    _IMPORT_ERROR = (f"stale build: {_C.__file__} has interface version "
                     f"{'none (built before versions)' if _built is None else _built}, these sources need "
                     f"{INTERFACE_VERSION}; rebuild: python setup.py build_ext --inplace")
    _C = None
    del _built


def is_available() -> bool:
    """Whether the compiled extension `dcam._C` imported."""
    return _C is not None


def unavailable_reason() -> Optional[str]:
    return _IMPORT_ERROR


def _require() -> None:
    if _C is None:
        if _IMPORT_ERROR.startswith("stale build"):  # (it says how to rebuild)
            raise RuntimeError(f"dcam._C is not available ({_IMPORT_ERROR})")
        raise RuntimeError(f"dcam._C is not available ({_IMPORT_ERROR}); reinstall dcam with a C++17 compiler on the "
                           "path to build it (pip install --no-cache-dir --force-reinstall --no-deps <dcam's folder "
                           "or sdist>)")


def _f32(t: Tensor):
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def _pool_input(t: Tensor):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    if t.dtype in (torch.float32, torch.float16):
        return t.numpy()
    return t.float().numpy()  # other float dtypes (float64, ...): accumulate from float32 like the reference


def _flag(value) -> Tensor:
    """The 0-dim bool output of a checked pass. torch.full, not torch.tensor: half the
    cost (18 vs 33 us right after a pass that streamed the caches), paid once per chunk."""
    return torch.full((), bool(value), dtype=torch.bool)


def _check_grid(fn: str, N: int, h: int, w: int) -> None:
    """A bug guard, not input validation (the API checked the grid): the maps fill h x w."""
    if N != h * w:
        raise ValueError(f"{fn}: N={N} image tokens do not fill a {h}x{w} grid")


def pool_gradients_cpp(acts: Tensor, grads: Tensor, h: int, w: int, grad_relu: bool = True,
                       check_grads: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """acts [B, N, D], grads [B, T, N, D] (float32/float16/bfloat16) ->
    maps float32 [B, T, h, w], degenerate bool [B, T], grads_nonfinite bool []
    (with ``check_grads``: whether the pooling pass met a NaN/Inf in grads, or
    a float32 partial sum overflowed, see ``dcam_pool_gradients_checked``;
    else False)."""
    _require()
    if acts.dtype != grads.dtype:
        dt = torch.promote_types(acts.dtype, grads.dtype)
        acts, grads = acts.to(dt), grads.to(dt)
    B, N, _ = acts.shape
    T = grads.shape[1]
    _check_grid("pool_gradients_cpp", N, h, w)
    maps, deg, bad = _C.pool_gradients(_pool_input(acts), _pool_input(grads), bool(grad_relu), bool(check_grads))
    return torch.from_numpy(maps).reshape(B, T, h, w), torch.from_numpy(deg), _flag(bad)


def channel_weights_cpp(grads: Tensor, grad_relu: bool = True, check_grads: bool = False) -> Tuple[Tensor, Tensor]:
    """grads [B, T, N, D] (float32/float16/bfloat16) -> channel weights float32
    [B, T, D], grads_nonfinite bool [] (as in :func:`pool_gradients_cpp`)."""
    _require()
    weights, bad = _C.channel_weights(_pool_input(grads), bool(grad_relu), bool(check_grads))
    return torch.from_numpy(weights), _flag(bad)


def weighted_maps_cpp(acts: Tensor, weights: Tensor, h: int, w: int) -> Tuple[Tensor, Tensor]:
    """acts [B, N, D] (float32/float16/bfloat16), weights [B, T, D] (any sign) ->
    maps float32 [B, T, h, w], degenerate bool [B, T]."""
    _require()
    B, N, _ = acts.shape
    T = weights.shape[1]
    _check_grid("weighted_maps_cpp", N, h, w)
    maps, deg = _C.weighted_maps(_pool_input(acts), _f32(weights))
    return torch.from_numpy(maps).reshape(B, T, h, w), torch.from_numpy(deg)


def refine_cpp(raw: Tensor, degenerate: Tensor, steps: Tensor, image_size: Tensor, repeat_ratio: Tensor,
               context_maps: Optional[Tensor], context_weights: Optional[Tensor],
               akd_kernel: int, akd: bool, dacg: bool, cba: bool, sicd: int,
               dacg_params: List[float], cba_params: List[float]):
    """The whole refinement of [B, T, h, w] raw maps (see `dcam.reference.refine_reference`).
    Returns (maps f32 [B,T,h,w], kernel_size i32 [B,T], dacg_strategy i32 [B,T],
    dacg_threshold f32 [B,T], cba_threshold f32 [B,T], sicd_alpha f32 [B,T])."""
    _require()
    B, T = raw.shape[0], raw.shape[1]
    if int(sicd) == 2 and context_weights is None:
        raise ValueError("refine_cpp: sicd='context' needs context_weights")
    deg = degenerate.detach().to(device="cpu", dtype=torch.bool).reshape(B, T).contiguous().numpy()
    per_image = lambda x: _f32(x.reshape(B))  # noqa: E731
    try:
        out = _C.refine(
            _f32(raw), deg, per_image(steps), per_image(image_size), per_image(repeat_ratio),
            None if context_maps is None else _f32(context_maps),
            None if context_weights is None else _f32(context_weights),
            int(akd_kernel), bool(akd), bool(dacg), bool(cba), int(sicd),
            [float(v) for v in dacg_params], [float(v) for v in cba_params])
    except _C.NonFiniteMapsError:
        # NaN/Inf maps (a direct op call: dcam.refine refused them before): the extension cannot give the
        # reference's maps for them (its rank filter and percentiles order NaN otherwise), so it refuses
        # them with an error type of its own (any other ValueError of the extension is a bug here, the
        # arguments checked before); which argument is looked up on this failing path only
        name = "raw" if not bool(torch.isfinite(raw).all()) else "context_maps"
        raise InputError(f"dcam::refine: {name} holds NaN or Inf, which the C++ kernel refuses (dcam.refine "
                         "checks values before any kernel)") from None
    return tuple(torch.from_numpy(a) for a in out)
