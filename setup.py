"""Build script: installs the `dcam` package, maps the top-level `kernels/`
folder to `dcam.kernels` (a top-level `kernels` module would clash with an
unrelated PyPI package), and compiles the C++ CPU backend `dcam._C`."""
import glob
import os
import sys

from setuptools import setup, find_packages

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pragma: no cover - pyproject's build requirements provide it
    Pybind11Extension = None
    build_ext = None

HERE = os.path.dirname(os.path.abspath(__file__))

ext_modules = []
cmdclass = {}
if Pybind11Extension is not None:
    core_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    binding_sources = sorted(glob.glob(os.path.join("csrc", "python", "*.cpp")))
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
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            cxx_std=17,
        )
    )
    cmdclass["build_ext"] = build_ext

packages = find_packages(include=["dcam", "dcam.*"]) + ["dcam.kernels"]

setup(
    name="dcam",
    version="0.1.0",
    description="Diffusion-CAM: where in the image a diffusion multimodal LLM looked for each word",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"dcam.kernels": "kernels"},
    package_data={"dcam": ["zoo/weights/*", "zoo/weights/**/*"], "csrc": []},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.6",
        "triton>=3.6,<3.8; platform_system=='Linux'",  # torch 2.13 pairs with triton 3.7
        "numpy",
        "transformers>=4.57",
        "safetensors",
        "pillow",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["dcam=dcam.cli:main"]},
    zip_safe=False,
)
