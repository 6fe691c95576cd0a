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

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _interpreted_dot_rounds_each_element_alike():
    """Make the interpreter's float32 ``tl.dot`` give every output element the
    value its own row and column give, wherever it sits in the tile.

    The interpreter's dot is ``numpy.matmul``, and so whatever the CPU's BLAS
    does. OpenBLAS's Haswell sgemm (the kernel it picks on AVX2 CPUs without
    AVX-512, e.g. AMD Zen 3) rounds equal columns differently: in a [16, 32] @
    [32, 64] product whose 64 columns are equal, 48 columns differ from the
    first by an ulp (measured; 0 with its Sandybridge kernel; on the AVX-512
    CPUs of earlier sessions these tests passed, OpenBLAS picking another
    kernel there). A compiled IEEE fp32 ``tl.dot`` accumulates each element in one
    fixed order, so equal tokens give equal raw values, and the contract's
    degenerate test (``max(raw) > min(raw)``) depends on exactly that: one ulp
    turns a constant map into one spread over [0, 0.75]. Here the float32 dot
    is summed in float64 and rounded once, which is position-independent and
    at least as accurate as the compiled dot; other dtypes keep numpy's dot."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    inner = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        acc = d.data
        if acc.dtype != np.float32 or a.data.dtype != np.float32 or b.data.dtype != np.float32:
            return inner(self, a, b, d, input_precision, max_num_imprecise_acc)
        prod = np.matmul(a.data.astype(np.float64), b.data.astype(np.float64)).astype(np.float32)
        return interpreter.TensorHandle(prod + acc, d.dtype.scalar)

    builder.create_dot = create_dot


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreted_dot_rounds_each_element_alike()

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


@pytest.fixture
def registry():
    """(ADAPTERS, REGISTERED): dcam's adapter registries, restored after the test as they were, and
    so is the CLI's table of --adapter values (registrations must not leak into other tests)."""
    from dcam.cli import common
    from dcam.probe.adapters import ADAPTERS, REGISTERED

    adapters, registered, options = list(ADAPTERS), dict(REGISTERED), dict(common.ADAPTER_OPTIONS)
    yield ADAPTERS, REGISTERED
    ADAPTERS[:] = adapters
    REGISTERED.clear()
    REGISTERED.update(registered)
    common.ADAPTER_OPTIONS.clear()
    common.ADAPTER_OPTIONS.update(options)


@pytest.fixture
def in_folder(tmp_path, monkeypatch, registry):
    """tmp_path as the current folder (where --adapter imports a module from), sys.path and the adapter
    registries restored after the test."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path
