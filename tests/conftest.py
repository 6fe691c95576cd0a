"""Shared test setup and fixtures.

Triton: on a machine with a CUDA GPU the tests run the compiled kernels; where
there is none, Triton's CPU interpreter. The interpreter is chosen when triton
is first imported, so TRITON_INTERPRET=1 is set here, before any test module
imports triton, and only when no GPU exists (torch.cuda does not import
triton).

Fixtures used by several test folders live here (a test module never imports
another test module).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

#: The device the Triton kernels run on in this process.
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run tiny models: on a shared 2-core machine, OpenMP threads
    spinning against other processes make small ops many times slower, so
    the whole suite uses one intra-op thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def bundled():
    """The bundled toy dMLLM and its processor (loaded once per session; tests must not modify it)."""
    from dcam import zoo

    return zoo.load_default()


@pytest.fixture(scope="session")
def random_toy():
    """A randomly initialised toy dMLLM (seed 0) and its processor."""
    from dcam.zoo import build_random

    return build_random(seed=0)
