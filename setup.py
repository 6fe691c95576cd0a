"""Build script: installs the `dcam` package, copies the Triton kernels of the
top-level `kernels/` folder into `dcam.kernels` (a top-level `kernels` package
would clash with an unrelated PyPI package; see kernels/README.md), and
compiles the C++ CPU backend `dcam._C`, and the plain C library of the same
sources for C programs, `dcam/lib/libdcam.so`, with its header `dcam/include/dcam.h`
(see dcam/c_api.py)."""
import copy
import glob
import os
import re
import sys

from setuptools import Extension, setup, find_packages
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext as _pybind11_build_ext
except ImportError:  # pragma: no cover - pyproject's build requirements provide it
    Pybind11Extension = None
    _pybind11_build_ext = None

HERE = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    """The one version string, read from dcam/__init__.py."""
    with open(os.path.join(HERE, "dcam", "__init__.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip('"')
    raise RuntimeError("no __version__ in dcam/__init__.py")

ext_modules = []
cmdclass = {}
# DCAM_REQUIRE_CPP=1: a build that cannot compile the C++ backend fails instead of making a package
# without it (under pip that package was built silently, and its wheel has the name of a full one)
REQUIRE_CPP = os.environ.get("DCAM_REQUIRE_CPP", "0") not in ("", "0")
if Pybind11Extension is None and REQUIRE_CPP:
    raise RuntimeError("dcam setup: DCAM_REQUIRE_CPP is set, but pybind11 is not installed, so the C++ backend "
                       "cannot be built (pip install pybind11, or build with build isolation)")
if Pybind11Extension is not None:
    core_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    binding_sources = sorted(glob.glob(os.path.join("csrc", "python", "*.cpp")))
    # the headers the sources include: build_ext rebuilds an extension only when a file of its
    # sources or depends is newer than it, so without them a changed .hpp or dcam.h left the old
    # dcam._C / libdcam.so in place (in an in-place build, and in a wheel built beside a build/ folder)
    headers = sorted(glob.glob(os.path.join("csrc", "*.hpp")) + glob.glob(os.path.join("csrc", "include", "*.h")))
    compile_args = ["-O3", "-fopenmp", "-ffp-contract=off"]
    link_args = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang: OpenMP needs libomp; build without it
        compile_args = ["-O3", "-ffp-contract=off"]
        link_args = []
    ext_modules.append(
        Pybind11Extension(
            "dcam._C",
            core_sources + binding_sources,
            include_dirs=[os.path.join("csrc", "include")],
            depends=headers,
            extra_compile_args=list(compile_args),  # a copy: Pybind11Extension adds its flags to the list
            extra_link_args=list(link_args),
            cxx_std=17,
            # no C++ compiler: dcam installs without its C++ backend (CPU tensors then run the
            # PyTorch reference, with one warning naming why) instead of not installing at all,
            # unless DCAM_REQUIRE_CPP asks for it
            optional=not REQUIRE_CPP,
        )
    )
    # the C API (csrc/include/dcam.h) as a plain shared library: the core sources without the
    # Python bindings, the flags of dcam._C, the dcam_* functions exported (dcam._C hides them,
    # and a C program cannot link a Python extension: -fvisibility=hidden is pybind11's, not added here);
    # optional as dcam._C is. (setuptools' own Library makes a static archive on Linux.)
    class CLibrary(Extension):
        """A shared library of plain C functions, lib<name>.so (.dylib on macOS), not a Python module."""

    ext_modules.append(
        CLibrary(
            "dcam.lib.libdcam",  # -> dcam/lib/libdcam.so, see dcam/c_api.py
            core_sources,
            include_dirs=[os.path.join("csrc", "include")],
            depends=headers + [os.path.join("csrc", "libdcam.map")],
            extra_compile_args=compile_args + ["-std=c++17", "-g0"],
            # exports the header's functions only (csrc/libdcam.map), under a SONAME of its own
            extra_link_args=link_args + ([] if sys.platform == "darwin" else
                                         ["-Wl,--version-script=" + os.path.join("csrc", "libdcam.map"),
                                          "-Wl,-soname,libdcam.so"]),
            language="c++",
            optional=not REQUIRE_CPP,
        )
    )

    class build_ext(_pybind11_build_ext):
        """pybind11's build_ext, building the plain library apart from dcam._C."""

        def get_ext_filename(self, fullname):
            if isinstance(self.ext_map.get(fullname), CLibrary):
                return os.path.join(*fullname.split(".")) + (".dylib" if sys.platform == "darwin" else ".so")
            return super().get_ext_filename(fullname)

        def copy_extensions_to_source(self):
            # an in-place build (editable install) copies libdcam.so to dcam/lib/, which is no
            # package: a fresh checkout has no such folder
            self.mkpath(os.path.join(HERE, "dcam", "lib"))
            super().copy_extensions_to_source()

        def build_extension(self, ext):
            if not isinstance(ext, CLibrary):
                return super().build_extension(ext)
            # libdcam compiles the same csrc/*.cpp as dcam._C, with other flags: it gets an object
            # folder of its own (under -j both extensions build at once, on shared objects a race)
            own = copy.copy(self)
            own.build_temp = os.path.join(self.build_temp, "libdcam")
            return super(build_ext, own).build_extension(ext)

    cmdclass["build_ext"] = build_ext
else:
    sys.stderr.write("dcam setup: pybind11 is not installed, so neither the C++ CPU backend dcam._C nor the C "
                     "library dcam/lib/libdcam.so is built; "
                     "CPU tensors will run the PyTorch reference (pip install pybind11, then reinstall)\n")

class build_py(_build_py):
    """Also copy kernels/*.py into dcam/kernels/ of the built package, and the C
    header csrc/include/dcam.h into dcam/include/ (an editable install reads
    both in place, see dcam/kernels/__init__.py and dcam/c_api.py)."""

    def run(self):
        super().run()
        copied = []
        for folder, pattern, target in (("kernels", "*.py", ("dcam", "kernels")),
                                        (os.path.join("csrc", "include"), "*.h", ("dcam", "include"))):
            target = os.path.join(self.build_lib, *target)
            os.makedirs(target, exist_ok=True)
            for src in sorted(glob.glob(os.path.join(HERE, folder, pattern))):
                copied.append(os.path.join(target, os.path.basename(src)))
                self.copy_file(src, copied[-1])
        if not getattr(self, "editable_mode", False):  # (an editable build copies nothing: its build_lib holds no package)
            revision = _write_revision(os.path.join(self.build_lib, "dcam"))
            if revision is not None:
                copied.append(revision)
            self._remove_stale(copied)

    def _remove_stale(self, copied):
        """Delete what an earlier build left in build/lib/dcam that this one did not write: a module
        removed or moved since (pip builds a checkout in place, reusing its build/ folder, and the
        wheel takes all of build/lib, so the old module was installed beside the new one). The
        extensions are build_ext's, written after this step: it keeps them when up to date."""
        keep = {os.path.abspath(p) for p in list(self.get_outputs(include_bytecode=True)) + copied}
        extensions = (".so", ".dylib", ".pyd")
        for folder, _, files in os.walk(os.path.join(self.build_lib, "dcam")):
            for name in files:
                path = os.path.abspath(os.path.join(folder, name))
                if path not in keep and not name.endswith(extensions):
                    self.announce(f"removing {path} (not in this build of dcam)", level=2)
                    os.remove(path)


def _provenance():
    """dcam/provenance.py, loaded by path (it imports nothing but the standard library at its top; importing
    the dcam package here would need torch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_dcam_provenance", os.path.join(HERE, "dcam", "provenance.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_revision(package_dir: str):
    """Write the commit this build is made from into ``package_dir/_revision.txt`` (what run.json and meta.json
    record as ``dcam_revision`` where the installed dcam is no git checkout): the checkout's commit, or, building
    from an sdist, the one the sdist carries. Nothing (None) where neither is known: a build never fails on it."""
    prov = _provenance()
    revision = prov.checkout_revision(os.path.join(HERE, "dcam")) or prov.built_revision(os.path.join(HERE, "dcam"))
    if revision is None:
        return None
    os.makedirs(package_dir, exist_ok=True)
    path = os.path.join(package_dir, prov.REVISION_FILE)
    if os.path.lexists(path):  # (an sdist's release tree hard-links the sources: never write through the link)
        os.unlink(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(revision + "\n")
    return path


class sdist(_sdist):
    """Also write the checkout's commit into the sdist's ``dcam/_revision.txt``, so a wheel built from the sdist
    (``python -m build``: no git there) records it too."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        _write_revision(os.path.join(base_dir, "dcam"))


def _long_description() -> str:
    """README.md without its pictures: their links are relative to the repository, so on a
    package index they would show as broken images; each becomes a line naming the file."""
    path = os.path.join(HERE, "README.md")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        text = f.read()
    return re.sub(r"^!\[([^\]]*)\]\((?![a-z]+://)([^)\s]+)\)[ \t]*$", r"*(picture: \1, `\2` in the repository)*",
                  text, flags=re.M)


cmdclass["build_py"] = build_py
cmdclass["sdist"] = sdist
# the bundled model's weights folder is data inside dcam.zoo, listed as a package of its own so
# setuptools installs it without its "Package would be ignored" warning
packages = find_packages(include=["dcam", "dcam.*"]) + ["dcam.zoo.weights"]

setup(
    name="dcam",
    version=_version(),
    description="Diffusion-CAM: where in the image a diffusion multimodal LLM looked for each word",
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_data={"dcam": ["zoo/weights/*", "zoo/weights/**/*"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        # tested with torch 2.13 (triton 3.7) and transformers 5.24; torch before 2.10 pins a triton
        # below 3.6, and the zoo model uses transformers 5's PreTrainedConfig
        "torch>=2.10",
        "triton>=3.6,<3.8; platform_system=='Linux'",
        "numpy",
        "transformers>=5.0",
        "safetensors",
        "pillow",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark", "pytest-xdist", "hypothesis",
                             # tests/test_packaging.py runs setup.py itself, outside pip's isolated build
                             "setuptools>=64", "pybind11>=2.12"]},
    entry_points={"console_scripts": ["dcam=dcam.cli:main"]},
    zip_safe=False,
)
