"""run.json's versions say what computed a run's maps: triton's version beside torch's, and whether
the C++ extension ran the CPU operators (an install without it runs the PyTorch reference, whose
refined maps can differ where a map sits on a threshold); run.json named neither."""
import importlib

import triton

from dcam.ops.backends import cpp_backend
from dcam.provenance import versions


def test_versions_name_triton_and_the_cpp_extension(monkeypatch):
    found = versions()
    assert found["triton"] == triton.__version__
    importlib.import_module("dcam._C")  # built in this checkout: the suite's C++ tests run it
    assert found["dcam._C"] == "built"
    monkeypatch.setattr(cpp_backend, "is_available", lambda: False)
    monkeypatch.setattr(cpp_backend, "unavailable_reason", lambda: "ImportError: simulated")
    assert versions()["dcam._C"] == "not available: ImportError: simulated"
