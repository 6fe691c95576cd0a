"""Evaluation data sets: one record type and loaders for three layouts.

Every loader returns an :class:`EvalDataset`: a list of candidate entries
that are turned into :class:`EvalRecord` one at a time (images and masks are
read lazily, so a 5000-image COCO split costs no memory up front). A bad entry
(missing or unreadable image or mask, mask size different from the image,
malformed segmentation, a word label missing from the mask) is never counted:
it is skipped, appended to ``dataset.skipped`` as ``(record id, reason)`` and
reported with a ``warnings.warn``.

A record holds the image, the caption split into words, one label mask for
the whole image (int ``H x W``, 0 background, one label per object instance)
and, per word, the labels that word refers to: a word with labels is an
*object word* (its ground truth is ``mask`` restricted to those labels,
:meth:`EvalRecord.word_mask`), a word without labels that is in the function
word list is a *function word* (ground truth "nothing", scored with Func-IoU),
any other word is not scored.

Layouts
-------

``shapes`` (:func:`load_shapes`): the bundled grounded-shapes set
    (:mod:`dcam.data`); colour and shape words are object words, "a"/"and"
    function words.

COCO (:func:`load_coco`): an images folder and an instances JSON
    (``images``, ``annotations`` with ``segmentation`` as polygons, or RLE with
    uncompressed ``counts`` lists or the compressed string format, and
    ``categories``). Each instance gets its own label; instances are painted
    largest first so that smaller ones stay visible where they overlap.
    Polygons are rasterised with PIL ``ImageDraw.polygon`` (fill and outline),
    which can differ from pycocotools by a pixel along edges. The caption is
    the first caption (lowest annotation id) of the image in a captions JSON
    when given, else one built from the category names
    (``"a dog and a person in the picture"``). Caption words are matched to
    the categories present in the image: the category name (multi-word names
    as phrases), simple plurals, and a few common synonyms (``COCO_SYNONYMS``:
    "man"/"woman"/"people" -> person, "sofa" -> couch, ...). A word naming a
    category absent from the image is not scored.

TAM / GranDf style (:func:`load_tam`): a folder with ``anno.json``, a list
    (or ``{"annotations": [...]}``) of entries::

        {"id": "0001",                     # optional, default: the index
         "image": "images/0001.jpg",       # relative to the folder
         "caption": "a dog catches a frisbee",
         "mask": "masks/0001.png",         # a label image (pixel value = label), or
         "masks": ["m/0001_1.png", ...],   # binary masks, the i-th is label i+1
         "categories": {"dog": 1, "frisbee": [2, 3]}}   # word or phrase -> label(s)

    (``"category_map"`` is accepted for ``"categories"``, ``"file_name"`` for
    ``"image"``). Caption words match the keys as COCO words match names.

:func:`open_dataset` takes ``"shapes"`` or a folder and detects the layout
(``anno.json`` -> TAM; an ``instances*.json`` in the folder or its
``annotations/`` -> COCO).
"""
from __future__ import annotations

import glob
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "EvalRecord", "EvalDataset", "RecordError", "FUNCTION_WORDS", "COCO_SYNONYMS",
    "load_shapes", "load_coco", "load_tam", "open_dataset", "detect_layout",
    "decode_rle", "rle_string_to_counts", "polygons_to_mask", "split_words",
]

#: Closed-class English words scored as function words (ground truth: nothing).
FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet of in on at to with by for from into onto over under above below
behind beside besides between among through across along around near off up down out about against
during before after while as than then there here this that these those it its itself they them their
theirs he him his she her hers we us our you your i me my is are was were be been being am has have
had having do does did can could will would shall should may might must not no some any each every
all both either neither other another such what which who whom whose where when why how very too also
just only while if because until upon within without toward towards via per
""".split())

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

_PUNCT = re.compile(r"^[^\w]+|[^\w]+$")


class RecordError(ValueError):
    """An entry of a data set that cannot be evaluated (the message says why)."""


@dataclass
class EvalRecord:
    """One evaluation example.

    record_id: a stable id (COCO image id, anno entry id, shapes index).
    image: the RGB image.
    caption: the caption text; words: its words (lower case, punctuation stripped).
    mask: int64 ``H x W`` label mask of the image (0 background).
    word_labels: per word, the tuple of mask labels it refers to (empty: not an object word).
    function: per word, whether it is a function word.
    """

    record_id: str
    image: Image.Image
    caption: str
    words: List[str]
    mask: np.ndarray
    word_labels: List[Tuple[int, ...]]
    function: List[bool]
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> Tuple[int, int]:
        """``(H, W)`` of the image and the mask."""
        return int(self.mask.shape[0]), int(self.mask.shape[1])

    @property
    def object_indices(self) -> List[int]:
        return [i for i, labs in enumerate(self.word_labels) if labs]

    @property
    def function_indices(self) -> List[int]:
        return [i for i, (labs, f) in enumerate(zip(self.word_labels, self.function)) if f and not labs]

    def word_mask(self, i: int) -> Optional[np.ndarray]:
        """Ground truth of word ``i``: the mask with only its labels kept
        (other pixels 0), or ``None`` for a word without labels."""
        labs = self.word_labels[i]
        if not labs:
            return None
        return np.where(np.isin(self.mask, np.asarray(labs)), self.mask, 0)


class EvalDataset:
    """Candidate entries of one data set, turned into records lazily.

    ``len(ds)`` is the number of candidate entries; ``ds.load(i)`` builds entry
    ``i`` or raises :class:`RecordError`; ``ds.records(n)`` yields up to ``n``
    valid records in order, skipping (and reporting) bad ones. ``ds.skipped``
    lists ``(record id, reason)`` of every entry skipped so far."""

    kind = "base"

    def __init__(self, name: str):
        self.name = name
        self.skipped: List[Tuple[str, str]] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def entry_id(self, i: int) -> str:
        return str(i)

    def load(self, i: int) -> EvalRecord:
        raise NotImplementedError

    def skip(self, record_id: str, reason: str) -> None:
        self.skipped.append((str(record_id), str(reason)))
        warnings.warn(f"{self.name}: skipped record {record_id}: {reason}", stacklevel=3)

    def records(self, n: Optional[int] = None) -> Iterator[EvalRecord]:
        count = 0
        for i in range(len(self)):
            if n is not None and count >= n:
                return
            try:
                rec = self.load(i)
            except RecordError as exc:
                self.skip(self.entry_id(i), str(exc))
                continue
            count += 1
            yield rec

    def __iter__(self) -> Iterator[EvalRecord]:
        return self.records()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, entries={len(self)})"


# ------------------------------------------------------------------ words

def split_words(caption: str) -> List[str]:
    """Lower-case words of a caption, punctuation stripped from their ends
    (empty pieces dropped)."""
    out = []
    for tok in caption.lower().split():
        tok = _PUNCT.sub("", tok)
        if tok:
            out.append(tok)
    return out


def _singulars(word: str) -> List[str]:
    c = [word]
    if word.endswith("ies") and len(word) > 4:
        c.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        c.append(word[:-2])
    if word.endswith("s") and len(word) > 2:
        c.append(word[:-1])
    return c


class _PhraseMatcher:
    """Maps caption words to keys: phrases (tuples of words) -> key, longest
    match first, the last word of a phrase may be a plural."""

    def __init__(self, phrases: Dict[Tuple[str, ...], Any]):
        self.phrases = phrases
        self.max_len = max((len(p) for p in phrases), default=1)

    def match(self, words: Sequence[str]) -> List[Optional[Any]]:
        out: List[Optional[Any]] = [None] * len(words)
        i = 0
        while i < len(words):
            hit = None
            for L in range(min(self.max_len, len(words) - i), 0, -1):
                head = tuple(words[i:i + L - 1])
                for last in _singulars(words[i + L - 1]):
                    key = head + (last,)
                    if key in self.phrases:
                        hit = (L, self.phrases[key])
                        break
                if hit:
                    break
            if hit:
                for j in range(i, i + hit[0]):
                    out[j] = hit[1]
                i += hit[0]
            else:
                i += 1
        return out


def _phrase(s: str) -> Tuple[str, ...]:
    return tuple(split_words(s))


# ------------------------------------------------------------------ masks

def rle_string_to_counts(s) -> List[int]:
    """Decode COCO's compressed RLE string into run lengths.

    Each count is written in 5-bit groups, least significant first, as
    characters ``48 + group`` with bit 0x20 meaning "another group follows"
    and bit 0x10 of the last group the sign; from the third count on, the
    value is stored as the difference to the count two places before."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: List[int] = []
    p = 0
    n = len(s)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("truncated RLE string")
            c = ord(s[p]) - 48
            if c < 0 or c > 63:
                raise ValueError(f"invalid character {s[p]!r} in RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(rle: Dict[str, Any]) -> np.ndarray:
    """Binary mask ``uint8 [h, w]`` of a COCO RLE dict (``size`` ``[h, w]``,
    ``counts`` a list of ints or a compressed string). Runs alternate 0/1,
    starting with 0, in column-major order."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed RLE {str(rle)[:80]}") from exc
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError("negative run length in RLE")
    if sum(counts) != h * w:
        raise ValueError(f"RLE run lengths sum to {sum(counts)}, expected {h}x{w}={h * w}")
    vals = np.zeros(len(counts), dtype=np.uint8)
    vals[1::2] = 1
    flat = np.repeat(vals, counts)
    return flat.reshape(w, h).T.copy()


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Binary mask ``uint8 [height, width]`` of COCO polygons (each a flat
    ``[x1, y1, x2, y2, ...]`` list in pixel coordinates), filled with PIL.
    Polygons with fewer than 3 points are ignored."""
    img = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        pts = [float(v) for v in poly]
        if len(pts) < 6 or len(pts) % 2:
            continue
        xy = list(zip(pts[0::2], pts[1::2]))
        draw.polygon(xy, fill=1, outline=1)
    return np.asarray(img, dtype=np.uint8).copy()


def _load_pil(path: str, kind: str, convert):
    """Open and decode one image file; a missing or corrupt file is a RecordError
    naming `kind` ("image"/"mask"). `convert` maps the loaded PIL image to the result."""
    if not os.path.exists(path):
        raise RecordError(f"missing {kind} file {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except Exception as exc:  # PIL raises several types for corrupt files
        raise RecordError(f"unreadable {kind} {path}: {exc}") from exc


def _open_image(path: str) -> Image.Image:
    return _load_pil(path, "image", lambda im: im.convert("RGB"))


def _open_mask(path: str) -> np.ndarray:
    arr = _load_pil(path, "mask", np.asarray)
    if arr.ndim == 3:  # RGB(A) saved masks: use the first channel
        arr = arr[..., 0]
    return arr.astype(np.int64)


def _record(record_id, image, caption, words, mask, labels_per_word, meta=None) -> EvalRecord:
    labels = [tuple(sorted(set(int(v) for v in labs))) if labs else () for labs in labels_per_word]
    func = [not labs and w in FUNCTION_WORDS for w, labs in zip(words, labels)]
    return EvalRecord(str(record_id), image, caption, list(words), mask, labels, func, dict(meta or {}))


# ------------------------------------------------------------------ shapes

class ShapesEval(EvalDataset):
    """The bundled grounded-shapes split (:class:`dcam.data.ShapesDataset`)."""

    kind = "shapes"

    def __init__(self, split: str = "test", size: int = 200, image_size: int = 64, base_seed: int = 0):
        super().__init__(f"shapes-{split}")
        from .data import ShapesDataset

        try:
            self.ds = ShapesDataset(split=split, size=size, image_size=image_size, base_seed=base_seed)
        except TypeError:  # older signature without base_seed
            self.ds = ShapesDataset(split=split, size=size, image_size=image_size)
        self.split = split

    def __len__(self) -> int:
        return len(self.ds)

    def entry_id(self, i: int) -> str:
        return f"{self.split}-{i}"

    def load(self, i: int) -> EvalRecord:
        s = self.ds[i]
        labels = [(int(l),) if int(l) > 0 else () for l in s.word_labels]
        rec = _record(self.entry_id(i), s.image.convert("RGB"), s.caption, list(s.words),
                      np.asarray(s.mask, dtype=np.int64), labels)
        # in the shapes set every unlabelled word is a function word
        rec.function = [not labs for labs in rec.word_labels]
        return rec


def load_shapes(split: str = "test", size: int = 200, image_size: int = 64) -> ShapesEval:
    """The grounded-shapes ``split`` with ``size`` scenes of ``image_size`` px."""
    return ShapesEval(split=split, size=size, image_size=image_size)


# ------------------------------------------------------------------ COCO

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
            raise ValueError(f"cannot read instances JSON {instances_json}: {exc}") from exc
        for key in ("images", "annotations", "categories"):
            if key not in inst:
                raise ValueError(f"{instances_json} has no {key!r}; not a COCO instances file")
        self.categories = {int(c["id"]): str(c["name"]) for c in inst["categories"]}
        self.images = {int(im["id"]): im for im in inst["images"]}
        self.anns: Dict[int, List[dict]] = {}
        for a in inst["annotations"]:
            self.anns.setdefault(int(a["image_id"]), []).append(a)
        self.ids = sorted(i for i in self.images if i in self.anns)
        self.captions: Dict[int, str] = {}
        if captions_json:
            try:
                with open(captions_json) as f:
                    caps = json.load(f)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read captions JSON {captions_json}: {exc}") from exc
            best: Dict[int, Tuple[int, str]] = {}
            for k, a in enumerate(caps.get("annotations", [])):
                iid, aid = int(a["image_id"]), int(a.get("id", k))
                if iid not in best or aid < best[iid][0]:
                    best[iid] = (aid, str(a["caption"]).strip())
            self.captions = {k: v[1] for k, v in best.items()}
        phrases: Dict[Tuple[str, ...], str] = {}
        names = set(self.categories.values())
        for nm in names:
            phrases[_phrase(nm)] = nm
            for syn in COCO_SYNONYMS.get(nm, ()):
                phrases.setdefault(_phrase(syn), nm)
        self.matcher = _PhraseMatcher(phrases)

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
        image = _open_image(path)
        W, H = image.size
        if "height" in info and "width" in info and (int(info["height"]), int(info["width"])) != (H, W):
            raise RecordError(f"image {path} is {H}x{W} but the annotation says "
                              f"{int(info['height'])}x{int(info['width'])}")
        inst_masks = []
        for a in self.anns[iid]:
            seg = a.get("segmentation")
            try:
                if isinstance(seg, dict):
                    m = decode_rle(seg)
                elif isinstance(seg, list):
                    m = polygons_to_mask(seg, H, W)
                else:
                    raise ValueError(f"unsupported segmentation type {type(seg).__name__}")
            except ValueError as exc:
                raise RecordError(f"annotation {a.get('id')}: {exc}") from exc
            if m.shape != (H, W):
                raise RecordError(f"annotation {a.get('id')}: mask is {m.shape[0]}x{m.shape[1]}, image {H}x{W}")
            cat = self.categories.get(int(a["category_id"]))
            if cat is None:
                raise RecordError(f"annotation {a.get('id')}: unknown category {a['category_id']}")
            if m.any():
                inst_masks.append((int(m.sum()), cat, m))
        if not inst_masks:
            raise RecordError("no non-empty instance mask")
        # paint the largest first so small instances stay visible where they overlap
        inst_masks.sort(key=lambda t: -t[0])
        mask = np.zeros((H, W), dtype=np.int64)
        for label, (_, _, m) in enumerate(inst_masks, start=1):
            mask[m > 0] = label
        present = set(np.unique(mask).tolist())
        cat_labels: Dict[str, List[int]] = {}
        for label, (_, cat, _) in enumerate(inst_masks, start=1):
            if label in present:
                cat_labels.setdefault(cat, []).append(label)
        if iid in self.captions:
            caption = self.captions[iid]
        else:
            order = []
            for _, cat, _ in sorted(inst_masks, key=lambda t: t[1]):
                if cat not in order:
                    order.append(cat)
            caption = self.built_caption(order)
        words = split_words(caption)
        hits = self.matcher.match(words)
        labels = [cat_labels.get(h, ()) if h is not None else () for h in hits]
        return _record(iid, image, caption, words, mask, labels,
                       meta={"file_name": info.get("file_name"), "categories": sorted(cat_labels)})


def load_coco(images_dir: str, instances_json: str, captions_json: Optional[str] = None) -> CocoEval:
    """COCO-style data set (see the module docstring)."""
    return CocoEval(images_dir, instances_json, captions_json)


# ------------------------------------------------------------------ TAM / GranDf

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
            raise ValueError(f"cannot read {path}: {exc}") from exc
        if isinstance(data, dict):
            data = data.get("annotations", data.get("data"))
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a list of entries (or {{'annotations': [...]}})")
        self.entries = data

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
        image = _open_image(self._path(img_p))
        W, H = image.size
        if "mask" in e:
            mask = _open_mask(self._path(e["mask"]))
            if mask.shape != (H, W):
                raise RecordError(f"mask is {mask.shape[0]}x{mask.shape[1]}, image {H}x{W}")
        elif "masks" in e:
            mask = np.zeros((H, W), dtype=np.int64)
            for j, mp in enumerate(e["masks"], start=1):
                m = _open_mask(self._path(mp))
                if m.shape != (H, W):
                    raise RecordError(f"mask {mp} is {m.shape[0]}x{m.shape[1]}, image {H}x{W}")
                mask[m > 0] = j
        else:
            raise RecordError("entry has neither 'mask' nor 'masks'")
        if mask.min() < 0:
            raise RecordError("mask has negative labels")
        present = set(np.unique(mask).tolist())
        phrases: Dict[Tuple[str, ...], Tuple[int, ...]] = {}
        for word, labs in cats.items():
            labs = tuple(int(v) for v in (labs if isinstance(labs, (list, tuple)) else [labs]))
            missing = [v for v in labs if v not in present or v == 0]
            if missing:
                raise RecordError(f"label(s) {missing} of {word!r} not in the mask")
            phrases[_phrase(str(word))] = labs
        words = split_words(str(caption))
        hits = _PhraseMatcher(phrases).match(words)
        labels = [h if h is not None else () for h in hits]
        return _record(self.entry_id(i), image, str(caption), words, mask, labels, meta={"image": img_p})


def load_tam(root: str, anno: str = "anno.json") -> TamEval:
    """TAM/GranDf-style data set in ``root`` (see the module docstring)."""
    return TamEval(root, anno)


# ------------------------------------------------------------------ detection

def _coco_files(root: str, split: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    cands = []
    for d in (os.path.join(root, "annotations"), root):
        cands += sorted(glob.glob(os.path.join(d, "instances*.json")))
    if not cands:
        return None, None, None
    pick = [c for c in cands if os.path.basename(c).startswith(f"instances_{split}")]
    if not pick:
        pick = [c for c in cands if os.path.basename(c).startswith("instances_val")] or cands
    if len(pick) > 1 and len({os.path.basename(p) for p in pick}) > 1:
        pick = sorted(pick)
    inst = pick[0]
    tag = os.path.basename(inst)[len("instances"):]  # e.g. "_val2017.json"
    cap = os.path.join(os.path.dirname(inst), "captions" + tag)
    cap = cap if os.path.exists(cap) else None
    stem = tag.strip("_").rsplit(".", 1)[0]  # "val2017"
    first = None
    try:
        with open(inst) as f:
            imgs = json.load(f).get("images", [])
        first = imgs[0].get("file_name") if imgs else None
    except (OSError, ValueError):
        pass
    dirs = [os.path.join(root, "images", stem), os.path.join(root, stem), os.path.join(root, split),
            os.path.join(root, "images"), root]
    images_dir = next((d for d in dirs if first and os.path.exists(os.path.join(d, first))), None)
    if images_dir is None:
        images_dir = next((d for d in dirs if os.path.isdir(d)), root)
    return images_dir, inst, cap


def detect_layout(path: str, split: str = "test") -> str:
    """``"tam"`` or ``"coco"`` for a data folder; ValueError otherwise."""
    if not os.path.isdir(path):
        raise ValueError(f"data set folder {path} does not exist")
    if os.path.exists(os.path.join(path, "anno.json")):
        return "tam"
    if _coco_files(path, split)[1] is not None:
        return "coco"
    raise ValueError(f"{path} is neither a TAM layout (anno.json) nor a COCO layout "
                     f"(instances*.json in the folder or its annotations/)")


def open_dataset(spec: str, split: str = "test", size: int = 200, image_size: int = 64) -> EvalDataset:
    """``"shapes"`` (``size`` scenes of the ``split``) or a folder (layout auto-detected)."""
    if spec == "shapes":
        return load_shapes(split=split, size=size, image_size=image_size)
    kind = detect_layout(spec, split)
    if kind == "tam":
        return load_tam(spec)
    images_dir, inst, cap = _coco_files(spec, split)
    return load_coco(images_dir, inst, cap)
