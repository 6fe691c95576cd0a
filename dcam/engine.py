"""The public engine API: `pool_gradients`, `refine`, `diffusion_cam`.

These functions validate their inputs (every error names the offending
argument), normalise scalars to per-image tensors and hand the work to one
backend:

    backend="auto"    the registered ops (`dcam._ops`): the dispatcher picks
                      Triton for CUDA tensors, C++ for CPU tensors and the
                      PyTorch reference for anything else
    backend="torch"   the PyTorch reference (`dcam.reference`), any device
    backend="cpp"     the C++ extension; CPU tensors only
    backend="triton"  the Triton kernels; CUDA tensors, or CPU tensors when
                      TRITON_INTERPRET=1 (the interpreter, for testing)
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _ops, reference
from .backends import cpp_backend, triton_backend
from .config import CamConfig

BACKENDS = ("auto", "torch", "cpp", "triton")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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


def available_backends() -> List[str]:
    """Backends usable in this process (explicit names for `backend=`)."""
    names = ["torch"]
    if cpp_backend.is_available():
        names.append("cpp")
    if triton_backend.installed() and (torch.cuda.is_available() or triton_backend.interpreting()):
        if triton_backend.is_available():
            names.append("triton")
    return names


# ------------------------------------------------------------------ validation helpers

def _check_tensor(name: str, x, *, ranks: Sequence[int], float_only: bool = True) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if float_only and x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float32/float16/bfloat16), got {x.dtype}")
    return x


def all_finite(x: Tensor) -> bool:
    """Whether ``x`` holds no NaN/Inf (:func:`dcam.reference.nonfinite_flag`:
    one ``aminmax`` pass; ``isfinite(x).all()`` first writes a bool tensor as
    large as ``x``, 25-40x slower on CPU for the gradients of a large model)."""
    return not bool(reference.nonfinite_flag(x))


def _check_finite(name: str, x: Tensor) -> None:
    if not all_finite(x):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); pass check_finite=False to skip this check")


def _check_same_device(**tensors) -> torch.device:
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devs.values()))
    for n, d in devs.items():
        if d != first:
            names = ", ".join(f"{k}={v}" for k, v in devs.items())
            raise ValueError(f"all tensors must be on one device, got {names} ({n} differs)")
    return first


def _check_grid(grid, n: int) -> Tuple[int, int]:
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in grid)):
        raise TypeError(f"grid must be a pair of ints (h, w), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    if h * w != n:
        raise ValueError(f"grid {h}x{w} = {h * w} tokens does not match the image-token span of {n} tokens")
    return h, w


def _per_image(name: str, value, B: int, device, *, lo: float, hi: Optional[float], lo_open: bool,
               check_finite: bool) -> Tensor:
    """A scalar or a [B] tensor/sequence -> float32 [B] on `device`, range-checked."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a [B] tensor, got a bool")
    rng = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if not (v == v and abs(v) != float("inf")) or (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            raise ValueError(f"{name} must lie in {rng}, got {value!r}")
        return torch.full((B,), v, dtype=torch.float32, device=device)
    else:
        if not isinstance(value, Tensor):
            try:
                value = torch.as_tensor(value, dtype=torch.float32)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name} must be a number or a [B] tensor, got {type(value).__name__}") from exc
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be real-valued, got {value.dtype}")
        if value.dim() == 0:
            value = value.expand(B)
        if value.dim() != 1 or value.shape[0] != B:
            raise ValueError(f"{name} must be a scalar or have shape [{B}] (one per image), got {tuple(value.shape)}")
        t = value.to(device=device, dtype=torch.float32).contiguous()
    if check_finite:
        _check_finite(name, t)
        below = (t <= lo) if lo_open else (t < lo)
        if bool(below.any()) or (hi is not None and bool((t > hi).any())):
            raise ValueError(f"{name} must lie in {rng}, got {t.tolist()}")
    return t


def _check_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' needs CPU tensors, got tensors on {device}")
        if not cpp_backend.is_available():
            raise RuntimeError(f"backend='cpp' is not available: {cpp_backend.unavailable_reason()}")
    if backend == "triton":
        if not triton_backend.installed():
            raise RuntimeError("backend='triton' needs the triton package, which is not installed")
        if device.type != "cuda" and not (device.type == "cpu" and triton_backend.interpreting()):
            raise ValueError(f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
                             f"got tensors on {device}")
        if not triton_backend.is_available():
            raise RuntimeError(f"backend='triton' is not available: {triton_backend.unavailable_reason()}")
    return backend


def _as_compute_dtype(x: Tensor) -> Tensor:
    # float64 has no kernel; it is accumulated in float32 anyway
    return x.float() if x.dtype == torch.float64 else x


# ------------------------------------------------------------------ pooling

def _validate_pool(acts, grads, grid, check_finite):
    acts = _check_tensor("acts", acts, ranks=(2, 3))
    grads = _check_tensor("grads", grads, ranks=(3, 4))
    if acts.dim() == 2:
        acts = acts.unsqueeze(0)
        if grads.dim() != 3:
            raise ValueError(f"grads must be [T,N,D] when acts is [N,D], got shape {tuple(grads.shape)}")
        grads = grads.unsqueeze(0)
    elif grads.dim() != 4:
        raise ValueError(f"grads must be [B,T,N,D] when acts is [B,N,D], got shape {tuple(grads.shape)}")
    B, N, D = acts.shape
    if grads.shape[0] != B:
        raise ValueError(f"grads has batch size {grads.shape[0]} but acts has {B}")
    if grads.shape[2] != N:
        raise ValueError(f"grads has {grads.shape[2]} image tokens (dim 2) but acts has {N}")
    if grads.shape[3] != D:
        raise ValueError(f"grads has hidden size {grads.shape[3]} but acts has {D}")
    if acts.dtype != grads.dtype:
        raise TypeError(f"acts and grads must share one dtype, got acts {acts.dtype} and grads {grads.dtype}")
    device = _check_same_device(acts=acts, grads=grads)
    h, w = _check_grid(grid, N)
    if check_finite:
        _check_finite("acts", acts)  # the gradients are checked by the pooling op itself (check_grads)
    return _as_compute_dtype(acts).contiguous(), _as_compute_dtype(grads).contiguous(), h, w, device


def _run_pool(acts, grads, h, w, grad_relu, backend, check_grads):
    """(maps, degenerate, grads_nonfinite): see `dcam._ops`."""
    if backend == "auto":
        return _ops.pool_gradients_op(acts, grads, h, w, grad_relu, check_grads)
    if backend == "torch":
        return reference.pool_gradients_reference_checked(acts, grads, h, w, grad_relu, check_grads)
    if backend == "cpp":
        return cpp_backend.module().pool_gradients_cpp(acts, grads, h, w, grad_relu, check_grads)
    return triton_backend.module().pool_gradients_triton(acts, grads, h, w, grad_relu, check_grads)


def _raise_if_grads_nonfinite(grads: Tensor, flag: Tensor) -> None:
    """After a checked pooling pass: the error of `_check_finite` when the pass
    met a NaN/Inf (counted exactly here, on the error path only). A flag
    raised by finite gradients (a float32 partial sum of the C++ pass overflowed
    on |g| > ~4e37) is no error: such input passed the check before too."""
    if bool(flag):
        _check_finite("grads", grads)


def pool_gradients(acts: Tensor, grads: Tensor, grid: Tuple[int, int], grad_relu: bool = True,
                   backend: str = "auto", check_finite: bool = True) -> RawMaps:
    """Gradient-weighted pooling of image-token states into one map per token.

    acts: [B,N,D] (or [N,D]) hooked hidden states of the image-token span.
    grads: [B,T,N,D] (or [T,N,D]) gradient of each explained token's score
        with respect to `acts`. float32/float16/bfloat16 (accumulated in float32).
    grid: (h, w) with h*w == N (raster order).
    Returns RawMaps(maps float32 [B,T,h,w] min-max normalised, degenerate bool [B,T]).
    """
    if not isinstance(grad_relu, bool):
        raise TypeError(f"grad_relu must be a bool, got {grad_relu!r}")
    acts, grads, h, w, device = _validate_pool(acts, grads, grid, check_finite)
    backend = _check_backend(backend, device)
    maps, degenerate, bad = _run_pool(acts, grads, h, w, grad_relu, backend, check_finite)
    if check_finite:
        _raise_if_grads_nonfinite(grads, bad)
    return RawMaps(maps, degenerate)


# ------------------------------------------------------------------ refinement

def _validate_refine(raw_maps, degenerate, config, steps, image_size, repeat_ratio, context_maps,
                     context_weights, check_finite, raw_from_pool: bool = False):
    if isinstance(raw_maps, RawMaps):
        if degenerate is None:
            degenerate = raw_maps.degenerate
        raw_maps = raw_maps.maps
    raw = _check_tensor("raw_maps", raw_maps, ranks=(4,))
    B, T, h, w = raw.shape
    if config is None:
        config = CamConfig()
    if not isinstance(config, CamConfig):
        raise TypeError(f"config must be a dcam.CamConfig, got {type(config).__name__}")
    device = raw.device
    if check_finite and not raw_from_pool:  # maps pooled from checked inputs are finite by construction
        _check_finite("raw_maps", raw)
    raw = raw.float().contiguous()
    if degenerate is None:
        flat = raw.reshape(B, T, -1)
        degenerate = ~(flat.amax(dim=2) > flat.amin(dim=2))
    else:
        if not isinstance(degenerate, Tensor) or degenerate.dtype != torch.bool:
            raise TypeError("degenerate must be a bool tensor [B,T]")
        if tuple(degenerate.shape) != (B, T):
            raise ValueError(f"degenerate must have shape {(B, T)}, got {tuple(degenerate.shape)}")
    steps_t = _per_image("steps", steps, B, device, lo=0.0, hi=None, lo_open=True, check_finite=check_finite)
    size_t = _per_image("image_size", image_size, B, device, lo=0.0, hi=None, lo_open=True,
                        check_finite=check_finite)
    rho_t = _per_image("repeat_ratio", repeat_ratio, B, device, lo=0.0, hi=1.0, lo_open=False,
                       check_finite=check_finite)
    if context_maps is not None:
        context_maps = _check_tensor("context_maps", context_maps, ranks=(4,))
        if tuple(context_maps.shape) != (B, T, h, w):
            raise ValueError(f"context_maps must have the shape of raw_maps {(B, T, h, w)}, "
                             f"got {tuple(context_maps.shape)}")
        if check_finite:
            _check_finite("context_maps", context_maps)
        context_maps = context_maps.float().contiguous()
    if config.sicd == "context":
        if context_weights is None:
            raise ValueError("config.sicd='context' needs context_weights [B,T,T]")
        context_weights = _check_tensor("context_weights", context_weights, ranks=(3,))
        if tuple(context_weights.shape) != (B, T, T):
            raise ValueError(f"context_weights must have shape {(B, T, T)}, got {tuple(context_weights.shape)}")
        if check_finite:
            _check_finite("context_weights", context_weights)
            if bool((context_weights < 0).any()):
                raise ValueError("context_weights must be non-negative")
        context_weights = context_weights.float().contiguous()
        if context_maps is None:
            context_maps = raw
    elif context_weights is not None or context_maps is not None:
        raise ValueError(f"context_weights/context_maps are only used with config.sicd='context' "
                         f"(config.sicd={config.sicd!r})")
    _check_same_device(raw_maps=raw, degenerate=degenerate, context_maps=context_maps,
                       context_weights=context_weights)
    return raw, degenerate.contiguous(), config, steps_t, size_t, rho_t, context_maps, context_weights


def _run_refine(args: tuple, backend: str):
    if backend == "auto":
        return _ops.refine_op(*args)
    if backend == "torch":
        return reference.refine_reference(*args)
    if backend == "cpp":
        return cpp_backend.module().refine_cpp(*args)
    return triton_backend.module().refine_triton(*args)


def _refine_validated(raw, degenerate, config, steps_t, size_t, rho_t, context_maps, context_weights, backend):
    o = config.op_args()
    args = (raw, degenerate, steps_t, size_t, rho_t, context_maps, context_weights,
            o["akd_kernel"], o["akd"], o["dacg"], o["cba"], o["sicd"], o["dacg_params"], o["cba_params"])
    maps, ksize, strategy, dacg_thr, cba_thr, alpha = _run_refine(args, backend)
    return Refined(maps, ksize, strategy, dacg_thr, cba_thr, alpha, degenerate)


def refine(raw_maps: Union[Tensor, RawMaps], config: Optional[CamConfig] = None, steps=64, image_size=512,
           repeat_ratio=0.0, context_maps: Optional[Tensor] = None, context_weights: Optional[Tensor] = None,
           degenerate: Optional[Tensor] = None, backend: str = "auto", check_finite: bool = True) -> Refined:
    """AKD, DACG, CBA, clip/normalise and SICD on a batch of raw maps.

    raw_maps: [B,T,h,w] (or a RawMaps, whose degenerate flags are then used).
    steps: denoising steps of the generation; image_size: height of the
    input image in pixels; repeat_ratio: the response's repeat ratio in [0,1].
    Each a scalar or a per-image [B] tensor.
    context_weights: [B,T,T] non-negative, required by sicd="context";
    context_maps default to the raw maps.
    degenerate: bool [B,T]; default: maps that are constant.
    """
    v = _validate_refine(raw_maps, degenerate, config, steps, image_size, repeat_ratio, context_maps,
                         context_weights, check_finite)
    backend = _check_backend(backend, v[0].device)
    return _refine_validated(*v, backend)


def diffusion_cam(acts: Tensor, grads: Tensor, grid: Tuple[int, int], config: Optional[CamConfig] = None,
                  steps=64, image_size=512, repeat_ratio=0.0, context_weights: Optional[Tensor] = None,
                  backend: str = "auto", check_finite: bool = True) -> Refined:
    """Pool and refine in one call; the same result as `refine(pool_gradients(...))`.
    No host synchronisation happens between the two stages on the GPU path:
    the gradients' NaN/Inf flag of the pooling pass is read once at the end
    (with check_finite=False, nothing synchronises at all)."""
    if config is None:
        config = CamConfig()
    if not isinstance(config, CamConfig):
        raise TypeError(f"config must be a dcam.CamConfig, got {type(config).__name__}")
    acts, grads, h, w, device = _validate_pool(acts, grads, grid, check_finite)
    backend = _check_backend(backend, device)
    raw, degenerate, bad = _run_pool(acts, grads, h, w, config.grad_relu, backend, check_finite)
    v = _validate_refine(raw, degenerate, config, steps, image_size, repeat_ratio, None, context_weights,
                         check_finite=check_finite, raw_from_pool=True)
    out = _refine_validated(*v, backend)
    if check_finite:
        _raise_if_grads_nonfinite(grads, bad)
    return out
