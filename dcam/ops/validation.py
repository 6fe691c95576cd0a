"""Argument checks of the operators: every error is a :class:`dcam.InputError`
that names the argument.

The checks run before any kernel, so a kernel (reference, C++ or Triton) only
ever sees validated, contiguous tensors of the dtypes it handles.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .config import FLOAT32_MAX, CamConfig
from ..errors import InputError, NonFiniteError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def nonfinite_flag(x: Tensor) -> Tensor:
    """0-dim bool tensor on ``x``'s device: whether ``x`` holds a NaN/Inf.

    One ``aminmax`` pass and no host sync: min and max propagate NaN and an
    infinity is an extreme. ``isfinite(x).all()`` would first write a bool
    tensor as large as ``x`` (25-40x slower on CPU for a large model's
    gradients)."""
    if x.numel() == 0 or not x.is_floating_point():
        return torch.zeros((), dtype=torch.bool, device=x.device)
    lo, hi = torch.aminmax(x)
    return ~(torch.isfinite(lo) & torch.isfinite(hi))


def check_finite(name: str, x: Tensor) -> None:
    refuse_meta_check(name, x)
    if bool(nonfinite_flag(x)):
        bad = (~torch.isfinite(x)).sum().item()
        raise NonFiniteError(name, bad, "; pass check_finite=False to skip this check")
    check_float32_range(name, x)


def check_float32_range(name: str, x: Tensor) -> None:
    """float64 values past float32's range: dcam computes in float32, where they are Inf
    (1e300 gradients were "NaN/Inf values", 1e39 weights blamed on the activations)."""
    if x.dtype == torch.float64 and x.numel():
        big = float(x.detach().abs().max())
        if big > torch.finfo(torch.float32).max:
            raise InputError(f"{name}: values up to {big:.3g} are past float32's range (dcam computes in float32); "
                             "scale them down")


def refuse_meta_check(name: str, x: Tensor) -> None:
    """A tensor without values to branch on cannot be checked for NaN/Inf (the check
    failed with torch's raw errors); the caller asks for no check instead. A meta tensor
    has a shape only, a fake tensor (``FakeTensorMode``, export's tracing) the same, and
    inside ``torch.vmap`` a check would branch on the values of every batch at once."""
    what = _valueless(x)
    if what:
        raise InputError(f"{name} is {what}: nothing to check for NaN/Inf; pass check_finite=False")


def _valueless(x: Tensor) -> str:
    if x.device.type == "meta":
        return "a meta tensor (a shape without values)"
    if torch.compiler.is_exporting():  # (export's fake tensors reached torch's raw data-dependent guard error)
        return "traced by torch.export (a shape without values)"
    if torch.compiler.is_compiling():  # dynamo traces values symbolically: the check graph-breaks there
        return ""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(x):
        return "a fake tensor (a shape without values)"
    if torch._C._functorch.is_batchedtensor(x):
        return "batched by torch.vmap (the check would branch on the values of the whole batch)"
    return ""


def check_tensor(name: str, x, *, ranks: Sequence[int], float_only: bool = True) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise InputError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)})")
    if float_only and x.dtype not in FLOAT_DTYPES:
        raise InputError(f"{name} must be a floating-point tensor (float32/float16/bfloat16, or float64 computed "
                         f"in float32), got {x.dtype}")
    refuse_differentiation(name, x)
    return x


def refuse_differentiation(name: str, x: Tensor) -> None:
    """The maps are not differentiable (dcam.ops.library): under torch.func's grad, vjp, jacrev and
    jacfwd an op would be a constant with an all-zero derivative. Refused here in eager mode, with
    the argument's name; under torch.compile (dynamo cannot trace this check) each op's autograd
    kernel refuses instead."""
    if not torch.compiler.is_compiling() and torch._C._functorch.is_gradtrackingtensor(x):
        raise InputError(f"{name}: {NOT_DIFFERENTIABLE}")


#: why a derivative through dcam is refused
NOT_DIFFERENTIABLE = "dcam's maps are not differentiable; torch.func.grad/vjp/jacrev/jacfwd through them would " \
    "give zeros"


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be a bool, got {value!r}")
    return value


def check_config(config) -> CamConfig:
    if config is None:
        return CamConfig()
    if not isinstance(config, CamConfig):
        raise InputError(f"config must be a dcam.CamConfig, got {type(config).__name__}")
    return config


def check_same_device(**tensors) -> torch.device:
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devs.values()))
    for n, d in devs.items():
        if d != first:
            names = ", ".join(f"{k}={v}" for k, v in devs.items())
            raise InputError(f"all tensors must be on one device, got {names} ({n} differs)")
    return first


def check_grid(grid, n: int) -> Tuple[int, int]:
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in grid)):
        raise InputError(f"grid must be a pair of ints (h, w), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise InputError(f"grid must be positive, got {grid!r}")
    if h * w != n:
        raise InputError(f"grid {h}x{w} = {h * w} tokens does not match the image-token span of {n} tokens")
    return h, w


def _range_text(lo: float, hi: Optional[float], lo_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"


def per_image(name: str, value, B: int, device, *, lo: float, hi: Optional[float], lo_open: bool,
              check_values: bool) -> Tensor:
    """A scalar or a [B] tensor/sequence -> float32 [B] on ``device``, range-checked
    (a tensor's values only when ``check_values``: that costs a host sync)."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number or a [B] tensor, got a bool")
    rng = _range_text(lo, hi, lo_open)
    if isinstance(value, numbers.Real):
        v = float(value)
        below = v <= lo if lo_open else v < lo
        if not (v == v and abs(v) != float("inf")) or below or (hi is not None and v > hi):
            raise InputError(f"{name} must lie in {rng}, got {value!r}")
        if abs(v) > FLOAT32_MAX:  # the kernels take float32: torch.full raised an overflow RuntimeError
            raise InputError(f"{name} must be at most {FLOAT32_MAX:.4g} (float32), got {value!r}")
        return torch.full((B,), v, dtype=torch.float32, device=device)
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{name} must be a number or a [B] tensor, got {type(value).__name__}") from exc
    if value.is_complex() or value.dtype == torch.bool:
        raise InputError(f"{name} must be real-valued, got {value.dtype}")
    refuse_differentiation(name, value)  # (repeat_ratio moves the maps: its derivative is not zero)
    if value.device.type == "meta" and torch.device(device).type != "meta":
        raise InputError(f"{name} is a meta tensor (a shape without values) but the maps are on {device}")
    if value.dim() == 0:
        value = value.expand(B)
    if value.dim() != 1 or value.shape[0] != B:
        raise InputError(f"{name} must be a scalar or have shape [{B}] (one per image), got {tuple(value.shape)}")
    if check_values and value.dtype == torch.float64 and bool((value.abs() > FLOAT32_MAX).any()):
        # finite here, Inf once float32 (the message used to count them as NaN/Inf)
        raise InputError(f"{name} must be at most {FLOAT32_MAX:.4g} (float32), got {value.tolist()}")
    t = value.to(device=device, dtype=torch.float32).contiguous()
    if check_values:
        check_finite(name, t)
        below = (t <= lo) if lo_open else (t < lo)
        if bool(below.any()) or (hi is not None and bool((t > hi).any())):
            raise InputError(f"{name} must lie in {rng}, got {t.tolist()}")
    return t


def compute_dtype(x: Tensor) -> Tensor:
    """float64 has no kernel; it is accumulated in float32 anyway."""
    return x.float() if x.dtype == torch.float64 else x


def validate_pool(acts, grads, grid, check_values: bool):
    """(acts [B,N,D], grads [B,T,N,D], h, w, device), contiguous, batched."""
    acts = check_tensor("acts", acts, ranks=(2, 3))
    grads = check_tensor("grads", grads, ranks=(3, 4))
    if acts.dim() == 2:
        if grads.dim() != 3:
            raise InputError(f"grads must be [T,N,D] when acts is [N,D], got shape {tuple(grads.shape)}")
        acts, grads = acts.unsqueeze(0), grads.unsqueeze(0)
    elif grads.dim() != 4:
        raise InputError(f"grads must be [B,T,N,D] when acts is [B,N,D], got shape {tuple(grads.shape)}")
    B, N, D = acts.shape
    if grads.shape[0] != B:
        raise InputError(f"grads has batch size {grads.shape[0]} but acts has {B}")
    if grads.shape[2] != N:
        raise InputError(f"grads has {grads.shape[2]} image tokens (dim 2) but acts has {N}")
    if grads.shape[3] != D:
        raise InputError(f"grads has hidden size {grads.shape[3]} but acts has {D}")
    if acts.dtype != grads.dtype:
        raise InputError(f"acts and grads must share one dtype, got acts {acts.dtype} and grads {grads.dtype}")
    device = check_same_device(acts=acts, grads=grads)
    h, w = check_grid(grid, N)
    if check_values:
        check_finite("acts", acts)  # the gradients are checked by the pooling kernel itself (check_grads)
        refuse_meta_check("grads", grads)
        check_float32_range("grads", grads)  # (in float32 the kernel would call them Inf)
    return compute_dtype(acts).contiguous(), compute_dtype(grads).contiguous(), h, w, device


def validate_grads(grads, check_values: bool) -> Tensor:
    """grads [B,T,N,D] ([T,N,D]: a batch of one), contiguous, for the channel weights alone
    (their values are checked by the pass itself)."""
    grads = check_tensor("grads", grads, ranks=(3, 4))
    if check_values:
        refuse_meta_check("grads", grads)
        check_float32_range("grads", grads)
    return compute_dtype(grads if grads.dim() == 4 else grads.unsqueeze(0)).contiguous()


def validate_weighted(acts, weights, grid, check_values: bool):
    """(acts [B,N,D], weights float32 [B,T,D], h, w, device), contiguous; [N,D] and
    [T,D] are a batch of one (so [N,D] acts take the [1,T,D] weights of `channel_weights`)."""
    acts = check_tensor("acts", acts, ranks=(2, 3))
    weights = check_tensor("weights", weights, ranks=(2, 3))
    acts = acts if acts.dim() == 3 else acts.unsqueeze(0)
    weights = weights if weights.dim() == 3 else weights.unsqueeze(0)
    if weights.shape[0] != acts.shape[0]:
        raise InputError(f"weights has batch size {weights.shape[0]} but acts has {acts.shape[0]}")
    if weights.shape[2] != acts.shape[2]:
        raise InputError(f"weights has hidden size {weights.shape[2]} but acts has {acts.shape[2]}")
    device = check_same_device(acts=acts, weights=weights)
    h, w = check_grid(grid, acts.shape[1])
    if check_values:
        check_finite("acts", acts)
        check_finite("weights", weights)
    return compute_dtype(acts).contiguous(), weights.float().contiguous(), h, w, device


def check_raw_values(raw: Tensor) -> None:
    """Raw maps are min-max normalised pooled maps: finite, in [0, 1]. The
    refinement's clip (section 5) and thresholds assume that range, so a map
    outside it is refused rather than silently clipped."""
    check_finite("raw_maps", raw)
    lo, hi = torch.aminmax(raw.detach())  # (float() of a tensor that requires grad warns)
    if float(lo) < 0.0 or float(hi) > 1.0:
        raise InputError(f"raw_maps must lie in [0, 1] (min-max normalised pooled maps), got values in "
                         f"[{float(lo)!r}, {float(hi)!r}]")


def check_degenerate(degenerate, raw: Tensor) -> Tensor:
    B, T = raw.shape[:2]
    if degenerate is None:
        flat = raw.reshape(B, T, -1)
        return ~(flat.amax(dim=2) > flat.amin(dim=2))
    if not isinstance(degenerate, Tensor) or degenerate.dtype != torch.bool:
        raise InputError("degenerate must be a bool tensor [B,T]")
    if tuple(degenerate.shape) != (B, T):
        raise InputError(f"degenerate must have shape {(B, T)}, got {tuple(degenerate.shape)}")
    return degenerate.contiguous()


def check_context(config: CamConfig, raw: Tensor, context_maps, context_weights, check_values: bool):
    """(context_maps, context_weights) for the refine op: both None unless sicd="context"."""
    B, T, h, w = raw.shape
    if config.sicd != "context":
        if context_weights is not None or context_maps is not None:
            raise InputError(f"context_weights/context_maps are only used with config.sicd='context' "
                             f"(config.sicd={config.sicd!r})")
        return None, None
    if context_maps is not None:
        context_maps = check_tensor("context_maps", context_maps, ranks=(4,))
        if tuple(context_maps.shape) != (B, T, h, w):
            raise InputError(f"context_maps must have the shape of raw_maps {(B, T, h, w)}, "
                             f"got {tuple(context_maps.shape)}")
        if check_values:  # maps as raw_maps are (min-max normalised): 3e38 ones overflowed SICD into NaN maps
            check_finite("context_maps", context_maps)
            lo, hi = torch.aminmax(context_maps.detach())
            if float(lo) < 0.0 or float(hi) > 1.0:
                raise InputError(f"context_maps must lie in [0, 1] as raw_maps do, got values in "
                                 f"[{float(lo)!r}, {float(hi)!r}]")
        context_maps = context_maps.float().contiguous()
    if context_weights is None:
        raise InputError("config.sicd='context' needs context_weights [B,T,T]")
    context_weights = check_tensor("context_weights", context_weights, ranks=(3,))
    if tuple(context_weights.shape) != (B, T, T):
        raise InputError(f"context_weights must have shape {(B, T, T)}, got {tuple(context_weights.shape)}")
    if check_values:
        check_finite("context_weights", context_weights)
        if bool((context_weights < 0).any()):
            raise InputError("context_weights must be non-negative")
        if not bool(torch.isfinite(context_weights.float().sum(-1)).all()):  # normalised by their row sums
            raise InputError("context_weights: a row sums past float32's range; scale them down")
        on_diagonal = int(torch.diagonal(context_weights, dim1=1, dim2=2).ne(0).sum())
        if on_diagonal:  # SICD section 6: W[t, t] = 0, or a word's own raw map would count as its interference
            raise InputError(f"context_weights must have a zero diagonal (a word is no context of itself), "
                             f"got {on_diagonal} non-zero diagonal value(s)")
    # None stays None: every kernel then reads the raw maps with their degenerate flags (a degenerate one is
    # all zeros there); handed the raw maps as explicit context, they took its values as they are
    return context_maps, context_weights.float().contiguous()
