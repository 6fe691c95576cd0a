"""The source distribution holds what a build from it needs.

`python -m build` makes the wheel from the sdist: before MANIFEST.in the sdist
had the .cpp files only (no headers, no dcam.h, no Triton kernels), and the
build failed on `#include "akd.hpp"`."""
import glob
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sdist_carries_every_source_the_build_reads(tmp_path):
    # egg_info in tmp_path: a fresh file list (setuptools merges an earlier SOURCES.txt of the checkout
    # into the sdist, which hid a file left out by MANIFEST.in)
    res = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
                          "sdist", "-d", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (archive,) = glob.glob(str(tmp_path / "dcam-*.tar.gz"))
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    # every C++ source and header, the C header, the bindings and the Triton kernels setup.py copies
    need = {os.path.relpath(p, ROOT) for pattern in ("csrc/*.cpp", "csrc/*.hpp", "csrc/include/*.h",
                                                     "csrc/python/*.cpp", "kernels/*.py")
            for p in glob.glob(os.path.join(ROOT, pattern))}
    assert "csrc/include/dcam.h" in need and "csrc/akd.hpp" in need and "kernels/pool.py" in need
    assert need <= names, sorted(need - names)
    assert {"setup.py", "pyproject.toml", "README.md", "dcam/zoo/weights/model.safetensors"} <= names
    # the whole test suite and the benchmarks (setuptools' default shipped tests/test_*.py only: no
    # conftest.py, no tests/ops/, and test_layout failed on the missing bench/), no build leftovers
    suite = {os.path.relpath(os.path.join(folder, f), ROOT) for top in ("tests", "bench")
             for folder, _, files in os.walk(os.path.join(ROOT, top)) if "__pycache__" not in folder
             for f in files if not f.endswith((".pyc", ".so"))}
    assert {"tests/conftest.py", "tests/ops/test_cpp.py", "bench/conftest.py"} <= suite
    assert suite <= names, sorted(suite - names)
    assert not [n for n in names if n.endswith((".pyc", ".so", ".o")) or "__pycache__" in n]


def test_missing_extension_warning_names_the_callers_line(monkeypatch):
    # an install without dcam._C warns once; the warning named dcam/ops/library.py's kernel lambda
    # (a fixed stacklevel, counted from below the dispatcher), not the line that made the call
    import warnings

    import torch

    import dcam
    from dcam.ops import library
    from dcam.ops.backends import cpp_backend

    monkeypatch.setattr(cpp_backend, "is_available", lambda: False)
    monkeypatch.setattr(cpp_backend, "unavailable_reason", lambda: "ImportError: simulated")
    acts, weights = torch.rand(1, 4, 3), torch.rand(1, 2, 3)
    calls = (lambda: dcam.pool_gradients(acts, torch.randn(1, 2, 4, 3), (2, 2)),  # through dcam's API
             lambda: torch.ops.dcam.weighted_maps(acts, weights, 2, 2))  # the registered op, straight
    for call in calls:
        monkeypatch.setattr(library, "_warned", {})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        (warning,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert "C++ CPU backend is not available (ImportError: simulated)" in str(warning.message)
        # the caller: the lambda of this file that called dcam (its line is the tuple's)
        assert (warning.filename, warning.lineno) == (__file__, call.__code__.co_firstlineno)


def test_long_description_is_the_readme_without_broken_pictures():
    # README's pictures link into the repository (docs/img/...): on a package index they were broken images
    res = subprocess.run([sys.executable, "setup.py", "--long-description"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read().rstrip("\n").splitlines()
    described = res.stdout.rstrip("\n").splitlines()  # (print added a newline)
    assert len(described) == len(readme)
    pictures = [i for i, line in enumerate(readme) if line.startswith("![")]
    assert pictures, "README has no picture: this test checks nothing"
    for i, (theirs, ours) in enumerate(zip(readme, described)):
        if i in pictures:  # "![alt](path)" -> a line that names the file, no image markup
            alt, path = theirs[2:].split("](")
            assert ours == f"*(picture: {alt}, `{path[:-1]}` in the repository)*"
        else:
            assert ours == theirs, i
