"""Checks of what an adapter returns, made where the quantities are first known, so that an
adapter's mistake is named (a RuntimeError naming the adapter class and its method) instead of
ending in a raw IndexError deep inside the model, or in quietly wrong maps.

* :func:`check_members` when an Explainer is made: ``blocks()`` is a sequence of modules and the eos and
  pad ids are sets of ints (an int, or one module, failed deep inside dcam with a TypeError);
* :func:`check_mask_id` before a probe's first forward: the mask id is a row of the LM head;
* :func:`check_widths` after it: the LM head's rows are the logits' width and its columns the
  hooked block's hidden width (once per adapter);
* :func:`diagnosed`: a forward that raised is run again with the response slots holding an end
  token, at most once per adapter (not after an out-of-memory error), to find the logits' width and
  name a mismatch behind the error;
* :func:`check_head_rows`: before an id past the LM head's rows is refused (a given response's, a
  generated one's), a forward of end tokens finds the logits' width, so that a head of too few rows
  is named as the adapter's mistake, not the id as the user's (at most once per adapter);
* :func:`check_image_slots`: every image position of an example holds the image token id (a
  VQ family's: an id of its image codes).
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import torch
from torch import Tensor, nn


def check_members(adapter) -> None:
    """RuntimeError naming the member when ``blocks()`` is no sequence of modules (one block, a generator) or
    ``eos_token_ids`` / ``pad_token_ids`` is no set of ints (one int, a tensor)."""
    who = type(adapter).__name__
    blocks = adapter.blocks()
    if not isinstance(blocks, (list, tuple, nn.ModuleList, nn.Sequential)):
        got = type(blocks).__name__
    else:
        got = next((f"a {type(blocks).__name__} holding a {type(b).__name__}" for b in blocks
                    if not isinstance(b, nn.Module)), None)
    if got is not None:
        raise RuntimeError(f"{who}.blocks() must return the hookable blocks in order (a list or nn.ModuleList of "
                           f"modules), got {got}")
    for name in ("eos_token_ids", "pad_token_ids"):
        ids = getattr(adapter, name)
        if not isinstance(ids, (set, frozenset, list, tuple)) or \
                any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in ids):
            raise RuntimeError(f"{who}.{name} must be a set of token ids (ints), got {ids!r}")


def _head_shape(adapter) -> Optional[tuple]:
    """``(rows, columns)`` of ``adapter.lm_head_weight()``; None where the adapter has no accessor."""
    try:
        w = adapter.lm_head_weight()
    except NotImplementedError:
        return None
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise RuntimeError(f"{type(adapter).__name__}.lm_head_weight(): must return the LM head's [V, D] weight, "
                           f"got {tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")
    return int(w.shape[0]), int(w.shape[1])


def _check_mask(adapter, vocab: int, what: str) -> None:
    mask = adapter.mask_token_id
    if mask is not None and not 0 <= int(mask) < vocab:
        raise RuntimeError(f"{type(adapter).__name__}.mask_token_id: {int(mask)} is outside the vocabulary of "
                           f"{vocab} ids ({what})")


def check_mask_id(adapter) -> None:
    """Before a forward: the mask id (which masked and remask probes write into the input) is a row
    of the LM head (an embedding lookup past the vocabulary is a raw IndexError on a CPU, a device-side
    assert that ends the process's CUDA context on a GPU)."""
    if getattr(adapter, "_vocabulary_checked", False):
        return
    mask = adapter.mask_token_id
    if mask is None:
        return
    try:
        image = adapter.image_token_id
    except (AttributeError, NotImplementedError):
        image = None
    if image is not None and int(mask) == int(image):  # a masked slot would be taken for an image token
        raise RuntimeError(f"{type(adapter).__name__}.mask_token_id: {int(mask)} is the image token id")
    shape = _head_shape(adapter)
    if int(mask) < 0 or shape is not None:
        _check_mask(adapter, shape[0] if shape is not None else 0,
                    f"lm_head_weight() has {shape[0]} rows" if shape is not None else "ids are >= 0")


def check_widths(adapter, vocab: int, hidden: int) -> None:
    """After a forward, once per adapter: the logits' width ``vocab`` is the number of rows of
    ``lm_head_weight()`` (the explainer checks response ids against it; TAM multiplies by it) and
    the hooked block's hidden width ``hidden`` its number of columns; the mask id is in the vocabulary."""
    if getattr(adapter, "_vocabulary_checked", False):
        return
    _check_vocab_rows(adapter, vocab)
    shape = _head_shape(adapter)
    if shape is not None and shape[1] != hidden:
        raise RuntimeError(f"{type(adapter).__name__}.lm_head_weight(): {shape[1]} columns, but the hooked block's "
                           f"hidden states are {hidden} wide (the LM head's weight has a column per hidden unit)")
    adapter._vocabulary_checked = True


#: errors after which the model is not run again to diagnose them: a second forward right after an
#: out-of-memory error (a GPU's memory still held by the first) fails again or starves other processes
NOT_DIAGNOSED = (torch.OutOfMemoryError, MemoryError)


def diagnosed(adapter, prep, call: Callable):
    """``call()`` (a probe's forward). Where it raises before the adapter's vocabulary was checked,
    the model runs once more on ``prep`` with its response slots holding an end token, an id of every
    response, and a mismatch of the LM head or the mask id with the logits' width it finds is raised
    (from the forward's error); else the forward's error is raised as it was. The diagnosis runs at
    most once per adapter (a model that keeps failing was run twice per call), and never after an
    out-of-memory error (:data:`NOT_DIAGNOSED`; an interrupt is no Exception and is not caught)."""
    try:
        return call()
    except Exception as exc:
        if getattr(adapter, "_vocabulary_checked", False) or getattr(adapter, "_vocabulary_diagnosed", False) \
                or isinstance(exc, NOT_DIAGNOSED):
            raise
        adapter._vocabulary_diagnosed = True  # (before the forward: one that fails too is not tried again)
        width = _logits_width(adapter, prep)
        if width is None:
            raise
        try:
            _check_vocab_rows(adapter, width)
        except RuntimeError as found:
            raise found from exc
        raise


def check_head_rows(adapter, prep_of: Callable) -> None:
    """Raises the RuntimeError of :func:`check_widths` where ``lm_head_weight()``'s rows are not the
    width of the model's logits on ``prep_of()`` (an example it can run), unless the widths were
    checked already at a probe (the forward runs at most once per adapter; its width is kept). Nothing is
    raised where the adapter has no head accessor or end token, or preparing or running that example
    fails: the caller's own error is the one to show then."""
    if getattr(adapter, "_vocabulary_checked", False) or _head_shape(adapter) is None \
            or not adapter.eos_token_ids:
        return
    if not hasattr(adapter, "_logits_width_found"):
        # (None: that forward failed; it is not tried again either)
        try:
            prep = prep_of()
        except Exception:  # noqa: BLE001 - the caller's error is the one to show
            prep = None
        adapter._logits_width_found = _logits_width(adapter, prep) if prep is not None else None
    if adapter._logits_width_found is not None:
        _check_vocab_rows(adapter, adapter._logits_width_found)


def _logits_width(adapter, prep) -> Optional[int]:
    """The width of the model's logits on ``prep`` with its response slots set to an end token
    (None: the adapter names no end token, or this forward fails too)."""
    ends = sorted(int(i) for i in adapter.eos_token_ids)
    if not ends:
        return None
    ids = prep.input_ids.clone()
    s = int(prep.response_start)
    ids[:, s:s + int(prep.response_length)] = ends[0]
    at = torch.tensor([max(s - 1, 0)])
    try:
        with torch.no_grad():
            logits = adapter.logits_at(ids, adapter.batch_inputs(prep, 1), at, s)
    except Exception:  # noqa: BLE001 - the diagnosis failed too: the first error is the one to show
        return None
    return int(logits.shape[-1]) if isinstance(logits, Tensor) and logits.dim() == 3 else None


def _check_vocab_rows(adapter, vocab: int) -> None:
    shape = _head_shape(adapter)
    if shape is not None and shape[0] != vocab:
        raise RuntimeError(f"{type(adapter).__name__}.lm_head_weight(): {shape[0]} rows, but the model's logits "
                           f"are {vocab} wide (the LM head's weight has a row per vocabulary id)")
    _check_mask(adapter, vocab, "the model's logits are that wide")


def check_image_slots(adapter, prep) -> None:
    """Every image position of ``prep`` holds the adapter's image token id: positions shifted onto
    text gave maps of the wrong tokens, quietly. Adapters whose image slots hold other ids (codebook
    ids) set ``image_slots_hold_image_token = False``; those with an ``image_code_ids()`` (a range:
    MMaDA's, Lumina-DiMOO's) have every image position checked to hold an id of it instead (the
    text, newline and special ids lie below their codes), the others are not checked."""
    pos = prep.image_positions
    if pos.numel() == 0:
        return
    held = prep.input_ids[0, pos]
    if getattr(adapter, "image_slots_hold_image_token", True):
        ok, want = held == int(adapter.image_token_id), f"not the image token id {int(adapter.image_token_id)}"
    else:
        codes = adapter.image_code_ids() if hasattr(adapter, "image_code_ids") else None
        if codes is None:
            return
        ok = (held >= codes.start) & (held < codes.stop)
        want = f"not an image code id ({codes.start}..{codes.stop - 1})"
    bad = torch.nonzero(~ok, as_tuple=False).reshape(-1)
    if bad.numel():
        k = int(bad[0])
        raise RuntimeError(f"{type(adapter).__name__}.prepare(): image_positions[{k}] = {int(pos[k])} "
                           f"holds id {int(held[k])}, {want}")


__all__ = ["check_mask_id", "check_widths", "diagnosed", "check_head_rows", "check_image_slots"]
