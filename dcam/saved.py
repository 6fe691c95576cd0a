"""Reading back what :meth:`dcam.Explanation.save` wrote (``dcam explain --out``, ``dcam demo``).

:func:`load_explanation` (``dcam.load_explanation``) rebuilds the
:class:`~dcam.explanation.Explanation` of a saved folder from its
``maps.safetensors`` and ``meta.json`` (and its trajectory from
``trajectory.safetensors``): maps, statistics, scores, raw maps and context
weights bit for bit, words, settings and notes as they were. One thing is not
kept by a save: the full-size image. ``image.png`` holds it as rendered under
the overlays (longest side at most the save's ``max_side``), so a loaded
explanation's ``image`` is that one and ``meta()["image_size"]`` its size;
the maps do not depend on it (they are on the model's grid and placed by
``box``, which is kept).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import torch
from PIL import Image

from .errors import InputError, one_line
from .explanation import Explanation
from .ops.config import CamConfig

#: meta.json keys every saved explanation has (a folder without one of them is not one)
_REQUIRED = ("tokens", "token_ids", "word_numbers", "response_indices", "pieces", "response", "response_ids",
             "response_tokens", "steps", "method", "probe", "grid")


def _read_json(path: str, folder: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise InputError(f"folder: {folder!r} has no meta.json; it is not a saved explanation "
                         "(Explanation.save, dcam explain --out)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"folder: cannot read {path!r} ({type(exc).__name__}: {one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise InputError(f"folder: {path!r} holds a JSON {type(meta).__name__}, not an explanation's meta.json")
    return meta


def _read_tensors(path: str, folder: str, what: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise InputError(f"folder: {folder!r} has no {os.path.basename(path)} ({what} are kept there)")
    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise InputError(f"folder: cannot read {path!r} ({type(exc).__name__}: {one_line(exc)})") from None


def _image(folder: str) -> Image.Image:
    path = os.path.join(folder, "image.png")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"folder: {folder!r} has no image.png (the image the maps are shown on)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a damaged file
        raise InputError(f"folder: cannot read {path!r} ({type(exc).__name__}: {one_line(exc)})") from None


def _check_shapes(meta: Dict[str, Any], tensors: Dict[str, torch.Tensor], folder: str) -> None:
    """maps.safetensors and meta.json are one explanation's (a file from another save was
    copied in, or one was cut short)."""
    n = len(meta["tokens"])
    maps = tensors.get("maps")
    if maps is None or maps.dim() != 3 or maps.shape[0] != n or list(maps.shape[1:]) != list(meta["grid"]):
        got = "none" if maps is None else list(maps.shape)
        raise InputError(f"folder: {folder!r}'s maps.safetensors does not hold its meta.json's maps "
                         f"([{n}, {meta['grid'][0]}, {meta['grid'][1]}] for its {n} items; found {got})")
    for key in ("token_ids", "word_numbers", "response_indices"):
        if key in tensors and tensors[key].tolist() != [int(v) for v in meta[key]]:
            raise InputError(f"folder: {folder!r}'s maps.safetensors and meta.json disagree on {key}; they are "
                             "from two different saves")


def load_explanation(folder) -> Explanation:
    """The :class:`~dcam.explanation.Explanation` saved in ``folder`` (see the module docstring)."""
    if not isinstance(folder, (str, os.PathLike)):
        raise InputError(f"folder: expected a path, got {type(folder).__name__}")
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise InputError(f"folder: {folder!r} is not a folder" if os.path.exists(folder)
                         else f"folder: no such folder {folder!r}")
    meta = _read_json(os.path.join(folder, "meta.json"), folder)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise InputError(f"folder: {folder!r}'s meta.json lacks {missing}; it is not a saved explanation"
                         + (" (it holds a trajectory alone: Trajectory.save)" if "trajectory" in meta else ""))
    tensors = _read_tensors(os.path.join(folder, "maps.safetensors"), folder, "the maps")
    _check_shapes(meta, tensors, folder)
    config = meta.get("config")
    e = Explanation(
        tokens=list(meta["tokens"]), token_ids=[int(v) for v in meta["token_ids"]],
        word_numbers=[int(v) for v in meta["word_numbers"]],
        response_indices=[int(v) for v in meta["response_indices"]],
        pieces=[[int(v) for v in p] for p in meta["pieces"]], maps=tensors["maps"],
        stats={k[len("stats."):]: v for k, v in tensors.items() if k.startswith("stats.")},
        image=_image(folder), response=meta["response"], response_ids=[int(v) for v in meta["response_ids"]],
        response_tokens=list(meta["response_tokens"]), prompt=meta.get("prompt"), steps=int(meta["steps"]),
        steps_source=meta.get("steps_source", ""), method=meta["method"], probe=meta["probe"],
        layer=meta.get("layer"), target_score=meta.get("target_score"), grid=tuple(meta["grid"]),
        repeat_ratio=float(meta.get("repeat_ratio", 0.0)), scores=tensors.get("scores", torch.zeros(0)),
        # a method that uses no config saved none: the default stands in (meta() records none again)
        config=CamConfig(**config) if config else CamConfig(), model_name=meta.get("model", ""),
        raw_maps=tensors.get("raw_maps"), notes=list(meta.get("notes", [])),
        granularity=meta.get("granularity", "words"), view=meta.get("view"),
        view_maps={k[len("view_maps."):]: v for k, v in tensors.items() if k.startswith("view_maps.")},
        box=tuple(float(v) for v in meta.get("box", (0.0, 0.0, 1.0, 1.0))),
        model_dtype=meta.get("model_dtype", ""), device=meta.get("device", ""),
        extra={"distractor": meta.get("distractor"), "context_weights": tensors.get("context_weights")},
    )
    if "trajectory" in meta:
        e.trajectory = _load_trajectory(folder, meta, e.image)
    return e


def _load_trajectory(folder: str, meta: Dict[str, Any], image: Image.Image):
    from .trajectory.core import Trajectory
    from .trajectory.numbers import per_word_numbers

    tm = meta["trajectory"]
    t = _read_tensors(os.path.join(folder, "trajectory.safetensors"), folder, "the trajectory's maps")
    needed = ("maps", "final_maps", "decided_at", "slot_decided_at", "states", "scores", "final_scores", "remasked")
    lacking = [k for k in needed if k not in t]
    if lacking:
        raise InputError(f"folder: {folder!r}'s trajectory.safetensors lacks {lacking}")
    return Trajectory(
        tokens=list(tm["tokens"]), token_ids=[int(v) for v in tm["token_ids"]],
        word_numbers=[int(v) for v in tm["word_numbers"]], response_indices=[int(v) for v in tm["response_indices"]],
        pieces=[[int(v) for v in p] for p in tm["pieces"]], maps=t["maps"], final_maps=t["final_maps"],
        decided_at=t["decided_at"], slot_decided_at=t["slot_decided_at"], states=t["states"], scores=t["scores"],
        final_scores=t["final_scores"], remasked=t["remasked"].bool(),
        stats={k[len("stats."):]: v for k, v in t.items() if k.startswith("stats.")},
        # the per-word numbers are a function of the maps and decision steps: computed again, as made
        numbers=per_word_numbers(t["maps"], t["decided_at"], t["final_maps"]),
        image=image, prompt=meta.get("prompt"), response=meta["response"],
        response_ids=[int(v) for v in meta["response_ids"]], response_tokens=list(meta.get("response_tokens", [])),
        state_tokens=[list(s) for s in tm.get("states", [])], layer=int(tm["layer"]),
        config=CamConfig(**tm["config"]), grid=tuple(meta["grid"]), repeat_ratio=float(tm.get("repeat_ratio", 0.0)),
        model_name=meta.get("model", ""), notes=list(tm.get("notes", [])), cost=dict(tm.get("cost", {})),
        box=tuple(float(v) for v in tm.get("box", meta.get("box", (0.0, 0.0, 1.0, 1.0)))),
        word_count=int(tm.get("word_count", 0)),
    )


__all__ = ["load_explanation"]
