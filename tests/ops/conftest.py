"""Fixtures and parametrisation of the operator tests.

- ``scenarios``: the module tests/ops/scenarios.py (the scenario lists and
  the comparison helper), loaded here because test modules never import
  each other.
- ``refine_case, refine_impl`` / ``pool_case, pool_impl``: every scenario
  of an op on every implementation other than the reference (:func:`_impls`:
  C++ with each AKD implementation, the dispatcher, Triton with its default
  and its GPU tile size); when only the reference exists, one skipped
  parameter says so (the reference is never compared with itself).
- ``any_backend``: (backend, device) pairs, the reference included, for
  tests that check against independent values (test_contract.py).
- ``expect_refine_case`` / ``expect_pool_case``: the scenarios that carry a
  hand-known expectation about the reference's result.
- ``fuzz_impl``: the implementations the property-based tests compare with
  the reference (C++ with its AKD path drawn per example, the dispatcher,
  Triton).
- ``device``: cpu, and cuda when there is one.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
import torch

import dcam


def _load(name: str):
    path = pathlib.Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"dcam_tests_ops_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


S = _load("scenarios")

AVAILABLE = dcam.available_backends()
CUDA = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if CUDA else "cpu"
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def akd_network_supported() -> Optional[str]:
    """None when the C++ sorting-network AKD path can run here, else why not
    (without AVX2/FMA/BMI2/F16C, ``_set_akd_path(1)`` silently falls back to
    another path, which would make a "network" test test nothing)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the sorting networks are x86-64 only (machine {platform.machine()})"
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cannot read /proc/cpuinfo to check for AVX2"
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    missing = {"avx2", "fma", "bmi2", "f16c"} - flags
    return f"CPU lacks {sorted(missing)}: AKD path 1 falls back" if missing else None


@contextlib.contextmanager
def akd_path(path: int):
    """Force one C++ AKD implementation (dcam._C._set_akd_path), reset to automatic after."""
    from dcam.ops import cpp

    cpp._C._set_akd_path(path)
    try:
        yield
    finally:
        cpp._C._set_akd_path(0)


def _to(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


@dataclass(frozen=True)
class Impl:
    """One implementation of the ops other than the reference."""

    id: str
    backend: str  # "cpp", "auto" (the registered op: the dispatcher picks the kernel) or "triton"
    device: str
    akd: int = 0  # C++: the AKD implementation (0 = automatic)
    tile: Optional[int] = None  # Triton: working-tile size (None: the launcher's default)
    skip: Optional[str] = None

    @property
    def interpreted(self) -> bool:
        return self.backend == "triton" and self.device == "cpu"

    def _context(self):
        if self.backend == "cpp":
            return akd_path(self.akd)
        return contextlib.nullcontext()

    def refine(self, args):
        from dcam.ops.library import implementation

        args = tuple(_to(a, self.device) for a in args)
        with self._context():
            if self.backend == "triton":
                from dcam.ops import triton_launch

                out = triton_launch.refine_triton(*args, tile=self.tile)
            else:
                out = implementation("refine", self.backend)(*args)
        return S.Out(*(o.cpu() for o in out))

    def pool(self, acts, grads, h, w, grad_relu, check_grads):
        from dcam.ops.library import implementation

        with self._context():
            out = implementation("pool_gradients", self.backend)(_to(acts, self.device), _to(grads, self.device), h, w,
                                                                 grad_relu, check_grads)
        return S.PoolOut(*(o.cpu() for o in out))


def _impls(op: str):
    out = []
    if "cpp" in AVAILABLE:
        out.append(Impl("cpp", "cpp", "cpu"))
        if op == "refine":
            why = akd_network_supported()
            out += [Impl("cpp-akd-network", "cpp", "cpu", akd=1, skip=why),
                    Impl("cpp-akd-bitset", "cpp", "cpu", akd=2),
                    Impl("cpp-akd-sort", "cpp", "cpu", akd=3)]
        out.append(Impl("auto-cpu", "auto", "cpu"))  # the dispatcher runs the C++ kernel on CPU tensors
    if "triton" in AVAILABLE:
        out.append(Impl("triton", "triton", TRITON_DEVICE))
        if op == "refine" and not CUDA:
            from dcam.ops.triton_launch import TILE_GPU

            out.append(Impl("triton-tile-gpu", "triton", "cpu", tile=TILE_GPU))
        if CUDA:
            out.append(Impl("auto-cuda", "auto", "cuda"))  # the dispatcher runs Triton on CUDA tensors
    return out


REFINE_IMPLS = _impls("refine")
POOL_IMPLS = _impls("pool")
ONLY_REFERENCE = f"only the reference backend is available here ({AVAILABLE}): nothing to compare it with"


#: (backend, device) pairs for tests that check every backend, the reference included,
#: against independent values (never against each other).
ANY_BACKENDS = ([("torch", "cpu")] + [("cpp", "cpu")] * ("cpp" in AVAILABLE) + [("auto", "cpu")]
                + [("triton", TRITON_DEVICE)] * ("triton" in AVAILABLE)
                + ([("torch", "cuda"), ("auto", "cuda")] if CUDA else []))


def _pairs(cases, impls):
    params = []
    for case in cases:
        for impl in impls:
            if impl.tile is not None and not getattr(case, "gpu_tile", False):
                continue  # the GPU tile size runs in the interpreter on a few chosen scenarios only
            marks = []
            if impl.skip:
                marks.append(pytest.mark.skip(reason=impl.skip))
            elif case.heavy and impl.interpreted:
                marks.append(pytest.mark.skip(reason="heavy scenario: too slow for Triton's CPU interpreter "
                                                     "(runs on the C++ backend and on compiled Triton)"))
            params.append(pytest.param(case, impl, id=f"{impl.id}:{case.id}", marks=marks))
    return params or [pytest.param(None, None, id="no-backend", marks=pytest.mark.skip(reason=ONLY_REFERENCE))]


def _fuzz_impls(no_interpreter: bool):
    impls = []
    if "cpp" in AVAILABLE:
        impls += [Impl("cpp", "cpp", "cpu"), Impl("auto-cpu", "auto", "cpu")]
    if "triton" in AVAILABLE:
        impls.append(Impl("triton", "triton", TRITON_DEVICE))
        if CUDA:
            impls.append(Impl("auto-cuda", "auto", "cuda"))
    params = []
    for impl in impls:
        marks = []
        if no_interpreter and impl.interpreted:
            marks.append(pytest.mark.skip(reason="Triton's CPU interpreter is too slow for these shapes "
                                                 "(the _small variant runs it)"))
        params.append(pytest.param(impl, id=impl.id, marks=marks))
    return params or [pytest.param(None, id="no-backend", marks=pytest.mark.skip(reason=ONLY_REFERENCE))]


def pytest_configure(config):
    config.addinivalue_line("markers", "no_interpreter: too slow for Triton's CPU interpreter (fuzz_impl skips it)")


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "refine_case" in names and "refine_impl" in names:
        metafunc.parametrize("refine_case,refine_impl", _pairs(S.REFINE, REFINE_IMPLS))
    if "pool_case" in names and "pool_impl" in names:
        metafunc.parametrize("pool_case,pool_impl", _pairs(S.POOL, POOL_IMPLS))
    if "expect_refine_case" in names:
        metafunc.parametrize("expect_refine_case", [c for c in S.REFINE if c.expect], ids=lambda c: c.id)
    if "expect_pool_case" in names:
        metafunc.parametrize("expect_pool_case", [c for c in S.POOL if c.expect], ids=lambda c: c.id)
    if "fuzz_impl" in names:
        no_interp = metafunc.definition.get_closest_marker("no_interpreter") is not None
        metafunc.parametrize("fuzz_impl", _fuzz_impls(no_interp))
    if "any_backend" in names:
        metafunc.parametrize("any_backend", ANY_BACKENDS, ids=lambda bd: f"{bd[0]}-{bd[1]}")
    if "device" in names:
        metafunc.parametrize("device", DEVICES)


# ------------------------------------------------------------------ the sm_90 build check, in the background

SM90_TEST = "test_launchers_trace_and_build_for_sm90"
_sm90 = {}


def _start_sm90_check():
    """Start tests/ops/sm90_build_check.py in a fresh Python without the interpreter
    (once); it runs on the second core while the other tests run."""
    if "proc" not in _sm90:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        out = tempfile.TemporaryFile(mode="w+")
        script = pathlib.Path(__file__).with_name("sm90_build_check.py")
        root = pathlib.Path(__file__).resolve().parents[2]
        _sm90["out"] = out
        _sm90["proc"] = subprocess.Popen([sys.executable, str(script)], cwd=str(root), env=env, stdout=out,
                                         stderr=subprocess.STDOUT, text=True)
    return _sm90["proc"]


def pytest_collection_modifyitems(session, config, items):
    # under pytest-xdist every worker collects every test but only one runs this one: there
    # the fixture starts the check when the test comes (bench/gpu_check.py runs xdist)
    if ("triton" in AVAILABLE and not os.environ.get("PYTEST_XDIST_WORKER")
            and any(item.name == SM90_TEST for item in items)):
        _start_sm90_check()


def pytest_sessionfinish(session, exitstatus):
    proc = _sm90.get("proc")
    if proc is not None and proc.poll() is None:  # the session ended before the test collected it
        proc.kill()
        proc.wait()
    if "out" in _sm90:
        _sm90["out"].close()


@pytest.fixture
def sm90_build_check():
    """A function that waits for the background sm_90 build check: (returncode, output)."""
    def wait(timeout=900):
        proc = _start_sm90_check()
        proc.wait(timeout=timeout)
        out = _sm90["out"]
        out.seek(0)
        return proc.returncode, out.read()[-8000:]
    return wait


@pytest.fixture(scope="session")
def scenarios():
    return S


@pytest.fixture
def network_akd_supported():
    return akd_network_supported() is None
