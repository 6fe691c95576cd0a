"""Tiny bidirectional language backbones with the published module names.

* :class:`LLaDAModelLM` / :class:`LLaDAModel`: the OLMo-style LLaDA of LaViDa,
  MMaDA and Lumina-DiMOO (``model.model.transformer.{wte, blocks, ln_f,
  ff_out}``; blocks with ``attn_norm, q_proj, k_proj, v_proj, attn_out,
  ff_norm, ff_proj, up_proj, ff_out`` whose ``forward(x, attention_bias,
  layer_past, use_cache)`` returns ``(x, cache)``; the model's
  ``forward(input_ids, input_embeddings=..., attention_bias=...,
  past_key_values=..., use_cache=...)`` returns ``.logits`` and
  ``.attn_key_values``);
* :class:`BidirectionalDecoder`: transformers' LLaMA or Qwen2 decoder layers
  run without a causal mask (LLaDA-V's ``model.model.{embed_tokens, layers,
  norm}``, Dream's), ``forward(inputs_embeds, position_ids)``.

Random weights; sizes in the configs. Not the published code: written here to
match its names, signatures and conventions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

#: LLaDA's special ids (the published tokenizer's).
LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
LLADA_EOT_ID = 126348
LLADA_VOCAB = 126464


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, d_model: int = 32, n_layers: int = 4, n_heads: int = 2, mlp_hidden_size: int = 64,
                 vocab_size: int = LLADA_VOCAB, rope_theta: float = 10000.0, mask_token_id: int = LLADA_MASK_ID,
                 weight_tying: bool = False, **kwargs):
        self.d_model, self.n_layers, self.n_heads = d_model, n_layers, n_heads
        self.mlp_hidden_size, self.vocab_size, self.rope_theta = mlp_hidden_size, vocab_size, rope_theta
        self.mask_token_id, self.weight_tying = mask_token_id, weight_tying
        super().__init__(**kwargs)


def rotate(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Rotary position embedding of ``x [B, H, L, d]`` at positions ``pos [L]``."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    ang = pos.float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(x.dtype), torch.cat([ang.sin()] * 2, -1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class LLaDALlamaBlock(nn.Module):
    """One LLaDA block (pre-norm attention + SwiGLU), bidirectional."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, h = config.d_model, config.mlp_hidden_size
        self.n_heads, self.theta = config.n_heads, config.rope_theta
        self.attn_norm, self.ff_norm = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj, self.up_proj = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False)
        self.ff_out = nn.Linear(h, d, bias=False)

    def forward(self, x: Tensor, attention_bias: Optional[Tensor] = None,
                layer_past: Optional[Tuple[Tensor, Tensor]] = None, use_cache: bool = False):
        B, L, D = x.shape
        H = self.n_heads
        past = 0 if layer_past is None else layer_past[0].shape[-2]
        pos = torch.arange(past, past + L, device=x.device)
        xn = self.attn_norm(x)
        q, k, v = (p(xn).view(B, L, H, D // H).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate(q, pos, self.theta), rotate(k, pos, self.theta)
        if layer_past is not None:
            k, v = torch.cat([layer_past[0], k], -2), torch.cat([layer_past[1], v], -2)
        cache = (k, v) if use_cache else None
        bias = None
        if attention_bias is not None:
            bias = attention_bias[..., -L:, :k.shape[-2]]
            bias = bias if bias.dtype != torch.bool else torch.zeros_like(bias, dtype=q.dtype).masked_fill(
                ~bias, torch.finfo(q.dtype).min)
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(B, L, D))
        xn = self.ff_norm(x)
        x = x + self.ff_out(nn.functional.silu(self.ff_proj(xn)) * self.up_proj(xn))
        return x, cache


@dataclass
class LLaDAOutput:
    logits: Tensor
    attn_key_values: Optional[List[Tuple[Tensor, Tensor]]] = None
    hidden_states: Optional[Tuple[Tensor, ...]] = None


class LLaDAModel(nn.Module):
    """``transformer.{wte, blocks, ln_f, ff_out}``; ``forward`` returns an :class:`LLaDAOutput`."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.d_model),
            blocks=nn.ModuleList([LLaDALlamaBlock(config) for _ in range(config.n_layers)]),
            ln_f=nn.RMSNorm(config.d_model, eps=1e-5)))
        if not config.weight_tying:
            self.transformer["ff_out"] = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.activation_checkpointing_strategy = None

    #: False: LaViDa's and Lumina-DiMOO's copies, whose attention hands SDPA ``attn_mask=None`` (the
    #: attention_mask folded into the bias is dropped with it)
    reads_attention_bias = True

    def set_activation_checkpointing(self, strategy):
        """LLaDA's switch (LaViDa turns ``"whole_layer"`` on in ``__init__``)."""
        self.activation_checkpointing_strategy = strategy

    @property
    def device(self):
        return self.transformer.wte.weight.device

    def forward(self, input_ids: Optional[Tensor] = None, input_embeddings: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, attention_bias: Optional[Tensor] = None,
                past_key_values=None, use_cache: bool = False, output_hidden_states: bool = False,
                **kwargs) -> LLaDAOutput:
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings
        if attention_mask is not None and bool((attention_mask == 0).any()):
            # as the published model: padded keys hidden from every query, on top of any attention bias
            keys = attention_mask.bool()[:, None, None, :].expand(-1, 1, x.shape[1], -1)
            attention_bias = keys if attention_bias is None else attention_bias & keys if \
                attention_bias.dtype == torch.bool else attention_bias.masked_fill(~keys, torch.finfo(x.dtype).min)
        if not self.reads_attention_bias:
            attention_bias = None
        caches, hidden = ([] if use_cache else None), [x]
        for i, block in enumerate(self.transformer.blocks):
            if self.activation_checkpointing_strategy is not None and torch.is_grad_enabled():
                # the published model would re-run the block in the backward (and its hooks with it)
                raise RuntimeError("activation checkpointing is on while gradients are taken; turn it off with "
                                   "set_activation_checkpointing(None)")
            x, cache = block(x, attention_bias=attention_bias,
                             layer_past=None if past_key_values is None else past_key_values[i], use_cache=use_cache)
            if use_cache:
                caches.append(cache)
            hidden.append(x)
        x = self.transformer.ln_f(x)
        head = self.transformer["ff_out"] if "ff_out" in self.transformer else None
        logits = head(x) if head is not None else x @ self.transformer.wte.weight.t()
        return LLaDAOutput(logits=logits, attn_key_values=caches,
                           hidden_states=tuple(hidden) if output_hidden_states else None)


class LLaDAModelLM(PreTrainedModel):
    """``self.model`` is a :class:`LLaDAModel`; ``forward`` as LLaDA's (``.logits``)."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _supports_sdpa = True

    def __init__(self, config: LLaDAConfig, model: Optional[LLaDAModel] = None):
        super().__init__(config)
        self.model = model if model is not None else LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.1)

    def forward(self, input_ids: Optional[Tensor] = None, input_embeddings: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, attention_bias: Optional[Tensor] = None,
                past_key_values=None, use_cache: bool = False, output_hidden_states: bool = False, **kwargs):
        out = self.model(input_ids, input_embeddings=input_embeddings, attention_mask=attention_mask,
                         attention_bias=attention_bias, past_key_values=past_key_values, use_cache=use_cache,
                         output_hidden_states=output_hidden_states)
        return CausalLMOutputWithPast(logits=out.logits, past_key_values=out.attn_key_values,
                                      hidden_states=out.hidden_states)


class BidirectionalDecoder(nn.Module):
    """``embed_tokens, layers, norm, rotary_emb`` of a transformers LLaMA,
    Qwen2 or Qwen2-VL text config, every layer's attention made bidirectional
    (``is_causal = False``, no mask), as LLaDA-V, Dream and Dream-VL do."""

    def __init__(self, kind: str, config: PretrainedConfig):
        super().__init__()
        if kind == "llama":
            from transformers.models.llama.modeling_llama import (LlamaDecoderLayer as Layer, LlamaRMSNorm as Norm,
                                                                  LlamaRotaryEmbedding as Rotary)
        elif kind == "qwen2":
            from transformers.models.qwen2.modeling_qwen2 import (Qwen2DecoderLayer as Layer, Qwen2RMSNorm as Norm,
                                                                  Qwen2RotaryEmbedding as Rotary)
        elif kind == "qwen2_vl":
            from transformers.models.qwen2_vl.modeling_qwen2_vl import (Qwen2VLRMSNorm as Norm,
                                                                        Qwen2VLDecoderLayer as Layer,
                                                                        Qwen2VLRotaryEmbedding as Rotary)
        else:  # pragma: no cover - programming error
            raise ValueError(kind)
        if config._attn_implementation != "eager":  # eager kept when asked for: it adds a 4-D mask to the scores
            config._attn_implementation = "sdpa"
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Layer(config, i) for i in range(config.num_hidden_layers)])
        for layer in self.layers:
            layer.self_attn.is_causal = False
        self.norm = Norm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Rotary(config)

    def forward(self, inputs_embeds: Tensor, position_ids: Optional[Tensor] = None, attention_mask=None,
                output_hidden_states: bool = False, **kwargs):
        x = inputs_embeds
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        pe = self.rotary_emb(x, position_ids)
        mask = attention_mask if attention_mask is not None and attention_mask.dim() == 4 else None  # as it is
        if attention_mask is not None and attention_mask.dim() == 2 and bool((attention_mask == 0).any()):
            # as the published model's mask: padded keys hidden from every query (a padded query row
            # keeps the real keys, so no row of the softmax is empty)
            keep = attention_mask.bool()
            mask = keep[:, None, None, :].expand(-1, 1, x.shape[1], -1)
        hidden = [x]
        for layer in self.layers:
            out = layer(x, attention_mask=mask, position_ids=position_ids, position_embeddings=pe)
            x = out[0] if isinstance(out, tuple) else out
            hidden.append(x)
        return self.norm(x), (tuple(hidden) if output_hidden_states else None)


__all__ = ["LLaDAConfig", "LLaDAModel", "LLaDAModelLM", "LLaDALlamaBlock", "BidirectionalDecoder", "LLaDAOutput",
           "LLADA_MASK_ID", "LLADA_EOS_ID", "LLADA_EOT_ID", "LLADA_VOCAB", "rotate"]
