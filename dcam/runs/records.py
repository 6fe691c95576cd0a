"""One record's files and its metrics: reading the image and the label mask,
resolving which mask labels each word of the response names, and the paper's
per-map metrics (:mod:`dcam.eval.metrics`) of the record's words.

A word's map is the mean of the maps of the explained items that cover it
(:func:`dcam.eval.alignment.word_maps`), as in ``dcam eval``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from ..errors import InputError, one_line
from ..eval.alignment import word_maps
from ..words import split_words


def read_image(path: str):
    """(RGB image, conversion notes); a missing or unreadable file is InputError ("image: ...")."""
    from ..images import load_image_with_notes

    return load_image_with_notes(path)


def read_mask(path: str, image_size: Tuple[int, int]) -> np.ndarray:
    """The int64 label mask at ``path``; it must have the image's size ``(W, H)``."""
    from ..eval.datasets.base import open_mask

    try:
        mask = open_mask(path)
    except InputError as exc:
        raise InputError(f"mask: {one_line(exc)}") from None
    W, H = image_size
    if mask.shape != (H, W):
        raise InputError(f"mask: {path} is {mask.shape[0]}x{mask.shape[1]} but the image is {H}x{W}")
    return mask


def ground_truth(rec, e):
    """The record's words with their labels as a :class:`dcam.eval.datasets.EvalRecord`
    (None without a mask). A label word that is not in the response, or a
    label that is not in the mask, is InputError."""
    if rec.mask is None:
        return None
    from ..eval.datasets.base import PhraseMatcher, make_record, object_labels, phrase

    text = rec.response if isinstance(rec.response, str) else e.response
    words = list(rec.words) if rec.words is not None else split_words(text)
    if rec.word_labels is not None:
        labels = list(rec.word_labels)
        if len(labels) != len(words):
            raise InputError(f"labels: {len(labels)} entries for the {len(words)} words of the response")
    else:
        # (a named word written without spaces, {"红猫": 1}, becomes one word of the metrics, not a word per character)
        words, hits = PhraseMatcher({phrase(k): k for k in rec.label_map}).label(words)
        for k in rec.label_map:
            if k not in hits:
                raise InputError(f"labels: word {k!r} is not in the response ({' '.join(words)})")
        labels = [rec.label_map[h] if h is not None else () for h in hits]
    objects = rec.objects  # (overlapping objects, each whole: scored against their own mask)
    present = set(np.unique(rec.mask).tolist()) if objects is None else object_labels(objects, rec.mask.shape)
    for w, labs in zip(words, labels):
        missing = [v for v in labs if v not in present]
        if missing:
            raise InputError(f"labels: label {missing[0]} of the word {w!r} is not in the mask")
    truth = make_record(rec.id, e.image, text, words, rec.mask, labels, objects=objects)
    if rec.function is not None:
        truth.function = list(rec.function)
    return truth


def _floats(t) -> List[Optional[float]]:
    return [None if not math.isfinite(v) else v for v in (float(x) for x in t.tolist())]


def record_metrics(e, truth, targeted: bool = False) -> dict:
    """Per-map metrics of the record's object and function words (JSON-ready).

    targeted: the record named its targets (not "all"): a word of the response that
    was not among them has no map and is counted as ``not_targeted``, not as
    ``unaligned`` (a word no response token spells)."""
    import torch

    from ..eval.metrics import function_metrics, object_metrics
    from ..words import align_words, split_words

    wmaps = word_maps(e, truth.words)
    obj = [i for i in truth.object_indices if i in wmaps]
    fun = [i for i in truth.function_indices if i in wmaps]
    without = [i for i in truth.object_indices + truth.function_indices if i not in wmaps]
    in_response = align_words(list(truth.words), split_words(e.response)) if targeted and without else []
    not_targeted = sum(1 for i in without if in_response[i])
    out: dict = {"object": {"words": obj}, "function": {"words": fun},
                 "unaligned": len(without) - not_targeted, "not_targeted": not_targeted}
    if obj:
        r = object_metrics(torch.stack([wmaps[i] for i in obj]), [truth.word_truth(i) for i in obj])
        out["object"].update({k: _floats(r[k]) for k in ("obj_iou", "contrast", "concentration", "f3")})
    if fun:
        r = function_metrics(torch.stack([wmaps[i] for i in fun]), truth.size)
        out["function"]["func_iou"] = _floats(r["func_iou"])
    out["words"] = list(truth.words)
    return out


def score_record(rec, e) -> Optional[dict]:
    """The metrics of the explanation ``e`` of the source's record ``rec`` (:func:`record_metrics` of its
    :func:`ground_truth`; a record that names its targets is scored on them alone); None without a mask."""
    truth = ground_truth(rec, e)
    return None if truth is None else record_metrics(
        e, truth, targeted=not (isinstance(rec.targets, str) and rec.targets == "all"))


__all__ = ["read_image", "read_mask", "ground_truth", "record_metrics", "score_record"]
