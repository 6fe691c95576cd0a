"""The source distribution holds what a build from it needs.

`python -m build` makes the wheel from the sdist: before MANIFEST.in the sdist
had the .cpp files only (no headers, no dcam.h, no Triton kernels), and the
build failed on `#include "akd.hpp"`."""
import glob
import json
import os
import re
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


# setup.py's distribution, as setuptools reads it (setup() stopped after reading its arguments), in a
# child process: running setup.py sets distutils state a test process should not keep
_READ_SETUP = """
import json, os, sys
from distutils.core import run_setup
dist = run_setup("setup.py", script_args=["--name"], stop_after="init")
print(json.dumps({ext.name: {"sources": ext.sources, "depends": ext.depends, "include_dirs": ext.include_dirs}
                  for ext in dist.ext_modules}))
"""


def _included_headers(source: str, include_dirs) -> set:
    """The headers a C/C++ file includes with #include "...", and theirs, as paths relative to ROOT:
    read from the files, as the compiler finds them (the including file's folder, then -I folders)."""
    seen, todo = set(), [source]
    while todo:
        path = todo.pop()
        with open(os.path.join(ROOT, path)) as f:
            names = re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), flags=re.M)
        for name in names:
            found = [os.path.normpath(os.path.join(folder, name))
                     for folder in [os.path.dirname(path)] + list(include_dirs)
                     if os.path.isfile(os.path.join(ROOT, folder, name))]
            assert found, (path, name)
            if found[0] not in seen:
                seen.add(found[0])
                todo.append(found[0])
    return seen


def test_a_changed_header_rebuilds_the_extensions():
    # build_ext rebuilds an extension only when one of its sources or depends is newer than the built
    # file: setup.py listed no depends, so after a change to a .hpp or dcam.h only (the .cpp files
    # untouched) `python setup.py build_ext --inplace` and a wheel built beside a build/ folder kept
    # the old dcam._C and libdcam.so
    res = subprocess.run([sys.executable, "-c", _READ_SETUP], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    extensions = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(extensions) == {"dcam._C", "dcam.lib.libdcam"}, extensions
    for name, ext in extensions.items():
        included = set()
        for source in ext["sources"]:
            included |= _included_headers(source, ext["include_dirs"])
        assert {"csrc/common.hpp", "csrc/include/dcam.h", "csrc/akd.hpp"} <= included, (name, included)
        depends = {os.path.normpath(p) for p in ext["depends"]}
        assert included <= depends, (name, sorted(included - depends))


_BUILD_PY = """
import sys
from distutils.core import run_setup
out = sys.argv[1]
dist = run_setup("setup.py", script_args=["--name"], stop_after="init")
dist.get_command_obj("egg_info").egg_base = out  # its file list in the test's folder, not the checkout
cmd = dist.get_command_obj("build_py")
cmd.build_lib = out + "/lib"
cmd.ensure_finalized()
cmd.run()
"""


def test_build_leaves_no_module_of_an_earlier_build(tmp_path):
    # pip builds a checkout in place, reusing its build/ folder, and the wheel takes all of build/lib:
    # a module removed or moved since an earlier build was installed beside the new code
    lib = tmp_path / "lib" / "dcam"
    (lib / "cli").mkdir(parents=True)
    (lib / "cli" / "removed_since.py").write_text("X = 1\n")  # an earlier build's, no longer in dcam/
    (lib / "kernels").mkdir()
    (lib / "kernels" / "removed_kernel.py").write_text("X = 1\n")
    extension = lib / "_C.cpython-311-x86_64-linux-gnu.so"  # build_ext's: it decides whether to rebuild
    extension.write_bytes(b"\0")
    res = subprocess.run([sys.executable, "-c", _BUILD_PY, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    built = {os.path.relpath(os.path.join(folder, f), tmp_path / "lib")
             for folder, _, files in os.walk(tmp_path / "lib") for f in files}
    assert not {"dcam/cli/removed_since.py", "dcam/kernels/removed_kernel.py"} & built
    assert extension.exists()
    # what this build writes is all there: every module of dcam/, the kernels, the header, the weights
    modules = {os.path.relpath(os.path.join(folder, f), ROOT)
               for folder, _, files in os.walk(os.path.join(ROOT, "dcam")) if "__pycache__" not in folder
               for f in files if f.endswith(".py")}
    kernels = {"dcam/kernels/" + os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "kernels", "*.py"))}
    weights = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "dcam", "zoo", "weights", "*"))}
    assert {"dcam/kernels/pool.py", "dcam/kernels/refine.py"} <= kernels and "dcam/zoo/weights/model.safetensors" in weights
    # and the commit it is built from, where known (a git checkout, or an sdist made from one: README, Reproducibility)
    from dcam.provenance import code_revision
    revision = {"dcam/_revision.txt"} if code_revision() != "unknown" else set()
    assert modules | kernels | weights | revision | {"dcam/include/dcam.h", os.path.relpath(extension, tmp_path / "lib")} \
        == built


def _build_ext_without_a_compiler(tmp_path, require):
    env = dict(os.environ, CC="false", CXX="false", DCAM_REQUIRE_CPP=require)  # every compile fails
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(tmp_path / "temp"),
                           "--build-lib", str(tmp_path / "lib")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_build_that_must_have_the_cpp_backend_fails_without_a_compiler(tmp_path):
    # by default a machine without a C++ compiler still builds dcam, without dcam._C and libdcam.so (and
    # under pip silently, the wheel named as a full one); DCAM_REQUIRE_CPP=1 makes that build fail
    lenient = _build_ext_without_a_compiler(tmp_path, "0")
    assert lenient.returncode == 0, lenient.stderr[-2000:]
    strict = _build_ext_without_a_compiler(tmp_path, "1")
    assert strict.returncode != 0
    assert "'-c', 'csrc/" in strict.stderr and "exit status 1" in strict.stderr, strict.stderr[-2000:]  # the compile
    built = [f for _, _, files in os.walk(tmp_path / "lib") for f in files]
    assert not [f for f in built if f.endswith(".so")], built
