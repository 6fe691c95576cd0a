"""Evaluation data sets: one record type, one file per layout.

- ``shapes`` (:mod:`.shapes`): the bundled grounded-shapes set;
- COCO (:mod:`.coco`): images + instances JSON (+ captions JSON);
- TAM / GranDf (:mod:`.tam`): ``anno.json`` with label masks and a word -> label map.

:func:`open_dataset` takes ``"shapes"`` or a folder and detects the layout
(``anno.json`` -> TAM; an ``instances*.json`` in the folder or its
``annotations/`` -> COCO).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional, Tuple

from ...errors import InputError, one_line
from .base import EvalDataset, EvalRecord, RecordError
from .coco import COCO_SYNONYMS, CocoEval, load_coco
from .masks import decode_rle, polygons_to_mask, rle_string_to_counts
from .shapes import ShapesEval, load_shapes
from .tam import TamEval, load_tam

#: the split when none is given: shapes' test split; a COCO folder's ``instances_test*``, else its
#: validation split, which must be one file (a split that is given must be there, and be one file)
DEFAULT_SPLIT = "test"


def _coco_candidates(root: str):
    cands = []
    for d in (os.path.join(root, "annotations"), root):
        cands += sorted(glob.glob(os.path.join(d, "instances*.json")))
    return cands


def _split_files(cands, split: str):
    """The ``instances_<split>*.json`` of ``cands``: only those named exactly ``instances_<split>.json``
    if there are such (split "val2017" beside a val2017_extra file), else every one it begins."""
    exact = [c for c in cands if os.path.basename(c) == f"instances_{split}.json"]
    return exact or [c for c in cands if os.path.basename(c).startswith(f"instances_{split}")]


def _coco_files(root: str, split: Optional[str]) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(images folder, instances JSON, captions JSON or None) of ``split`` (None: the default)."""
    cands = _coco_candidates(root)
    if not cands:
        return None, None, None
    given, split = split is not None, split or DEFAULT_SPLIT
    names = sorted({os.path.basename(c) for c in cands})
    pick = _split_files(cands, split)
    if not pick and given:  # (it evaluated the validation split without a word, for "test" too)
        raise InputError(f"split: no instances_{split}*.json in {root!r} (its COCO files: {', '.join(names)})")
    if not pick:
        pick = _split_files(cands, "val") or cands
    # one split's file, in annotations/ or the folder (annotations/ first); several splits: the first in
    # sorted order was taken without a word (split "val" and no split both gave val2014 over val2017)
    splits = sorted({os.path.basename(c) for c in pick})
    if len(splits) > 1:
        why = f"{split!r} matches several COCO files in {root!r}" if given else \
            f"none given and {root!r} has several COCO files it could mean"
        named = [n[len("instances_"):].rsplit(".", 1)[0] for n in splits]
        raise InputError(f"split: {why} ({', '.join(splits)}); name one split: {', '.join(named)}")
    inst = pick[0]
    tag = os.path.basename(inst)[len("instances"):]  # e.g. "_val2017.json"
    cap = os.path.join(os.path.dirname(inst), "captions" + tag)
    cap = cap if os.path.exists(cap) else None
    stem = tag.strip("_").rsplit(".", 1)[0]  # "val2017"
    first = None
    try:
        with open(inst) as f:
            data = json.load(f)
        imgs = data.get("images") if isinstance(data, dict) else None
        first = imgs[0].get("file_name") if isinstance(imgs, list) and imgs and isinstance(imgs[0], dict) else None
    except (OSError, ValueError):
        pass  # (the loader names what is wrong with the file)
    dirs = [os.path.join(root, "images", stem), os.path.join(root, stem), os.path.join(root, split),
            os.path.join(root, "images"), root]
    images_dir = next((d for d in dirs if first and os.path.exists(os.path.join(d, first))), None)
    if images_dir is None:
        images_dir = next((d for d in dirs if os.path.isdir(d)), root)
    return images_dir, inst, cap


def detect_layout(path: str, split: Optional[str] = None) -> str:
    """``"tam"`` or ``"coco"`` for a data folder; ValueError otherwise."""
    if not os.path.isdir(path):
        raise InputError(f"data set folder {path} does not exist")
    if os.path.exists(os.path.join(path, "anno.json")):
        return "tam"
    if _coco_candidates(path):
        return "coco"
    raise InputError(f"{path} is neither a TAM layout (anno.json) nor a COCO layout "
                     f"(instances*.json in the folder or its annotations/)")


def open_dataset(spec: str, split: Optional[str] = None, size: int = 200, image_size: int = 64) -> EvalDataset:
    """``"shapes"`` (``size`` scenes of the ``split``) or a folder (layout auto-detected). ``split``
    None: shapes' test split, a COCO folder's test split if it has one, else its validation split; a
    split that is given must be there. A COCO split names one ``instances_<split>*.json`` (exactly
    ``instances_<split>.json``, else the one file it begins): one that begins several is refused, as
    is the default when it does (``val2014`` and ``val2017``). A TAM folder has no splits."""
    if spec == "shapes":
        return load_shapes(split=split or DEFAULT_SPLIT, size=size, image_size=image_size)
    try:
        kind = detect_layout(spec, split)
    except InputError as exc:  # the folder's files are what is wrong: name the argument that gave them
        raise InputError(f"dataset: {one_line(str(exc))}") from None
    if kind == "tam":
        if split is not None:  # (taken and ignored; dcam eval refused --split here)
            raise InputError("split: a TAM data folder has no splits (only shapes and COCO do); leave split out")
        return _named("dataset", lambda: load_tam(spec))
    images_dir, inst, cap = _coco_files(spec, split)  # (a split the folder lacks: "split: ...")
    return _named("dataset", lambda: load_coco(images_dir, inst, cap))


def _named(argument: str, load):
    """``load()``, its InputError named after ``argument``."""
    try:
        return load()
    except InputError as exc:
        raise InputError(f"{argument}: {one_line(str(exc))}") from None


__all__ = ["EvalRecord", "EvalDataset", "RecordError", "COCO_SYNONYMS", "load_shapes", "load_coco", "load_tam",
           "open_dataset", "detect_layout", "decode_rle", "rle_string_to_counts", "polygons_to_mask",
           "ShapesEval", "CocoEval", "TamEval"]
