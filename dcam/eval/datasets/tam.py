"""TAM / GranDf layout: a folder with ``anno.json``, a list (or
``{"annotations": [...]}``) of entries::

    {"id": "0001",                     # optional, default: the index; unique
     "image": "images/0001.jpg",       # relative to the folder
     "caption": "a dog catches a frisbee",
     "mask": "masks/0001.png",         # a label image (pixel value = label), or
     "masks": ["m/0001_1.png", ...],   # binary masks, the i-th is label i+1
     "categories": {"dog": 1, "frisbee": [2, 3]}}   # word or phrase -> label(s)

A ``"masks"`` list may overlap: each object is scored against its own mask,
whole (:attr:`EvalRecord.objects`), whatever the list's order.

(``"category_map"`` is accepted for ``"categories"``, ``"file_name"`` for
``"image"``). Caption words match the keys as COCO words match names.
An image with an EXIF orientation is explained upright: a mask of its stored
size is turned with it, one of its upright size kept; when both sizes are the
same (a flip, a half turn, a square image) the record is skipped, its mask's
frame unknown.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Tuple

import numpy as np

from ...errors import InputError
from ...words import split_words
from .base import (EvalDataset, EvalRecord, PhraseMatcher, RecordError, check_mask_size, check_word_labels,
                   exif_orientation, make_record, object_labels, objects_and_mask, open_image, open_mask,
                   orient_mask, phrase)

class TamEval(EvalDataset):
    kind = "tam"

    def __init__(self, root: str, anno: str = "anno.json"):
        super().__init__(f"tam:{os.path.basename(os.path.abspath(root))}")
        self.root = root
        path = anno if os.path.isabs(anno) else os.path.join(root, anno)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        if isinstance(data, dict):
            data = data.get("annotations", data.get("data"))
        if not isinstance(data, list):
            raise InputError(f"{path} must hold a list of entries (or {{'annotations': [...]}})")
        self.entries = data
        first: Dict[str, int] = {}  # (records are named by id in the skips and per_map.jsonl: two were one)
        for k in range(len(data)):
            rid = self.entry_id(k)
            if rid in first:
                raise InputError(f"{path}: entry {k} has the id {rid!r} of entry {first[rid]} (ids must be unique)")
            first[rid] = k

    def __len__(self) -> int:
        return len(self.entries)

    def entry_id(self, i: int) -> str:
        e = self.entries[i]
        return str(e.get("id", i)) if isinstance(e, dict) else str(i)

    def _path(self, p) -> str:
        p = str(p)
        return p if os.path.isabs(p) else os.path.join(self.root, p)

    def load(self, i: int) -> EvalRecord:
        e = self.entries[i]
        if not isinstance(e, dict):
            raise RecordError("entry is not an object")
        img_p = e.get("image", e.get("file_name"))
        caption = e.get("caption")
        cats = e.get("categories", e.get("category_map"))
        if img_p is None or caption is None or not isinstance(cats, dict):
            raise RecordError("entry needs 'image', 'caption' and a 'categories' map")
        if not isinstance(caption, str):  # (123 was explained as the response "123")
            raise RecordError(f"'caption' must be a text, got {caption!r}")
        image = open_image(self._path(img_p))
        W, H = image.size
        orientation = exif_orientation(self._path(img_p))  # (masks are turned with the image they label)
        objects = None
        if "mask" in e:
            if not isinstance(e["mask"], str) or not e["mask"]:  # (None became the path "None")
                raise RecordError(f"'mask' must be a path, got {e['mask']!r}")
            mask = orient_mask(open_mask(self._path(e["mask"])), orientation, (H, W))
            check_mask_size(mask, (H, W))
            if mask.min() < 0:
                raise RecordError("mask has negative labels")
            present = set(np.unique(mask).tolist())
        elif "masks" in e:
            if not isinstance(e["masks"], list) or not all(isinstance(mp, str) and mp for mp in e["masks"]):
                # (a text was read one character per mask)
                raise RecordError(f"'masks' must be a list of paths, got {e['masks']!r}")
            objects = np.zeros((len(e["masks"]), H, W), dtype=bool)
            for j, mp in enumerate(e["masks"]):
                m = orient_mask(open_mask(self._path(mp)), orientation, (H, W), f"mask {mp}")
                check_mask_size(m, (H, W), f"mask {mp}")
                objects[j] = m > 0
            # each object whole: painted in list order, a later mask took the pixels it shared with an
            # earlier one, whose object was scored against less than its mask (or skipped, wholly covered)
            present = object_labels(objects, (H, W))
            mask, objects = objects_and_mask(objects)
        else:
            raise RecordError("entry has neither 'mask' nor 'masks'")
        phrases: Dict[Tuple[str, ...], Tuple[int, ...]] = {}
        for word, labs in cats.items():
            vals = labs if isinstance(labs, (list, tuple)) else [labs]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals):
                # ("dog" raised a ValueError that stopped the whole run, None a TypeError, 1.9 became 1)
                raise RecordError(f"categories[{word!r}] must be a label (int >= 0) or a list of them, got {labs!r}")
            labs = tuple(int(v) for v in vals)
            check_word_labels(word, labs, present)
            phrases[phrase(str(word))] = labs
        words, hits = PhraseMatcher(phrases).label(split_words(caption))  # (a category's Chinese word: one word)
        labels = [h if h is not None else () for h in hits]
        return make_record(self.entry_id(i), image, caption, words, mask, labels, meta={"image": img_p},
                           objects=objects)


def load_tam(root: str, anno: str = "anno.json") -> TamEval:
    """TAM/GranDf-style data set in ``root`` (see the module docstring)."""
    return TamEval(root, anno)
