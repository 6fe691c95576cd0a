"""Stand-in model folders: every family's tiny model saved so that the CLI
(``dcam explain --model DIR``, ``dcam eval --model DIR``) runs it like a real
checkpoint, offline.

    from dcam.testing.standins import save_standin, STANDINS
    save_standin("lavida", "standin_lavida")      # then: dcam explain img.png --model standin_lavida

A folder holds ``config.json`` (``dcam_standin``: the builder's name,
``seed``, the model type), ``model.safetensors`` and, for families whose
processor has weights (the VQ tokenizers), ``processor.safetensors``;
:func:`load_standin` rebuilds the model with the builder and loads the weights.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Tuple

from ..errors import InputError
from . import dream_vl, hf_tiny, llava_dmllm, vq_dmllm

#: builder name -> function(seed) returning (model, processor); keys are family names
#: of ``dcam families`` (and a few variants of one family).
STANDINS: Dict[str, Callable[..., Tuple]] = {
    "lavida": llava_dmllm.tiny_lavida,
    "lavida-dream": llava_dmllm.tiny_lavida_dream,
    "llada-v": llava_dmllm.tiny_llada_v,
    "mmada": vq_dmllm.tiny_mmada,
    "lumina-dimoo": vq_dmllm.tiny_dimoo,
    "dream-vl": dream_vl.tiny_dream_vl,
    "diffusion-gemma": hf_tiny.tiny_diffusion_gemma,
    "llava": hf_tiny.tiny_llava,
    "llava-next": hf_tiny.tiny_llava_next,
    "llava-onevision": hf_tiny.tiny_llava_onevision,
    "qwen-vl": lambda seed=0: hf_tiny.tiny_qwen_vl("qwen2_vl", seed),
    "qwen2.5-vl": lambda seed=0: hf_tiny.tiny_qwen_vl("qwen2_5_vl", seed),
    "qwen3-vl": lambda seed=0: hf_tiny.tiny_qwen_vl("qwen3_vl", seed),
    "idefics3": hf_tiny.tiny_idefics3,
    "smolvlm": lambda seed=0: hf_tiny.tiny_idefics3("smolvlm", seed),
    "gemma3": hf_tiny.tiny_gemma3,
    "gemma4": hf_tiny.tiny_gemma4,
}

#: stand-in name -> the family ``dcam families`` must detect its model as: written out here, not read from
#: the family table the tests check (a variant of a family is that family: "smolvlm" is "idefics3")
STANDIN_FAMILY: Dict[str, str] = {name: name for name in STANDINS} | {
    "qwen2.5-vl": "qwen-vl", "qwen3-vl": "qwen-vl", "smolvlm": "idefics3"}


def _processor_modules(processor) -> Dict[str, object]:
    """The processor parts that carry weights (VQ tokenizers)."""
    return {k: getattr(processor, k) for k in ("vq_model", "vqvae") if hasattr(processor, k)}


def save_standin(name: str, folder: str, seed: int = 0) -> str:
    """Build the stand-in ``name`` with ``seed`` and save it into ``folder`` (created)."""
    from safetensors.torch import save_file

    if name not in STANDINS:
        raise InputError(f"name: unknown stand-in {name!r} (known: {', '.join(STANDINS)})")
    model, processor = STANDINS[name](seed=seed)
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},  # tied weights: copies
              os.path.join(folder, "model.safetensors"))
    parts = _processor_modules(processor)
    if parts:
        save_file({f"{p}.{k}": v.detach().clone().contiguous() for p, m in parts.items()
                   for k, v in m.state_dict().items()},
                  os.path.join(folder, "processor.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"dcam_standin": name, "seed": int(seed), "model_type": model.config.model_type}, f, indent=1)
    return folder


def load_standin(folder: str):
    """(model, processor) of a folder written by :func:`save_standin`."""
    from safetensors.torch import load_file

    from ..errors import InputError

    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    name = cfg.get("dcam_standin")
    if name not in STANDINS:
        raise InputError(f"model: {folder!r} names stand-in {name!r}; known: {', '.join(STANDINS)}")
    model, processor = STANDINS[name](seed=int(cfg.get("seed", 0)))
    for file, targets in (("model.safetensors", {"": model}), ("processor.safetensors", _processor_modules(processor))):
        path = os.path.join(folder, file)
        if not targets:
            continue
        if not os.path.exists(path):
            raise InputError(f"model: no {file} in {folder!r}")
        state = load_file(path)
        for prefix, module in targets.items():
            sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")} if prefix \
                else state
            module.load_state_dict(sub, strict=True)
    return model.eval(), processor


__all__ = ["STANDINS", "STANDIN_FAMILY", "save_standin", "load_standin"]
