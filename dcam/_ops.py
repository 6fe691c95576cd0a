"""The two dcam operators, registered with `torch.library`.

    dcam::pool_gradients(acts, grads, h, w, grad_relu, check_grads) -> (maps, degenerate, grads_nonfinite)
    dcam::refine(raw, degenerate, steps, image_size, repeat_ratio, context_maps,
                 context_weights, akd_kernel, akd, dacg, cba, sicd,
                 dacg_params, cba_params)
        -> (maps, kernel_size, dacg_strategy, dacg_threshold, cba_threshold, sicd_alpha)

Each op has one body per device, chosen by the dispatcher (torchvision's
pattern: one op, per-device kernels behind it):

- CUDA: the Triton kernels of `dcam.kernels`, launched through
  `torch.library.wrap_triton` inside a `torch.library.triton_op`, so
  `torch.compile` traces into the kernels without graph breaks.
- every other device goes through an opaque host op (`dcam::refine_host`,
  `dcam::pool_gradients_host`): on CPU the C++ backend (`dcam._C`), attached
  with `register_kernel("cpu")` (the PyTorch reference when the extension is
  not built); on any other device (MPS, XPU, ...) the PyTorch reference.

The host ops' fake (meta) kernels only allocate the outputs, so shape
propagation never runs data-dependent code.

``check_grads``: also report (``grads_nonfinite``, a 0-dim bool tensor on the
inputs' device, no host sync) whether the gradients hold a NaN/Inf. The C++
and Triton kernels find out within their one pass over the gradients; the
reference runs one extra ``aminmax`` reduction. False when not asked.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import reference
from .backends import cpp_backend, triton_backend

# ------------------------------------------------------------------ output allocation (fake kernels)


def _pool_outputs(acts: Tensor, grads: Tensor, h: int, w: int, *_) -> Tuple[Tensor, Tensor, Tensor]:
    B, T = grads.shape[0], grads.shape[1]
    return (acts.new_empty((B, T, h, w), dtype=torch.float32),
            acts.new_empty((B, T), dtype=torch.bool), acts.new_empty((), dtype=torch.bool))


def _refine_outputs(raw: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, T = raw.shape[0], raw.shape[1]
    stat = lambda dt: raw.new_empty((B, T), dtype=dt)  # noqa: E731
    return (raw.new_empty(raw.shape, dtype=torch.float32), stat(torch.int32), stat(torch.int32),
            stat(torch.float32), stat(torch.float32), stat(torch.float32))


# ------------------------------------------------------------------ host ops (CPU and other devices)
# Opaque custom ops: the compiler sees one call, never the reference's
# data-dependent Python. The default body (any device) is the PyTorch
# reference; CPU gets the C++ kernel.

@torch.library.custom_op("dcam::pool_gradients_host", mutates_args=())
def pool_gradients_host(acts: Tensor, grads: Tensor, h: int, w: int, grad_relu: bool, check_grads: bool
                        ) -> Tuple[Tensor, Tensor, Tensor]:
    return reference.pool_gradients_reference_checked(acts, grads, h, w, grad_relu, check_grads)


@torch.library.custom_op("dcam::refine_host", mutates_args=())
def refine_host(raw: Tensor, degenerate: Tensor, steps: Tensor, image_size: Tensor, repeat_ratio: Tensor,
                context_maps: Optional[Tensor], context_weights: Optional[Tensor],
                akd_kernel: int, akd: bool, dacg: bool, cba: bool, sicd: int,
                dacg_params: List[float], cba_params: List[float]
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return reference.refine_reference(raw, degenerate, steps, image_size, repeat_ratio, context_maps,
                                      context_weights, akd_kernel, akd, dacg, cba, sicd, dacg_params, cba_params)


pool_gradients_host.register_fake(_pool_outputs)
refine_host.register_fake(lambda raw, *rest: _refine_outputs(raw))

_warned = False


def _warn_no_cpp() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"dcam: the C++ CPU backend is not available ({cpp_backend.unavailable_reason()}); "
                      "CPU tensors use the slower PyTorch reference. Reinstall with `pip install -e .` "
                      "to build it.", RuntimeWarning, stacklevel=2)


@pool_gradients_host.register_kernel("cpu")
def _pool_cpu(acts, grads, h, w, grad_relu, check_grads):
    if cpp_backend.is_available():
        return cpp_backend.module().pool_gradients_cpp(acts, grads, h, w, grad_relu, check_grads)
    _warn_no_cpp()
    return reference.pool_gradients_reference_checked(acts, grads, h, w, grad_relu, check_grads)


@refine_host.register_kernel("cpu")
def _refine_cpu(*args):
    if cpp_backend.is_available():
        return cpp_backend.module().refine_cpp(*args)
    _warn_no_cpp()
    return reference.refine_reference(*args)


# ------------------------------------------------------------------ the public ops
# CUDA tensors run the Triton kernels (traced into by torch.compile through
# triton_op + wrap_triton); every other device goes to the host op above.

def _pool_body(acts: Tensor, grads: Tensor, h: int, w: int, grad_relu: bool, check_grads: bool
               ) -> Tuple[Tensor, Tensor, Tensor]:
    if acts.device.type == "cuda" and triton_backend.is_available():
        return triton_backend.module().pool_gradients_triton(acts, grads, h, w, grad_relu, check_grads)
    return pool_gradients_host(acts, grads, h, w, grad_relu, check_grads)


def _refine_body(raw: Tensor, degenerate: Tensor, steps: Tensor, image_size: Tensor, repeat_ratio: Tensor,
                 context_maps: Optional[Tensor], context_weights: Optional[Tensor],
                 akd_kernel: int, akd: bool, dacg: bool, cba: bool, sicd: int,
                 dacg_params: List[float], cba_params: List[float]
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (raw, degenerate, steps, image_size, repeat_ratio, context_maps, context_weights,
            akd_kernel, akd, dacg, cba, sicd, dacg_params, cba_params)
    if raw.device.type == "cuda" and triton_backend.is_available():
        return triton_backend.module().refine_triton(*args)
    return refine_host(*args)


if triton_backend.installed():
    pool_gradients_op = torch.library.triton_op("dcam::pool_gradients", _pool_body, mutates_args=())
    refine_op = torch.library.triton_op("dcam::refine", _refine_body, mutates_args=())
else:  # no Triton on this platform: the same ops, dispatching to the host ops
    pool_gradients_op = torch.library.custom_op("dcam::pool_gradients", _pool_body, mutates_args=())
    refine_op = torch.library.custom_op("dcam::refine", _refine_body, mutates_args=())
    pool_gradients_op.register_fake(_pool_outputs)
    refine_op.register_fake(lambda raw, *rest: _refine_outputs(raw))
