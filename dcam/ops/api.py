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

Traced by torch.compile (``fullgraph=True`` too) or torch.export with
check_finite=True, a function checks what needs no values and calls one
opaque op of its own instead, whose kernel (every device) is the eager
function with the check on, so a NaN raises the eager error at run time:

    dcam::pool_gradients_checked(acts, grads, h, w, grad_relu, backend) -> (maps, degenerate)
    dcam::channel_weights_checked(grads, grad_relu, backend) -> weights
    dcam::weighted_maps_checked(acts, weights, h, w, backend) -> (maps, degenerate)
    dcam::refine_checked(raw, degenerate?, steps, image_size, repeat_ratio, context_maps?,
                         context_weights?, <the config: CamConfig.op_args()>, backend)
        -> (maps, kernel_size, dacg_strategy, dacg_threshold, cba_threshold, sicd_alpha)
    dcam::diffusion_cam_checked(acts, grads, h, w, steps, image_size, repeat_ratio,
                                context_weights?, grad_relu, <the config>, backend)
        -> (refine_checked's six, degenerate)

They are registered by this module (their kernels call it), so by
``import dcam.ops.api``; ``import dcam.ops.library`` registers the four ops
above only.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import InputError
from .config import CamConfig
from . import validation as V
from .backends import check_backend as _check_backend, cpp_backend, triton_backend

from .validation import CPP_MAX_CELLS, CPP_MAX_HIDDEN  # (the sizes the C++ kernels take; the ops check them too)


def check_backend(backend: str, device, hidden: Optional[int] = None, cells: Optional[int] = None,
                  hidden_of: str = "acts") -> str:
    """``backend`` checked for ``device`` (:func:`dcam.ops.backends.check_backend`), and, where
    the C++ kernels will run, the sizes they take: past them an InputError naming the argument
    (the extension's "invalid size argument" was a ValueError naming none)."""
    if backend in ("cpp", "triton") and _traced():
        _backend_available(backend)  # (loaded outside the trace, as runs_cpp does)
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
    return backend == "cpp" or (backend == "auto" and device.type == "cpu" and _backend_available("cpp"))


@torch.compiler.assume_constant_result
def _backend_available(name: str) -> bool:
    """Whether backend ``name`` ("cpp" or "triton") is usable here. It is loaded on first use, under a
    lock that torch.compile cannot trace (a compiled first call failed, "Unsupported context manager"):
    marked constant, traced code calls this once and keeps the answer, the same for the whole process."""
    return (cpp_backend if name == "cpp" else triton_backend).is_available()
from .library import _not_differentiable, implementation


def _traced() -> bool:
    """Whether torch.compile or torch.export is tracing the call: a value check, which branches on the
    values on the host, then runs inside one opaque checked op (`_CHECKED_OPS`) at run time."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


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


def _validate_pool_traced(acts, grads, grid, backend: str, cells: bool = False):
    """The checks of `pool_gradients` that traced code runs (no values: those run in the checked op)."""
    acts, grads, h, w, device = V.validate_pool(acts, grads, grid, False)
    check_backend(backend, device, hidden=acts.shape[2], cells=h * w if cells else None)
    return acts, grads, h, w, device


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
    if check_finite and _traced():
        _, _, h, w, _ = _validate_pool_traced(acts, grads, grid, backend)
        return RawMaps(*torch.ops.dcam.pool_gradients_checked(acts, grads, h, w, grad_relu, backend))
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
    if check_finite and _traced():
        checked = V.validate_grads(grads, False)
        check_backend(backend, checked.device, hidden=checked.shape[3], hidden_of="grads")
        return torch.ops.dcam.channel_weights_checked(grads, grad_relu, backend)
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
    if check_finite and _traced():
        checked, _, h, w, device = V.validate_weighted(acts, weights, grid, False)
        check_backend(backend, device, hidden=checked.shape[2])
        return RawMaps(*torch.ops.dcam.weighted_maps_checked(acts, weights, h, w, backend))
    acts, weights, h, w, device = V.validate_weighted(acts, weights, grid, check_finite)
    maps, degenerate = implementation("weighted_maps", check_backend(backend, device, hidden=acts.shape[2]))(
        acts, weights, h, w)
    if check_finite:
        _raise_if_pooling_overflowed(V.nonfinite_flag(maps), "weights")
        _raise_if_degenerate_by_overflow(acts, degenerate, lambda b, t: weights[b, t], "weights")
    return RawMaps(maps, degenerate)


def _refine_checked(raw: Tensor, degenerate: Tensor, config: CamConfig, steps, image_size, repeat_ratio,
                    context_maps, context_weights, backend: str, check_values: bool) -> Refined:
    backend, steps_t, size_t, rho_t, context_maps, context_weights = _refine_inputs(
        raw, degenerate, config, steps, image_size, repeat_ratio, context_maps, context_weights, backend, check_values)
    run = implementation("refine", backend)
    o = config.op_args()
    out = run(raw, degenerate, steps_t, size_t, rho_t, context_maps, context_weights, o["akd_kernel"], o["akd"],
              o["dacg"], o["cba"], o["sicd"], o["dacg_params"], o["cba_params"])
    return Refined(*out, degenerate)


def _refine_inputs(raw: Tensor, degenerate: Optional[Tensor], config: CamConfig, steps, image_size, repeat_ratio,
                   context_maps, context_weights, backend: str, check_values: bool):
    """The checked backend, per-image steps, image_size, repeat_ratio and context tensors of the refine op."""
    B = raw.shape[0]
    device = raw.device
    backend = check_backend(backend, device, cells=raw.shape[2] * raw.shape[3])
    valueless = any(isinstance(x, Tensor) and V._valueless(x)  # (vmapped steps: "pass check_finite=False")
                    for x in (raw, steps, image_size, repeat_ratio, context_maps, context_weights))
    if runs_cpp(backend, device) and not (valueless or torch.compiler.is_compiling()):
        # the C++ kernels refuse a bad per-image value or context weight whatever check_finite says (its C
        # API checks them, cheaply on the CPU): checked here as a checked call does, so they are the same
        # InputError naming the argument (unchecked, a non-zero diagonal was the extension's ValueError)
        forced, check_values = not check_values, True
    else:
        forced = False
    checks = dict(B=B, device=device, check_values=check_values, forced=forced)
    steps_t = V.per_image("steps", steps, lo=0.0, hi=None, lo_open=True, **checks)
    size_t = V.per_image("image_size", image_size, lo=0.0, hi=None, lo_open=True, **checks)
    rho_t = V.per_image("repeat_ratio", repeat_ratio, lo=0.0, hi=1.0, lo_open=False, **checks)
    context_maps, context_weights = V.check_context(config, raw, context_maps, context_weights, check_values,
                                                    forced=forced)
    V.check_same_device(raw_maps=raw, degenerate=degenerate, context_maps=context_maps,
                        context_weights=context_weights)
    return backend, steps_t, size_t, rho_t, context_maps, context_weights


def _per_image_traced(raw: Tensor, degenerate: Optional[Tensor], config: CamConfig, steps, image_size,
                      repeat_ratio, context_maps, context_weights, backend: str):
    """The checks of `_refine_checked` that traced code runs (no values), and steps, image_size and
    repeat_ratio as a checked op takes them: a tensor as given (the op's eager call checks its values
    as eager code does), a number or a sequence as its per-image tensor (numbers are checked here)."""
    _, steps_t, size_t, rho_t, _, _ = _refine_inputs(raw, degenerate, config, steps, image_size, repeat_ratio,
                                                     context_maps, context_weights, backend, False)
    return tuple(given if isinstance(given, Tensor) else made
                 for given, made in ((steps, steps_t), (image_size, size_t), (repeat_ratio, rho_t)))


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
    host sync on the GPU. A scalar steps, image_size or repeat_ratio is
    checked on every backend either way; False skips the check of tensors:
    the maps, and per-image [B] and context tensors except where the C++
    kernels run (its C API refuses bad ones, so they are checked there).
    """
    V.check_bool("check_finite", check_finite)
    if isinstance(raw_maps, RawMaps):
        degenerate = raw_maps.degenerate if degenerate is None else degenerate
        raw_maps = raw_maps.maps
    raw = V.check_tensor("raw_maps", raw_maps, ranks=(4,))
    config = V.check_config(config)
    if check_finite and _traced():
        as_float = raw.float().contiguous()
        flags = V.check_degenerate(degenerate, as_float)
        per_image = _per_image_traced(as_float, flags, config, steps, image_size, repeat_ratio, context_maps,
                                      context_weights, backend)
        out = torch.ops.dcam.refine_checked(raw, degenerate, *per_image, context_maps, context_weights,
                                            *_config_args(config), backend)
        return Refined(*out, flags)
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
    if check_finite and _traced():
        checked, checked_grads, h, w, _ = _validate_pool_traced(acts, grads, grid, backend, cells=True)
        like_raw = checked.new_empty((*checked_grads.shape[:2], h, w))  # (a shape for the checks; never read)
        per_image = _per_image_traced(like_raw, None, config, steps, image_size, repeat_ratio, None,
                                      context_weights, backend)
        return Refined(*torch.ops.dcam.diffusion_cam_checked(acts, grads, h, w, *per_image, context_weights,
                                                             config.grad_relu, *_config_args(config), backend))
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


# ------------------------------------------------------------------ the checked ops (compile, export)

# (the module's docstring) A value check reads values on the host and raises from Python, which a graph
# cannot hold ("Could not guard on data-dependent expression"); each op's fake kernel only allocates. Registered
# here, not in library.py: their kernels call this module, which imports library.
_CONFIG_SCHEMA = ("SymInt akd_kernel, bool akd, bool dacg, bool cba, SymInt sicd, float[] dacg_params, "
                  "float[] cba_params")
_CONFIG_NAMES = ("akd_kernel", "akd", "dacg", "cba", "sicd", "dacg_params", "cba_params")


def _config_args(config: CamConfig) -> tuple:
    """``config`` as the checked ops take it (:meth:`CamConfig.op_args`, read back by `_config_of`)."""
    o = config.op_args()
    return tuple(o[n] for n in _CONFIG_NAMES)


def _config_of(args, grad_relu: bool = True) -> CamConfig:
    return CamConfig.from_op_args(dict(zip(_CONFIG_NAMES, args)), grad_relu)


def _pool_gradients_kernel(acts, grads, h, w, grad_relu, backend):
    out = pool_gradients(acts, grads, (h, w), grad_relu, backend)
    return out.maps, out.degenerate


def _weighted_maps_kernel(acts, weights, h, w, backend):
    out = weighted_maps(acts, weights, (h, w), backend)
    return out.maps, out.degenerate


def _refine_kernel(raw, degenerate, steps, image_size, repeat_ratio, context_maps, context_weights, *rest):
    out = refine(raw, _config_of(rest[:-1]), steps, image_size, repeat_ratio, context_maps, context_weights,
                 degenerate, rest[-1])
    return tuple(getattr(out, f.name) for f in fields(out) if f.name != "degenerate")  # (the input's: aliased)


def _diffusion_cam_kernel(acts, grads, h, w, steps, image_size, repeat_ratio, context_weights, grad_relu, *rest):
    out = diffusion_cam(acts, grads, (h, w), _config_of(rest[:-1], grad_relu), steps, image_size, repeat_ratio,
                        context_weights, rest[-1])
    return tuple(getattr(out, f.name) for f in fields(out))


def _batch_tokens(by: Tensor, by_rank: int) -> tuple:
    """(B, T) of ``by``: [B,T,...] of rank ``by_rank``, or without B (a batch of one)."""
    return (by.shape[0], by.shape[1]) if by.dim() == by_rank else (1, by.shape[0])


def _maps_fake(x: Tensor, by: Tensor, by_rank: int, h, w):
    """Fake maps [B,T,h,w] and flags [B,T] of a batch given by ``by`` (:func:`_batch_tokens`)."""
    B, T = _batch_tokens(by, by_rank)
    return x.new_empty((B, T, h, w), dtype=torch.float32), x.new_empty((B, T), dtype=torch.bool)


def _stats_fake(maps: Tensor) -> tuple:
    B, T = maps.shape[:2]
    return (maps.new_empty((B, T), dtype=torch.int32), maps.new_empty((B, T), dtype=torch.int32),
            *(maps.new_empty((B, T), dtype=torch.float32) for _ in range(3)))


def _channel_weights_fake(grads, grad_relu, backend):
    return grads.new_empty((*_batch_tokens(grads, 4), grads.shape[-1]), dtype=torch.float32)


def _refine_fake(raw, *rest):
    return (raw.new_empty(raw.shape, dtype=torch.float32), *_stats_fake(raw))


def _diffusion_cam_fake(acts, grads, h, w, *rest):
    maps, degenerate = _maps_fake(acts, grads, 4, h, w)
    return (maps, *_stats_fake(maps), degenerate)


_REFINED = "(" + ", ".join(["Tensor"] * 6) + ")"
_CHECKED_OPS = (
    ("pool_gradients_checked(Tensor acts, Tensor grads, SymInt h, SymInt w, bool grad_relu, str backend) "
     "-> (Tensor, Tensor)", _pool_gradients_kernel, lambda a, g, h, w, *_: _maps_fake(a, g, 4, h, w)),
    ("channel_weights_checked(Tensor grads, bool grad_relu, str backend) -> Tensor", channel_weights,
     _channel_weights_fake),
    ("weighted_maps_checked(Tensor acts, Tensor weights, SymInt h, SymInt w, str backend) -> (Tensor, Tensor)",
     _weighted_maps_kernel, lambda a, wt, h, w, *_: _maps_fake(a, wt, 3, h, w)),
    ("refine_checked(Tensor raw, Tensor? degenerate, Tensor steps, Tensor image_size, Tensor repeat_ratio, "
     f"Tensor? context_maps, Tensor? context_weights, {_CONFIG_SCHEMA}, str backend) -> {_REFINED}",
     _refine_kernel, _refine_fake),
    ("diffusion_cam_checked(Tensor acts, Tensor grads, SymInt h, SymInt w, Tensor steps, Tensor image_size, "
     f"Tensor repeat_ratio, Tensor? context_weights, bool grad_relu, {_CONFIG_SCHEMA}, str backend) -> "
     f"{_REFINED[:-1]}, Tensor)", _diffusion_cam_kernel, _diffusion_cam_fake),
)
_CHECKED_LIB = torch.library.Library("dcam", "FRAGMENT")
for _schema, _kernel, _fake in _CHECKED_OPS:
    _name = _schema.split("(")[0]
    _CHECKED_LIB.define(_schema)
    _CHECKED_LIB.impl(_name, _kernel, "CompositeExplicitAutograd")  # every device: the eager function
    _CHECKED_LIB.impl(_name, _not_differentiable(getattr(torch.ops.dcam, _name).default), "Autograd")
    torch.library.register_fake(f"dcam::{_name}", _fake, lib=_CHECKED_LIB)


__all__ = ["RawMaps", "Refined", "pool_gradients", "channel_weights", "weighted_maps", "refine", "diffusion_cam",
           "all_finite"]
