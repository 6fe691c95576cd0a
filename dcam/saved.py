"""Reading back what :meth:`dcam.Explanation.save` wrote (``dcam explain --out``, ``dcam demo``).

:func:`load_explanation` (``dcam.load_explanation``) rebuilds the
:class:`~dcam.explanation.Explanation` of a saved folder from its
``maps.safetensors`` and ``meta.json`` (and its trajectory from
``trajectory.safetensors``): maps, statistics, scores, raw maps and context
weights bit for bit, words, settings and notes as they were. :func:`load_trajectory`
(``dcam.load_trajectory``) reads a :class:`~dcam.trajectory.Trajectory` back, from
``Trajectory.save``'s folder (its own meta.json and image.png) or an explanation's. One thing is not
kept by a save: the full-size image. ``image.png`` holds it as rendered under
the overlays (longest side at most the save's ``max_side``); a loaded
explanation's ``image`` is that one scaled back to the size of the image
explained (meta.json's ``image_size``): the image explained, pixel for pixel, where
image.png is it at its own size or enlarged by a whole factor, each pixel a block (a save
does one of the two to every image whose longest side is at most ``max_side``, 1024 by
default); an image shrunk for image.png (longest side over ``max_side``) comes back
blurred, each pixel the mean of the ones it covered, so that its overlays, page, pictures
and a save of it again come out at the sizes the explanation's own did, every
view's map placed as before (by ``box`` and ``view_boxes``, which are kept);
a folder without ``image_size`` loads image.png as it is. The maps do not
depend on the image (they are on the model's grid). meta.json keeps the
digests of ``maps.safetensors``,
``trajectory.safetensors`` and ``image.png``: a file of another save is refused.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from PIL import Image

from .errors import InputError, one_line
from .explanation import Explanation
from .fields import Fields, whole
from .ops.config import CamConfig
from .output import file_digest, folder_path
from .render.overlay import MAP_TOLERANCE, rendered_at

#: meta.json keys every saved explanation has (a folder without one of them is not one). Not ``pieces``:
#: a dcam before words and phrases (commit 572c085) explained one token per item and saved none; such a
#: folder's items are tokens (``granularity="tokens"``), each item's one piece its ``response_indices`` slot
_REQUIRED = ("tokens", "token_ids", "word_numbers", "response_indices", "response", "response_ids",
             "response_tokens", "steps", "method", "probe", "grid")


#: what a folder without a meta.json is not, as each loader says it
_SAVED_EXPLANATION = "a saved explanation (Explanation.save, dcam explain --out)"
_SAVED_TRAJECTORY = "a saved trajectory (Trajectory.save, or Explanation.save of one explained with trajectory=True)"


def _read_json(path: str, folder: str, what: str = _SAVED_EXPLANATION,
               whose: str = "an explanation's") -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise InputError(f"folder: {folder!r} has no meta.json; it is not {what}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"folder: cannot read {path!r} ({type(exc).__name__}: {one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise InputError(f"folder: {path!r} holds a JSON {type(meta).__name__}, not {whose} meta.json")
    return meta


def _read_tensors(path: str, folder: str, what: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise InputError(f"folder: {folder!r} has no {os.path.basename(path)} ({what} are kept there)")
    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise InputError(f"folder: cannot read {path!r} ({type(exc).__name__}: {one_line(exc)})") from None


def _image(folder: str, digest: Optional[str]) -> Image.Image:
    """image.png, which must be the file this meta.json was saved with when it names its digest
    (the overlays and the box are placed on that image: another save's would show the maps on the
    wrong picture); a folder saved before the digest was kept loads with any image.png."""
    path = os.path.join(folder, "image.png")
    if os.path.isfile(path):
        _check_digest(path, digest, f"folder: {folder!r}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"folder: {folder!r} has no image.png (the image the maps are shown on)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a damaged file
        raise InputError(f"folder: cannot read {path!r} ({type(exc).__name__}: {one_line(exc)})") from None


def _at_explained_size(m: Fields, image: Image.Image) -> Image.Image:
    """image.png (``image``) at the size of the image explained, meta.json's ``image_size`` ``[W, H]``,
    resized as a save renders one (:func:`rendered_at`: a whole factor's block of pixels read back by a box
    shrink exactly); as it is where no size was saved. A
    size of another aspect than image.png's (more than the rounding of a save's resize apart)
    is not the one it was rendered from."""
    size = m.value("image_size", None)
    if size is None:
        return image
    if not isinstance(size, list) or len(size) != 2 or not all(whole(x) and x > 0 for x in size):
        raise m.bad("image_size", "two positive whole numbers [W, H]")
    (W, H), (w, h) = size, image.size
    # the image is made at this size: a meta.json of [60000, 60000] beside a 1x1 image.png took 10.8 GB (a
    # MemoryError, or the machine's OOM killer). No image file dcam reads is past Pillow's refusal size
    limit = Image.MAX_IMAGE_PIXELS
    if limit and W * H > 2 * limit:
        raise InputError(f"{m.where}: image_size {size} ({W * H} pixels) is past Pillow's decompression-bomb "
                         f"limit of {2 * limit} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS), the largest image dcam "
                         "reads from a file; raise PIL.Image.MAX_IMAGE_PIXELS to load a folder you trust")
    # a save rounds each side of the scaled size: W * h and H * w differ by at most (W + H) / 2 then
    if abs(W * h - H * w) > W + H:
        raise InputError(f"{m.where}: image_size {size} is not the size of an image that image.png ({w}x{h}) "
                         "was rendered from (another aspect ratio)")
    if (W, H) == (w, h):
        return image
    return rendered_at(image, (W, H))


def _tensor(tensors: Dict[str, torch.Tensor], key: str, shape, where: str, unit: bool = False):
    """``tensors[key]`` of ``shape`` (float32, finite; in [0, 1] where ``unit``, within the
    :data:`~dcam.render.overlay.MAP_TOLERANCE` that save() allows at both ends: -5e-7 was saved, then
    refused here), or None if absent."""
    t = tensors.get(key)
    if t is None:
        return None
    if t.dtype != torch.float32 or list(t.shape) != list(shape):
        raise InputError(f"{where}: {key} must be float32 {list(shape)}, found {str(t.dtype).replace('torch.', '')} "
                         f"{list(t.shape)}; it is not this explanation's")
    outside = unit and (float(t.min()) < -MAP_TOLERANCE or float(t.max()) > 1 + MAP_TOLERANCE)
    if not bool(torch.isfinite(t).all()) or outside:
        raise InputError(f"{where}: {key} holds values outside {'[0, 1]' if unit else 'the finite numbers'}")
    return t


def _check_same_ids(ids: Dict[str, List[int]], tensors: Dict[str, torch.Tensor], where: str) -> None:
    """The items' ids as the tensor file ``where`` holds them too (else it is another save's)."""
    for key, want in ids.items():
        if key in tensors and tensors[key].tolist() != want:
            raise InputError(f"{where} and meta.json disagree on {key}; they are from two different saves")


def _check_digest(path: str, want: Optional[str], where: str) -> None:
    if want is not None and file_digest(path) != want:
        raise InputError(f"{where}: {os.path.basename(path)} is not the file this meta.json was saved with (its "
                         "digest differs); the two are from different saves")


def load_explanation(folder) -> Explanation:
    """The :class:`~dcam.explanation.Explanation` saved in ``folder`` (see the module docstring)."""
    from .methods.base import METHODS
    from .probe.modes import PROBES, TARGET_SCORES
    from .targets import GRANULARITIES

    folder = _existing_folder(folder)
    meta = _read_json(os.path.join(folder, "meta.json"), folder)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise InputError(f"folder: {folder!r}'s meta.json lacks {missing}; it is not a saved explanation"
                         + (" (it holds a trajectory alone: dcam.load_trajectory reads it)" if "trajectory" in meta
                            else ""))
    m = Fields(meta, f"folder: {folder!r}'s meta.json")
    response_ids = m.response_ids()
    tokens, ids, pieces = m.items("explained item", response_ids, one_token_items=True)
    T, grid = len(tokens), m.grid()
    path = os.path.join(folder, "maps.safetensors")
    tensors = _read_tensors(path, folder, "the maps")
    _check_digest(path, m.text("maps_sha256", None, none=True), f"folder: {folder!r}")
    where = f"folder: {folder!r}'s maps.safetensors"
    if "maps" not in tensors:
        raise InputError(f"{where} holds no maps")
    maps = _tensor(tensors, "maps", (T, *grid), where, unit=True)
    _check_same_ids(ids, tensors, where)
    method = m.choice("method", METHODS)
    used = METHODS[method]
    config = m.config()
    view_maps = {k[len("view_maps."):]: _view_maps(tensors, k, T, where) for k in tensors if k.startswith("view_maps.")}
    png = _image(folder, m.text("image_sha256", None, none=True))
    e = Explanation(
        tokens=tokens, **ids, pieces=pieces, maps=maps,
        stats={k[len("stats."):]: _stat(tensors, k, (T,), where) for k in tensors if k.startswith("stats.")},
        image=_at_explained_size(m, png), response=m.text("response"),
        response_ids=response_ids,
        response_tokens=m.texts("response_tokens"), prompt=m.text("prompt", None, none=True),
        steps=m.int("steps", lo=1), steps_source=m.text("steps_source", ""), method=method,
        # what the method never used is None, as the explanation that was saved held it
        probe=m.choice("probe", PROBES), layer=m.int("layer", None, none=True, lo=0) if used.needs_gradients else None,
        target_score=m.choice("target_score", TARGET_SCORES, None, none=True) if used.needs_gradients else None,
        grid=grid,
        repeat_ratio=m.number("repeat_ratio", 0.0, lo=0, hi=1), scores=_tensor(tensors, "scores", (T,), where),
        # a method that uses no config has none (a default CamConfig stood in, which meta.json never held)
        config=(config or CamConfig()) if used.uses_config else None, model_name=m.text("model", ""),
        raw_maps=_tensor(tensors, "raw_maps", (T, *grid), where, unit=True), notes=m.texts("notes", []),
        # (a folder without pieces was saved when every item was one token: "tokens" in today's words)
        granularity=m.choice("granularity", GRANULARITIES, "words" if "pieces" in meta else "tokens"),
        view=_view(m, view_maps),
        view_maps=view_maps, view_boxes=_view_boxes(m, view_maps),
        view_cells=_view_cells(m, view_maps),
        box=m.box(), cells=m.cells("cells", grid, m.box()), model_dtype=m.text("model_dtype", ""), device=m.text("device", ""),
        extra={"distractor": m.int("distractor", None, none=True),
               "context_weights": _tensor(tensors, "context_weights", (T, T), where),
               # (kept as saved, for a save of it: a folder written before dcam recorded it has none)
               "provenance": _provenance(meta, folder)},
    )
    if e.scores is None:
        e.scores = torch.zeros(0)
    e._saved_rendering = (e.image, png)  # a save at image.png's size draws on it again, not on a resampled copy
    if "trajectory" in meta:
        e.trajectory = _load_trajectory(folder, meta, e.image)
        e.trajectory._saved_rendering = e._saved_rendering  # (its frames and sheet: as the overlays)
    return e


def load_trajectory(folder):
    """The :class:`~dcam.trajectory.Trajectory` saved in ``folder``: by :meth:`Trajectory.save
    <dcam.trajectory.Trajectory.save>` (its meta.json, image.png and trajectory.safetensors), or with its
    explanation (``Explanation.save`` of one explained with ``trajectory=True``: that explanation's
    ``trajectory``, as :func:`load_explanation` gives it). Maps, steps, states and scores bit for bit; the
    image as :func:`load_explanation` gives an explanation's (the module docstring)."""
    folder = _existing_folder(folder)
    meta = _read_json(os.path.join(folder, "meta.json"), folder, _SAVED_TRAJECTORY, "a saved trajectory's")
    if "trajectory" not in meta:
        raise InputError(f"folder: {folder!r}'s meta.json holds no trajectory; it is not {_SAVED_TRAJECTORY}")
    if all(k in meta for k in _REQUIRED):  # an explanation's folder: checked whole, as load_explanation does
        return load_explanation(folder).trajectory
    m = Fields(meta, f"folder: {folder!r}'s meta.json")
    if "image_sha256" not in meta and not os.path.lexists(os.path.join(folder, "image.png")):
        raise InputError(f"folder: {folder!r} is a trajectory saved alone by an earlier dcam, which kept no image.png "
                         "or response_tokens; it cannot be loaded (its maps are in trajectory.safetensors)")
    png = _image(folder, m.text("image_sha256", None, none=True))
    image = _at_explained_size(m, png)
    trajectory = _load_trajectory(folder, meta, image)
    trajectory._saved_rendering = (image, png)  # its frames drawn on image.png, as a loaded explanation's
    return trajectory


def _existing_folder(folder) -> str:
    """``folder`` (str, bytes or os.PathLike, as the savers take it) as a str naming an existing folder."""
    folder = folder_path(folder, "folder")  # (bytes was refused)
    if not os.path.isdir(folder):
        raise InputError(f"folder: {folder!r} is not a folder" if os.path.exists(folder)
                         else f"folder: no such folder {folder!r}")
    return folder


def _stat(tensors, key: str, shape, where: str) -> torch.Tensor:
    """A statistic ``[..., T]`` (per map): int32, float32 or bool, finite (a NaN one loaded, and its save then
    failed writing meta.json)."""
    t = tensors[key]
    if list(t.shape) != list(shape) or t.dtype not in (torch.int32, torch.float32, torch.bool) or \
            not bool(torch.isfinite(t.float()).all()):
        raise InputError(f"{where}: {key} must be finite int32, float32 or bool values {list(shape)}, found "
                         f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}")
    return t


def _ints_tensor(tensors, key: str, shape, where: str, lo: int, hi: int) -> torch.Tensor:
    """An int64 tensor of ``shape`` with values in ``[lo, hi)`` (steps, slots and token ids)."""
    t = tensors[key]
    if t.dtype != torch.int64 or list(t.shape) != list(shape) or (t.numel() and (int(t.min()) < lo
                                                                               or int(t.max()) >= hi)):
        raise InputError(f"{where}: {key} must be int64 {list(shape)} with values in [{lo}, {hi}), found "
                         f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}")
    return t


def _provenance(meta: dict, folder: str) -> Optional[dict]:
    """meta.json's ``provenance`` as saved (an object, or none in a folder saved before it was recorded)."""
    record = meta.get("provenance")
    if record is not None and not isinstance(record, dict):
        raise InputError(f"folder: {folder!r}'s meta.json: provenance must be an object, got {type(record).__name__}")
    return record


def _view(m: Fields, view_maps: Dict[str, torch.Tensor]) -> Optional[str]:
    """meta.json's view: with every view's maps saved (``view="all"``), the name of one of them (none for a
    view named "default"); else none or the name of the view explained, never ``"default"`` or ``"all"``
    (:func:`dcam.explain.check_view`'s words for a request: the view explained is recorded in their place).
    Which names a model's images have is its adapter's to say, and the save does not record the adapter."""
    view = m.text("view", None, none=True)
    if view_maps and (view or "default") not in view_maps:
        raise m.bad("view", f"one of the saved views ({', '.join(sorted(view_maps))})")
    if not view_maps and view in ("default", "all"):
        raise m.bad("view", "null or the name of the view explained (not the request words 'default' or 'all')")
    return view


def _view_boxes(m: Fields, view_maps: Dict[str, torch.Tensor]) -> Dict[str, Tuple[float, float, float, float]]:
    """Each saved view's box (a save before view boxes were kept: none)."""
    boxes = m.value("view_boxes", {})
    if not isinstance(boxes, dict) or not set(boxes) <= set(view_maps):
        raise m.bad("view_boxes", f"a box for some of the saved views ({', '.join(sorted(view_maps)) or 'none'})")
    inner = Fields(boxes, f"{m.where} view_boxes")
    return {view: inner.box(view) for view in boxes}


def _view_cells(m: Fields, view_maps: Dict[str, torch.Tensor]) -> dict:
    """Each saved view's cell centres where it has them (a stitched map's)."""
    cells, boxes = m.value("view_cells", {}), _view_boxes(m, view_maps)
    if not isinstance(cells, dict) or not set(cells) <= set(boxes):
        raise m.bad("view_cells", f"cell centres of some of the boxed views ({', '.join(sorted(boxes)) or 'none'})")
    inner = Fields(cells, f"{m.where} view_cells")
    placed = {view: inner.cells(view, tuple(view_maps[view].shape[1:]), boxes[view]) for view in cells}
    return {view: c for view, c in placed.items() if c is not None}


def _view_maps(tensors, key: str, T: int, where: str) -> torch.Tensor:
    t = tensors[key]
    if t.dim() != 3 or t.shape[0] != T:
        raise InputError(f"{where}: {key} must be [{T}, h, w], found {list(t.shape)}")
    return _tensor(tensors, key, tuple(t.shape), where, unit=True)


def _load_trajectory(folder: str, meta: Dict[str, Any], image: Image.Image):
    from .trajectory.core import Trajectory
    from .trajectory.numbers import per_word_numbers

    if not isinstance(meta["trajectory"], dict):
        raise InputError(f"folder: {folder!r}'s meta.json: trajectory must be an object, got "
                         f"{type(meta['trajectory']).__name__}")
    meta_json = f"folder: {folder!r}'s meta.json"
    tm, m = Fields(meta["trajectory"], f"{meta_json} trajectory"), Fields(meta, meta_json)
    path = os.path.join(folder, "trajectory.safetensors")
    t = _read_tensors(path, folder, "the trajectory's maps")
    _check_digest(path, tm.text("tensors_sha256", None, none=True), f"folder: {folder!r}")
    needed = ("maps", "final_maps", "decided_at", "slot_decided_at", "states", "scores", "final_scores", "remasked")
    lacking = [k for k in needed if k not in t]
    if lacking:
        raise InputError(f"folder: {folder!r}'s trajectory.safetensors lacks {lacking}")
    response_ids = m.response_ids()
    tokens, ids, pieces = tm.items("traced word", response_ids)
    T, grid = len(tokens), m.grid()
    where = f"folder: {folder!r}'s trajectory.safetensors"
    _check_same_ids(ids, t, where)
    S = t["maps"].shape[0] if t["maps"].dim() == 4 else 0
    Lr = t["states"].shape[1] if t["states"].dim() == 2 else 0
    maps = _tensor(t, "maps", (S, T, *grid), where, unit=True)
    final_maps = _tensor(t, "final_maps", (T, *grid), where, unit=True)
    decided_at = _ints_tensor(t, "decided_at", (T,), where, 0, max(S, 1))
    scores, final_scores = _tensor(t, "scores", (S, T), where), _tensor(t, "final_scores", (T,), where)
    if t["remasked"].dtype != torch.uint8 or list(t["remasked"].shape) != [S, T]:
        raise InputError(f"{where}: remasked must be uint8 [{S}, {T}], found {list(t['remasked'].shape)}")
    # what meta.json says of the steps is the tensors' (another save's trajectory.safetensors, its digest not
    # kept, loaded with this one's step texts and decision steps beside its own)
    _check_same_ids({k: tm.ints(k) for k in ("decided_at", "slot_decided_at") if k in tm.obj}, t, where)
    state_tokens = tm.text_lists("states")
    if tm.int("steps", S) != S or len(state_tokens) != S or any(len(row) != Lr for row in state_tokens):
        raise InputError(f"{tm.where}: steps and states must be the {S} steps of {Lr} slots trajectory.safetensors "
                         "holds; the two are from different saves")
    config = tm.config()
    traced = max(0, max(ids["word_numbers"], default=-1) + 1)
    if config is None:
        raise InputError(f"{tm.where} lacks 'config'")
    return Trajectory(
        tokens=tokens, **ids, pieces=pieces, maps=maps, final_maps=final_maps, decided_at=decided_at,
        slot_decided_at=_ints_tensor(t, "slot_decided_at", (Lr,), where, -1, max(S, 1)),
        states=_ints_tensor(t, "states", (S, Lr), where, 0, 2 ** 62), scores=scores, final_scores=final_scores,
        remasked=t["remasked"].bool(),
        stats={k[len("stats."):]: _stat(t, k, (S, T), where) for k in t if k.startswith("stats.")},
        # the per-word numbers are a function of the maps and decision steps: computed again, as made
        numbers=per_word_numbers(maps, decided_at, final_maps),
        image=image, prompt=m.text("prompt", None, none=True), response=m.text("response"),
        response_ids=response_ids, response_tokens=m.texts("response_tokens"),
        state_tokens=state_tokens, layer=tm.int("layer", lo=0), config=config, grid=grid,
        repeat_ratio=tm.number("repeat_ratio", 0.0, lo=0, hi=1), model_name=m.text("model", ""),
        notes=tm.texts("notes", []),
        cost=tm.counts("cost"), box=tm.box("box", m.box()), cells=tm.cells("cells", grid, tm.box("box", m.box())),
        # a folder saved before the count was kept: its negative word numbers count from the last traced word.
        # The count is of the whole response's words, numbered from 0: more than any traced word's number
        word_count=tm.int("word_count", traced, lo=traced),
    )


__all__ = ["load_explanation", "load_trajectory"]
