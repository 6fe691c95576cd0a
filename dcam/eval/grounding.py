"""The grounding benchmark: does a word's map put more mass on the object it
names than on every other object of the image?

On the first ``n`` grounded-shapes images of a split with two or more
objects, the reference caption is explained (teacher-forced, so every word has
a ground-truth object) for every probe mode and layer asked for, and the rate
of object words whose map is grounded is reported, next to what a uniform map
(chance) and a perfect class detector score. ``dcam grounding`` prints it.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..ops.config import describe_changes


def _whole(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def object_word_success(maps, words_idx: Sequence[int], word_labels: Sequence[int], mask: np.ndarray) -> List[bool]:
    """For each object word ``words_idx[k]`` (a caption word index), whether its
    map ``maps[k]`` (bilinearly upsampled to the mask) puts more mass on the
    named object than on every other object: its mass on the named object is
    > 0 and > its mass on each other object. A map with no mass on the named
    object grounds nothing, also when that object is the only one in the mask
    (an all-zero map counted there: no other object to beat). A constant map
    with mass counts where the named object holds strictly the most of it (the
    largest object, or the only one): that is the chance baseline's uniform map."""
    from ..render.overlay import upsample_map

    labels = [int(l) for l in np.unique(mask) if l > 0]
    if len(maps) < len(words_idx):  # (an IndexError)
        raise InputError(f"maps: one map per object word, got {len(maps)} maps for {len(words_idx)} words")
    out = []
    for k, i in enumerate(words_idx):
        if not _whole(i) or not 0 <= i < len(word_labels):  # (an IndexError)
            raise InputError(f"words_idx[{k}] must be a word number in [0, {len(word_labels)}), got {i!r}")
        named = word_labels[i]
        if not _whole(named):  # ('x' and None were raw errors, 1.7 was read as label 1)
            raise InputError(f"word_labels[{i}] must be a whole number (a label of the mask), got {named!r}")
        named = int(named)
        if named not in labels:  # (a KeyError)
            raise InputError(f"word_labels[{i}] is {named}, not a label of the mask (its labels: {labels})")
        hm = upsample_map(maps[k], mask.shape)
        mass = {l: float(hm[mask == l].sum()) for l in labels}
        own = mass[named]
        out.append(own > 0 and all(own > v for l, v in mass.items() if l != named))
    return out


def iter_grounding_samples(n: int = 50, split: str = "test", min_objects: int = 2, image_size: int = 64):
    """Yields the first ``n`` samples of ``split`` with at least ``min_objects`` objects, one at a time
    (generated on demand: a caller that drops each one holds a single image whatever ``n``)."""
    from ..errors import positive_int
    from ..zoo.data import ShapesDataset

    n = positive_int("n", n, allow_none=False)  # (0 never stopped the loop, -1 gave an empty report)
    ds = ShapesDataset(split, size=100 * n + 100, image_size=image_size, cache=False)
    found = 0
    for s in ds:
        if len(s.objects) >= min_objects:
            yield s
            found += 1
            if found == n:
                return


def grounding_samples(n: int = 50, split: str = "test", min_objects: int = 2, image_size: int = 64,
                      progress: bool = False):
    """The first ``n`` samples of ``split`` with at least ``min_objects`` objects, as a list.

    progress: a bar on stderr (generating one takes a few milliseconds: --n 100000 was minutes with no sign)."""
    from tqdm import tqdm

    out = []
    with tqdm(total=n, desc="generating images", unit="image", file=sys.stderr, disable=not progress) as bar:
        for s in iter_grounding_samples(n, split, min_objects, image_size):
            out.append(s)
            bar.update(1)
    return out


def grounding_report(model=None, processor=None, n: int = 50, probes: Optional[Sequence[str]] = None,
                     layers: Optional[Sequence[int]] = None, method: str = "diffusion-cam",
                     target_score: Optional[str] = None, config=None, progress: bool = True,
                     variants: bool = False, split: str = "test",
                     on_image: Optional[Callable[[int, int], None]] = None) -> dict:
    """Grounding rate of the maps on grounded-shapes test images.

    On the first ``n`` images of ``split`` (test by default; validation: "val")
    with two or more objects, the reference
    caption is explained (teacher-forced, so every word has a ground-truth
    object); for every object word (colour or shape) the map is bilinearly
    upsampled to the label mask and counts as grounded when its mass on the
    named object exceeds its mass on every other object of the image. Returns
    ``{"rates": {probe: {layer: rate}}, "rates_by_kind": {probe: {layer:
    {"colour": rate, "shape": rate}}}, "chance": rate of a uniform map,
    "class_detector": rate of :func:`class_detector_maps`,
    "n_images", "n_words"}``.

    variants: also score, from the same probe, maps that are not the
    method's (diagnostics, ``"variant_rates": {name: {probe: {layer: rate}}}``):
    ``"raw"`` (the pooled map of docs/ALGORITHM.md section 1 before refinement),
    ``"grad-norm"`` (``||G_t[n]||``, the per-token gradient norm) and
    ``"layercam"`` (``mean_d relu(relu(G_t[n, d]) * A[n, d])``, element-wise
    weighting instead of the per-channel mean over tokens).

    on_image: called with ``(k, n)`` as image ``k`` (from 0) of ``n`` begins its settings, and with
    ``(n, n)`` once every image is done (``dcam grounding --profile`` records a window of the images).
    """
    from ..errors import InputError, positive_int
    from ..explain import Explainer
    from ..methods import get_method

    positive_int("n", n, allow_none=False)  # (before the model loads)
    m = get_method(method)
    if not m.needs_gradients:  # (TAM: "--layers: hooks no layer" though no layer was given)
        if layers is not None:
            raise InputError(f"layers: the {method} method hooks no layer (it reads the model's final states); "
                             "leave layers out")
        if target_score is not None:
            raise InputError(f"target_score: the {method} method differentiates no score; leave target_score out")
    if probes is None:  # every probe mode the method takes
        probes = [p for p in ("full", "masked", "remask") if m.probes is None or p in m.probes]
    if model is None:
        from ..models import load_model

        model, processor = load_model(None)
    exp0 = Explainer(model, processor, method=method, config=config)
    if not m.needs_gradients:
        layers = [None]  # one setting: the method reads the final states
    elif layers is None:
        layers = list(range(len(exp0.adapter.blocks()) - 1))
    else:
        layers = [exp0.adapter.resolve_layer(l) for l in layers]
    if m.needs_gradients:
        target_score = target_score or m.default_target_score
    # one Explainer per setting, as when each setting ran over every image in turn: each has its own
    # adapter, whose one-time checks (rows-only last block) then see the same first image as before
    settings = {(probe, layer): Explainer(model, processor, layer=layer, method=method, config=config)
                for probe in probes for layer in layers}
    counts = {"chance": 0, "class_detector": 0, "n_images": 0, "n_words": 0, "n_kind": {"colour": 0, "shape": 0}}
    tallies = {key: {"hits": 0, "kinds": {"colour": 0, "shape": 0}, "variants": {}} for key in settings}
    from tqdm import tqdm

    # one image at a time through every setting, then dropped: memory does not grow with n
    # (every image was held, with its masks, until the last setting: --n 100000 took ~4.5 GB)
    image_size = int(getattr(model.config, "image_size", 64))
    with tqdm(total=n * len(settings), desc="grounding", unit="explanation", file=sys.stderr,
              disable=not progress) as bar:
        for k, s in enumerate(iter_grounding_samples(n, split=split, image_size=image_size)):
            if on_image is not None:
                on_image(k, n)
            _add_baselines(s, counts)
            for (probe, layer), exp in settings.items():
                _score_image(exp, s, probe, target_score, variants, tallies[probe, layer])
                bar.update(1)
    if on_image is not None:
        on_image(counts["n_images"], counts["n_images"])
    return _report(counts, tallies, variants, split=split, method=method, target_score=target_score,
                   default_layer=exp0.layer, config_changes=exp0.config.changes())


def _report(counts: dict, tallies: dict, variants: bool, **about) -> dict:
    """:func:`grounding_report`'s rates from the counts of the baselines and of each (probe, layer)."""
    n_words = counts["n_words"]
    out = dict(chance=counts["chance"] / max(1, n_words), class_detector=counts["class_detector"] / max(1, n_words),
               n_images=counts["n_images"], n_words=n_words, rates={}, rates_by_kind={}, **about)
    variant_rates: Dict[str, Dict[str, Dict[int, float]]] = {}
    for (probe, layer), t in tallies.items():
        out["rates"].setdefault(probe, {})[layer] = t["hits"] / max(1, n_words)
        out["rates_by_kind"].setdefault(probe, {})[layer] = {
            k: v / max(1, counts["n_kind"][k]) for k, v in t["kinds"].items()}
        for name, v in t["variants"].items():
            variant_rates.setdefault(name, {}).setdefault(probe, {})[layer] = v / max(1, n_words)
    if variants:
        out["variant_rates"] = variant_rates
    return out


def _word_kind(word: str) -> str:
    from ..zoo.data import COLOURS

    return "colour" if word in COLOURS else "shape"


def _object_words(sample) -> List[int]:
    return [i for i, l in enumerate(sample.word_labels) if l > 0]


def _add_baselines(s, counts: dict) -> None:
    """Adds one image and its object words to ``counts``, with the words a uniform map (chance) and a
    perfect class detector ground."""
    idx = _object_words(s)
    counts["n_images"] += 1
    counts["n_words"] += len(idx)
    for i in idx:
        counts["n_kind"][_word_kind(s.words[i])] += 1
    uniform = np.ones((len(idx), 2, 2), np.float32)
    # a uniform map's mass is the object's area: ties (equal areas) count as failures
    counts["chance"] += sum(object_word_success(uniform, idx, s.word_labels, s.mask))
    counts["class_detector"] += sum(object_word_success(class_detector_maps(s, idx), idx, s.word_labels, s.mask))


def _score_image(exp, s, probe: str, target_score: str, variants: bool, tally: dict) -> None:
    """Adds one image's grounded words (in all, per kind, per diagnostic map) of one probe and layer to ``tally``."""
    idx = _object_words(s)
    e = exp.explain(s.image, response=s.caption, targets=idx, probe=probe, target_score=target_score)
    ok = object_word_success(e.maps, idx, s.word_labels, s.mask)
    tally["hits"] += sum(ok)
    if variants:
        for name, vm in _variant_maps(exp, e, s, idx, probe, target_score).items():
            tally["variants"][name] = tally["variants"].get(name, 0) + sum(
                object_word_success(vm, idx, s.word_labels, s.mask))
    for i, good in zip(idx, ok):
        tally["kinds"][_word_kind(s.words[i])] += int(good)


def class_detector_maps(sample, words_idx: Sequence[int]) -> np.ndarray:
    """For each object word, the map of a perfect class detector: 1 on every
    object of the named colour (or shape), 0 elsewhere. What a map that
    finds "what the word reads" but not which instance scores at best (same-class
    objects tie on density and the larger one wins on mass)."""
    from ..zoo.data import COLOURS

    out = np.zeros((len(words_idx),) + sample.mask.shape, np.float32)
    for k, i in enumerate(words_idx):
        key = "colour" if sample.words[i] in COLOURS else "shape"
        for j, obj in enumerate(sample.objects):
            if obj[key] == sample.words[i]:
                out[k][sample.mask == j + 1] = 1.0
    return out


def _variant_maps(exp, e, s, idx, probe, target_score) -> dict:
    """Diagnostic maps of :func:`grounding_report` (``variants=True``)."""
    from ..probe import probe as run_probe

    a = exp.adapter
    prep = a.prepare(s.image, None, e.response_ids)
    pos = [prep.response_start + i for i in idx]
    r = run_probe(a, prep, pos, [prep.response_ids[i] for i in idx], exp.layer, probe=probe,
                  target_score=target_score, chunk_size=exp.chunk_size)
    A, G = r.per_target_acts().float(), r.per_target_grads().float()  # [T, N, D]
    T, (h, w) = len(idx), prep.grid
    out = {"grad-norm": G.norm(dim=2), "layercam": (G.clamp(min=0) * A).clamp(min=0).mean(2)}
    out = {k: (v / (v.amax(1, keepdim=True) + 1e-12)).reshape(T, h, w) for k, v in out.items()}
    if e.raw_maps is not None:
        out["raw"] = e.raw_maps
    return out


def format_grounding(rep: dict) -> str:
    layers = sorted({l for r in rep["rates"].values() for l in r}, key=lambda l: -1 if l is None else l)
    how = f"{rep['method']}, {rep['target_score']} score" if rep.get("target_score") else rep["method"]
    lines = [f"grounding rate ({how}) on {rep['n_images']} "
             f"{rep.get('split', 'test')}-split images, "
             f"{rep['n_words']} object words; uniform-map chance {rep['chance']:.3f}",
             f"config: {describe_changes(rep.get('config_changes', {}))}",
             f"a perfect class detector (every object of the named colour/shape) scores "
             f"{rep.get('class_detector', float('nan')):.3f}",
             "probe     " + "".join((f"  layer {l}" if l is not None else " no layer") +
                                   ("*" if l is not None and l == rep.get("default_layer") else " ") for l in layers)]
    for probe, r in rep["rates"].items():
        lines.append(f"{probe:<10}" + "".join(f"  {r[l]:7.3f} " for l in layers))
    lines.append("by word kind (colour / shape):")
    for probe, r in rep.get("rates_by_kind", {}).items():
        lines.append(f"{probe:<10}" + "".join(f"  {r[l]['colour']:.2f}/{r[l]['shape']:.2f}" for l in layers))
    for name, vr in rep.get("variant_rates", {}).items():
        lines.append(f"diagnostic map {name!r} (same probe):")
        for probe, r in vr.items():
            lines.append(f"{probe:<10}" + "".join(f"  {r[l]:7.3f} " for l in layers))
    return "\n".join(lines)
