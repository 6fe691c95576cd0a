"""The public operator API: `pool_gradients` (and its two halves
`channel_weights` and `weighted_maps`), `refine`, `diffusion_cam`.

Each function checks its arguments (:mod:`dcam.ops.validation`; every error
is a :class:`dcam.InputError` naming the argument), turns scalars into
per-image tensors and calls one implementation:

    backend="auto"    the registered op (:mod:`dcam.ops.library`): the
                      dispatcher runs the C++ kernel for CPU tensors, the
                      Triton kernels for CUDA tensors and the PyTorch
                      reference on any other device
    backend="torch"   the PyTorch reference, any device
    backend="cpp"     the C++ kernel; CPU tensors only
    backend="triton"  the Triton kernels; CUDA tensors, or CPU tensors under
                      TRITON_INTERPRET=1 (the interpreter, for testing)
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import InputError
from .config import CamConfig
from . import validation as V
from .backends import check_backend as _check_backend, cpp_backend

#: sizes the C++ kernels index with 32-bit offsets (csrc: dcam_pool_* refuse D > 2**24, dcam_refine
#: h * w >= 2**27); the PyTorch reference and Triton have no such limit
CPP_MAX_HIDDEN = 2 ** 24
CPP_MAX_CELLS = 2 ** 27 - 1


def check_backend(backend: str, device, hidden: Optional[int] = None, cells: Optional[int] = None,
                  hidden_of: str = "acts") -> str:
    """``backend`` checked for ``device`` (:func:`dcam.ops.backends.check_backend`), and, where
    the C++ kernels will run, the sizes they take: past them an InputError naming the argument
    (the extension's "invalid size argument" was a ValueError naming none)."""
    backend = _check_backend(backend, device)
    cpp_runs = runs_cpp(backend, device)
    if cpp_runs and hidden is not None and hidden > CPP_MAX_HIDDEN:
        raise InputError(f"{hidden_of}: hidden size {hidden} is past the C++ backend's 2**24; backend='torch' "
                         "takes it")
    if cpp_runs and cells is not None and cells > CPP_MAX_CELLS:
        raise InputError(f"raw_maps: {cells} cells per map is past the C++ backend's 2**27 - 1; "
                         "backend='torch' takes it")
    return backend


def runs_cpp(backend: str, device) -> bool:
    """Whether the C++ kernels run for ``backend`` (checked) on ``device``."""
    return backend == "cpp" or (backend == "auto" and device.type == "cpu" and cpp_backend.is_available())
from .library import implementation


@dataclass(frozen=True)
class RawMaps:
    """Output of `pool_gradients`: min-max normalised raw maps [B,T,h,w]
    (float32) and the flag of maps that were constant before normalising."""

    maps: Tensor
    degenerate: Tensor


@dataclass(frozen=True)
class Refined:
    """Output of `refine` / `diffusion_cam`: final maps [B,T,h,w] (float32)
    and per-map statistics, each [B,T]."""

    maps: Tensor
    kernel_size: Tensor
    dacg_strategy: Tensor
    dacg_threshold: Tensor
    cba_threshold: Tensor
    sicd_alpha: Tensor
    degenerate: Tensor

    def stats(self) -> dict:
        """The statistics as a dict of tensors (no maps)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "maps"}


def _raise_if_grads_nonfinite(grads: Tensor, flag: Tensor) -> None:
    """After a checked pooling pass: the error of :func:`~dcam.ops.validation.check_finite`
    when the pass met a NaN/Inf (counted exactly here, on the error path only).
    A flag raised by finite gradients (their sum over the N image tokens passed
    float32's range, |g| near 3.4e38 / N) is no error here: such input is finite
    (:data:`_WEIGHTS_OVERFLOW` says what happened)."""
    if bool(flag):
        V.check_finite("grads", grads)


_WEIGHTS_OVERFLOW = ("grads: finite, but summed over the image tokens they overflow float32 (the channel "
                     "weights came out infinite); scale grads down")
#: ({0}: grads, or weights for weighted_maps, which takes no gradients)
_POOLING_OVERFLOW = ("acts: finite, but pooled with {0} it overflows float32 (a product or sum past 3.4e38 "
                     "made the maps NaN or infinite); scale acts or {0} down")


def _raise_if_pooling_overflowed(flag: Tensor, other: str = "grads") -> None:
    """After a checked pooling of finite inputs: NaN maps mean a float32 product or sum
    past 3.4e38 (|acts * weights| ~ 1e20 * 1e20). The backends then disagreed (NaN maps
    from the reference's refinement, zeros from the C++ one); now every one refuses."""
    if bool(flag):
        raise InputError(_POOLING_OVERFLOW.format(other))


def _raise_if_degenerate_by_overflow(acts: Tensor, degenerate: Tensor, weights_of, other: str = "grads") -> None:
    """After a checked pooling of finite inputs: a map whose every pixel overflowed float32
    is constant (+Inf), and one pooled with an infinite channel weight (float32 sums of
    gradients near 3.4e38 / N) is NaN; normalising turns either into an all-zero
    "degenerate" map, the same answer as a word without gradient. Only the degenerate maps
    (rare) are looked at again: ``weights_of(b, t)`` gives their channel weights [K, D],
    and their unnormalised maps are the reference's two products, one image at a time."""
    if not bool(degenerate.any()):
        return
    b_idx, t_idx = degenerate.nonzero(as_tuple=True)
    weights = weights_of(b_idx, t_idx)
    for b in b_idx.unique().tolist():
        a, w = acts[b].float(), weights[b_idx == b].float()  # [N, D], [k, D]
        raw = a.clamp(min=0) @ w.clamp(min=0).T + a.clamp(max=0) @ w.clamp(max=0).T  # [N, k], D times the maps
        if bool(V.nonfinite_flag(raw)):
            raise InputError(_POOLING_OVERFLOW.format(other))


def _raise_if_weights_overflowed(weights: Tensor) -> None:
    """After a checked pass over finite gradients: infinite channel weights mean a float32
    sum past 3.4e38 (gradients near 3.4e38 / N)."""
    if bool(V.nonfinite_flag(weights)):
        raise InputError(_WEIGHTS_OVERFLOW)


def _recomputed_weights(grads: Tensor, grad_relu: bool, backend: str):
    """``weights_of`` for `_raise_if_degenerate_by_overflow` from the gradients: the same
    backend's channel weights of the chosen slices, refused when infinite."""
    def weights_of(b_idx: Tensor, t_idx: Tensor) -> Tensor:
        weights, _ = implementation("channel_weights", backend)(grads[b_idx, t_idx][None], grad_relu, False)
        _raise_if_weights_overflowed(weights)
        return weights[0]
    return weights_of


def pool_gradients(acts: Tensor, grads: Tensor, grid: Tuple[int, int], grad_relu: bool = True,
                   backend: str = "auto", check_finite: bool = True) -> RawMaps:
    """Gradient-weighted pooling of image-token states into one map per token
    (docs/ALGORITHM.md, section 1).

    acts: [B,N,D] (or [N,D]) hooked hidden states of the image-token span.
    grads: [B,T,N,D] (or [T,N,D]) gradient of each explained token's score
        with respect to `acts`. float32/float16/bfloat16 (accumulated in float32).
    grid: (h, w) with h*w == N (raster order).
    check_finite: refuse NaN/Inf in the inputs (the gradients are checked
        inside the pooling pass, no second read).
    Returns RawMaps(maps float32 [B,T,h,w] min-max normalised, degenerate bool [B,T]).
    """
    V.check_bool("grad_relu", grad_relu)
    V.check_bool("check_finite", check_finite)
    acts, grads, h, w, device = V.validate_pool(acts, grads, grid, check_finite)
    backend = check_backend(backend, device, hidden=acts.shape[2])
    maps, degenerate, bad = implementation("pool_gradients", backend)(acts, grads, h, w, grad_relu, check_finite)
    if check_finite:
        _raise_if_grads_nonfinite(grads, bad)
        _raise_if_pooling_overflowed(V.nonfinite_flag(maps))
        _raise_if_degenerate_by_overflow(acts, degenerate, _recomputed_weights(grads, grad_relu, backend))
    return RawMaps(maps, degenerate)


def channel_weights(grads: Tensor, grad_relu: bool = True, backend: str = "auto",
                    check_finite: bool = True) -> Tensor:
    """The first half of `pool_gradients`: each token's channel weights, the
    mean over the image tokens of its (positive, with ``grad_relu``) gradients.

    grads: [B,T,N,D] (or [T,N,D]) float32/float16/bfloat16, read once.
    check_finite: refuse NaN/Inf in grads (found by the same pass).
    Returns float32 [B,T,D] ([1,T,D] for [T,N,D], as `pool_gradients`
    batches one image). With the activations,
    ``weighted_maps(acts, channel_weights(grads, r), grid)`` gives the maps of
    ``pool_gradients(acts, grads, grid, r)``; the explainer reduces each chunk
    of gradients this way as it arrives and makes all maps at the end.
    """
    V.check_bool("grad_relu", grad_relu)
    V.check_bool("check_finite", check_finite)
    grads = V.validate_grads(grads, check_finite)
    run = implementation("channel_weights", check_backend(backend, grads.device, hidden=grads.shape[3],
                                                                 hidden_of="grads"))
    weights, bad = run(grads, grad_relu, check_finite)
    if check_finite:
        _raise_if_grads_nonfinite(grads, bad)
        _raise_if_weights_overflowed(weights)
    return weights


def weighted_maps(acts: Tensor, weights: Tensor, grid: Tuple[int, int], backend: str = "auto",
                  check_finite: bool = True) -> RawMaps:
    """The second half of `pool_gradients`: raw maps from channel weights,
    ``raw[b,t,n] = mean_d max(acts[b,n,d] * weights[b,t,d], 0)``, min-max
    normalised (docs/ALGORITHM.md, section 1).

    acts: [B,N,D]; weights: [B,T,D], of either sign (from `channel_weights`,
    or a user's own); [N,D] and [T,D] are a batch of one. check_finite:
    refuse NaN/Inf in acts or weights. Returns RawMaps as `pool_gradients`
    does (maps [B,T,h,w], ready for `refine`)."""
    V.check_bool("check_finite", check_finite)
    acts, weights, h, w, device = V.validate_weighted(acts, weights, grid, check_finite)
    maps, degenerate = implementation("weighted_maps", check_backend(backend, device, hidden=acts.shape[2]))(
        acts, weights, h, w)
    if check_finite:
        _raise_if_pooling_overflowed(V.nonfinite_flag(maps), "weights")
        _raise_if_degenerate_by_overflow(acts, degenerate, lambda b, t: weights[b, t], "weights")
    return RawMaps(maps, degenerate)


def _refine_checked(raw: Tensor, degenerate: Tensor, config: CamConfig, steps, image_size, repeat_ratio,
                    context_maps, context_weights, backend: str, check_values: bool) -> Refined:
    B = raw.shape[0]
    device = raw.device
    backend = check_backend(backend, device, cells=raw.shape[2] * raw.shape[3])
    valueless = any(isinstance(x, Tensor) and V._valueless(x)  # (vmapped steps: "pass check_finite=False")
                    for x in (raw, steps, image_size, repeat_ratio, context_maps, context_weights))
    if runs_cpp(backend, device) and not (valueless or torch.compiler.is_compiling()):
        # the C++ kernels refuse a bad per-image value or context weight whatever check_finite says (its C
        # API checks them, cheaply on the CPU): checked here as a checked call does, so they are the same
        # InputError naming the argument (unchecked, a non-zero diagonal was the extension's ValueError)
        check_values = True
    steps_t = V.per_image("steps", steps, B, device, lo=0.0, hi=None, lo_open=True, check_values=check_values)
    size_t = V.per_image("image_size", image_size, B, device, lo=0.0, hi=None, lo_open=True,
                         check_values=check_values)
    rho_t = V.per_image("repeat_ratio", repeat_ratio, B, device, lo=0.0, hi=1.0, lo_open=False,
                        check_values=check_values)
    context_maps, context_weights = V.check_context(config, raw, context_maps, context_weights, check_values)
    V.check_same_device(raw_maps=raw, degenerate=degenerate, context_maps=context_maps,
                        context_weights=context_weights)
    run = implementation("refine", backend)
    o = config.op_args()
    out = run(raw, degenerate, steps_t, size_t, rho_t, context_maps, context_weights, o["akd_kernel"], o["akd"],
              o["dacg"], o["cba"], o["sicd"], o["dacg_params"], o["cba_params"])
    return Refined(*out, degenerate)


def refine(raw_maps: Union[Tensor, RawMaps], config: Optional[CamConfig] = None, steps=64, image_size=512,
           repeat_ratio=0.0, context_maps: Optional[Tensor] = None, context_weights: Optional[Tensor] = None,
           degenerate: Optional[Tensor] = None, backend: str = "auto", check_finite: bool = True) -> Refined:
    """AKD, DACG, CBA, clip/normalise and SICD on a batch of raw maps
    (docs/ALGORITHM.md, sections 2-7).

    raw_maps: [B,T,h,w] in [0, 1] (or a RawMaps, whose degenerate flags are then used).
    steps: denoising steps of the generation; image_size: height of the
    input image in pixels; repeat_ratio: the response's repeat ratio in [0,1].
    Each a scalar or a per-image [B] tensor.
    context_weights: [B,T,T] non-negative, required by sicd="context";
    context_maps default to the raw maps (a degenerate one counting as all zeros).
    degenerate: bool [B,T]; default: maps that are constant.
    check_finite: check the values of the tensors (finite, in range); costs a
    host sync on the GPU. Where the C++ kernels run, steps, image_size,
    repeat_ratio and the context tensors are checked either way (its C API
    refuses bad ones; False skips the check of the maps only).
    """
    V.check_bool("check_finite", check_finite)
    if isinstance(raw_maps, RawMaps):
        degenerate = raw_maps.degenerate if degenerate is None else degenerate
        raw_maps = raw_maps.maps
    raw = V.check_tensor("raw_maps", raw_maps, ranks=(4,))
    config = V.check_config(config)
    if check_finite:
        V.check_raw_values(raw)
    raw = raw.float().contiguous()
    degenerate = V.check_degenerate(degenerate, raw)
    return _refine_checked(raw, degenerate, config, steps, image_size, repeat_ratio, context_maps,
                           context_weights, backend, check_finite)


def diffusion_cam(acts: Tensor, grads: Tensor, grid: Tuple[int, int], config: Optional[CamConfig] = None,
                  steps=64, image_size=512, repeat_ratio=0.0, context_weights: Optional[Tensor] = None,
                  backend: str = "auto", check_finite: bool = True) -> Refined:
    """Pool and refine in one call; the same result as
    ``refine(pool_gradients(acts, grads, grid, config.grad_relu), config, ...)``.
    No host synchronisation happens between the two stages on the GPU path:
    the gradients' NaN/Inf flag of the pooling pass is read once at the end
    (with check_finite=False, nothing synchronises at all)."""
    config = V.check_config(config)
    V.check_bool("check_finite", check_finite)
    acts, grads, h, w, device = V.validate_pool(acts, grads, grid, check_finite)
    backend = check_backend(backend, device, hidden=acts.shape[2], cells=h * w)
    raw, degenerate, bad = implementation("pool_gradients", backend)(acts, grads, h, w, config.grad_relu,
                                                                     check_finite)
    # maps pooled from checked inputs are in [0, 1] unless float32 overflowed: that flag is made here
    # on the device and read with the gradients' at the end (no host sync between the stages)
    overflowed = V.nonfinite_flag(raw) if check_finite else None

    def raise_pooling_errors():
        _raise_if_grads_nonfinite(grads, bad)
        _raise_if_pooling_overflowed(overflowed)
        _raise_if_degenerate_by_overflow(acts, degenerate, _recomputed_weights(grads, config.grad_relu, backend))
    # on the host the flags cost nothing to read, and read first they name the pooling's input before the
    # C++ refinement refuses the NaN maps it made (dcam_refine: DCAM_EINVAL_VALUE)
    host = raw.device.type == "cpu"
    if check_finite and host:
        raise_pooling_errors()
    out = _refine_checked(raw, degenerate, config, steps, image_size, repeat_ratio, None, context_weights,
                          backend, check_values=check_finite)
    if check_finite and not host:
        raise_pooling_errors()
    return out


def all_finite(x: Tensor) -> bool:
    """Whether ``x`` holds no NaN/Inf (one ``aminmax`` pass, no bool copy of ``x``)."""
    return not bool(V.nonfinite_flag(x))


__all__ = ["RawMaps", "Refined", "pool_gradients", "channel_weights", "weighted_maps", "refine", "diffusion_cam",
           "all_finite"]
