"""dcam.zoo: the bundled toy diffusion MLLM (LLaDA-V style) for grounded shapes.

Interface (stable; the explainer codes against these names)::

    from dcam.zoo import load_default, ShapesDMLLM, ShapesProcessor
    model, processor = load_default()     # bundled weights (dcam/zoo/weights/), offline, eval mode, CPU

    model.config.image_token_id, model.config.mask_token_id,
    model.config.eos_token_id, model.config.pad_token_id, model.config.bos_token_id
    model.config.grid            # (h, w) of the image-token grid: (16, 16)
    model.config.image_size      # pixels (square) the processor resizes to: 64
    model.config.response_length # response slots the model was trained with: 12
    model.language_model         # transformers LlamaModel; decoder blocks: model.language_model.layers
    model.lm_head                # nn.Linear hidden -> vocab
    model.default_probe_layer    # int, block 0 in the bundled weights (best grounding); image-token
                                 # gradients of a word's logit at the LAST block are identically zero
    model.config.cam_config      # CamConfig overrides the explainer uses by default: {"grad_relu": False}
                                 # in the bundled weights (best grounding; README "Grounding")
    model.logits_at(positions, input_ids=..., pixel_values=...) -> [B, P, V]
        # forward(...).logits at positions only; the last block runs at those rows only
    model.embed(input_ids, pixel_values) -> inputs_embeds [B, L, H]
        # token embeddings with the projected image features scattered into the
        # image_token_id positions (row-major over the grid, in order of appearance)
    model(input_ids=..., pixel_values=..., inputs_embeds=None) -> output with .logits [B, L, V]
        # bidirectional (4-D all-zero additive mask); inputs_embeds overrides input_ids/pixel_values;
        # output_hidden_states=True also returns .hidden_states (embeddings, block 1, ..., final-normed)
    model.generate_diffusion(input_ids, pixel_values, steps=S, response_length=Lr) -> LongTensor [B, Lr]
        # greedy masked diffusion with low-confidence remasking (Lr/S tokens committed per step)
    model.get_image_features(pixel_values) -> [B, h*w, H]     # projected, row-major grid

    enc = processor(image, prompt=None)    # dict(input_ids [1, L] (response slots = mask_token_id),
        # pixel_values [1, 3, H, W], response_start int, response_length int, image_span (start, end))
        # image: PIL image (any mode/size; converted to RGB and resized) or uint8 array; or a list -> batch
        # prompt None -> processor.default_prompt ("describe the image")
    processor.build(image, prompt, response_ids)  # same dict, response slots = given ids (or caption text),
                                                  # eos-filled to response_length
    processor.decode(ids) -> str           # stops at the first eos, skips pad/bos
    processor.tokenizer                    # PreTrainedTokenizerFast (word level)

Architecture: conv stem (3x3 convs, strides 1,2,1,2,1: 64x64 pixels -> 16x16 map,
receptive field 21 px) -> ``SiglipVisionModel`` (3 layers x 128, patch size 1
on the stem map, so one image token per 4x4-pixel cell) -> 2-layer MLP projector ->
``LlamaModel`` (4 layers x 128, bidirectional) -> ``lm_head``; about 1.2M parameters.
The bundled weights use ``projector_relu=True`` (non-negative image embeddings)
and RMSNorm epsilon 1e4 (nearly linear norms): stage 3 of the training script,
see :func:`dcam.zoo.train.linearise` for why.

Sequence layout: ``[BOS] prompt words <image> x (h*w) response x Lr``. Locate
the image span with ``image_token_id`` (or ``enc["image_span"]``) and the
response with ``enc["response_start"]``/``enc["response_length"]``.

Training: ``python -m dcam.zoo.train`` (reproduces dcam/zoo/weights/);
evaluation: ``python -m dcam.zoo.evaluate_captions --n 200``.
For development without the bundled weights, ``build_random(seed)`` returns a
randomly initialised (model, processor) pair with the same interface.
"""
from __future__ import annotations

import os
from typing import Tuple

import torch

from .modeling import ShapesDMLLM, ShapesDMLLMConfig, ShapesDMLLMOutput
from .processing import ShapesProcessor, build_tokenizer

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")

__all__ = ["ShapesDMLLM", "ShapesDMLLMConfig", "ShapesDMLLMOutput", "ShapesProcessor", "build_tokenizer",
           "load_default", "load_pretrained", "build_random", "WEIGHTS_DIR"]


def load_pretrained(directory: str, attn_implementation: str = "sdpa",
                    dtype: torch.dtype = torch.float32) -> Tuple[ShapesDMLLM, ShapesProcessor]:
    """Load (model, processor) saved with ``save_pretrained`` in ``directory`` (offline, eval, CPU)."""
    if not os.path.exists(os.path.join(directory, "model.safetensors")):
        raise FileNotFoundError(f"no model.safetensors in {directory}; train with `python -m dcam.zoo.train`")
    model = ShapesDMLLM.from_pretrained(directory, local_files_only=True, attn_implementation=attn_implementation,
                                        dtype=dtype)
    model.eval()
    processor = ShapesProcessor.from_pretrained(directory)
    return model, processor


def load_default(attn_implementation: str = "sdpa",
                 dtype: torch.dtype = torch.float32) -> Tuple[ShapesDMLLM, ShapesProcessor]:
    """The bundled, trained model and its processor (a fresh copy on every call)."""
    return load_pretrained(WEIGHTS_DIR, attn_implementation=attn_implementation, dtype=dtype)


def build_random(seed: int = 0, attn_implementation: str = "sdpa", **config_kwargs):
    """A randomly initialised (model, processor) pair (eval mode) with the default architecture."""
    torch.manual_seed(seed)
    config = ShapesDMLLMConfig(**config_kwargs)
    config._attn_implementation = attn_implementation
    model = ShapesDMLLM(config).eval()
    processor = ShapesProcessor(image_size=config.image_size, patch_size=config.patch_size,
                                response_length=config.response_length)
    return model, processor
