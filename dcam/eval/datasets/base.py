"""The record type and the lazy data-set base shared by every layout.

A record holds the image, the caption split into words, one label mask for
the whole image (int ``H x W``, 0 background, one label per object instance)
and, per word, the labels that word refers to: a word with labels is an
*object word* (its ground truth is ``mask`` restricted to those labels,
:meth:`EvalRecord.word_truth`), a word without labels that is in the function
word list is a *function word* (ground truth "nothing", scored with Func-IoU),
any other word is not scored. Where objects overlap (COCO instances, a TAM
``"masks"`` list), a label mask cannot hold both on the shared pixels: the
record then also keeps every object's own mask (``objects``), and each word
is scored against its objects whole, whatever their order.

A data set is a list of candidate entries turned into records one at a time
(images and masks are read lazily, so a 5000-image COCO split costs no memory
up front). A bad entry is skipped, appended to ``dataset.skipped`` as
``(record id, reason)`` and reported with ``warnings.warn``; every record
yielded has passed :func:`check_record`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ...errors import DcamUserWarning, InputError, one_line
from ...images import load_image
from ...words import FUNCTION_WORDS, split_words

class RecordError(InputError):
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
    objects: None when ``mask`` is the whole ground truth (no two objects overlap); else bool
        ``[L, H, W]``, ``objects[c - 1]`` the whole mask of label ``c``, the ground truth the words
        are scored against (``mask`` then shows each shared pixel as its smallest object's).
    """

    record_id: str
    image: Image.Image
    caption: str
    words: List[str]
    mask: np.ndarray
    word_labels: List[Tuple[int, ...]]
    function: List[bool]
    meta: Dict[str, Any] = field(default_factory=dict)
    objects: Optional[np.ndarray] = None

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
        """Word ``i``'s objects as a label mask (other pixels 0), or ``None`` for a word without
        labels. With ``objects``, its own objects painted largest first: exact unless two of
        them overlap (:meth:`word_truth` is what the scores use)."""
        labs = self.word_labels[i]
        if not labs:
            return None
        if self.objects is None:
            return np.where(np.isin(self.mask, np.asarray(labs)), self.mask, 0)
        return paint_objects(self.objects, labs)

    def word_truth(self, i: int) -> Optional[np.ndarray]:
        """What word ``i`` is scored against (:func:`~dcam.eval.metrics.object_metrics`): its label
        mask (:meth:`word_mask`), or, when the record keeps ``objects``, the bool stack
        ``[K, H, W]`` of its K objects, each whole; ``None`` for a word without labels."""
        labs = self.word_labels[i]
        if not labs or self.objects is None:
            return self.word_mask(i)
        return self.objects[[c - 1 for c in labs]]


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
        warnings.warn(f"{self.name}: skipped record {record_id}: {reason}", DcamUserWarning, stacklevel=3)

    def records(self, n: Optional[int] = None) -> Iterator[EvalRecord]:
        count = 0
        for i in range(len(self)):
            if n is not None and count >= n:
                return
            try:
                rec = self.load(i)
                check_record(rec)
            except RecordError as exc:
                self.skip(self.entry_id(i), str(exc))
                continue
            count += 1
            yield rec

    def __iter__(self) -> Iterator[EvalRecord]:
        return self.records()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, entries={len(self)})"



def singulars(word: str) -> List[str]:
    c = [word]
    if word.endswith("ies") and len(word) > 4:
        c.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        c.append(word[:-2])
    if word.endswith("s") and len(word) > 2:
        c.append(word[:-1])
    return c


class PhraseMatcher:
    """Maps caption words to keys: phrases (tuples of words, :func:`phrase`) -> key, longest
    match first, the last word of a phrase may be a plural. A phrase's word written without
    spaces ("红猫") matches the caption's characters, which :func:`split_words` makes a word each."""

    def __init__(self, phrases: Dict[Tuple[str, ...], Any]):
        self.phrases = phrases
        # per phrase, the caption words (characters of an unspaced script) it spans, and how many each of its words
        self._units: Dict[Tuple[str, ...], Tuple[Any, Tuple[int, ...]]] = {}
        for p, key in phrases.items():
            parts = [split_words(w) or [w] for w in p]
            self._units[tuple(u for part in parts for u in part)] = (key, tuple(len(part) for part in parts))
        self.max_len = max((len(u) for u in self._units), default=1)

    def _hits(self, words: Sequence[str]) -> List[Tuple[int, Any, Tuple[int, ...]]]:
        """(first word, key, the caption words each word of the phrase spans) of every match, in order."""
        out, i = [], 0
        while i < len(words):
            hit = None
            for L in range(min(self.max_len, len(words) - i), 0, -1):
                head = tuple(words[i:i + L - 1])
                for last in singulars(words[i + L - 1]):
                    if head + (last,) in self._units:
                        hit = (i, *self._units[head + (last,)])
                        break
                if hit:
                    break
            if hit:
                out.append(hit)
                i += sum(hit[2])
            else:
                i += 1
        return out

    def match(self, words: Sequence[str]) -> List[Optional[Any]]:
        """The key each of ``words`` names (None: none)."""
        out: List[Optional[Any]] = [None] * len(words)
        for i, key, sizes in self._hits(words):
            out[i:i + sum(sizes)] = [key] * sum(sizes)
        return out

    def label(self, words: Sequence[str]) -> Tuple[List[str], List[Optional[Any]]]:
        """(words, the key each names): ``words`` (a caption's, :func:`split_words`) with the characters of
        each named word written without spaces joined into one word: "一只红猫" with "红猫" named is 一, 只,
        红猫, so that the named word counts once in the metrics, with one map, as an English word does."""
        joined: List[str] = []
        keys: List[Optional[Any]] = []
        i = 0
        for at, key, sizes in self._hits(words):
            joined += words[i:at]
            keys += [None] * (at - i)
            for n in sizes:
                joined.append("".join(words[at:at + n]))
                keys.append(key)
                at += n
            i = at
        return joined + list(words[i:]), keys + [None] * (len(words) - i)


def phrase(s: str) -> Tuple[str, ...]:
    """The words of a label or category name ``s``: :func:`split_words`'s, but the characters of a
    word written without spaces are one word ("红猫" is one word, as "cat" is; "红猫 蓝狗" and
    "红猫，蓝狗" two): the name says where its words end, which a caption read without a tokenizer
    (a character a word) does not."""
    words: List[str] = []
    for run in s.lower().split():
        end = None
        for unit in split_words(run):
            at = run.find(unit, end or 0)
            if at == end:  # touching the unit before: one word
                words[-1] += unit
            else:
                words.append(unit)
            end = at + len(unit)
    return tuple(words)


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


def open_image(path: str) -> Image.Image:
    """The record's RGB image (:func:`dcam.images.load_image`); unreadable -> RecordError."""
    try:
        return load_image(path)
    except InputError as exc:
        raise RecordError(str(exc)) from None


#: numpy equivalents of ImageOps.exif_transpose, per EXIF orientation (the turn that makes the stored image upright)
_EXIF_TURNS = {2: lambda m: m[:, ::-1], 3: lambda m: m[::-1, ::-1], 4: lambda m: m[::-1], 5: lambda m: m.T,
               6: lambda m: np.rot90(m, -1), 7: lambda m: np.rot90(m, 2).T, 8: lambda m: np.rot90(m, 1)}


def exif_orientation(path: str) -> int:
    """The EXIF orientation :func:`open_image` applied to the image file ``path`` (1: none; a value
    outside 2..8 is not applied either). Read before decoding: Pillow's TIFF decoder drops the tag."""
    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)
    return int(orientation) if orientation in _EXIF_TURNS else 1


def stored_size(orientation: int, size: Tuple[int, int]) -> Tuple[int, int]:
    """``(H, W)`` of the stored pixels of an image shown upright as ``size`` = ``(H, W)``."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else tuple(size)


def turn_upright(mask: np.ndarray, orientation: int) -> np.ndarray:
    """``mask``, drawn on an image's stored pixels, turned as its EXIF ``orientation`` turns the image."""
    return np.ascontiguousarray(_EXIF_TURNS[orientation](mask)) if orientation in _EXIF_TURNS else mask


def orient_mask(mask: np.ndarray, orientation: int, size: Tuple[int, int], what: str = "mask") -> np.ndarray:
    """``mask`` in the frame of its image as dcam explains it, upright (``size`` = ``(H, W)``), when
    the image file has an EXIF ``orientation``: a mask of the stored size is turned like the image,
    one of the upright size kept (a rotated image was scored against a mask that was not). When the
    two sizes are equal (a flip, a half turn, a square image) the mask's frame cannot be told:
    RecordError. A mask of neither size is left for :func:`check_mask_size` to refuse."""
    if orientation == 1:
        return mask
    stored = stored_size(orientation, size)
    if stored == tuple(size):
        raise RecordError(f"image has EXIF orientation {orientation} and is {size[0]}x{size[1]} stored and "
                          f"upright: cannot tell whether {what} is drawn on the stored or the upright image")
    return turn_upright(mask, orientation) if tuple(mask.shape) == stored else mask


def check_whole_labels(arr: np.ndarray, what: str) -> None:
    """RecordError unless the label mask ``arr`` holds whole numbers (1.7 was read as label 1)."""
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        bad = arr[arr != np.round(arr)].reshape(-1)[0]
        raise RecordError(f"{what} holds a label that is not a whole number ({float(bad):g})")


def check_mask_size(mask: np.ndarray, size: Tuple[int, int], what: str = "mask") -> None:
    """RecordError unless ``mask`` is ``size`` = ``(H, W)`` of its image (a mask of another size
    was stretched onto the image)."""
    if mask.ndim != 2 or tuple(mask.shape) != tuple(size):
        shape = "x".join(str(v) for v in mask.shape)
        raise RecordError(f"{what} is {shape}, image {size[0]}x{size[1]}")


def check_word_labels(word, labels: Sequence[int], present) -> None:
    """RecordError if a label of ``word`` is 0 (the background) or not among ``present``, the
    mask's values: the word would be scored against nothing (or against the background)."""
    if 0 in labels:
        raise RecordError(f"label 0 of {word!r} is the background, not an object (objects are labels >= 1)")
    missing = [v for v in labels if v not in present]
    if missing:
        raise RecordError(f"label(s) {missing} of {word!r} not in the mask")


def _is_sequence(v) -> bool:
    """A list, a tuple or a 1-D numpy array (one entry per word): not a text, not a scalar."""
    return isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == 1)


def _image_size(image) -> Tuple[int, int]:
    """(W, H) of a record's image: a PIL image, or anything the Explainer reads (a path, an array)."""
    if isinstance(image, Image.Image):
        return image.size
    try:
        return load_image(image).size
    except InputError as exc:
        raise RecordError(one_line(str(exc))) from None


def object_labels(objects, size: Tuple[int, int]) -> set:
    """The labels ``c`` whose object ``objects[c - 1]`` covers a pixel; RecordError unless
    ``objects`` is a bool ``[L, H, W]`` array of the image's ``size``."""
    if not isinstance(objects, np.ndarray) or objects.dtype != bool or objects.ndim != 3:
        raise RecordError(f"objects must be a bool [L, H, W] array (one mask per label), got "
                          f"{type(objects).__name__} {getattr(objects, 'dtype', '')} {getattr(objects, 'shape', '')}")
    if tuple(objects.shape[1:]) != tuple(size):
        raise RecordError(f"objects' masks are {objects.shape[1]}x{objects.shape[2]}, image {size[0]}x{size[1]}")
    return {0} | {c + 1 for c in np.flatnonzero(objects.reshape(len(objects), -1).any(axis=1)).tolist()}


def check_record(rec: EvalRecord) -> None:
    """RecordError unless ``rec`` can be scored: an image, a 2-D label mask of the image's size
    holding whole numbers >= 0, a text caption, one labels tuple and one function flag per word,
    and every word label an int present in the mask (in ``objects``, when the record has them).
    Every record a data set yields and every record given to :func:`dcam.eval.evaluate` in a
    list passes here (the loaders' own checks, on the record)."""
    W, H = _image_size(rec.image)
    if not isinstance(rec.caption, str):  # (123 was explained as the response "123")
        raise RecordError(f"caption must be a text, got {rec.caption!r}")
    mask = np.asarray(rec.mask)
    if mask.dtype.kind not in "biuf":
        raise RecordError(f"mask must hold integer labels, got dtype {mask.dtype}")
    check_mask_size(mask, (H, W))
    check_whole_labels(mask, "mask")
    if mask.size and mask.min() < 0:
        raise RecordError("mask has negative labels")
    if not all(_is_sequence(v) for v in (rec.words, rec.word_labels, rec.function)):
        raise RecordError("words, word_labels and function must be lists (one entry per word)")
    if not len(rec.words) == len(rec.word_labels) == len(rec.function):
        raise RecordError(f"words, word_labels and function must have one entry per word, got "
                          f"{len(rec.words)}, {len(rec.word_labels)} and {len(rec.function)}")
    present = set(np.unique(mask).tolist()) if rec.objects is None else object_labels(rec.objects, (H, W))
    for word, labs in zip(rec.words, rec.word_labels):
        if not isinstance(labs, (tuple, list)) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labs):
            raise RecordError(f"labels of {word!r} must be a tuple of ints, got {labs!r}")
        check_word_labels(word, labs, present)


def paint_objects(objects: np.ndarray, labels: Optional[Sequence[int]] = None) -> np.ndarray:
    """int64 label mask of the objects ``objects[c - 1]`` (bool ``[L, H, W]``) of ``labels``
    (None: all), painted largest first: a pixel objects share shows the smallest of them."""
    labels = range(1, len(objects) + 1) if labels is None else labels
    mask = np.zeros(objects.shape[1:], dtype=np.int64)
    for c in sorted(labels, key=lambda c: -int(objects[c - 1].sum())):
        mask[objects[c - 1]] = c
    return mask


def objects_and_mask(objects: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(label mask, objects or None)`` of a record whose objects are ``objects`` (bool
    ``[L, H, W]``): objects that overlap are kept whole beside the mask; without overlap the
    mask says it all (and costs one ``H x W`` array, not L)."""
    mask = paint_objects(objects)
    overlap = len(objects) > 1 and bool((objects.sum(axis=0, dtype=np.int64) > 1).any())
    return mask, (objects if overlap else None)


def open_mask(path: str) -> np.ndarray:
    arr = _load_pil(path, "mask", np.asarray)
    if arr.ndim == 3:  # RGB(A) saved masks: use the first channel
        arr = arr[..., 0]
    check_whole_labels(arr, f"mask {path}")
    return arr.astype(np.int64)


def make_record(record_id, image, caption, words, mask, labels_per_word, meta=None, objects=None) -> EvalRecord:
    labels = [tuple(sorted(set(int(v) for v in labs))) if labs else () for labs in labels_per_word]
    func = [not labs and w in FUNCTION_WORDS for w, labs in zip(words, labels)]
    return EvalRecord(str(record_id), image, caption, list(words), mask, labels, func, dict(meta or {}), objects)


