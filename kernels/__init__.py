"""Triton GPU kernels of Diffusion-CAM (installed as ``dcam.kernels``).

Each kernel lives in its own small file:

- ``pool.py``: gradient pooling into raw maps (SPEC section 1).
- ``refine.py``: the whole refinement, AKD + DACG + CBA + clip/normalise +
  SICD, one program per map (SPEC sections 2-7).

The launchers have exactly the signatures of the reference functions in
``dcam.reference`` and launch through ``torch.library.wrap_triton`` so that
they can be registered with ``torch.library.triton_op``.
"""
from .pool import pool_gradients_triton
from .refine import refine_triton


def is_available() -> bool:
    """Probe for `dcam.backends`: importing this package (and triton) worked."""
    return True


__all__ = ["pool_gradients_triton", "refine_triton", "is_available"]
