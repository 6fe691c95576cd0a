"""Loading the model to explain: the bundled toy dMLLM, a saved zoo model, or a
transformers checkpoint folder.

:func:`load_model` returns ``(model, processor)`` in eval mode. Whatever about
the folder is wrong (not a folder, no or broken ``config.json``, a config
field the model class refuses, missing or truncated weights, a tokenizer that
cannot load, a model without an image token, an unknown device) is one
:class:`dcam.InputError` that says what was found and what is missing; the CLI
prints it on one line naming ``--model`` (or ``--device``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple

from .errors import InputError, one_line

#: What a broken checkpoint makes the loaders raise (transformers, safetensors,
#: huggingface_hub's strict config validation, our zoo): all input errors here.
_LOAD_ERRORS: Tuple[type, ...] = (OSError, ValueError, KeyError, EOFError)


def _load_errors() -> Tuple[type, ...]:
    extra = []
    try:
        from safetensors import SafetensorError

        extra.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return _LOAD_ERRORS + tuple(extra)


def check_device(device: Optional[str]):
    """``device`` as a torch.device that exists here, else InputError naming it."""
    import torch

    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device: {device!r} is not a device name ({one_line(exc)})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {device!r} is not available here (torch.cuda.is_available() is False)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device: {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"device: {device!r} is not available here")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise InputError(f"device: {device!r} is not supported (use cpu, cuda, cuda:N or mps)")
    return dev


def read_config(model_dir: str) -> dict:
    """``config.json`` of a checkpoint folder as a dict (InputError otherwise)."""
    if not os.path.isdir(model_dir):
        raise InputError(f"model: {model_dir!r} is not a folder")
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise InputError(f"model: no config.json in {model_dir!r}")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"model: cannot read {path} ({one_line(exc)})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"model: {path} holds a JSON {type(cfg).__name__}, not an object")
    return cfg


def _zoo(model_dir: Optional[str]):
    from . import zoo

    directory = zoo.WEIGHTS_DIR if model_dir is None else model_dir
    if not os.path.exists(os.path.join(directory, "model.safetensors")):
        what = "the bundled weights are missing" if model_dir is None else f"no model.safetensors in {directory!r}"
        raise InputError(f"model: {what}; train them with `python -m dcam.zoo.train` or pass another model")
    try:
        return zoo.load_pretrained(directory)
    except _load_errors() as exc:
        raise InputError(f"model: cannot load {directory!r} ({type(exc).__name__}: {one_line(exc)})") from None


def _transformers(model_dir: str, cfg: dict, trust_remote_code: bool):
    import transformers

    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    if cfg.get("image_token_id", cfg.get("image_token_index", text_cfg.get("image_token_id"))) is None:
        raise InputError(f"model: the model in {model_dir!r} ({cfg.get('model_type', 'no model_type')}) has no "
                         "image token id in its config; it is not a multimodal model dcam can explain")
    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        if cfg.get("model_type") == "diffusion_gemma":
            model = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(model_dir, **kw)
        else:
            model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, **kw)
    except _load_errors() as exc:
        raise InputError(f"model: cannot load the weights in {model_dir!r} ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None
    try:
        processor = transformers.AutoProcessor.from_pretrained(model_dir, **kw)
    except _load_errors() as exc:
        raise InputError(f"model: cannot load the processor/tokenizer in {model_dir!r} ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None
    return model, processor


def load_model(model_dir: Optional[str] = None, device: Optional[str] = None,
               trust_remote_code: bool = False) -> Tuple[Any, Any]:
    """(model, processor), eval mode, on ``device`` (default CPU).

    model_dir: None for the bundled toy dMLLM; a folder saved by the zoo
    (``model_type`` ``shapes_dmllm``); or a transformers checkpoint folder."""
    dev = check_device(device)
    if model_dir is None:
        model, processor = _zoo(None)
    else:
        cfg = read_config(model_dir)
        from .zoo import ShapesDMLLMConfig

        if cfg.get("model_type") == ShapesDMLLMConfig.model_type:
            model, processor = _zoo(model_dir)
        else:
            model, processor = _transformers(model_dir, cfg, trust_remote_code)
    return model.to(dev).eval(), processor


__all__ = ["load_model", "read_config", "check_device"]
