"""Evaluation metrics of Diffusion-CAM (docs/ALGORITHM.md section 8), vectorised over maps.

Every function takes a batch of maps ``[M, h, w]`` (values in ``[0, 1]``, e.g.
the output of any CAM method) and works on all of them at once with torch; no
Python loop runs over pixels or maps (only over groups of maps whose masks have
different sizes, see :func:`object_metrics`).

Per map, against a ground-truth label mask ``[H, W]`` (int, ``0`` background,
``c > 0`` one object instance each):

- the map is resized to ``H x W`` bilinearly with half-pixel centres and no
  antialiasing (``interpolate(..., "bilinear", align_corners=False)``), giving
  ``hm``, clamped to ``[0, 1]`` (a no-op for maps already in range; it keeps
  ``u8`` a valid byte for sloppy inputs);
- ``u8 = floor(hm * 255)``;
- Otsu threshold ``t`` on the 256-bin histogram of ``u8``: the ``t`` that
  maximises the between-class variance of the split ``u8 <= t`` / ``u8 > t``,
  first maximum; a split with an empty class has variance 0, so a constant map
  gets ``t = 0``. Mathematically equal variances (e.g. every ``t`` inside a gap
  of the histogram, or symmetric histograms) are treated as ties, to a relative
  ``1e-10``, so rounding never decides which of two exact ties wins;
  prediction ``p = u8 > t``;
- ``obj_iou``: ``max_c |p & (mask==c)| / |p | (mask==c)|`` over the labels
  ``c > 0`` present in the mask (ground truth given as a stack of objects'
  own masks, which may overlap: over those objects, each whole, and
  ``mask>0`` below is their union);
- ``contrast = mean(hm[mask>0]) / (mean(hm[mask==0]) + 1e-8)`` (a mean over an
  empty set counts as 0);
- ``concentration = sum(hm[mask>0]) / (sum(hm) + 1e-8)``;
- ``f3 = 3 / (1/obj_iou + 1/min(contrast/20, 1) + 1/concentration)``, 0 if any
  of the three terms is 0;
- ``func_iou`` (function words, whose ground truth is "nothing"): the fraction
  of pixels with ``hm < t/255`` (compared in float64).

A mask with no positive pixel has no object: all its object metrics are NaN
and the dataset summary leaves it out (and counts it in ``n_invalid``).

Dataset level (:func:`summarize`): the means of obj-IoU, contrast and
concentration, ``f3`` of those means (how the paper's table is computed) and
``f3_per_map``, the mean of the per-map F3 values. Ratios are fractions here;
tables multiply by 100 where they print percentages.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, one_line

__all__ = [
    "CONTRAST_SCALE",
    "resize_maps",
    "to_u8",
    "otsu_threshold",
    "object_metrics",
    "function_metrics",
    "f3_score",
    "summarize",
    "MetricAccumulator",
]

EPS = 1e-8
#: contrast is divided by this before entering F3 (and capped at 1)
CONTRAST_SCALE = 20.0
#: relative tolerance under which two between-class variances count as a tie
OTSU_TIE_RTOL = 1e-10
#: pixels processed per chunk (maps x H x W) to bound memory on large masks
_CHUNK_PIXELS = 1 << 20  # ~1M pixels: the working set stays in cache

ArrayLike = Union[Tensor, np.ndarray]


def _as_maps(maps: ArrayLike) -> Tensor:
    """Maps as float32 ``[M, h, w]``, checked: real numbers in [0, 1] (dcam's maps are; a map
    of 5s was clamped to 1 and one of negatives scored 0 without a word), sides >= 1."""
    try:
        m = torch.as_tensor(maps)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"maps must be numbers, got {type(maps).__name__}") from None
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise InputError(f"maps must be [M, h, w] (or one [h, w] map), got shape {tuple(m.shape)}")
    if m.is_complex():  # (its imaginary part was dropped with only a torch warning)
        raise InputError(f"maps must hold real numbers, got dtype {m.dtype}")
    if m.shape[0] and (m.shape[1] == 0 or m.shape[2] == 0):
        raise InputError(f"maps must have sides >= 1, got shape {tuple(m.shape)}")
    m = m.float()
    if m.numel() and not bool(torch.isfinite(m).all()):  # (NaN reached bincount's RuntimeError)
        raise InputError(f"maps contains {int((~torch.isfinite(m)).sum())} NaN/Inf value(s)")
    if m.numel() and (float(m.min()) < 0.0 or float(m.max()) > 1.0):
        raise InputError(f"maps must lie in [0, 1] (dcam's maps do), got values in [{float(m.min())!r}, "
                         f"{float(m.max())!r}]")
    return m


def _as_mask(mask: ArrayLike) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"label masks must hold integers, got {type(mask).__name__} {mask!r:.40}") from None
    if t.numel() == 0 and t.dim() >= 2:
        raise InputError(f"label masks must have sides >= 1, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        t = t.long()
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise InputError("label masks must hold integers")
    if t.numel() and (t.is_floating_point() or t.dtype == torch.uint64) and float(t.double().max()) >= 2.0 ** 63:
        # (the cast to int64 wrapped them round: "must be >= 0" of a positive label)
        raise InputError(f"label masks: label {float(t.double().max()):.6g} is past int64's range")
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise InputError("label masks must be >= 0 (0 is background)")
    return t


def _size_pair(s, size, per_map: str = "") -> Tuple[int, int]:
    """One ``(H, W)`` of ``size`` as two ints >= 1, else an InputError naming ``size``
    (a tuple, a list, a numpy array or a tensor of two whole numbers, as torch takes)."""
    integral = (isinstance(s, Tensor) and not s.dtype.is_floating_point and not s.dtype.is_complex
                and s.dtype != torch.bool) or (isinstance(s, np.ndarray) and s.dtype.kind in "iu")
    if integral and s.ndim == 1:  # (a numpy array or tensor of two whole numbers: the old code took them)
        s = s.tolist()
    ok = isinstance(s, (tuple, list)) and len(s) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in s)
    if not ok:  # (0, 0) and (-1, 8) reached torch's RuntimeError, (8.0, 8.0) a TypeError, (2.5, 3) became (2, 3)
        raise InputError(f"size must be (H, W) ints >= 1{per_map}, got {size!r}")
    return int(s[0]), int(s[1])


def resize_maps(maps: ArrayLike, size: Tuple[int, int]) -> Tensor:
    """Bilinear resize ``[M, h, w] -> [M, H, W]`` (half-pixel centres, no
    antialiasing), clamped to ``[0, 1]``. Same size: the maps themselves.
    Interpolated in float64, rounded to float32 once: in float32 a constant map
    came out a few ulp below its value in places, which ``floor(hm * 255)`` split
    into two levels for Otsu (t = 50 on a map of 0.2, not 0)."""
    m = _as_maps(maps)
    H, W = _size_pair(size, size)
    if tuple(m.shape[1:]) != (H, W):
        m = F.interpolate(m[:, None].double(), size=(H, W), mode="bilinear", align_corners=False,
                          antialias=False)[:, 0].float()
    return m.clamp(0.0, 1.0)


def to_u8(hm: Tensor) -> Tensor:
    """``floor(hm * 255)`` as int64 in ``[0, 255]``."""
    return torch.floor(hm * 255.0).clamp_(0.0, 255.0).long()


def _histogram(u8: Tensor) -> Tensor:
    """256-bin histogram per map: ``[M, ...] -> int64 [M, 256]``."""
    M = u8.shape[0]
    flat = u8.reshape(M, -1)
    idx = flat + 256 * torch.arange(M, device=u8.device)[:, None]
    return torch.bincount(idx.reshape(-1), minlength=256 * M).reshape(M, 256)


def _otsu_from_hist(hist: Tensor) -> Tensor:
    """First maximum of the between-class variance, from ``[M, 256]`` counts.

    Up to a positive per-map constant, the variance of the split at ``t`` is
    ``(N*s0 - n0*S)^2 / (n0 * (N - n0))`` with ``n0``/``s0`` the count/sum of
    the values ``<= t`` and ``N``/``S`` the totals; the bracket is exact in
    int64, the rest in float64; an empty class gives 0."""
    levels = torch.arange(256, device=hist.device, dtype=torch.long)
    n0 = hist.cumsum(dim=1)
    s0 = (hist * levels).cumsum(dim=1)
    N = n0[:, -1:]
    S = s0[:, -1:]
    num = (N * s0 - n0 * S).double() ** 2
    den = (n0 * (N - n0)).double()
    var = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    best = var.max(dim=1, keepdim=True).values
    ok = var >= best * (1.0 - OTSU_TIE_RTOL)
    return ok.long().argmax(dim=1)  # first True: first (tied) maximum; 0 when all are 0


def otsu_threshold(u8: ArrayLike) -> Tensor:
    """Otsu threshold of each map of ``u8`` (ints in ``[0, 255]``, ``[M, ...]``)
    -> int64 ``[M]``; the prediction is ``u8 > t``."""
    t = torch.as_tensor(u8)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"u8 must hold ints in [0, 255] (a map quantised to bytes), got dtype {t.dtype}")
    if t.dim() == 0:  # (an IndexError)
        raise InputError("u8 must be [M, ...] maps (or one map of [n] values), got a single number")
    u = t.long()
    if u.numel() and (int(u.min()) < 0 or int(u.max()) > 255):  # was clamped silently
        raise InputError(f"u8 must hold ints in [0, 255], got values in [{int(u.min())}, {int(u.max())}]")
    if u.dim() == 1:
        u = u[None]
    return _otsu_from_hist(_histogram(u))


def f3_score(obj_iou, contrast, concentration):
    """``3 / (1/obj_iou + 1/min(contrast/20, 1) + 1/concentration)``; 0 if any
    term is 0. Works on floats and on tensors (element-wise; NaN stays NaN)."""
    if isinstance(obj_iou, Tensor) or isinstance(contrast, Tensor) or isinstance(concentration, Tensor):
        try:
            a, b, c = (torch.as_tensor(x, dtype=torch.float64) for x in (obj_iou, contrast, concentration))
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"f3_score takes numbers, got {type(obj_iou).__name__}, {type(contrast).__name__}, "
                             f"{type(concentration).__name__}") from None
        try:
            a, b, c = torch.broadcast_tensors(a, b, c)
        except RuntimeError:
            raise InputError(f"f3_score: obj_iou, contrast and concentration must have one shape (or broadcast), "
                             f"got {list(a.shape)}, {list(b.shape)} and {list(c.shape)}") from None
        for name, x in (("obj_iou", a), ("contrast", b), ("concentration", c)):
            if bool((x < 0).any()):  # (as the floats: (-0.5, 1, 1) gave 0.1579)
                raise InputError(f"f3_score: obj_iou, contrast and concentration are >= 0, got {name} "
                                 f"{float(x[x < 0].reshape(-1)[0])!r}")
        b = torch.clamp(b / CONTRAST_SCALE, max=1.0)
        zero = (a == 0) | (b == 0) | (c == 0)
        one = torch.ones_like(a)
        safe = lambda x: torch.where(x == 0, one, x)  # noqa: E731
        f = 3.0 / (1.0 / safe(a) + 1.0 / safe(b) + 1.0 / safe(c))
        return torch.where(zero, torch.zeros_like(f), f)
    try:
        a, b, c = float(obj_iou), min(float(contrast) / CONTRAST_SCALE, 1.0), float(concentration)
    except (TypeError, ValueError):
        raise InputError(f"f3_score takes numbers, got {obj_iou!r}, {contrast!r}, {concentration!r}") from None
    if any(x < 0 for x in (a, b, c)):  # (-0.5 gave 3.0); before the NaN test, as the tensors' check
        raise InputError(f"f3_score: obj_iou, contrast and concentration are >= 0, got {obj_iou!r}, {contrast!r}, "
                         f"{concentration!r}")
    if any(math.isnan(x) for x in (a, b, c)):
        return float("nan")
    if a == 0 or b == 0 or c == 0:
        return 0.0
    return 3.0 / (1.0 / a + 1.0 / b + 1.0 / c)


def _object_metrics_same_size(maps: Tensor, masks: Tensor, objects: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """``masks``: label masks ``[M, H, W]``; or, with ``objects`` (bool ``[M, K, H, W]``, each
    object whole, objects may overlap), their union as ``0/1`` masks: Obj-IoU is then taken
    over the K objects, not over the labels."""
    M = maps.shape[0]
    H, W = masks.shape[1:]
    hm = resize_maps(maps, (H, W)).reshape(M, -1)
    u8 = to_u8(hm)
    t = _otsu_from_hist(_histogram(u8))
    # labels renumbered 0..L-1 in order (0, the background, stays 0): counts per label were
    # sized by the largest label, so an RGB-encoded instance id (16,777,215) asked for 5 GB
    values, dense = torch.unique(torch.cat([masks.new_zeros(1), masks.reshape(-1)]), return_inverse=True)
    lab = dense[1:].reshape(M, -1)
    L = int(values.numel())
    # one key per (map, label, predicted); counts and sums of hm per key in two bincounts
    key = lab * 2
    key += (u8 > t[:, None])
    key += (torch.arange(M) * (2 * L))[:, None]
    key = key.reshape(-1)
    cnt = torch.bincount(key, minlength=M * L * 2).reshape(M, L, 2).double()
    sums = torch.bincount(key, weights=hm.reshape(-1).double(), minlength=M * L * 2).reshape(M, L, 2)
    inter = cnt[:, 1:, 1]
    area = cnt[:, 1:, :].sum(dim=2)
    n_pred = cnt[:, :, 1].sum(dim=1, keepdim=True)
    union = n_pred + area - inter
    present = area > 0
    iou = torch.where(present, inter / torch.where(union > 0, union, torch.ones_like(union)),
                      torch.full_like(inter, -1.0))
    obj_iou = iou.max(dim=1).values if L > 1 else torch.full((M,), -1.0, dtype=torch.float64)
    if objects is not None:  # each object whole: a pixel two objects share counts in both
        inst = objects.reshape(M, objects.shape[1], -1)
        pred = (u8 > t[:, None])[:, None, :]
        area_k = inst.sum(dim=2).double()
        inter_k = (inst & pred).sum(dim=2).double()
        union_k = n_pred + area_k - inter_k
        iou_k = torch.where(area_k > 0, inter_k / torch.where(union_k > 0, union_k, torch.ones_like(union_k)),
                            torch.full_like(area_k, -1.0))
        obj_iou = iou_k.max(dim=1).values if inst.shape[1] else torch.full((M,), -1.0, dtype=torch.float64)
    n_fg = area.sum(dim=1)
    n_bg = cnt[:, 0, :].sum(dim=1)
    s_fg = sums[:, 1:, :].sum(dim=(1, 2))
    s_bg = sums[:, 0, :].sum(dim=1)
    s_all = s_fg + s_bg
    mean_fg = s_fg / n_fg.clamp(min=1)
    mean_bg = torch.where(n_bg > 0, s_bg / n_bg.clamp(min=1), torch.zeros_like(s_bg))
    contrast = mean_fg / (mean_bg + EPS)
    concentration = s_fg / (s_all + EPS)
    valid = n_fg > 0
    nan = torch.full_like(contrast, float("nan"))
    obj_iou = torch.where(valid, obj_iou, nan)
    contrast = torch.where(valid, contrast, nan)
    concentration = torch.where(valid, concentration, nan)
    return {
        "obj_iou": obj_iou,
        "contrast": contrast,
        "concentration": concentration,
        "f3": f3_score(obj_iou, contrast, concentration),
        "threshold": t,
    }


def _chunks(M: int, pixels: int) -> Iterable[slice]:
    step = max(1, _CHUNK_PIXELS // max(pixels, 1))
    for s in range(0, M, step):
        yield slice(s, min(M, s + step))


def object_metrics(maps: ArrayLike, masks: Union[ArrayLike, Sequence[ArrayLike]]) -> Dict[str, Tensor]:
    """Per-map object metrics.

    maps: ``[M, h, w]``; masks: a ``[M, H, W]`` int tensor/array, or a sequence
    of ``M`` ground truths of any sizes (grouped by size internally), each a
    ``[H, W]`` label mask or a ``[K, H, W]`` stack of K objects' own masks
    (nonzero: the object). Objects of a stack may overlap: each is scored
    whole (Obj-IoU is the best of the K), contrast and concentration use their
    union; a label mask cannot hold two objects on one pixel.
    Returns float64 tensors ``[M]``: ``obj_iou``, ``contrast``,
    ``concentration``, ``f3`` and the int64 Otsu ``threshold``."""
    one_map = np.ndim(maps) == 2
    m = _as_maps(maps)
    M = m.shape[0]
    if isinstance(masks, (str, bytes, dict)) or not isinstance(masks, (Tensor, np.ndarray, Iterable)):  # (a TypeError)
        raise InputError(f"masks must be an [M, H, W] array or a list of M [H, W] label masks, got "
                         f"{type(masks).__name__}")
    if one_map and isinstance(masks, (Tensor, np.ndarray)) and np.ndim(masks) == 2:
        masks = [masks]  # one [h, w] map and its one [H, W] mask (the mask's rows were read as masks)
    if isinstance(masks, (Tensor, np.ndarray)) and np.ndim(masks) == 3:
        mask_list = None
        mk = _as_mask(masks)
        if mk.shape[0] != M:
            raise InputError(f"got {M} maps but {mk.shape[0]} masks")
        groups: Dict[tuple, List[int]] = {(False,) + tuple(mk.shape[1:]): list(range(M))}
    else:
        mask_list = [_as_mask(x) for x in masks]
        if len(mask_list) != M:
            raise InputError(f"got {M} maps but {len(mask_list)} masks")
        groups = {}
        for i, x in enumerate(mask_list):
            if x.dim() not in (2, 3):
                raise InputError(f"mask {i} must be [H, W] (labels) or [K, H, W] (K objects), got shape "
                                 f"{tuple(x.shape)}")
            groups.setdefault((x.dim() == 3,) + tuple(x.shape[-2:]), []).append(i)
    out = {k: torch.empty(M, dtype=torch.float64) for k in ("obj_iou", "contrast", "concentration", "f3")}
    out["threshold"] = torch.empty(M, dtype=torch.long)
    for key, idx in groups.items():
        H, W = key[-2:]
        K = max((mask_list[i].shape[0] for i in idx), default=0) if key[0] is True else 1
        for sl in _chunks(len(idx), max(K, 1) * H * W):
            if mask_list is None:  # one group: idx is range(M), slices are views
                sel = sl
                res = _object_metrics_same_size(m[sl], mk[sl])
            elif key[0] is True:  # object stacks, padded to K with empty objects (they are no object)
                sel = torch.tensor(idx[sl], dtype=torch.long)
                objs = torch.zeros((len(sel), K, H, W), dtype=torch.bool)
                for r, i in enumerate(idx[sl]):
                    objs[r, :mask_list[i].shape[0]] = mask_list[i] != 0
                res = _object_metrics_same_size(m[sel], objs.any(dim=1).long(), objs)
            else:
                sel = torch.tensor(idx[sl], dtype=torch.long)
                res = _object_metrics_same_size(m[sel], torch.stack([mask_list[i] for i in idx[sl]]))
            for k, v in res.items():
                out[k][sel] = v.to(out[k].dtype)
    return out


def function_metrics(maps: ArrayLike, size: Union[Tuple[int, int], Sequence[Tuple[int, int]]]
                     ) -> Dict[str, Tensor]:
    """Func-IoU of function-word maps: the fraction of the resized map below
    its Otsu threshold (``hm < t/255``). size: one ``(H, W)`` for all maps or
    one per map. Returns ``func_iou`` (float64 ``[M]``) and ``threshold``."""
    m = _as_maps(maps)
    M = m.shape[0]

    def pair(s) -> Tuple[int, int]:
        return _size_pair(s, size, " (or one per map)")

    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, (int, float, np.number))
                                                                  for s in size):
        sizes = [pair(size)] * M
    elif isinstance(size, (tuple, list)):
        sizes = [pair(s) for s in size]
        if len(sizes) != M:
            raise InputError(f"got {M} maps but {len(sizes)} sizes")
    else:
        raise InputError(f"size must be (H, W) ints >= 1 (or one per map), got {size!r}")
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, s in enumerate(sizes):
        groups.setdefault(s, []).append(i)
    func = torch.empty(M, dtype=torch.float64)
    thr = torch.empty(M, dtype=torch.long)
    for (H, W), idx in groups.items():
        for sl in _chunks(len(idx), H * W):
            sel = torch.tensor(idx[sl], dtype=torch.long)
            hm = resize_maps(m[sel], (H, W)).reshape(len(sel), -1)
            t = _otsu_from_hist(_histogram(to_u8(hm)))
            below = hm.double() < (t.double() / 255.0)[:, None]
            func[sel] = below.double().mean(dim=1)
            thr[sel] = t
    return {"func_iou": func, "threshold": thr}


def _numbers(values, name: str) -> np.ndarray:
    """``values`` (real numbers, one per map) as float64, else an InputError naming ``name``."""
    try:
        if isinstance(values, (str, bytes)) or any(isinstance(x, (str, bytes, complex, np.complexfloating))
                                                   for x in values):
            raise TypeError
        return np.asarray([float(x) for x in values], dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):  # ("x" was a plain ValueError, "1.5" was read as 1.5)
        raise InputError(f"{name} must hold real numbers (one per map), got {one_line(repr(values))[:80]}") from None


def _finite_mean(a: np.ndarray) -> Tuple[float, int]:
    a = a[np.isfinite(a)]
    return (float(a.mean()) if a.size else float("nan")), int(a.size)


def summarize(obj: Optional[Dict[str, Sequence[float]]] = None,
              func: Optional[Dict[str, Sequence[float]]] = None) -> Dict[str, float]:
    """Dataset-level numbers from per-map results (dicts as returned by
    :func:`object_metrics` / :func:`function_metrics`, or lists of floats).

    Returns ``obj_iou``, ``contrast``, ``concentration`` (means over maps with
    a valid mask), ``f3`` (F3 of those means, the paper's table),
    ``f3_per_map`` (mean of per-map F3), ``func_iou`` (mean), ``n_obj``,
    ``n_func`` and ``n_invalid`` (object maps left out: empty mask)."""
    res: Dict[str, float] = {}
    for name, given, keys in (("obj", obj, ("obj_iou", "contrast", "concentration", "f3")),
                              ("func", func, ("func_iou",))):
        missing = [k for k in keys if given is not None and k not in given]
        if missing:  # (a KeyError)
            raise InputError(f"{name} must hold {', '.join(keys)} (as object_metrics / function_metrics return); "
                             f"missing {', '.join(missing)}")
    if obj is not None and len(obj.get("obj_iou", [])):
        per_map = {k: _numbers(obj[k], f"obj[{k!r}]") for k in ("obj_iou", "contrast", "concentration", "f3")}
        if len({len(v) for v in per_map.values()}) > 1:  # (an IndexError)
            raise InputError("obj must hold one value per map in each of obj_iou, contrast, concentration, f3; got "
                             + ", ".join(f"{len(v)} {k}" for k, v in per_map.items()))
        iou = per_map["obj_iou"]
        valid = np.isfinite(iou)
        pick = lambda k: per_map[k][valid]  # noqa: E731
        n = int(valid.sum())
        res["n_obj"] = n
        res["n_invalid"] = int((~valid).sum())
        if n:
            res["obj_iou"] = float(iou[valid].mean())
            res["contrast"] = float(pick("contrast").mean())
            res["concentration"] = float(pick("concentration").mean())
            res["f3"] = float(f3_score(res["obj_iou"], res["contrast"], res["concentration"]))
            res["f3_per_map"] = float(pick("f3").mean())
        else:
            for k in ("obj_iou", "contrast", "concentration", "f3", "f3_per_map"):
                res[k] = float("nan")
    else:
        res.update(n_obj=0, n_invalid=0, obj_iou=float("nan"), contrast=float("nan"),
                   concentration=float("nan"), f3=float("nan"), f3_per_map=float("nan"))
    if func is not None and len(func.get("func_iou", [])):
        res["func_iou"], res["n_func"] = _finite_mean(_numbers(func["func_iou"], "func['func_iou']"))
    else:
        res["func_iou"], res["n_func"] = float("nan"), 0
    return res


class MetricAccumulator:
    """Collects per-map results over a data set; :meth:`summary` gives the
    dataset-level numbers. Add object maps with their masks and function-word
    maps with their image size; each ``add_*`` call is vectorised over its maps."""

    def __init__(self):
        self.obj: Dict[str, List[float]] = {k: [] for k in ("obj_iou", "contrast", "concentration", "f3")}
        self.func: Dict[str, List[float]] = {"func_iou": []}

    def add_object(self, maps: ArrayLike, masks) -> Dict[str, Tensor]:
        r = object_metrics(maps, masks)
        for k in self.obj:
            self.obj[k].extend(r[k].tolist())
        return r

    def add_function(self, maps: ArrayLike, size) -> Dict[str, Tensor]:
        r = function_metrics(maps, size)
        self.func["func_iou"].extend(r["func_iou"].tolist())
        return r

    def summary(self) -> Dict[str, float]:
        return summarize(self.obj, self.func)
