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
    res = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
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
