"""COCO layout: an images folder and an instances JSON (``images``,
``annotations`` with ``segmentation`` as polygons or RLE, ``categories``).

Each instance gets its own label (1 the largest, in decreasing size), and is
scored against its own segmentation, whole, where instances overlap
(:attr:`EvalRecord.objects`; the label mask shows a shared pixel as its
smallest instance's). Polygons are rasterised with PIL
``ImageDraw.polygon`` (fill and outline), which can differ from pycocotools by
a pixel along edges. A record with an annotation that cannot be painted (a
polygon with fewer than 3 points, an empty segmentation or an all-zero RLE, a
bad RLE size, an unknown category) is skipped and reported with the reason,
never scored without that object. Crowd annotations (``iscrowd: 1``, usually
RLE) are painted as one instance each, like any other; images without any
annotation are left out of the data set (``len``), not counted as skipped.
Segmentations are drawn on the stored pixels (COCO's height and width): an
image with an EXIF orientation is explained upright, so its masks are turned
the same way (kept as drawn when the entry's height and width are those of
the upright image only).
A malformed file (an entry without its id, image id, category id or name, a
caption entry without its text) is refused whole, naming the file and entry.
The caption is the
first caption (lowest annotation id) of the image in a captions JSON when
given, else one built from the category names (``"a dog and a person in the
picture"``). Caption words are matched to the categories present in the
image: the category name (multi-word names as phrases), simple plurals, and a
few common synonyms (:data:`COCO_SYNONYMS`). A word naming a category absent
from the image is not scored. The captions must be in the explained model's
vocabulary (the bundled toy model knows only its shapes words).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import InputError
from ...words import split_words
from .base import (EvalDataset, EvalRecord, PhraseMatcher, RecordError, check_mask_size, exif_orientation,
                   make_record, objects_and_mask, open_image, phrase, stored_size, turn_upright)
from .masks import decode_rle, polygons_to_mask

#: Extra words (beyond name and plural) that name a COCO category.
COCO_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "person": ("people", "persons", "man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child",
               "children", "kid", "kids", "guy", "guys", "lady", "ladies", "player", "players", "skier",
               "skiers", "surfer", "surfers", "skateboarder", "rider"),
    "bicycle": ("bike", "bikes"),
    "motorcycle": ("motorbike", "motorbikes"),
    "airplane": ("plane", "planes", "aeroplane", "jet", "jets", "airliner"),
    "boat": ("ship", "ships"),
    "fire hydrant": ("hydrant",),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "puppies"),
    "sheep": ("lamb", "lambs"),
    "cow": ("cattle",),
    "handbag": ("purse",),
    "suitcase": ("luggage",),
    "sports ball": ("ball", "balls", "soccer ball", "tennis ball"),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "tennis racket": ("racket", "racquet"),
    "couch": ("sofa", "sofas"),
    "potted plant": ("plant", "plants"),
    "dining table": ("table", "tables"),
    "tv": ("television", "tvs"),
    "cell phone": ("phone", "phones", "cellphone", "cellphones"),
    "refrigerator": ("fridge",),
    "donut": ("doughnut", "doughnuts"),
    "teddy bear": ("teddy",),
    "hair drier": ("hairdryer", "hair dryer"),
    "skis": ("ski",),
}

def _entries(path: str, data: dict, key: str, required: Sequence[str]):
    """``(k, entry)`` of ``data[key]``, a list of objects each holding ``required`` (InputError
    naming the file and the entry otherwise)."""
    items = data[key]
    if not isinstance(items, list):
        raise InputError(f"{path}: {key!r} must be a list, got {type(items).__name__}")
    for k, e in enumerate(items):
        if not isinstance(e, dict):
            raise InputError(f"{path}: {key}[{k}] must be an object, got {type(e).__name__}")
        missing = [r for r in required if r not in e]
        if missing:
            raise InputError(f"{path}: {key}[{k}] has no {missing[0]!r}")
    return list(enumerate(items))


def _int(path: str, key: str, k: int, entry: dict, field: str, what: str = "an integer id") -> int:
    """``entry[field]`` as an int (COCO's ids, an image's height and width), or InputError naming
    the file and the entry."""
    v = entry[field]
    try:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError
        return int(v)  # (a str of another script's digits, "²", or "--5" is a ValueError too)
    except ValueError:
        raise InputError(f"{path}: {key}[{k}].{field} must be {what}, got {v!r}") from None


def _unique_id(path: str, key: str, k: int, entry: dict, seen: Dict[int, int]) -> int:
    """``entry["id"]`` as an int, recorded in ``seen`` (id -> entry index); InputError naming the file,
    the entry and the id if an earlier entry of ``key`` has it."""
    v = _int(path, key, k, entry, "id")
    if v in seen:
        raise InputError(f"{path}: {key}[{k}].id {v} repeats {key}[{seen[v]}].id (ids must be unique)")
    seen[v] = k
    return v


def _text(path: str, key: str, k: int, entry: dict, field: str) -> str:
    """``entry[field]``, a string (a category's name, a caption): null was read as the word "None"."""
    v = entry[field]
    if not isinstance(v, str) or not v.strip():
        raise InputError(f"{path}: {key}[{k}].{field} must be a non-empty string, got {v!r}")
    return v


class CocoEval(EvalDataset):
    kind = "coco"

    def __init__(self, images_dir: str, instances_json: str, captions_json: Optional[str] = None,
                 name: Optional[str] = None):
        super().__init__(name or f"coco:{os.path.basename(instances_json)}")
        self.images_dir = images_dir
        try:
            with open(instances_json) as f:
                inst = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read instances JSON {instances_json}: {exc}") from exc
        for key in ("images", "annotations", "categories"):
            if not isinstance(inst, dict) or key not in inst:
                raise InputError(f"{instances_json} has no {key!r}; not a COCO instances file")
        # the entries every record reads, checked here: one malformed entry was a KeyError traceback,
        # some only once the model was loaded and the record came up
        self.categories: Dict[int, str] = {}
        first: Dict[int, int] = {}  # id -> index of its entry (a repeated id relabelled objects: the last won)
        for k, c in _entries(instances_json, inst, "categories", ("id", "name")):
            cid = _unique_id(instances_json, "categories", k, c, first)
            self.categories[cid] = _text(instances_json, "categories", k, c, "name")
        self.images = {}
        first = {}  # (a repeated image id paired the last image with the first one's annotations)
        for k, im in _entries(instances_json, inst, "images", ("id",)):
            for side in ("height", "width"):  # (a record compares them with its image's size)
                if side in im:
                    im[side] = _int(instances_json, "images", k, im, side, "a whole number of pixels")
            self.images[_unique_id(instances_json, "images", k, im, first)] = im
        self.anns: Dict[int, List[dict]] = {}
        for k, a in _entries(instances_json, inst, "annotations", ("image_id", "category_id")):
            _int(instances_json, "annotations", k, a, "category_id")
            self.anns.setdefault(_int(instances_json, "annotations", k, a, "image_id"), []).append(a)
        self.ids = sorted(i for i in self.images if i in self.anns)
        self.captions: Dict[int, str] = {}
        if captions_json:
            try:
                with open(captions_json) as f:
                    caps = json.load(f)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read captions JSON {captions_json}: {exc}") from exc
            if not isinstance(caps, dict) or "annotations" not in caps:
                raise InputError(f"{captions_json} has no 'annotations'; not a COCO captions file")
            best: Dict[int, Tuple[int, str]] = {}
            for k, a in _entries(captions_json, caps, "annotations", ("image_id", "caption")):
                iid = _int(captions_json, "annotations", k, a, "image_id")
                aid = _int(captions_json, "annotations", k, a, "id") if "id" in a else k
                if iid not in best or aid < best[iid][0]:
                    best[iid] = (aid, _text(captions_json, "annotations", k, a, "caption").strip())
            self.captions = {k: v[1] for k, v in best.items()}
        phrases: Dict[Tuple[str, ...], str] = {}
        names = set(self.categories.values())
        for nm in names:
            phrases[phrase(nm)] = nm
            for syn in COCO_SYNONYMS.get(nm, ()):
                phrases.setdefault(phrase(syn), nm)
        self.matcher = PhraseMatcher(phrases)

    def __len__(self) -> int:
        return len(self.ids)

    def entry_id(self, i: int) -> str:
        return str(self.ids[i])

    @staticmethod
    def built_caption(names: Sequence[str]) -> str:
        """Caption built from category names when no captions JSON is given."""
        parts = [f"a {n}" for n in names]
        if len(parts) > 1:
            body = " and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 2 else " and ".join(parts)
        else:
            body = parts[0]
        return f"{body} in the picture"

    def load(self, i: int) -> EvalRecord:
        iid = self.ids[i]
        info = self.images[iid]
        path = os.path.join(self.images_dir, str(info.get("file_name", "")))
        image = open_image(path)
        W, H = image.size
        # segmentations are drawn on the stored pixels (COCO's height x width), unless the entry's
        # size is the upright image's only; the masks are turned like the image (they were not)
        orientation = exif_orientation(path)
        frame = stored_size(orientation, (H, W))
        if "height" in info and "width" in info:
            given = (int(info["height"]), int(info["width"]))
            if given not in (frame, (H, W)):
                stored = f" ({frame[0]}x{frame[1]} stored, EXIF orientation {orientation})" if frame != (H, W) else ""
                raise RecordError(f"image {path} is {H}x{W}{stored} but the annotation says {given[0]}x{given[1]}")
            if given != frame:
                frame, orientation = given, 1
        inst_masks = []
        for a in self.anns[iid]:
            seg = a.get("segmentation")
            try:
                if isinstance(seg, dict):
                    m = decode_rle(seg)
                elif isinstance(seg, list):
                    m = polygons_to_mask(seg, *frame)
                else:
                    raise InputError(f"unsupported segmentation type {type(seg).__name__}")
            except ValueError as exc:
                raise RecordError(f"annotation {a.get('id')}: {exc}") from exc
            check_mask_size(m, frame, f"annotation {a.get('id')}: mask")
            m = turn_upright(m, orientation)
            cat = self.categories.get(int(a["category_id"]))
            if cat is None:
                raise RecordError(f"annotation {a.get('id')}: unknown category {a['category_id']}")
            if not m.any():  # a word naming it would be scored as absent from the image
                raise RecordError(f"annotation {a.get('id')}: its segmentation covers no pixel")
            inst_masks.append((int(m.sum()), cat, m))
        if not inst_masks:
            raise RecordError("no instance annotation")
        # labels by decreasing size; every instance whole (painted into one label mask, a large instance
        # lost the pixels smaller ones shared with it, and one they covered wholly was left out of its word)
        inst_masks.sort(key=lambda t: -t[0])
        mask, objects = objects_and_mask(np.stack([m > 0 for _, _, m in inst_masks]))
        cat_labels: Dict[str, List[int]] = {}
        for label, (_, cat, _) in enumerate(inst_masks, start=1):
            cat_labels.setdefault(cat, []).append(label)
        if iid in self.captions:
            caption = self.captions[iid]
        else:
            order = []
            for _, cat, _ in sorted(inst_masks, key=lambda t: t[1]):
                if cat not in order:
                    order.append(cat)
            caption = self.built_caption(order)
        words, hits = self.matcher.label(split_words(caption))  # (a category's Chinese word: one word)
        labels = [cat_labels.get(h, ()) if h is not None else () for h in hits]
        return make_record(iid, image, caption, words, mask, labels,
                           meta={"file_name": info.get("file_name"), "categories": sorted(cat_labels)},
                           objects=objects)


def load_coco(images_dir: str, instances_json: str, captions_json: Optional[str] = None) -> CocoEval:
    """COCO-style data set (see the module docstring)."""
    return CocoEval(images_dir, instances_json, captions_json)
