"""Lazy, reasoned access to the optional compiled backends.

`cpp_backend` wraps `dcam.backends.cpp` (the C++ extension `dcam._C`),
`triton_backend` wraps `dcam.kernels` (Triton). Importing dcam never fails
because one of them is missing: the reason is kept and reported by
`available_backends()` and in the error raised when that backend is asked for
explicitly. Only ImportError is treated as "not available"; any other error
while importing a backend is a bug and propagates.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Optional


class _LazyBackend:
    def __init__(self, module_name: str, probe: str):
        self._module_name = module_name
        self._probe = probe  # attribute whose presence proves the backend is usable
        self._module = None
        self._reason: Optional[str] = None
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            mod = importlib.import_module(self._module_name)
        except ImportError as exc:
            self._reason = f"{type(exc).__name__}: {exc}"
            return
        ok = getattr(mod, self._probe, None)
        if callable(ok):
            ok = ok()
        if not ok:
            self._reason = f"{self._module_name}.{self._probe} is false"
            return
        self._module = mod

    def importable(self) -> bool:
        self._load()
        return self._module is not None

    def is_available(self) -> bool:
        """The module imports and its probe says it is usable."""
        return self.importable()

    def module(self):
        self._load()
        if self._module is None:
            raise RuntimeError(f"dcam backend {self._module_name} is not available: {self._reason}")
        return self._module

    def unavailable_reason(self) -> Optional[str]:
        self._load()
        return self._reason


class _TritonBackend(_LazyBackend):
    @staticmethod
    def installed() -> bool:
        """Whether the triton package is installed (without importing it)."""
        return importlib.util.find_spec("triton") is not None

    @staticmethod
    def interpreting() -> bool:
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


cpp_backend = _LazyBackend("dcam.backends.cpp", "is_available")
triton_backend = _TritonBackend("dcam.kernels", "is_available")
