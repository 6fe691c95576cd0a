"""Grounded-shapes: a tiny, deterministic, seeded data set of captioned scenes.

Every sample is a small RGB image with 1-3 coloured shapes on a noisy,
textured grey background, a caption naming every object left to right, an
integer label mask and, for every caption word, the mask label it refers to.

    >>> from dcam.zoo.data import ShapesDataset
    >>> ds = ShapesDataset(split="test", size=200, image_size=64)
    >>> s = ds[0]
    >>> s.caption                      # e.g. 'a red circle and a blue square'
    >>> s.words, s.word_labels         # ['a','red','circle','and','a','blue','square'], [0,1,1,0,0,2,2]
    >>> s.mask.shape, s.mask.dtype     # (64, 64) int64; 0 background, 1..k the objects

Rules (all deterministic given ``(base_seed, split, index)``):

* shapes: ``SHAPES`` (circle, square, triangle); colours: ``COLOURS`` (red,
  green, blue, yellow). Object size 28%-47% of the image side (18-30 px at
  64 px), anywhere inside the image.
* objects may overlap (later ones are drawn on top) but every object keeps
  at least ``MIN_VISIBLE`` (60%) of its own area unoccluded; two objects of
  the same colour never touch (so their outlines stay visible); the
  centroids of the visible parts are at least 9% of the image side apart
  horizontally, so the left-to-right order is unambiguous.
* the caption names the objects in increasing x of the centroid of their
  visible pixels: ``"a <colour> <shape>"`` joined by ``" and "``.
* the label mask holds ``j`` (1-based caption order) on the visible pixels of
  the j-th named object and 0 elsewhere (occlusion as drawn).
* ``word_labels[i]`` is the label of the object word ``i`` names (colour and
  shape words), 0 for the function words ``"a"`` and ``"and"``.
* splits: the generator is seeded with ``(base_seed, split code, index)``
  (train 0, val 1, test 2), so the three splits never share a seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import InputError

#: Colour names and their nominal RGB values.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 45, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 230),
    "yellow": (235, 210, 40),
}
#: Shape names.
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
#: Words of a caption that name no object (the toy vocabulary's fillers).
FILLER_WORDS: Tuple[str, ...] = ("a", "and")
#: Split names and the code mixed into their seeds.
SPLITS: Dict[str, int] = {"train": 0, "val": 1, "test": 2}
#: Minimum unoccluded fraction of every object.
MIN_VISIBLE = 0.6
#: Maximum number of objects in a scene.
MAX_OBJECTS = 3
#: Longest caption in words: 3 objects x 3 words + 2 "and".
MAX_CAPTION_WORDS = 3 * MAX_OBJECTS + (MAX_OBJECTS - 1)


@dataclass
class Sample:
    """One grounded-shapes scene.

    image: the RGB picture (``image_size`` x ``image_size``).
    caption: the reference caption, e.g. ``"a red circle and a blue square"``.
    words: ``caption.split()``.
    word_labels: per word, the mask label of the object it names (0 for "a"/"and").
    mask: int64 ``H x W`` label map, 0 background, ``j`` the j-th named object.
    objects: per object in caption order, a dict with ``colour``, ``shape``,
        ``label`` (1-based), ``bbox`` ``(x0, y0, x1, y1)`` of its visible pixels
        (x1/y1 exclusive), ``centroid`` ``(x, y)`` of its visible pixels,
        ``size`` in pixels and ``visible`` (unoccluded fraction).
    seed: the seed tuple the sample was generated from.
    """

    image: Image.Image
    caption: str
    words: List[str]
    word_labels: List[int]
    mask: np.ndarray
    objects: List[dict] = field(default_factory=list)
    seed: Tuple[int, ...] = ()

    def to_array(self) -> np.ndarray:
        """The image as a ``H x W x 3`` uint8 array."""
        return np.asarray(self.image, dtype=np.uint8)


def caption_for(objects: Sequence[dict]) -> Tuple[str, List[str], List[int]]:
    """Caption, words and word labels for objects already in caption order."""
    words: List[str] = []
    labels: List[int] = []
    for j, ob in enumerate(objects):
        if j:
            words.append("and")
            labels.append(0)
        words += ["a", ob["colour"], ob["shape"]]
        labels += [0, j + 1, j + 1]
    return " ".join(words), words, labels


def _shape_mask(shape: str, cx: float, cy: float, size: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    if shape == "circle":
        r = size / 2.0
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        h = 0.45 * size
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    if shape == "triangle":  # upward isosceles, base 1.15 size, height 1.05 size
        hh = 0.525 * size
        top, bottom = cy - hh, cy + hh
        half_base = 0.575 * size
        t = (yy - top) / (bottom - top)  # 0 at apex, 1 at base
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= t * half_base)
    raise InputError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noisy, low-saturation textured background, float ``n x n x 3``."""
    base = rng.uniform(70, 170)
    # smooth low-frequency field: bilinear upsampling of a coarse random grid
    g = int(rng.integers(3, 6))
    coarse = rng.uniform(-28, 28, size=(g, g)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((n, n), Image.BILINEAR), dtype=np.float32)
    tint = rng.uniform(-8, 8, size=3).astype(np.float32)
    img = base + smooth[..., None] + tint[None, None, :]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    kind = int(rng.integers(0, 3))
    if kind == 1:  # stripes
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(0.15, 0.6)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(6, 14)
        img = img + amp * np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)[..., None]
    elif kind == 2:  # checker / dots texture
        period = int(rng.integers(4, 10))
        amp = rng.uniform(5, 12)
        chk = (((xx // period) + (yy // period)) % 2) * 2 - 1
        img = img + amp * chk[..., None]
    return img


def generate_sample(seed: Union[int, Sequence[int]], image_size: int = 64,
                    n_objects: Optional[int] = None) -> Sample:
    """Generate one scene from ``seed`` (an int or a sequence of ints).

    n_objects: force the number of objects (1..3); default: uniform 1..3.
    The same seed and arguments always give the same sample.
    """
    # long: one seeded rejection-sampling recipe; its random draws must stay in this exact order (the
    # bundled weights were trained on these scenes), which splitting it up would make easy to break
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 32:
        raise InputError(f"image_size must be an int >= 32, got {image_size!r}")
    if n_objects is not None and (not isinstance(n_objects, (int, np.integer)) or not 1 <= n_objects <= MAX_OBJECTS):
        raise InputError(f"n_objects must be None or an int in 1..{MAX_OBJECTS}, got {n_objects!r}")
    seed_t = tuple(int(s) for s in np.atleast_1d(np.asarray(seed, dtype=np.int64)))
    rng = np.random.default_rng(list(seed_t))
    n = int(image_size)
    k = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else int(n_objects)
    colour_names = list(COLOURS)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    min_gap = 0.09 * n

    # rejection sampling of a valid layout; fall back to fewer objects if stuck
    while True:
        placed = None
        for _attempt in range(200):
            objs = []
            for _ in range(k):
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                colour = colour_names[int(rng.integers(len(colour_names)))]
                size = float(rng.uniform(0.28, 0.47) * n)
                half = 0.6 * size
                cx = float(rng.uniform(half, n - half))
                cy = float(rng.uniform(half, n - half))
                m = _shape_mask(shape, cx, cy, size, xx, yy)
                objs.append(dict(shape=shape, colour=colour, size=size, cx=cx, cy=cy, full=m))
            label = np.zeros((n, n), np.int64)
            for j, ob in enumerate(objs):
                label[ob["full"]] = j + 1
            ok = True
            for j, ob in enumerate(objs):
                area = int(ob["full"].sum())
                vis = label == j + 1
                ob["visible"] = float(vis.sum()) / max(area, 1)
                if area == 0 or ob["visible"] < MIN_VISIBLE:
                    ok = False
                    break
                ys, xs = np.nonzero(vis)
                ob["centroid"] = (float(xs.mean() + 0.5), float(ys.mean() + 0.5))
                ob["bbox"] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
                ob["vis"] = vis
            if not ok:
                continue
            for a in range(k):
                for b in range(a + 1, k):
                    oa, ob = objs[a], objs[b]
                    if abs(oa["centroid"][0] - ob["centroid"][0]) < min_gap:
                        ok = False
                    if oa["colour"] == ob["colour"]:
                        # same colour: full shapes (grown by 2 px) must not touch
                        xa0, ya0, xa1, ya1 = _full_bbox(oa["full"])
                        xb0, yb0, xb1, yb1 = _full_bbox(ob["full"])
                        if xa0 - 2 < xb1 and xb0 - 2 < xa1 and ya0 - 2 < yb1 and yb0 - 2 < ya1:
                            ok = False
            if ok:
                placed = (objs, label)
                break
        if placed is not None:
            break
        k -= 1  # pragma: no cover - essentially never reached
    objs, label = placed

    # render
    img = _background(rng, n)
    for ob in objs:
        rgb = np.asarray(COLOURS[ob["colour"]], np.float32) + rng.uniform(-15, 15, size=3).astype(np.float32)
        shade = rng.uniform(-10, 10) * ((yy - ob["cy"]) / ob["size"])  # gentle vertical shading
        img[ob["full"]] = (rgb[None, :] + shade[ob["full"]][:, None])
    img = img + rng.normal(0, 7, size=img.shape).astype(np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # caption order: left to right by the visible centroid
    order = sorted(range(k), key=lambda j: objs[j]["centroid"][0])
    mask = np.zeros((n, n), np.int64)
    objects = []
    for new, old in enumerate(order):
        ob = objs[old]
        mask[ob["vis"]] = new + 1
        objects.append(dict(colour=ob["colour"], shape=ob["shape"], label=new + 1, bbox=ob["bbox"],
                            centroid=ob["centroid"], size=ob["size"], visible=ob["visible"]))
    caption, words, word_labels = caption_for(objects)
    return Sample(image=Image.fromarray(img, mode="RGB"), caption=caption, words=words,
                  word_labels=word_labels, mask=mask, objects=objects, seed=seed_t)


def _full_bbox(m: np.ndarray) -> Tuple[int, int, int, int]:
    ys, xs = np.nonzero(m)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def split_seed(split: str, index: int, base_seed: int = 0) -> Tuple[int, int, int]:
    """The seed tuple of sample ``index`` of ``split``."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if index < 0:
        raise InputError(f"index must be >= 0, got {index}")
    return (int(base_seed), SPLITS[split], int(index))


class ShapesDataset:
    """Indexable, deterministic grounded-shapes split.

    ``ShapesDataset(split="test", size=200, image_size=64)[i]`` is
    ``generate_sample((base_seed, SPLITS[split], i), image_size)``; samples are
    generated on access (about a millisecond each) and cached when ``cache``.
    """

    def __init__(self, split: str = "train", size: int = 1000, image_size: int = 64,
                 base_seed: int = 0, cache: bool = True):
        if split not in SPLITS:
            raise InputError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if not isinstance(size, (int, np.integer)) or size < 0:
            raise InputError(f"size must be an int >= 0, got {size!r}")
        self.split = split
        self.size = int(size)
        self.image_size = int(image_size)
        self.base_seed = int(base_seed)
        self._cache: Optional[Dict[int, Sample]] = {} if cache else None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.size))]
        i = int(i)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a {self.split} split of size {self.size}")
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        s = generate_sample(split_seed(self.split, i, self.base_seed), self.image_size)
        if self._cache is not None:
            self._cache[i] = s
        return s

    def __iter__(self):
        for i in range(self.size):
            yield self[i]


def make_split(split: str, n: int, image_size: int = 64, base_seed: int = 0) -> List[Sample]:
    """The first ``n`` samples of ``split`` as a list."""
    return list(ShapesDataset(split, n, image_size, base_seed, cache=False))
