"""Which implementations of the operators are usable in this process.

``cpp_backend`` wraps :mod:`dcam.ops.cpp` (the C++ extension ``dcam._C``),
``triton_backend`` wraps :mod:`dcam.ops.triton_launch` (the Triton launchers
of the kernels in :mod:`dcam.kernels`). Both import lazily: ``import dcam``
never imports triton and never fails because a backend is missing; the
reason is kept and reported by :func:`available_backends`'s CLI (``dcam
backends``) and in the error raised when that backend is asked for by name.
Only ImportError counts as "not available"; any other error while importing
a backend is a bug and propagates.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from typing import List, Optional

import torch

from ..errors import InputError

BACKENDS = ("auto", "torch", "cpp", "triton")


class LazyBackend:
    """A backend module imported on first use, with the reason it is missing."""

    def __init__(self, module_name: str, probe: str):
        self._module_name = module_name
        self._probe = probe  # function of the module that says whether it is usable
        self._module = None
        self._reason: Optional[str] = None
        self._loaded = False
        # first calls from several threads at once: one imports, the others wait for its
        # outcome (they saw "loaded" with no module yet and fell back or failed)
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._module, self._reason = self._import()  # (a bug's exception propagates, every time)
            self._loaded = True

    def _import(self):
        """(the module, None) when it is usable, else (None, the reason)."""
        try:
            mod = importlib.import_module(self._module_name)
        except ImportError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if not getattr(mod, self._probe)():
            # the module's own reason (dcam._C's ImportError: "file too short", a missing
            # symbol) tells a user what to fix; "is_available() is false" did not
            why = getattr(mod, "unavailable_reason", lambda: None)()
            return None, why or f"{self._module_name}.{self._probe}() is false"
        return mod, None

    def is_available(self) -> bool:
        self._load()
        return self._module is not None

    def module(self):
        self._load()
        if self._module is None:
            raise RuntimeError(f"dcam backend {self._module_name} is not available: {self._reason}")
        return self._module

    def unavailable_reason(self) -> Optional[str]:
        self._load()
        return self._reason


class TritonBackend(LazyBackend):
    @staticmethod
    def installed() -> bool:
        """Whether the triton package is installed (without importing it)."""
        return importlib.util.find_spec("triton") is not None

    @staticmethod
    def interpreting() -> bool:
        """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``, read when triton is imported)."""
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


cpp_backend = LazyBackend("dcam.ops.cpp", "is_available")
triton_backend = TritonBackend("dcam.ops.triton_launch", "is_available")


def available_backends() -> List[str]:
    """Backends usable in this process (explicit names for ``backend=``)."""
    names = ["torch"]
    if cpp_backend.is_available():
        names.append("cpp")
    if triton_backend.installed() and (torch.cuda.is_available() or triton_backend.interpreting()):
        if triton_backend.is_available():
            names.append("triton")
    return names


def check_backend(backend: str, device: torch.device) -> str:
    """``backend`` if it can run tensors on ``device``; else an InputError
    (a backend asked for by name that is not built here is a RuntimeError)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device.type == "meta" and backend != "auto":
        # no kernel runs on values that do not exist; the registered ops' fake kernels give the shapes
        raise InputError(f"backend={backend!r} cannot run meta tensors (shapes without values); backend='auto' "
                         "gives the outputs' shapes")
    if backend == "cpp":
        if device.type != "cpu":
            raise InputError(f"backend='cpp' needs CPU tensors, got tensors on {device}")
        if not cpp_backend.is_available():
            raise RuntimeError(f"backend='cpp' is not available: {cpp_backend.unavailable_reason()}")
    if backend == "triton":
        if not triton_backend.installed():
            raise RuntimeError("backend='triton' needs the triton package, which is not installed")
        if device.type != "cuda" and not (device.type == "cpu" and triton_backend.interpreting()):
            raise InputError(f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
                             f"got tensors on {device}")
        if not triton_backend.is_available():
            raise RuntimeError(f"backend='triton' is not available: {triton_backend.unavailable_reason()}")
    return backend
