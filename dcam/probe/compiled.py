"""Probing a model with ``torch.compile``'d parts.

A compiled backward takes no batched cotangents (dcam's one backward for many words) and, its
buffers donated, no second backward through the same graph either, so the per-word fallback
fails too ("This backward function was compiled with non-empty donated buffers"; torch donates
them when that graph's first backward kept nothing, as a training step's). LaViDa-Dream's
published decoder layers are compiled (``@torch.compile def forward``), and a user may compile
any model (``torch.compile(model)``, ``module.compile()``) or call compiled functions from its
blocks (``fused_mlp = torch.compile(_mlp)`` at module level, ``x + fused_mlp(self.fc(x))`` in a
``forward``). While such a model is probed, its compiled code runs eagerly, so the probe's
graph is an ordinary autograd graph.

What is found before the probe (:func:`has_compiled_parts`, by looking, nothing run): compiled
modules, compiled ``forward``s, and compiled functions a module's ``forward`` names itself (a
global of its code, or an attribute of the module). Compiled code further down (a helper the
``forward`` calls, which calls a compiled function) is not seen; for it the probe itself fails
with torch's donated-buffers error, and :func:`eager_on_donated_buffers` (on
:func:`dcam.probe.probe_batch`) runs it once more with the compiled code eager and remembers the
model, whose later probes go eager at once; a trajectory's probe
(:func:`dcam.trajectory.probing.trajectory_gradients`) likewise. Any other error is the probe's,
unchanged.

``torch.compiler.set_stance`` is process-wide state, not per thread: a ``with set_stance(...)``
per probe restored, on exit, the stance it found on entry, so two probes that overlapped in
two threads left the process in ``force_eager`` for good (the second restored the first's).
Here the stance is counted: the first probe to need it sets it, the last one to finish
restores what was there before. Meanwhile compiled code anywhere in the process runs eagerly
(slower, same results); a model without compiled parts never touches the stance.
"""
from __future__ import annotations

import functools
import threading
import weakref
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

_lock = threading.Lock()
_holders = 0
_stance = None  # the set_stance object of the first holder, whose exit restores the prior stance
_names = weakref.WeakKeyDictionary()  # a forward -> _names_of(it)
_found_by_failing = weakref.WeakSet()  # models whose probe failed in a compiled backward (compiled code not seen)
#: the start of torch's message (torch._functorch._aot_autograd.runtime_wrappers)
DONATED_BUFFERS = "This backward function was compiled with non-empty donated buffers"


def _compiled_function(obj) -> bool:
    # (``in __dict__``, not hasattr: a global may be any object, and its __getattr__ may do anything)
    return "_torchdynamo_orig_callable" in getattr(obj, "__dict__", ())


def _names_of(forward):
    """``((globals, names), ...)`` of ``forward``'s code and of every function down its
    ``__wrapped__`` chain (transformers wraps a decoder layer's ``forward``), and all those names
    (cached per function: names are fixed with the code; what they hold is looked up each time)."""
    try:
        return _names[forward]
    except (KeyError, TypeError):
        pass
    chain, fn = [], forward
    for _ in range(8):  # (a bound of the __wrapped__ chain: it could loop)
        fn = getattr(fn, "__func__", fn)
        code, env = getattr(fn, "__code__", None), getattr(fn, "__globals__", None)
        if code is None or env is None:
            break
        chain.append((env, code.co_names))
        fn = getattr(fn, "__wrapped__", None)
    found = (tuple(chain), frozenset(n for _, names in chain for n in names))
    try:
        _names[forward] = found
    except TypeError:  # (not weakly referable)
        pass
    return found


def _forward_calls_compiled(m: nn.Module, seen: set, compiled_module: type) -> bool:
    """Whether ``m``'s ``forward`` names a compiled function: a global of its code (looked up
    once per function in one :func:`has_compiled_parts`) or an attribute of ``m``;
    ``compiled_module``: torch's ``OptimizedModule`` (looked up once per model, not per module)."""
    fn = m.__dict__.get("forward") or getattr(type(m), "forward", None)
    if fn is None:
        return False
    chain, names = _names_of(fn)
    if fn not in seen:
        seen.add(fn)
        if any(_compiled_function(v) or isinstance(v, compiled_module)
               for env, code_names in chain for v in map(env.get, code_names) if v is not None):
            return True
    own = m.__dict__
    return any(_compiled_function(own[name]) for name in own.keys() & names)


def has_compiled_parts(model: nn.Module) -> bool:
    """Whether any module of ``model`` runs compiled code: a ``torch.compile``'d module
    (``OptimizedModule``), one compiled in place (``module.compile()``), one whose
    ``forward`` is a compiled function (a ``@torch.compile`` method, as LaViDa-Dream's layers),
    or one whose ``forward`` names a compiled function (a global of its code, an attribute of
    the module); or a model a probe found so (:func:`eager_on_donated_buffers`)."""
    from torch._dynamo.eval_frame import OptimizedModule

    if model in _found_by_failing:
        return True
    seen = set()
    for m in model.modules():
        if isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None:
            return True
        if hasattr(getattr(type(m), "forward", None), "_torchdynamo_orig_callable") or \
                hasattr(m.__dict__.get("forward"), "_torchdynamo_orig_callable"):
            return True
        if _forward_calls_compiled(m, seen, OptimizedModule):
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


def eager_on_donated_buffers(probe_fn):
    """Decorator of a probe ``probe_fn(adapter, ...)`` (it runs under :func:`dcam.probe.hooks.probing`,
    which takes :func:`uncompiled`): when it fails with torch's donated-buffers error on a model
    :func:`has_compiled_parts` did not find compiled, the model is remembered as compiled and the
    probe runs once more, now with its compiled code eager. That error comes at the probe's first
    backward, before any gradient is handed on (to a ``grad_sink``), so nothing is handed on twice."""
    @functools.wraps(probe_fn)
    def run(adapter, *args, **kwargs):
        model = adapter.model
        try:
            return probe_fn(adapter, *args, **kwargs)
        except RuntimeError as exc:
            if not str(exc).startswith(DONATED_BUFFERS) or has_compiled_parts(model):
                raise  # (with the compiled code already eager, the error is not the one this undoes)
        _found_by_failing.add(model)
        return probe_fn(adapter, *args, **kwargs)
    return run


__all__ = ["has_compiled_parts", "compiled_code_eager", "uncompiled", "eager_on_donated_buffers", "DONATED_BUFFERS"]
