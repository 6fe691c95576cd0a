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


def check_finite(name: str, x: Tensor, forced: bool = False) -> None:
    """``forced``: checked although the caller passed check_finite=False (the C++ refine
    kernels refuse NaN/Inf there), so the usual hint to pass it would be wrong."""
    refuse_meta_check(name, x)
    if bool(nonfinite_flag(x)):
        bad = (~torch.isfinite(x)).sum().item()
        hint = (f"; the C++ kernel cannot take NaN/Inf in {name} whatever check_finite says" if forced
                else "; pass check_finite=False to skip this check")
        raise NonFiniteError(name, bad, hint)
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


def check_tensor(name: str, x, *, ranks: Sequence[int], float_only: bool = True, layout: str = "",
                 empty_ok: bool = False) -> Tensor:
    """``x`` a tensor of one of ``ranks`` (``layout``: the one rank's dimensions, named in the error),
    not empty unless ``empty_ok`` (a direct op call: empty outputs, :func:`check_op_args`)."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        want = layout or (" or ".join(str(r) for r in ranks) + " dimensions")
        raise InputError(f"{name} must {'be' if layout else 'have'} {want}, got shape {tuple(x.shape)}")
    if not empty_ok and x.numel() == 0:
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
        if d != first:  # (one pass, no message built unless one differs: the ops run this on every call)
            names = ", ".join(f"{k}={v}" for k, v in devs.items())
            raise InputError(f"all tensors must be on one device, got {names} ({n} differs)")
    return first


def check_grid(grid, n: int, name: str = "grid") -> Tuple[int, int]:
    """(h, w) ints >= 1 with h * w == n (a traced op's SymInts too: the check then guards on them)."""
    if type(grid) is tuple and len(grid) == 2 and type(grid[0]) is int and type(grid[1]) is int:
        h, w = grid  # (the ops' case, without the isinstance checks of numbers.Integral: ~2 us a call)
    elif (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or not all(isinstance(v, (numbers.Integral, torch.SymInt)) and not isinstance(v, bool) for v in grid)):
        raise InputError(f"{name} must be a pair of ints (h, w), got {grid!r}")
    else:
        h, w = (v if isinstance(v, torch.SymInt) else int(v) for v in grid)
    if h < 1 or w < 1:
        raise InputError(f"{name} must be positive, got {tuple(grid)!r}")
    if h * w != n:
        raise InputError(f"{name} {h}x{w} = {h * w} tokens does not match the image-token span of {n} tokens")
    return h, w


def _range_text(lo: float, hi: Optional[float], lo_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"


def per_image(name: str, value, B: int, device, *, lo: float, hi: Optional[float], lo_open: bool,
              check_values: bool, forced: bool = False) -> Tensor:
    """A scalar or a [B] tensor/sequence -> float32 [B] on ``device``, range-checked
    (a tensor's values only when ``check_values``: that costs a host sync; ``forced``: see check_finite)."""
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
        check_finite(name, t, forced)
        below = (t <= lo) if lo_open else (t < lo)
        if bool(below.any()) or (hi is not None and bool((t > hi).any())):
            raise InputError(f"{name} must lie in {rng}, got {t.tolist()}")
    return t


def compute_dtype(x: Tensor) -> Tensor:
    """float64 has no kernel; it is accumulated in float32 anyway."""
    return x.float() if x.dtype == torch.float64 else x


def check_pool_shapes(acts: Tensor, grads: Tensor) -> torch.device:
    """acts [B,N,D] and grads [B,T,N,D] agree (sizes, dtype, device): their device."""
    B, N, D = acts.shape
    if grads.shape[0] != B:
        raise InputError(f"grads has batch size {grads.shape[0]} but acts has {B}")
    if grads.shape[2] != N:
        raise InputError(f"grads has {grads.shape[2]} image tokens (dim 2) but acts has {N}")
    if grads.shape[3] != D:
        raise InputError(f"grads has hidden size {grads.shape[3]} but acts has {D}")
    if acts.dtype != grads.dtype:
        raise InputError(f"acts and grads must share one dtype, got acts {acts.dtype} and grads {grads.dtype}")
    return check_same_device(acts=acts, grads=grads)


def check_weighted_shapes(acts: Tensor, weights: Tensor) -> torch.device:
    """acts [B,N,D] and weights [B,T,D] agree (sizes, device): their device."""
    if weights.shape[0] != acts.shape[0]:
        raise InputError(f"weights has batch size {weights.shape[0]} but acts has {acts.shape[0]}")
    if weights.shape[2] != acts.shape[2]:
        raise InputError(f"weights has hidden size {weights.shape[2]} but acts has {acts.shape[2]}")
    return check_same_device(acts=acts, weights=weights)


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
    device = check_pool_shapes(acts, grads)
    h, w = check_grid(grid, acts.shape[1])
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
    device = check_weighted_shapes(acts, weights)
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


def check_context(config: CamConfig, raw: Tensor, context_maps, context_weights, check_values: bool,
                  empty_ok: bool = False, forced: bool = False):
    """(context_maps, context_weights) for the refine op: both None unless sicd="context"."""
    B, T, h, w = raw.shape
    if config.sicd != "context":
        if context_weights is not None or context_maps is not None:
            raise InputError(f"context_weights/context_maps are only used with config.sicd='context' "
                             f"(config.sicd={config.sicd!r})")
        return None, None
    if context_maps is not None:
        context_maps = check_tensor("context_maps", context_maps, ranks=(4,), empty_ok=empty_ok)
        if tuple(context_maps.shape) != (B, T, h, w):
            raise InputError(f"context_maps must have the shape of raw_maps {(B, T, h, w)}, "
                             f"got {tuple(context_maps.shape)}")
        if check_values:  # maps as raw_maps are (min-max normalised): 3e38 ones overflowed SICD into NaN maps
            check_finite("context_maps", context_maps, forced)
            lo, hi = torch.aminmax(context_maps.detach())
            if float(lo) < 0.0 or float(hi) > 1.0:
                raise InputError(f"context_maps must lie in [0, 1] as raw_maps do, got values in "
                                 f"[{float(lo)!r}, {float(hi)!r}]")
        context_maps = context_maps.float().contiguous()
    if context_weights is None:
        raise InputError("config.sicd='context' needs context_weights [B,T,T]")
    context_weights = check_tensor("context_weights", context_weights, ranks=(3,), empty_ok=empty_ok)
    if tuple(context_weights.shape) != (B, T, T):
        raise InputError(f"context_weights must have shape {(B, T, T)}, got {tuple(context_weights.shape)}")
    if check_values:
        check_finite("context_weights", context_weights, forced)
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


# ------------------------------------------------------------------ the registered ops' own checks

# A direct call of torch.ops.dcam.<op> (a user's compiled toolchain: README, "Dispatch") skips the public
# functions above; every kernel of each op (reference, C++, Triton) and its fake kernel run these checks of
# what needs no values (ranks, sizes, dtypes, devices, ints, the refine config), reusing the public ones with
# the op's name in front. An empty dimension is accepted where the outputs are then empty (no image, no word,
# channel weights of no channel: the op returns them without a kernel); a map or weight that would be a mean
# over nothing (D = 0 channels, N = 0 tokens) is refused as `dcam.pool_gradients` refuses such tensors.

#: the C++ kernels index with 32-bit offsets (csrc: dcam_pool_* refuse D > 2**24, dcam_refine
#: h * w >= 2**27); the PyTorch reference and Triton have no such limit
CPP_MAX_HIDDEN = 2 ** 24
CPP_MAX_CELLS = 2 ** 27 - 1


def _hidden_size(name: str, x: Tensor, maps: int) -> None:
    if x.shape[-1] == 0 and maps:
        raise InputError(f"{name} has hidden size 0: a map is a mean over the D channels (D >= 1)")


def _pool_op(acts, grads, h, w, grad_relu, check_grads) -> None:
    acts = check_tensor("acts", acts, ranks=(3,), layout="[B, N, D]", empty_ok=True)
    grads = check_tensor("grads", grads, ranks=(4,), layout="[B, T, N, D]", empty_ok=True)
    check_pool_shapes(acts, grads)
    _hidden_size("acts", acts, grads.shape[0] * grads.shape[1])
    check_grid((h, w), acts.shape[1], name="(h, w)")


def _channel_weights_op(grads, grad_relu, check_grads) -> None:
    grads = check_tensor("grads", grads, ranks=(4,), layout="[B, T, N, D]", empty_ok=True)
    B, T, N, D = grads.shape
    if N == 0 and B * T * D:
        raise InputError(f"grads has no image tokens (shape {tuple(grads.shape)}): a channel weight is a mean "
                         "over the N tokens (N >= 1)")


def _weighted_maps_op(acts, weights, h, w) -> None:
    acts = check_tensor("acts", acts, ranks=(3,), layout="[B, N, D]", empty_ok=True)
    weights = check_tensor("weights", weights, ranks=(3,), layout="[B, T, D]", empty_ok=True)
    check_weighted_shapes(acts, weights)
    _hidden_size("acts", acts, weights.shape[0] * weights.shape[1])
    check_grid((h, w), acts.shape[1], name="(h, w)")


def _per_image_tensor(name: str, x, B: int) -> None:
    # (integer steps and image sizes are numbers as good as floats: the kernels read them as such, and
    # dcam.refine takes them; a bool or complex tensor is no count)
    x = check_tensor(name, x, ranks=(1,), layout=f"[B] = [{B}] (one per image)", empty_ok=True, float_only=False)
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(f"{name} must be a tensor of real numbers, got {x.dtype}")
    if x.shape[0] != B:
        raise InputError(f"{name} must be [B] = [{B}] (one per image), got shape {tuple(x.shape)}")


def _refine_op(raw, degenerate, steps, image_size, repeat_ratio, context_maps, context_weights,
               akd_kernel, akd, dacg, cba, sicd, dacg_params, cba_params) -> None:
    raw = check_tensor("raw", raw, ranks=(4,), layout="[B, T, h, w]", empty_ok=True)
    B, T, h, w = raw.shape
    if B * T and not h * w:
        raise InputError(f"raw has no pixels (shape {tuple(raw.shape)}): a map needs h, w >= 1")
    config = CamConfig.from_op_args(dict(akd_kernel=akd_kernel, akd=akd, dacg=dacg, cba=cba, sicd=sicd,
                                         dacg_params=dacg_params, cba_params=cba_params))
    check_degenerate(degenerate, raw)
    for name, x in (("steps", steps), ("image_size", image_size), ("repeat_ratio", repeat_ratio)):
        _per_image_tensor(name, x, B)
    check_context(config, raw, context_maps, context_weights, False, empty_ok=True)
    check_same_device(raw=raw, degenerate=degenerate, steps=steps, image_size=image_size,
                      repeat_ratio=repeat_ratio, context_maps=context_maps, context_weights=context_weights)


def _cpp_sizes(op: str, args: tuple) -> None:
    """The sizes the C++ kernels take (its "invalid size argument" was a ValueError naming none)."""
    if op == "refine":
        cells = args[0].shape[2] * args[0].shape[3]
        if cells > CPP_MAX_CELLS:
            raise InputError(f"raw: {cells} cells per map is past the C++ backend's 2**27 - 1")
    elif args[0].shape[-1] > CPP_MAX_HIDDEN:
        name = "grads" if op == "channel_weights" else "acts"
        raise InputError(f"{name}: hidden size {args[0].shape[-1]} is past the C++ backend's 2**24")


_OP_CHECKS = {"pool_gradients": _pool_op, "channel_weights": _channel_weights_op,
              "weighted_maps": _weighted_maps_op, "refine": _refine_op}

#: the refine op's argument that carries each CamConfig field (CamConfig.op_args), for its messages
_OP_ARGS_OF_FIELDS = (
    ("CamConfig.akd_kernel must be 'adaptive'", "akd_kernel must be 0 (adaptive)"),
    ("CamConfig.akd_kernel", "akd_kernel"), ("CamConfig.sicd", "sicd"),
    ("CamConfig.dacg_std", "dacg_params[0] (dacg_std)"), ("CamConfig.dacg_mean_high", "dacg_params[1] (dacg_mean_high)"),
    ("CamConfig.dacg_mean_low", "dacg_params[2] (dacg_mean_low)"),
    ("CamConfig.dacg_percentiles", "dacg_params[3:7] (dacg_percentiles)"),
    ("CamConfig.dacg_sigma", "dacg_params[7] (dacg_sigma)"), ("CamConfig.cba_weights", "cba_params[0:4] (cba_weights)"),
    ("CamConfig.cba_floor", "cba_params[4] (cba_floor)"), ("op args: ", ""),
    (" (config.sicd='off')", ", not sicd=0"), (" (config.sicd='reference')", ", not sicd=1"),
    ("config.sicd='context'", "sicd=2 (context)"))


def check_cpp_sizes(op: str, args: tuple) -> None:
    """The sizes the C++ kernel of op ``op`` takes (called where it runs), as `check_op_args` says them."""
    check_op_args(op, args, _cpp_sizes)


def check_op_args(op: str, args: tuple, check=None) -> None:
    """The checks of op ``op`` (a key of dcam.ops.library.OPS) on its arguments ``args``, as one
    InputError line "dcam::<op>: <argument> ..." (``check(op, args)``: others instead)."""
    try:
        if check is None:
            _OP_CHECKS[op](*args)
        else:
            check(op, args)
    except InputError as exc:
        text = str(exc)
        if op == "refine":
            for old, new in _OP_ARGS_OF_FIELDS:
                text = text.replace(old, new)
        raise InputError(f"dcam::{op}: {text}") from None
