"""Tiny models for tests, written in the project: run dcam end to end with no
weights and no network (users can use them to test their own pipelines too).

- :func:`tiny_toy`: the bundled toy dMLLM's architecture, 32 px images, an
  8x8 token grid, 32-wide blocks, random weights.
- stand-ins of every dMLLM family with the published module paths, forward
  and sampler signatures, image placeholder / VQ mechanism and mask / shift
  conventions: :func:`tiny_lavida`, :func:`tiny_lavida_dream`,
  :func:`tiny_llada_v` (:mod:`.llava_dmllm`), :func:`tiny_mmada`,
  :func:`tiny_dimoo` (:mod:`.vq_dmllm`), :func:`tiny_dream_vl`
  (:mod:`.dream_vl`); transformers' VLM classes with tiny configs
  (:mod:`.hf_tiny`); :func:`save_standin` / :func:`load_standin` write and
  read them as model folders the CLI loads (:mod:`.standins`).
- :class:`.views.TwoViewAdapter`: the toy model as a two-view (multi-view) model.
- :func:`.grid_order.check_grid_order`: whether an adapter's grid reads its image tokens in the image's
  order (a grid given as (columns, rows) counts as many tokens), asked of the model (docs/FAMILIES.md).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple


def tiny_toy_kwargs(layers: int = 3, image_size: int = 32) -> Dict[str, Any]:
    """Config kwargs of a tiny toy dMLLM (``dcam.zoo.build_random(seed, **kwargs)``):
    ``image_size`` pixels (a multiple of 16) onto an 8x8 token grid."""
    from ..zoo.modeling import default_text_config, default_vision_config

    strides = (image_size // 16, 2)
    tc = default_text_config()
    tc.update(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
              num_key_value_heads=2)
    vc = default_vision_config(image_size, (8, 8), strides)
    vc.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return dict(vision_config=vc, text_config=tc, default_probe_layer=1, image_size=image_size,
                stem_channels=(8, 8), stem_strides=strides)


def tiny_toy(seed: int = 0, layers: int = 3, image_size: int = 32) -> Tuple[Any, Any]:
    """(model, processor) of a tiny random toy dMLLM (eval mode, CPU)."""
    from ..zoo import build_random

    return build_random(seed, **tiny_toy_kwargs(layers, image_size))




#: Lazily imported (they import transformers' model classes): name -> module.
_LAZY = {"tiny_lavida": "llava_dmllm", "tiny_lavida_dream": "llava_dmllm", "tiny_llada_v": "llava_dmllm",
         "tiny_mmada": "vq_dmllm", "tiny_dimoo": "vq_dmllm", "tiny_dream_vl": "dream_vl",
         "save_standin": "standins", "load_standin": "standins", "STANDINS": "standins"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["tiny_toy", "tiny_toy_kwargs", *_LAZY]
