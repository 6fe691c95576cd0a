"""Model adapters: how the explainer talks to a given model.

``auto_adapter(model, processor)`` picks the adapter for a model:

* :class:`ShapesAdapter` for the bundled toy dMLLM (``dcam.zoo.ShapesDMLLM``);
* :class:`DiffusionGemmaAdapter` for transformers' ``DiffusionGemmaForBlockDiffusion``
  (encoder-decoder block diffusion: the image is in the encoder's prompt, the
  response in the decoder canvas; probe ``"full"`` only, see its docstring);
* :class:`LlavaAdapter` for ``LlavaForConditionalGeneration`` and
  look-alikes (``.model.language_model.layers``, ``.lm_head``,
  ``config.image_token_id``): a causal VLM, probe ``"full"`` only.

A model without an image token id raises InputError. Adapters take
``newline_column=True`` (and optionally ``newline_token_id``) for
LaViDa-style grids that append an image-newline token to every row.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

from ...errors import InputError
from .base import PROBES, ModelAdapter, Prepared, config_get, load_image, locate_image_positions
from .diffusion_gemma import DiffusionGemmaAdapter
from .llava import LlavaAdapter
from .shapes import ShapesAdapter

#: (predicate(model), adapter class), tried in order by :func:`auto_adapter`.
ADAPTERS: List[Tuple[Callable, type]] = []


def register_adapter(predicate: Callable, cls: type, first: bool = True) -> None:
    """Make ``auto_adapter`` use ``cls`` for models where ``predicate(model)`` is true."""
    if first:
        ADAPTERS.insert(0, (predicate, cls))
    else:
        ADAPTERS.append((predicate, cls))


def _is_shapes(model) -> bool:
    try:
        from ...zoo import ShapesDMLLM
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, ShapesDMLLM)


def _is_diffusion_gemma(model) -> bool:
    return type(model).__name__ == "DiffusionGemmaForBlockDiffusion" or \
        getattr(getattr(model, "config", None), "model_type", None) == "diffusion_gemma"


def _is_llava_like(model) -> bool:
    inner = getattr(model, "model", None)
    return hasattr(model, "lm_head") and hasattr(getattr(inner, "language_model", None), "layers")


register_adapter(_is_llava_like, LlavaAdapter, first=False)
register_adapter(_is_diffusion_gemma, DiffusionGemmaAdapter, first=True)
register_adapter(_is_shapes, ShapesAdapter, first=True)


def auto_adapter(model, processor=None, **kwargs) -> ModelAdapter:
    """The adapter for ``model`` (see the module docstring). Raises InputError
    for a model without an image token or of an unsupported kind."""
    if isinstance(model, ModelAdapter):
        return model
    if model is None:
        raise InputError("no model given")
    cfg = getattr(model, "config", None)
    if config_get(cfg, "image_token_id", "image_token_index") is None:
        raise InputError(f"{type(model).__name__} has no image token id (config.image_token_id); "
                         "it is not a multimodal model this explainer can probe")
    for pred, cls in ADAPTERS:
        if pred(model):
            return cls(model, processor, **kwargs)
    raise InputError(f"no adapter for {type(model).__name__}; write a dcam.probe.ModelAdapter subclass "
                     "and register it with dcam.probe.register_adapter")


__all__ = ["ModelAdapter", "Prepared", "PROBES", "auto_adapter", "register_adapter", "ShapesAdapter",
           "LlavaAdapter", "DiffusionGemmaAdapter", "locate_image_positions", "load_image", "ADAPTERS"]
