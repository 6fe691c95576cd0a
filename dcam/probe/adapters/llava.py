"""Generic LLaVA-style adapter (transformers ``LlavaForConditionalGeneration``
and models with the same layout), so other VLMs can be probed.

Layout: the processor expands the image placeholder of the prompt into
``h*w`` image tokens (``config.image_token_id``); the response follows the
prompt. The model is causal, so the logit that scores the token at position
``p`` is read at ``p - 1``; there is no mask token, so the only probe is
``"full"`` (the published method). ``generate`` is autoregressive: one token
per forward, so the recorded number of "steps" is the number of generated
tokens. With ``vision_feature_select_strategy="full"`` the first image token
is the CLS feature and is left out of the grid.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ...errors import InputError
from .base import Generation, ModelAdapter, Prepared, _ids_set, config_get, load_image

DEFAULT_PROMPT = "Describe the image."


class LlavaAdapter(ModelAdapter):
    name = "llava"
    is_diffusion = False
    probes = ("full",)
    has_prompt_logits = True

    def __init__(self, model: nn.Module, processor: Any, newline_column: bool = False,
                 newline_token_id: Optional[int] = None, response_length: int = 16,
                 default_prompt: str = DEFAULT_PROMPT, grid: Optional[Tuple[int, int]] = None):
        super().__init__(model, processor, newline_column, newline_token_id)
        self.response_length = int(response_length)
        self.default_steps = self.response_length
        self.default_prompt = default_prompt
        self._grid = tuple(grid) if grid is not None else None

    # ------------------------------------------------------------------ ids
    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def image_token_id(self) -> int:
        v = config_get(self.model.config, "image_token_id", "image_token_index")
        if v is None:
            raise InputError(f"{type(self.model).__name__} has no image token id")
        return int(v)

    @property
    def eos_token_ids(self) -> set:
        gc = getattr(self.model, "generation_config", None)
        s = _ids_set(getattr(gc, "eos_token_id", None)) | _ids_set(config_get(self.model.config, "eos_token_id"))
        return s | _ids_set(getattr(self.tokenizer, "eos_token_id", None))

    @property
    def pad_token_ids(self) -> set:
        s = _ids_set(config_get(self.model.config, "pad_token_id")) | _ids_set(getattr(self.tokenizer, "pad_token_id", None))
        return s | _ids_set(getattr(self.tokenizer, "bos_token_id", None)) | {self.image_token_id}

    @property
    def grid(self) -> Tuple[int, int]:
        if self._grid is not None:
            return self._grid
        vc = self.model.config.vision_config
        s, p = vc.image_size, vc.patch_size
        s = s if isinstance(s, (list, tuple)) else (s, s)
        p = p if isinstance(p, (list, tuple)) else (p, p)
        return (int(s[0]) // int(p[0]), int(s[1]) // int(p[1]))

    # ------------------------------------------------------------------ structure
    def _lm(self):
        return self.model.model.language_model

    def blocks(self):
        return self._lm().layers

    def default_layer(self) -> int:
        return len(self.blocks()) // 2

    def final_norm(self):
        return getattr(self._lm(), "norm", None)

    def lm_head_weight(self) -> Tensor:
        return self.model.lm_head.weight

    def locate(self, input_ids: Tensor, grid):
        from .base import locate_image_positions

        strategy = config_get(self.model.config, "vision_feature_select_strategy", default="default")
        if strategy == "full" and not self.newline_column:
            pos = torch.nonzero(input_ids.reshape(-1) == self.image_token_id).reshape(-1)
            h, w = grid
            if pos.numel() != h * w + 1:
                raise InputError(f"image span has {pos.numel()} tokens; a {h}x{w} grid plus CLS needs {h * w + 1}")
            return pos[1:].clone()
        return locate_image_positions(input_ids, self.image_token_id, grid, self.newline_column,
                                      self.newline_token_id)

    # ------------------------------------------------------------------ inputs
    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        img = load_image(image)
        text = prompt if prompt is not None else self.default_prompt
        image_token = getattr(self.processor, "image_token", "<image>")
        if image_token not in text:
            text = f"{image_token}\n{text}"
        enc = self.processor(images=img, text=text, return_tensors="pt")
        ids = enc["input_ids"][:1].long()
        Lp = ids.shape[1]
        resp = [] if response_ids is None else [int(v) for v in response_ids]
        if resp:
            ids = torch.cat([ids, torch.tensor([resp], dtype=torch.long)], 1)
        model_inputs = {"pixel_values": enc["pixel_values"][:1]}
        for k in ("image_sizes",):
            if k in enc:
                model_inputs[k] = enc[k][:1]
        grid = self.grid
        return Prepared(input_ids=ids, model_inputs=model_inputs, response_start=Lp, response_length=len(resp),
                        image_positions=self.locate(ids[:, :Lp], grid), grid=grid, image=img, prompt=prompt)

    # ------------------------------------------------------------------ running
    def generate(self, prep: Prepared, steps=None, response_length=None, record=False) -> Generation:
        Lr = int(response_length or steps or self.response_length)
        with torch.no_grad():
            out = self.model.generate(input_ids=prep.input_ids, **prep.model_inputs, max_new_tokens=Lr,
                                      do_sample=False)
        seq = out.sequences if hasattr(out, "sequences") else out
        new = seq[0, prep.input_ids.shape[1]:].tolist()
        return Generation(new, len(new))  # autoregressive: one token per step

    def forward_logits(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        return self.model(input_ids=input_ids, **model_inputs).logits
