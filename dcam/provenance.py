"""What a saved result records about the code and the machine that made it, so that an
auditor can tell which dcam made a result and rerun it: the code's revision, the
libraries' versions, the CPU threads, the command.

The version string ``dcam.__version__`` is the same for every revision, so the
revision is recorded beside it (:func:`code_revision`): the git commit of the
checkout dcam runs from (``+dirty`` when its tracked files differ from that
commit, ``+unchecked`` when git could not say: an unreadable index, a status
past :data:`GIT_TIMEOUT_S`), else the commit a build wrote into the package (``dcam/_revision.txt``,
written by ``setup.py`` when it builds from a git checkout or from an sdist made
from one), else ``"unknown"``. Finding it never fails: no git, no checkout, a
git that hangs, all give the next answer.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from typing import Dict, Optional, Sequence

#: The file a build writes the commit into (setup.py), beside this module.
REVISION_FILE = "_revision.txt"
#: Seconds one git call may take before it is taken as no answer (a repository on a hung mount).
GIT_TIMEOUT_S = 10


def _git(folder: str, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):  # no git, not executable, timed out
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def checkout_revision(package_dir: str) -> Optional[str]:
    """The commit of the git checkout whose top folder holds ``package_dir`` (``+dirty`` when a tracked
    file differs from it, ``+unchecked`` when ``git status`` fails), None when dcam does not run from a
    checkout. The checkout must be dcam's own: an installed dcam inside some other repository (a virtual
    environment kept in a project's folder) is not that repository's commit."""
    root = os.path.dirname(os.path.realpath(package_dir))
    top = _git(root, "rev-parse", "--show-toplevel")
    if not top or os.path.realpath(top) != root:
        return None
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return None
    changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    if changed is None:  # (an unreadable index, a status past GIT_TIMEOUT_S: it was taken for "no change")
        return commit + "+unchecked"
    return commit + ("+dirty" if changed else "")


def built_revision(package_dir: str) -> Optional[str]:
    """The commit a build wrote into the package (see ``setup.py``), None without one."""
    try:
        with open(os.path.join(package_dir, REVISION_FILE), encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return None
    return text or None


@functools.lru_cache(maxsize=None)
def code_revision() -> str:
    """The revision of the dcam code that runs (see the module's text); cached for the process."""
    here = os.path.dirname(os.path.abspath(__file__))
    return checkout_revision(here) or built_revision(here) or "unknown"


@functools.lru_cache(maxsize=None)
def _library_versions() -> tuple:
    """(name, version) of dcam, its revision, Python and the libraries: read once per process."""
    from importlib import metadata

    from . import __version__

    out = [("dcam", __version__), ("dcam_revision", code_revision()), ("python", platform.python_version())]
    for pkg in ("torch", "transformers", "safetensors", "numpy", "triton"):
        try:
            out.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            out.append((pkg, "not installed"))
    return tuple(out)


def versions() -> Dict[str, str]:
    """dcam's version and revision, Python's and the libraries' versions, and whether the C++ backend
    ran (an install without it runs the PyTorch reference, whose refined maps may differ where a map sits
    on a threshold: README, Backends)."""
    from .ops.backends import cpp_backend

    out = dict(_library_versions())
    out["dcam._C"] = "built" if cpp_backend.is_available() else f"not available: {cpp_backend.unavailable_reason()}"
    return out


def machine() -> Dict[str, object]:
    """The CPU threads torch ran with (maps differ in the last bits between thread counts: README,
    Reproducibility) and the platform."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "platform": platform.platform()}


def kernels(backend: str, device_type: str) -> str:
    """The implementation of dcam's operators that ``backend`` runs on tensors of ``device_type``: the named
    one, or for ``"auto"`` the one the dispatcher picks (README, Backends and dispatch): ``cpp`` for CPU
    tensors where ``dcam._C`` is built, ``triton`` for CUDA ones where triton is, else ``torch``."""
    from .ops.backends import cpp_backend, triton_backend

    if backend != "auto":
        return backend
    if device_type == "cpu":
        return "cpp" if cpp_backend.is_available() else "torch"
    if device_type == "cuda":
        return "triton" if triton_backend.installed() and triton_backend.is_available() else "torch"
    return "torch"


def explainer_record(explainer) -> Dict[str, object]:
    """What an explanation's ``meta.json`` records of the code and the settings that made it beyond its own
    fields: versions, machine, the operators' backend and the kernels it ran, the chunk size and memory
    budget, and the model as far as the object says (its class and the folder or hub name it was loaded
    from, transformers' ``name_or_path``; ``dcam explain`` adds the digests of its files and the command)."""
    device = next((p.device for p in explainer.model.parameters()), None)
    device_type = device.type if device is not None else "cpu"
    uses_ops = explainer.method.uses_config  # (only diffusion-cam runs dcam's operators; the others are PyTorch)
    config = getattr(explainer.model, "config", None)
    return {"versions": versions(), "machine": machine(),
            "backend": explainer.backend if uses_ops else None,
            "kernels": kernels(explainer.backend, device_type) if uses_ops else None,
            "chunk_size": explainer.chunk_size, "memory_budget": explainer.memory_budget,
            "model": {"class": f"{type(explainer.model).__module__}.{type(explainer.model).__qualname__}",
                      "name_or_path": getattr(config, "name_or_path", None) or None}}


def command(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """The command line (``argv``; by default this process's) and the folder it ran in (relative paths in it
    are relative to that folder). The ``dcam`` command passes ``["dcam", ...its arguments]``: run as
    ``python -m dcam`` or under ``torchrun``, ``sys.argv[0]`` is the path of ``dcam/__main__.py``."""
    return {"argv": list(sys.argv if argv is None else argv), "cwd": os.getcwd()}


def provenance(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """versions and machine, and with ``argv`` (a command's) the command, as one record."""
    out: Dict[str, object] = {"versions": versions(), "machine": machine()}
    if argv is not None:
        out["command"] = command(argv)
    return out


__all__ = ["code_revision", "checkout_revision", "built_revision", "versions", "machine", "kernels",
           "explainer_record", "command", "provenance", "REVISION_FILE"]
