"""The operators, declared once with ``torch.library``, one kernel per device.

    dcam::pool_gradients(acts, grads, h, w, grad_relu, check_grads)
        -> (maps, degenerate, grads_nonfinite)
    dcam::channel_weights(grads, grad_relu, check_grads) -> (weights, grads_nonfinite)
    dcam::weighted_maps(acts, weights, h, w) -> (maps, degenerate)
    dcam::refine(raw, degenerate, steps, image_size, repeat_ratio, context_maps,
                 context_weights, akd_kernel, akd, dacg, cba, sicd, dacg_params, cba_params)
        -> (maps, kernel_size, dacg_strategy, dacg_threshold, cba_threshold, sicd_alpha)

Layout of bitsandbytes' ``_ops.py`` + ``backends/<device>``: each op is
defined once in the ``dcam`` library (``torch.library.Library``) with the
PyTorch reference as its default body (so every device without a kernel of
its own, MPS or XPU, runs the reference), a
fake kernel that only allocates (shape propagation for ``torch.compile`` never
runs data-dependent code), and one kernel per device registered against it:

* ``cpu``: the C++ backend (``dcam._C``); the reference, with one warning,
  when the extension is not built;
* ``cuda``: the Triton kernels (:mod:`dcam.ops.triton_launch`, imported on
  the first CUDA call so that ``import dcam`` stays light); the reference when
  triton is not installed.

The dispatcher picks the kernel from the inputs' device: that is the whole of
``backend="auto"``. ``backend="torch" | "cpp" | "triton"`` calls one
implementation directly (:func:`implementation`), for tests and comparisons.

The ops are opaque to ``torch.compile`` (a custom op is one node of the
graph): the C++ kernel cannot be traced anyway, and one opaque op per
operator keeps a single registration for every device. Traced with the value
checks on, the public functions call ``dcam::<function>_checked`` ops instead
(the eager function, checks and all, as one op): those are registered by
:mod:`dcam.ops.api`, whose functions their kernels call.

``channel_weights`` and ``weighted_maps`` are ``pool_gradients`` in two
halves, for gradients that arrive in chunks of tokens (the explainer): each
chunk is reduced to its channel weights as it arrives, and one product of the
activations with the weights of all tokens makes the maps at the end.

``check_grads``: also report (``grads_nonfinite``, a 0-dim bool tensor on the
inputs' device, no host sync) whether the gradients hold a NaN/Inf. The C++
and Triton kernels find out within their one pass over the gradients; the
reference runs one extra ``aminmax`` pass.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

from . import reference
from .backends import cpp_backend, triton_backend
from ..errors import DcamRuntimeWarning, InputError, warn_at_caller
from .validation import NOT_DIFFERENTIABLE, check_cpp_sizes, check_op_args, nonfinite_flag

PoolOut = Tuple[Tensor, Tensor, Tensor]
RefineOut = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


# ------------------------------------------------------------------ the reference kernels

def _grads_flag(grads: Tensor, check_grads: bool) -> Tensor:
    """The ops' ``grads_nonfinite`` output for the reference: one extra pass, or False unchecked."""
    return nonfinite_flag(grads) if check_grads else torch.zeros((), dtype=torch.bool, device=grads.device)


def pool_reference(acts: Tensor, grads: Tensor, h: int, w: int, grad_relu: bool, check_grads: bool) -> PoolOut:
    """The reference pooling with the op's third output (the NaN/Inf flag)."""
    maps, degenerate = reference.pool_gradients_reference(acts, grads, h, w, grad_relu)
    return maps, degenerate, _grads_flag(grads, check_grads)


def channel_weights_reference(grads: Tensor, grad_relu: bool, check_grads: bool) -> Tuple[Tensor, Tensor]:
    """The reference channel weights with the op's second output (the NaN/Inf flag)."""
    return reference.channel_weights_reference(grads, grad_relu), _grads_flag(grads, check_grads)


weighted_maps_reference = reference.weighted_maps_reference
refine_reference = reference.refine_reference


# ------------------------------------------------------------------ the ops (default body: the reference)

# Declared with ``torch.library.Library`` rather than ``torch.library.custom_op``: the
# dispatcher then calls each device's kernel directly. custom_op wraps every call in
# Python layers of its own (its autograd kernel, argument handling): ~12 us per call
# with warm caches against ~4 us here; right after a chunk's pass has streamed 37 MB
# through the caches, the op's path cost ~110 us a call over the bare extension, 25-40 us
# now. The explainer's chunked path pays that once per chunk (bench/bench_op_overhead.py).
# The maps are not differentiable: each op's autograd kernel (_not_differentiable) runs the op
# below autograd, so its outputs never require grad, and a backward through them fails ("does not
# require grad") instead of autograd's fallback for ops without a formula quietly giving no
# gradient. Under torch.func's transforms (grad, vjp, jacrev, jacfwd) such an op would be a
# constant with a zero derivative: the kernel refuses a grad-tracked input, in eager mode (the
# public functions refuse first, naming the argument: validation.check_tensor) and while
# torch.compile traces a transformed function (it gave zeros when autograd fell through). The
# kernel costs ~6 us a call over a fallthrough (a tiny channel_weights through the op: 43.5 against
# 37.0 us; the streamed pooling path x1.172 against x1.171 one call: bench/bench_op_overhead.py).
_LIB = torch.library.Library("dcam", "DEF")


def _not_differentiable(op) -> Callable:
    """``op``'s autograd kernel: refuses a torch.func-differentiated input, else runs ``op`` below
    autograd."""
    def kernel(*args):
        if torch._C._functorch.maybe_current_level() is not None and any(
                isinstance(a, Tensor) and torch._C._functorch.is_gradtrackingtensor(a) for a in args):
            raise InputError(f"{op.name()}: {NOT_DIFFERENTIABLE}")
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return kernel


# Each op's schema and its reference kernel, the default body for every device without a
# kernel of its own.
_DEFINITIONS: Tuple[Tuple[str, Callable], ...] = (
    ("pool_gradients(Tensor acts, Tensor grads, SymInt h, SymInt w, bool grad_relu, bool check_grads) "
     "-> (Tensor, Tensor, Tensor)", pool_reference),
    ("channel_weights(Tensor grads, bool grad_relu, bool check_grads) -> (Tensor, Tensor)",
     channel_weights_reference),
    ("weighted_maps(Tensor acts, Tensor weights, SymInt h, SymInt w) -> (Tensor, Tensor)",
     weighted_maps_reference),
    ("refine(Tensor raw, Tensor degenerate, Tensor steps, Tensor image_size, Tensor repeat_ratio, "
     "Tensor? context_maps, Tensor? context_weights, SymInt akd_kernel, bool akd, bool dacg, bool cba, "
     "SymInt sicd, float[] dacg_params, float[] cba_params) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
     refine_reference),
)

# The outputs' shapes, as zeros: the fake kernels (shape propagation for torch.compile and export, and
# every meta tensor), and the real outputs of a call with nothing to compute (`_NOTHING_TO_COMPUTE`).
def _pool_outputs(acts, grads, h, w, grad_relu, check_grads):
    B, T = grads.shape[0], grads.shape[1]
    return (acts.new_zeros((B, T, h, w), dtype=torch.float32), acts.new_zeros((B, T), dtype=torch.bool),
            acts.new_zeros((), dtype=torch.bool))


def _channel_weights_outputs(grads, grad_relu, check_grads):
    B, T, _, D = grads.shape
    return grads.new_zeros((B, T, D), dtype=torch.float32), grads.new_zeros((), dtype=torch.bool)


def _weighted_maps_outputs(acts, weights, h, w):
    B, T = weights.shape[0], weights.shape[1]
    return acts.new_zeros((B, T, h, w), dtype=torch.float32), acts.new_zeros((B, T), dtype=torch.bool)


def _refine_outputs(raw, *rest):
    B, T = raw.shape[0], raw.shape[1]
    stat = lambda dt: raw.new_zeros((B, T), dtype=dt)  # noqa: E731
    return (raw.new_zeros(raw.shape, dtype=torch.float32), stat(torch.int32), stat(torch.int32),
            stat(torch.float32), stat(torch.float32), stat(torch.float32))


_OUTPUTS = {"pool_gradients": _pool_outputs, "channel_weights": _channel_weights_outputs,
            "weighted_maps": _weighted_maps_outputs, "refine": _refine_outputs}

#: whether a call (its arguments checked) has empty outputs only, besides a False flag: no image, no word,
#: or channel weights of no channel. Its zeros are returned without a kernel, the same on every device (the
#: C++ kernel refused D = 0 channel weights, "invalid size argument", where the others gave them).
_NOTHING_TO_COMPUTE = {
    "pool_gradients": lambda acts, grads, *_: grads.shape[0] * grads.shape[1] == 0,
    "channel_weights": lambda grads, *_: grads.shape[0] * grads.shape[1] * grads.shape[3] == 0,
    "weighted_maps": lambda acts, weights, *_: weights.shape[0] * weights.shape[1] == 0,
    "refine": lambda raw, *_: raw.shape[0] * raw.shape[1] == 0,
}


def _checked(op: str, kernel: Callable) -> Callable:
    """``kernel`` of op ``op`` after the op's argument checks (:func:`~dcam.ops.validation.check_op_args`:
    a direct call of ``torch.ops.dcam.<op>`` skips the public functions' checks). ``kernel`` is called
    after them."""
    nothing, outputs = _NOTHING_TO_COMPUTE[op], _OUTPUTS[op]

    def run(*args):
        check_op_args(op, args)
        if nothing(*args):
            return outputs(*args)
        return kernel(*args)
    return run


def _fake(op: str) -> Callable:
    """The fake kernel of ``op``: the same checks at trace time, then outputs of the right shapes."""
    outputs = _OUTPUTS[op]

    def fake(*args):
        check_op_args(op, args)
        return outputs(*args)
    return fake


#: Each op by name: (the registered op, its reference kernel).
OPS: Dict[str, Tuple[Callable, Callable]] = {}
for _schema, _reference in _DEFINITIONS:
    _name = _schema.split("(")[0]
    _LIB.define(_schema)
    _LIB.impl(_name, _checked(_name, _reference), "CompositeExplicitAutograd")
    OPS[_name] = (getattr(torch.ops.dcam, _name).default, _reference)
    _LIB.impl(_name, _not_differentiable(OPS[_name][0]), "Autograd")
    torch.library.register_fake(f"dcam::{_name}", _fake(_name), lib=_LIB)


# ------------------------------------------------------------------ per-device kernels

_warned: Dict[str, bool] = {}


def _warn_once(key: str, text: str) -> None:
    if not _warned.get(key):
        _warned[key] = True
        # (the dispatcher calls the kernels below torch's frames and dcam's own: a fixed stacklevel
        # named the kernel lambda of this file)
        warn_at_caller(text, DcamRuntimeWarning)


def _cpu_kernel(op: str, args: tuple) -> Callable:
    """The C++ function of ``op`` (:mod:`dcam.ops.cpp`) for ``args`` (refused past the sizes it takes),
    or the reference when the extension is not built (warned once)."""
    if cpp_backend.is_available():
        check_cpp_sizes(op, args)
        return getattr(cpp_backend.module(), f"{op}_cpp")
    why = cpp_backend.unavailable_reason()
    # (a stale build's reason says how to rebuild it: the compiler is there)
    _warn_once("cpp", f"dcam: the C++ CPU backend is not available ({why}); CPU tensors use the slower PyTorch "
                      "reference." + ("" if str(why).startswith("stale build") else
                      " Reinstall dcam where a C++17 compiler with "
                      "OpenMP is on the path (`pip install --no-cache-dir --force-reinstall --no-deps <the dcam "
                      "folder or sdist you installed from>`: without --no-cache-dir pip reinstalls its cached build, "
                      "which lacks the extension; `pip install -e .` in a checkout) to build it."))
    return OPS[op][1]


def _cuda_kernel(op: str) -> Callable:
    """The Triton launcher of ``op`` (:mod:`dcam.ops.triton_launch`), or the
    reference when triton is not installed (warned once)."""
    if triton_backend.is_available():
        return getattr(triton_backend.module(), f"{op}_triton")
    _warn_once("triton", f"dcam: the Triton backend is not available ({triton_backend.unavailable_reason()}); "
                         "CUDA tensors use the PyTorch reference.")
    return OPS[op][1]


for _name in OPS:  # one kernel per device, each the backend's function of the same name, after the op's checks
    _LIB.impl(_name, _checked(_name, lambda *args, _n=_name: _cpu_kernel(_n, args)(*args)), "CPU")
    _LIB.impl(_name, _checked(_name, lambda *args, _n=_name: _cuda_kernel(_n)(*args)), "CUDA")


# ------------------------------------------------------------------ explicit backends

def _no_grad(fn: Callable) -> Callable:
    """The reference called as the ops are: outputs that never require grad (autograd
    falls through the registered ops; called directly, the reference's outputs did)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)
    return run


def implementation(op: str, backend: str) -> Callable:
    """The function that runs ``op`` (a key of :data:`OPS`) on ``backend``
    (already checked by :func:`dcam.ops.backends.check_backend`): the
    registered op for ``"auto"`` (the dispatcher chooses by device), else that
    backend's implementation called directly."""
    if backend == "auto":
        return OPS[op][0]
    if backend == "torch":
        return _no_grad(OPS[op][1])
    module = cpp_backend.module() if backend == "cpp" else triton_backend.module()
    return getattr(module, f"{op}_{backend}")
