"""Adapter for Dream-VL (``AutoModel.from_pretrained(..., trust_remote_code=True)``,
``config.model_type == "dream-vl"``).

The image side is Qwen2-VL's (processor outputs ``pixel_values`` for every
patch and ``image_grid_thw``; 2x2-merged tokens in raster order; image token
151655), so this adapter extends :class:`~.hf_vlm.QwenVLAdapter`. The
language side is a bidirectional Dream decoder (``model.model.layers``,
``model.model.norm``, ``model.lm_head``) with an absorbing mask (151666), so
every probe is available; Dream keeps the autoregressive shift: **the logit
that predicts the token at p is read at p - 1** (``logit_shift = 1``). The
published ``forward`` uses plain sequential positions when it is given none,
so the M-RoPE positions are computed with ``model.get_rope_index`` (as the
published sampler does) and passed explicitly. Generation:
``model.diffusion_generate(..., output_history=True,
return_dict_in_generate=True)``; the steps recorded are those that changed
the canvas.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from ...errors import positive_int
from ..padding import key_mask, split_padding
from .base import PROBES, Generation, Prepared, _ids_set, config_get
from .dmllm import (DREAM_MASK_ID, changed_steps, chat_prompt, generation_steps, no_activation_checkpointing,
                    recorded_states)
from .hf_vlm import QwenVLAdapter


class DreamVLAdapter(QwenVLAdapter):
    #: diffusion_generate(output_history=True) returns the canvas after every step
    records_trajectory = True

    image_views = ()
    name = family = "dream-vl"
    is_diffusion = True
    logit_shift = 1
    probes = PROBES
    #: its chat format (Qwen's) closes the assistant's turn with <|im_end|>, before the <|endoftext|> it pads with
    closing_tokens = ("<|im_end|>",)

    def __init__(self, model, processor: Any = None, response_length: int = 64, steps=None, alg: str = "maskgit_plus",
                 **kwargs):
        super().__init__(model, processor, response_length=64 if response_length is None else response_length,
                         **kwargs)
        self.given_steps = positive_int("steps", steps)  # (None: generation_steps)
        self.default_steps = generation_steps(None, self.given_steps, self.response_length)
        self.alg = alg
        no_activation_checkpointing(model)

    @property
    def mask_token_id(self):
        return int(config_get(self.model.config, "mask_token_id", default=DREAM_MASK_ID))

    @property
    def pad_token_ids(self) -> set:
        return (_ids_set(getattr(self.tokenizer, "pad_token_id", None)) |
                _ids_set(config_get(self.model.config, "pad_token_id"))) - {self.mask_token_id}

    def _lm(self):
        return self.model.model

    def prompt_text(self, prompt):
        text = prompt if prompt is not None else self.default_prompt
        tok = self.image_token_text()
        if tok in text:
            return text
        return chat_prompt(self.tokenizer, f"{self.image_marker()}{text}")

    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        prep = super().prepare(image, prompt, response_ids, response_length)
        prep.model_inputs = {k: prep.model_inputs[k] for k in ("pixel_values", "image_grid_thw")}
        return prep

    def forward_logits(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        rest, keep = split_padding(model_inputs)
        # right padding: every real token keeps the M-RoPE position it has alone (pads come after)
        pos, _ = self.model.get_rope_index(input_ids, rest.get("image_grid_thw"), None, keep)
        dtype = self.model.get_input_embeddings().weight.dtype
        mask = {} if keep is None else {"attention_mask": key_mask(keep, input_ids.device, dtype)}
        return self.model(input_ids=input_ids, position_ids=pos, **rest, **mask).logits

    def generate(self, prep: Prepared, steps=None, response_length=None, record=False) -> Generation:
        Lr = int(response_length or self.response_length)
        S = generation_steps(steps, self.given_steps, Lr)
        L = prep.response_start
        prompt = prep.input_ids[:, :L]
        with torch.no_grad():
            # the published sampler refuses to run without a mask ("attention_mask should be provided");
            # boolean, because on a CPU its SDPA attention hands the 2-D mask to torch as it is, which
            # takes no integer mask
            out = self.model.diffusion_generate(prompt, attention_mask=torch.ones_like(prompt, dtype=torch.bool),
                                                max_new_tokens=Lr, steps=S, alg=self.alg, output_history=True,
                                                return_dict_in_generate=True, **prep.model_inputs)
        history = list(out.history or [])
        responses = [h.reshape(-1)[L:L + Lr] for h in history]
        if not record:
            return Generation(out.sequences[0, L:L + Lr].tolist(), changed_steps(responses, self.mask_token_id))
        states, decided_at = recorded_states(responses, self.mask_token_id)
        return Generation(out.sequences[0, L:L + Lr].tolist(), int(states.shape[0]), states, decided_at)


__all__ = ["DreamVLAdapter"]
