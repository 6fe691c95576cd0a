"""Hooks on a model: the hooked block's output as a gradient leaf, the final
norm's output recorded, parameters frozen for the duration of a probe."""
from __future__ import annotations

import functools
import itertools
import threading
import weakref
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError, NonFiniteError, model_overflow
from .compiled import uncompiled

#: The device types dcam runs a model on (:func:`dcam.models.check_device` holds names to the same rule):
#: "meta" (weights without data) and the like failed deep inside a forward.
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")

# The lock of each module and parameter a probe changes (train flags, requires_grad, hooks), by id while it lives.
# Per module, not per model: two models that share modules (m2.language_model = m1.language_model) each
# took their own lock, and the second call saved the first one's frozen flags of the shared part and restored
# those. Not one process-wide lock either: that made unrelated models (one per GPU) wait for each other.
_LOCKS: Dict[int, "threading.RLock"] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_of(obj) -> "threading.RLock":
    """(Under ``_LOCKS_GUARD``.) ``obj``'s lock, dropped when ``obj`` dies (before its id can be reused)."""
    lock = _LOCKS.get(id(obj))
    if lock is None:
        lock = _LOCKS[id(obj)] = threading.RLock()
        weakref.finalize(obj, _LOCKS.pop, id(obj), None)  # (no guard taken there: it may run inside ours)
    return lock


class ModelLock:
    """The locks of every module and parameter of a model, taken all at once in one global order (by id), so
    that models sharing modules take turns without deadlocking each other while models sharing nothing run
    at once. Re-entrant: a probe inside an explanation takes them again."""

    def __init__(self, model: nn.Module):
        objs = {id(o): o for o in itertools.chain(model.modules(), model.parameters())}
        with _LOCKS_GUARD:
            self.locks = [_lock_of(objs[k]) for k in sorted(objs)]

    def acquire(self, blocking: bool = True) -> bool:
        held = 0
        try:
            for lock in self.locks:
                if not lock.acquire(blocking):
                    break
                held += 1
        finally:
            if held < len(self.locks):  # one was busy (or the wait was interrupted): none kept
                for lock in reversed(self.locks[:held]):
                    lock.release()
        return held == len(self.locks)

    def release(self):
        for lock in reversed(self.locks):
            lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def model_lock(model: nn.Module) -> ModelLock:
    """The lock that keeps one explanation at a time on ``model`` and on any model sharing modules or
    parameters with it. Two at once shared its hooks (each thread's hook saw the other's forward) and its
    frozen flags (the second call saved the first one's frozen state and restored that: the user's model was
    left in eval mode with no parameter requiring grad)."""
    return ModelLock(model)


def check_weights(model: nn.Module) -> None:
    """InputError naming ``model`` where its parameters cannot be probed, before any flag of it is changed."""
    params = list(model.parameters())
    if any(p.is_inference() for p in params):  # (their requires_grad cannot be set back: all were left frozen)
        raise InputError("model: its weights are inference tensors (made under torch.inference_mode()); build or "
                         "load the model outside torch.inference_mode(), or replace them with clones made outside it")
    bad = next((p.device for p in params if p.device.type not in DEVICE_TYPES), None)
    if bad is not None:
        raise InputError(f"model: its weights are on the {bad.type!r} device, where dcam cannot run it; move or "
                         f"load them onto one of {', '.join(DEVICE_TYPES)}")


@contextmanager
def explaining(model: nn.Module):
    """What every explanation runs under: ``model``'s lock, and inference mode off even
    inside the caller's ``torch.inference_mode()`` (there no score could carry a gradient,
    and every map came out zero without a word; the probes turn autograd on themselves,
    so ``torch.no_grad()`` around a call was already fine)."""
    with model_lock(model), torch.inference_mode(False):
        check_weights(model)
        yield


def exclusive(method):
    """Decorator: a method of an object with ``.model`` run under :func:`explaining`."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with explaining(self.model):
            return method(self, *args, **kwargs)
    return run


@contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode, every module's own flag restored on exit: ``model.train(flag)``
    gave every submodule the top one's, so a model fine-tuned with a frozen (eval) encoder came
    back with its encoder in train mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in modes:
            m.training = flag


@contextmanager
def frozen(model: nn.Module):
    """Parameters with ``requires_grad=False`` (restored on exit), eval mode, under
    :func:`explaining`."""
    with explaining(model), eval_mode(model):
        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            failed = None
            for p, f in flags:  # every flag that can be restored is (the loop stopped at its first failure)
                try:
                    p.requires_grad_(f)
                except RuntimeError as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed


@contextmanager
def probing(adapter):
    """:func:`frozen` on the adapter's model, and the head's input recorded at the scored rows
    (``adapter.scored_rows``: it holds the graph above the hooked block) released on exit. A
    long-running server's Explainer held that graph until its next call, and after an
    interrupted backward the activations saved for it too."""
    adapter.scored_rows = None
    with frozen(adapter.model), uncompiled(adapter.model):  # (a compiled backward takes no batched cotangents)
        try:
            yield adapter.model
        finally:
            adapter.scored_rows = None


@contextmanager
def generating(model: nn.Module, watch: Sequence[nn.Module] = ()):
    """What a generation runs under: :func:`explaining`, eval mode (the response comes from the
    model as it is probed: in train mode its dropout made a new, garbled response each call),
    and the global RNG forked (a sampler that draws, as DiffusionGemma's does, leaves the
    caller's later sampling as it was, and the same call gives the same response).

    watch: modules whose outputs must stay finite (:func:`generation_watch`: the last block
    and the LM head): a model that overflows (float16) decodes NaN logits as some token, and
    its response read as nothing to explain or as garbage, or its sampler fails on them.
    If they did not, raises :func:`~dcam.errors.model_overflow`'s InputError (a generation's
    values are the model's own), after the generation or in place of the sampler's own error."""
    dev = next(iter(model.parameters()), torch.empty(0)).device
    seen, thread = [0], threading.get_ident()

    def check(module, args, out):
        x = out[0] if isinstance(out, (tuple, list)) else out
        if threading.get_ident() == thread and isinstance(x, Tensor) and x.is_floating_point():
            seen[0] += int((~torch.isfinite(x)).sum())

    handles = [m.register_forward_hook(check) for m in watch]
    try:
        with explaining(model), eval_mode(model), \
                torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            yield model
    except Exception as exc:  # a sampler that fails on the NaN it drew from ("probability tensor contains nan")
        if seen[0]:
            raise model_overflow(model, NonFiniteError("hidden states during generation", seen[0])) from exc
        raise
    finally:
        for h in handles:
            h.remove()
    if seen[0]:
        raise model_overflow(model, NonFiniteError("hidden states during generation", seen[0]))


def generation_watch(adapter) -> List[nn.Module]:
    """What :func:`generating` watches for an adapter's generation: its last block, the LM head
    (logits past float16's range from finite hidden states) and any module the adapter names in
    ``generation_modules()`` (DiffusionGemma: its decoder, which the encoder's blocks do not cover)."""
    mods = [adapter.blocks()[-1]]
    head = adapter.output_head()
    extra = getattr(adapter, "generation_modules", None)
    return mods + ([head] if head is not None else []) + (list(extra()) if callable(extra) else [])


class Tap:
    """Forward hooks: the hooked block's output becomes a grad-requiring leaf
    (and autograd is switched on from there), the final norm's output is
    recorded."""

    def __init__(self, block: nn.Module, norm: Optional[nn.Module], make_leaf: bool, retain: bool = False):
        # the hooks act on this thread's forwards only: another thread serving the model meanwhile
        # had its outputs made grad leaves and its grad mode switched on (and each of its forwards
        # counted as one more run of the hooked block)
        self.thread = threading.get_ident()
        self.block_outputs: List[Tensor] = []
        self.norm_outputs: List[Tensor] = []
        self.make_leaf = make_leaf
        self.retain = retain
        self.handles = [block.register_forward_hook(self._block_hook)]
        if norm is not None:
            self.handles.append(norm.register_forward_hook(self._norm_hook))

    def _block_hook(self, module, args, output):
        if threading.get_ident() != self.thread:
            return None
        h = output[0] if isinstance(output, (tuple, list)) else output
        if self.make_leaf:
            new = h.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # autograd from the hooked block upwards
        else:
            new = h
            if self.retain and h.requires_grad:
                h.retain_grad()
        self.block_outputs.append(new)
        if new is h:
            return None
        if isinstance(output, tuple):
            return (new,) + tuple(output[1:])
        if isinstance(output, list):
            return [new] + list(output[1:])
        return new

    def _norm_hook(self, module, args, output):
        if threading.get_ident() != self.thread:
            return None
        h = output[0] if isinstance(output, (tuple, list)) else output
        self.norm_outputs.append(h.detach())

    def remove(self):
        for hd in self.handles:
            hd.remove()

    def output(self) -> Tensor:
        if len(self.block_outputs) != 1:
            raise RuntimeError(f"the hooked block ran {len(self.block_outputs)} times in one forward; expected once")
        return self.block_outputs[0]

    def norm_output(self) -> Tensor:
        if len(self.norm_outputs) != 1:
            raise RuntimeError("the final norm did not run exactly once")
        return self.norm_outputs[0]


def gather_rows(x: Tensor, positions: Tensor) -> Tensor:
    """``x [B, L, ...]`` at ``positions`` (``[P]`` shared by every row, or ``[B, P]``) -> ``[B, P, ...]``."""
    positions = positions.to(x.device)
    if positions.dim() == 1:
        return x[:, positions]
    idx = positions.reshape(*positions.shape, *([1] * (x.dim() - 2))).expand(*positions.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


class HeadAtRows:
    """A forward pre-hook on the LM head that passes on only the final hidden
    states at ``positions``, so the model returns logits ``[B, P, V]``.

    Why: a dMLLM's head maps every position to the whole vocabulary. With an
    anyres image (about 3,000 positions) and LLaDA's 126,464 tokens that is
    1.5 GB of float32 logits per sequence and 1.5 TFLOP at hidden size 2048,
    and every batched backward would carry a dense ``[L, V]`` cotangent per
    word through the head; the scores read P rows. The hook only acts on a
    ``[B, length, D]`` input (the sequence it was set up for) and counts how
    often it did, so the caller can tell whether the model's head really ran
    through this module once."""

    def __init__(self, head: nn.Module, positions: Tensor, length: int):
        self.positions, self.length, self.calls = positions, int(length), 0
        self.thread = threading.get_ident()  # (as Tap: another thread's forwards pass untouched)
        self.rows: Optional[Tensor] = None  # the head's input at the positions ([B, P, D]), as passed on
        self.out: Optional[Tensor] = None  # and its output there
        self.handle = head.register_forward_pre_hook(self._hook)
        self.out_handle = head.register_forward_hook(self._out)

    def _hook(self, module, args):
        x = args[0] if args else None
        if threading.get_ident() != self.thread or not isinstance(x, Tensor) or x.dim() != 3 or \
                x.shape[1] != self.length:
            return None
        self.calls += 1
        self.rows = gather_rows(x, self.positions)
        return (self.rows,) + tuple(args[1:])

    def _out(self, module, args, output):
        if self.rows is not None and args and args[0] is self.rows:
            self.out = output

    def remove(self):
        self.handle.remove()
        self.out_handle.remove()


def shape_of(x) -> str:
    return f"a tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else f"a {type(x).__name__}"


def whole_logits(adapter, logits, length: int) -> Tensor:
    """The logits of a whole forward of ``adapter``, ``[B, length, V]``: anything else is the adapter's bug
    (logits cut at the front read every score one position off without a word)."""
    if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[1] != length:
        raise RuntimeError(f"{type(adapter).__name__}.forward_logits returned {shape_of(logits)}; expected "
                           f"logits [B, {length}, V], one row per position of the sequence")
    return logits

