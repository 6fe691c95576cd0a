"""Shared pytest setup.

Without a CUDA device the Triton kernels (`dcam.kernels`) can only run in
Triton's CPU interpreter. `@triton.jit` picks the interpreter when the kernels
are *decorated* (at import of `dcam.kernels`), so TRITON_INTERPRET must be set
before any test module imports them: conftest runs first. An explicit setting
from the caller is kept; on a CUDA machine nothing is set, so the real
compiled kernels are tested.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
