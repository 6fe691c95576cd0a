"""What ``model=`` must be, checked before an adapter reads it (:func:`~dcam.probe.auto_adapter`).

* :func:`refuse_non_model`: None, a path, a ``(model, processor)`` pair or a processor is never a
  model: each is refused in one line naming ``model`` with what to pass instead (a path ended in
  "str (config.model_type None) has no image token id ...", naming neither the argument nor the slip);
* :func:`refuse_headless`: the base model of a transformers VLM (``LlavaModel``, ``Qwen2VLModel``,
  ``Gemma3Model``, ...: what ``transformers.AutoModel`` loads) has no LM head, which dcam scores
  the response's words with; it ended in a bare AttributeError inside the adapter. The class to
  load instead is transformers' own image-text-to-text class of the model's ``model_type``.
"""
from __future__ import annotations

import os
from typing import Optional

from torch import nn

from ...errors import InputError


def found(model) -> str:
    """``model``'s class and ``config.model_type``, as the refusals name what they found."""
    cfg = getattr(model, "config", None)
    return f"{type(model).__name__} (config.model_type {getattr(cfg, 'model_type', None)!r})"


def with_article(word: str) -> str:
    """``word`` with its article ("a LlavaModel", "an Idefics3Model", "an image processor")."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def processor_kind(obj) -> Optional[str]:
    """``"tokenizer"``, ``"image processor"`` or ``"processor"`` when ``obj`` is one (a transformers
    class, or an object holding a tokenizer or an image processor, as dcam's VQ processors and Gemma
    4's pair do); None for anything else (a model is never one)."""
    if isinstance(obj, nn.Module):
        return None
    try:
        from transformers import PreTrainedTokenizerBase, ProcessorMixin
        from transformers.image_processing_utils import ImageProcessingMixin
    except ImportError:  # (transformers moved them: the attributes below still tell a processor)
        PreTrainedTokenizerBase = ProcessorMixin = ImageProcessingMixin = ()
    if isinstance(obj, PreTrainedTokenizerBase):
        return "tokenizer"
    if isinstance(obj, ImageProcessingMixin):
        return "image processor"
    if isinstance(obj, ProcessorMixin) or hasattr(obj, "tokenizer") or hasattr(obj, "image_processor"):
        return "processor"
    return None


def refuse_non_model(model, processor) -> None:
    """InputError naming ``model`` for what is clearly not one (see the module docstring)."""
    if model is None:
        raise InputError("model: no model given; pass the loaded model and its processor")
    if isinstance(model, (str, bytes, os.PathLike)):
        raise InputError(f"model: got the path {os.fsdecode(model)!r}, not a model; pass the loaded model; "
                         "dcam.models.load_model(DIR) loads a folder (it returns the model and its processor)")
    got = with_article(type(model).__name__)
    if isinstance(model, (tuple, list)):
        items = ", ".join(type(v).__name__ for v in model[:3]) + (", ..." if len(model) > 3 else "")
        if len(model) == 2 and isinstance(model[0], nn.Module):
            raise InputError(f"model: got {got} ({items}); pass model and processor as two arguments, "
                             "Explainer(model, processor)")
        raise InputError(f"model: got {got} ({items}), not a model; pass the loaded model")
    kind = processor_kind(model)
    if kind is None:
        return
    if isinstance(processor, nn.Module):
        raise InputError(f"model: got {got} ({with_article(kind)}) and processor= "
                         f"{with_article(type(processor).__name__)} (a model); the arguments look swapped: pass the "
                         "model first, Explainer(model, processor)")
    raise InputError(f"model: got {got}, {with_article(kind)}, not a model; pass the loaded model first and its "
                     "processor second, Explainer(model, processor)")


def head_class(model_type) -> Optional[str]:
    """transformers' class with an LM head that loads checkpoints of ``model_type`` for image-text-to-text
    (``AutoModelForImageTextToText``'s choice; None where it has none, or transformers moved its table)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    except ImportError:
        return None
    return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type) if isinstance(model_type, str) else None


def refuse_headless(model) -> None:
    """InputError naming ``model`` when it is a transformers VLM without its LM head (the base model;
    see the module docstring); the class to load instead comes from transformers' own table."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    head = head_class(model_type)
    if head is None or hasattr(model, "lm_head") or type(model).__name__ == head:
        return
    try:
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
        base = MODEL_MAPPING_NAMES.get(model_type)
    except ImportError:
        base = None
    is_base = base is not None and any(k.__name__ == base for k in type(model).__mro__)
    raise InputError(f"model: {with_article(type(model).__name__)} has no LM head to score the response with"
                     f"{' (the base model, what AutoModel loads)' if is_base else ''}; load the checkpoint "
                     f"with {head} or AutoModelForImageTextToText")


__all__ = ["found", "with_article", "processor_kind", "refuse_non_model", "head_class", "refuse_headless"]
