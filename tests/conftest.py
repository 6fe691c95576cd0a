"""Shared test setup.

The Triton kernels are tested on CPU in Triton's interpreter, which is chosen
when triton is first imported; `import dcam` imports triton, so the variable
must be set here, before any test module imports dcam. Without a GPU this
changes nothing else (the engine only uses Triton for CUDA tensors or when
asked by name)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run tiny models: on a shared 2-core machine, OpenMP threads
    spinning against other processes make small ops many times slower, so
    the whole suite uses one intra-op thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
