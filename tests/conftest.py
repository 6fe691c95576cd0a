"""Shared test setup.

The Triton kernels are tested on CPU in Triton's interpreter, which is chosen
when triton is first imported; `import dcam` imports triton, so the variable
must be set here, before any test module imports dcam. Without a GPU this
changes nothing else (the engine only uses Triton for CUDA tensors or when
asked by name)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
