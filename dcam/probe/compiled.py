"""Probing a model with ``torch.compile``'d parts.

A compiled backward takes no batched cotangents (dcam's one backward for many words) and, its
buffers donated, no second backward through the same graph either, so the per-word fallback
fails too ("This backward function was compiled with non-empty donated buffers"). LaViDa-Dream's
published decoder layers are compiled (``@torch.compile def forward``), and a user may compile
any model (``torch.compile(model)``, ``module.compile()``). While such a model is probed, its
compiled code runs eagerly, so the probe's graph is an ordinary autograd graph.

``torch.compiler.set_stance`` is process-wide state, not per thread: a ``with set_stance(...)``
per probe restored, on exit, the stance it found on entry, so two probes that overlapped in
two threads left the process in ``force_eager`` for good (the second restored the first's).
Here the stance is counted: the first probe to need it sets it, the last one to finish
restores what was there before. Meanwhile compiled code anywhere in the process runs eagerly
(slower, same results); a model without compiled parts never touches the stance.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

_lock = threading.Lock()
_holders = 0
_stance = None  # the set_stance object of the first holder, whose exit restores the prior stance


def has_compiled_parts(model: nn.Module) -> bool:
    """Whether any module of ``model`` runs compiled code: a ``torch.compile``'d module
    (``OptimizedModule``), one compiled in place (``module.compile()``), or one whose
    ``forward`` is a compiled function (a ``@torch.compile`` method, as LaViDa-Dream's layers)."""
    from torch._dynamo.eval_frame import OptimizedModule

    for m in model.modules():
        if isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None:
            return True
        if hasattr(getattr(type(m), "forward", None), "_torchdynamo_orig_callable") or \
                hasattr(m.__dict__.get("forward"), "_torchdynamo_orig_callable"):
            return True
    return False


@contextmanager
def compiled_code_eager():
    """Compiled code runs eagerly while any holder is inside (see the module's docstring)."""
    global _holders, _stance
    with _lock:
        if _holders == 0:
            _stance = torch.compiler.set_stance("force_eager")
            _stance.__enter__()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                stance, _stance = _stance, None
                stance.__exit__(None, None, None)


def uncompiled(model: nn.Module):
    """:func:`compiled_code_eager` for a model with compiled parts; nothing otherwise."""
    return compiled_code_eager() if has_compiled_parts(model) else nullcontext()


__all__ = ["has_compiled_parts", "compiled_code_eager", "uncompiled"]
