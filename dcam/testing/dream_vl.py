"""Stand-in for Dream-VL (``AutoModel`` + ``trust_remote_code``, ``model_type
"dream-vl"``): a Qwen2-VL vision tower (``model.visual``: patch 14 -> here 4,
2x2 merge), a 2-layer projector (``model.projector``), a bidirectional Qwen2
decoder with M-RoPE (``model.model.layers``), ``model.lm_head``; image token
151655, mask 151666; **the logit at p predicts the token at p + 1** (Dream
keeps the shift of the autoregressive model it was initialised from). As in
the published code, ``forward`` without ``position_ids`` uses plain
sequential positions: the M-RoPE positions come from :meth:`get_rope_index`,
which the sampler (``diffusion_generate``) calls. Built from transformers'
Qwen2-VL modules.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..probe.adapters.sampling import dream_remasking, shift_right
from .llada import BidirectionalDecoder

DREAM_VL_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                    vision_end_token_id=151653, mask_token_id=151666, pad_token_id=151643, bos_token_id=151643,
                    eos_token_id=151643)


class DreamVLConfig(PretrainedConfig):
    model_type = "dream-vl"

    def __init__(self, hidden_size: int = 32, num_hidden_layers: int = 4, num_attention_heads: int = 2,
                 intermediate_size: int = 64, vocab_size: int = 152064, mrope_section=(2, 3, 3),
                 vision_config: Optional[dict] = None, **kwargs):
        for k, v in DREAM_VL_IDS.items():
            kwargs.setdefault(k, v)
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = hidden_size, num_hidden_layers, \
            num_attention_heads
        self.intermediate_size, self.vocab_size, self.mrope_section = intermediate_size, vocab_size, list(mrope_section)
        self.vision_config = dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=4,
                                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, mlp_ratio=2,
                                  **(vision_config or {}))
        self.projector_hidden_act = "gelu"
        super().__init__(**kwargs)


class DreamVLMultiModalProjector(nn.Module):
    def __init__(self, vision_dim: int, hidden: int):
        super().__init__()
        self.linear_1, self.act, self.linear_2 = nn.Linear(vision_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class DreamVLModel(PreTrainedModel):
    config_class = DreamVLConfig
    base_model_prefix = "model"
    _supports_sdpa = True  # as published: SDPA by default, eager when asked for

    def __init__(self, config: DreamVLConfig):
        super().__init__(config)
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        vc = Qwen2VLVisionConfig(**config.vision_config)
        self.visual = Qwen2VisionTransformerPretrainedModel._from_config(vc)
        self.projector = DreamVLMultiModalProjector(vc.hidden_size, config.hidden_size)
        tc = Qwen2VLTextConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                               intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                               num_attention_heads=config.num_attention_heads,
                               num_key_value_heads=config.num_attention_heads,
                               rope_scaling={"type": "mrope", "mrope_section": config.mrope_section},
                               attn_implementation=config._attn_implementation)
        self.model = BidirectionalDecoder("qwen2_vl", tc)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.1)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_rope_index(self, input_ids: Tensor, image_grid_thw: Optional[Tensor] = None,
                       video_grid_thw: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None):
        """M-RoPE positions ``[3, B, L]``: text tokens count up on all three
        axes; an image's tokens get (t, row, col) of the merged grid offset by
        the text position before it; the text after resumes past the image.
        As published: the images of ``image_grid_thw`` are taken in order across
        the rows, and ``attention_mask`` (right padding here) leaves the padded
        positions out (they get 1)."""
        merge = int(self.config.vision_config["spatial_merge_size"])
        B, L = input_ids.shape
        pos = torch.ones(3, B, L, dtype=torch.long, device=input_ids.device)
        deltas, k = [], 0
        for b in range(B):
            ids, nxt, i = input_ids[b], 0, 0
            end = L if attention_mask is None else int(attention_mask[b].sum())
            while i < end:
                if int(ids[i]) == self.config.image_token_id:
                    t, h, w = (int(v) for v in image_grid_thw[k])
                    h, w = h // merge, w // merge
                    n = t * h * w
                    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
                    pos[:, b, i:i + n] = torch.stack([tt, hh, ww]).reshape(3, -1).to(pos) + nxt
                    nxt = int(pos[:, b, i:i + n].max()) + 1
                    i, k = i + n, k + 1
                else:
                    pos[:, b, i] = nxt
                    nxt, i = nxt + 1, i + 1
            deltas.append(nxt - L)
        return pos, torch.tensor(deltas, device=input_ids.device)[:, None]

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, pixel_values=None, pixel_values_videos=None, image_grid_thw=None,
                video_grid_thw=None, rope_deltas=None, cache_position=None, num_logits_to_keep=0, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
            if pixel_values is not None:
                img = self.visual(pixel_values, grid_thw=image_grid_thw)
                img = getattr(img, "pooler_output", img)
                mask = input_ids == self.config.image_token_id
                if int(mask.sum()) != img.shape[0]:
                    raise ValueError(f"Image features and image tokens do not match: tokens: {int(mask.sum())}, "
                                     f"features {img.shape[0]}")
                inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], self.projector(img).to(inputs_embeds))
        h, hidden = self.model(inputs_embeds, position_ids=position_ids, attention_mask=attention_mask,
                               output_hidden_states=bool(output_hidden_states))
        out = CausalLMOutputWithPast(logits=self.lm_head(h), hidden_states=hidden)
        out.inputs_embeds = inputs_embeds
        return out

    @torch.no_grad()
    def diffusion_generate(self, inputs=None, generation_config=None, max_new_tokens=128, steps=128,
                           alg="maskgit_plus", alg_temp=0.0, output_history=False, return_dict_in_generate=False,
                           eps=1e-3, pixel_values=None, image_grid_thw=None, attention_mask=None, **kwargs):
        """Dream's sampler (greedy): ``steps`` steps on linearly spaced times,
        ``int(masked * (1 - s/t))`` slots committed per step (all at the last),
        the most confident first; logits shifted by one. As published, it refuses
        to run without ``attention_mask``, and on a CPU the mask reaches
        ``scaled_dot_product_attention`` as it is, which takes no integer mask."""
        if attention_mask is None:
            raise ValueError("attention_mask should be provided. ")
        if attention_mask.dtype != torch.bool and not attention_mask.is_floating_point():
            raise RuntimeError(f"Expected attn_mask dtype to be bool or float or to match query dtype, but got "
                               f"attn_mask.dtype: {attention_mask.dtype}")
        mask_id = self.config.mask_token_id
        x = torch.cat([inputs, torch.full((inputs.shape[0], max_new_tokens), mask_id, dtype=torch.long)], 1)
        pos, _ = self.get_rope_index(x, image_grid_thw)
        history = dream_remasking(lambda ids: shift_right(self(ids, position_ids=pos, pixel_values=pixel_values,
                                                               image_grid_thw=image_grid_thw).logits),
                                  x, inputs.shape[1], steps, mask_id, alg, eps)
        if return_dict_in_generate:
            return SimpleNamespace(sequences=x, history=history if output_history else None)
        return x


def tiny_dream_vl(seed: int = 0, layers: int = 4, max_pixels: int = 64 * 64, attn_implementation: Optional[str] = None):
    """(model, processor): transformers' Qwen2-VL processor (4-pixel patches,
    2x2 merge) over a stand-in tokenizer with Dream-VL's special ids.
    ``attn_implementation="eager"``: the attention adds a 4-D mask to the scores,
    as the published model's eager attention does."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from .vocab import word_tokenizer

    class _Processor(Qwen2VLProcessor):  # no video processor (it needs torchvision)
        def check_argument_for_proper_class(self, name, arg):
            return None if name == "video_processor" and arg is None else \
                super().check_argument_for_proper_class(name, arg)

    torch.manual_seed(seed)
    attn = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = DreamVLModel(DreamVLConfig(num_hidden_layers=layers, **attn)).eval()
    sp = {"<|image_pad|>": 151655, "<|video_pad|>": 151656, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
          "<|mask|>": 151666, "<|endoftext|>": 151643, "<|im_end|>": 151645}
    tok = word_tokenizer(sp, named={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                    "mask_token": "<|mask|>"},
                         extra_special={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                        "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
    ip = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16,
                                  max_pixels=max_pixels)
    return model, _Processor(image_processor=ip, tokenizer=tok, video_processor=None)


__all__ = ["DreamVLConfig", "DreamVLModel", "tiny_dream_vl", "DREAM_VL_IDS"]
