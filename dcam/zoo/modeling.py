"""The toy LLaDA-V-style diffusion multimodal LLM.

conv stem -> ``SiglipVisionModel`` (patch features) -> 2-layer MLP projector
-> scattered into the ``<image>`` positions of the text embeddings ->
``LlamaModel`` run with a 4-D all-zero additive attention mask (bidirectional)
-> ``lm_head``. Trained with the masked-diffusion objective on the response.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaModel, PreTrainedConfig, PreTrainedModel, SiglipVisionConfig, \
    SiglipVisionModel
from transformers import initialization as hf_init
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half
from transformers.utils import ModelOutput

from .processing import build_vocab


STEM_CHANNELS = (16, 32, 32, 64, 64)
STEM_STRIDES = (1, 2, 1, 2, 1)


def default_vision_config(image_size: int = 64, stem_channels=STEM_CHANNELS, stem_strides=STEM_STRIDES) -> dict:
    """SigLIP config for the stem's output map: one token per stem output pixel (patch_size 1)."""
    down = int(np.prod(stem_strides)) if len(stem_strides) else 1
    return dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                num_channels=stem_channels[-1] if len(stem_channels) else 3, image_size=image_size // down,
                patch_size=1 if len(stem_channels) else 4, vision_use_head=False, hidden_act="gelu_pytorch_tanh")


def default_text_config() -> dict:
    vocab = build_vocab()
    return dict(vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[BOS]"], eos_token_id=vocab["[EOS]"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                use_cache=False)


class ConvStem(nn.Module):
    """3x3 convolutions + GELU; strides (1, 2, 1, 2, 1) take 64x64 pixels to a 16x16 feature map
    (receptive field 21 px), which the SigLIP tower embeds with patch size 1."""

    def __init__(self, channels, strides):
        super().__init__()
        layers, c_in = [], 3
        for c, s in zip(channels, strides):
            layers += [nn.Conv2d(c_in, c, 3, stride=s, padding=1), nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ShapesDMLLMConfig(PreTrainedConfig):
    """Config of :class:`ShapesDMLLM`: a SigLIP vision config, a Llama text config and token ids.

    ``image_size`` is the input size in pixels; ``grid`` (h, w) is the vision tower's token grid
    (the stem output size / SigLIP patch size) and ``patch_size`` the pixels per token.
    """

    model_type = "dcam_shapes_dmllm"
    sub_configs_defaults = {"vision_config": SiglipVisionConfig, "text_config": LlamaConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_size: int = 64
    stem_channels: tuple | list = STEM_CHANNELS
    stem_strides: tuple | list = STEM_STRIDES
    projector_hidden_act: str = "gelu"
    image_token_id: int = 4
    mask_token_id: int = 3
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    response_length: int = 12
    default_probe_layer: int = 2
    # Image-token embedding options (see `ShapesDMLLM.project` and README
    # "Grounding"): a ReLU after the projector (on in the bundled weights, set by
    # stage 3 of the training), and a constant added to the last
    # `image_offset_channels` channels of every image-token embedding, a stand-in
    # for the few massive channels of large LMs (an experiment; off).
    projector_relu: bool = False
    image_offset: float = 0.0
    image_offset_channels: int = 4
    # CamConfig fields that differ from dcam.CamConfig()'s defaults in the maps this
    # model's explainer makes when no config is passed (`ModelAdapter.default_config`);
    # the bundled weights set {"grad_relu": False}, the setting that grounds best.
    cam_config: dict | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if len(self.stem_channels) != len(self.stem_strides):
            raise ValueError("stem_channels and stem_strides must have the same length")
        self.stem_channels = tuple(int(c) for c in self.stem_channels)
        self.stem_strides = tuple(int(c) for c in self.stem_strides)
        if self.vision_config is None:
            self.vision_config = default_vision_config(self.image_size, self.stem_channels, self.stem_strides)
        if self.text_config is None:
            self.text_config = default_text_config()
        super().__post_init__(**kwargs)

    @property
    def patch_size(self) -> int:
        """Pixels per image token (side)."""
        return self.image_size // self.grid[0]

    @property
    def grid(self) -> Tuple[int, int]:
        vs, vp = self.vision_config.image_size, self.vision_config.patch_size
        vs = vs[0] if isinstance(vs, (list, tuple)) else vs
        vp = vp[0] if isinstance(vp, (list, tuple)) else vp
        n = int(vs) // int(vp)
        return (n, n)

    @property
    def num_image_tokens(self) -> int:
        h, w = self.grid
        return h * w


@dataclass
class ShapesDMLLMOutput(ModelOutput):
    """logits [B, L, V]; hidden_states: per-block LM hidden states when asked (embeddings first)."""

    logits: Optional[torch.FloatTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


class ShapesDMLLM(PreTrainedModel):
    """Toy diffusion MLLM (LLaDA-V style) for the grounded-shapes data.

    Main entry points: :meth:`embed`, :meth:`forward` (bidirectional),
    :meth:`generate_diffusion`, :meth:`get_image_features`.
    """

    config_class = ShapesDMLLMConfig
    config: ShapesDMLLMConfig
    base_model_prefix = "dmllm"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["LlamaDecoderLayer", "SiglipEncoderLayer"]

    def __init__(self, config: ShapesDMLLMConfig):
        super().__init__(config)
        self.vision_stem = ConvStem(config.stem_channels, config.stem_strides)
        self.vision_tower = SiglipVisionModel(config.vision_config)
        hv, ht = config.vision_config.hidden_size, config.text_config.hidden_size
        self.projector = nn.Sequential(nn.Linear(hv, ht), nn.GELU(), nn.Linear(ht, ht))
        self.language_model = LlamaModel(config.text_config)
        self.lm_head = nn.Linear(ht, config.text_config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d) and isinstance(getattr(self, "vision_stem", None), ConvStem) and \
                any(module is m for m in self.vision_stem.modules()):
            hf_init.kaiming_normal_(module.weight, nonlinearity="relu")
            hf_init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    # --------------------------------------------------------------- helpers
    @property
    def default_probe_layer(self) -> int:
        return int(self.config.default_probe_layer)

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision-tower patch features [B, h*w, Hv] (before the projector)."""
        if pixel_values is None or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be [B, 3, H, W], got "
                             f"{None if pixel_values is None else tuple(pixel_values.shape)}")
        s = self.config.image_size
        if tuple(pixel_values.shape[-2:]) != (s, s):
            raise ValueError(f"pixel_values must be {s}x{s} (use the processor), got {tuple(pixel_values.shape[-2:])}")
        x = self.vision_stem(pixel_values.to(self.dtype))
        return self.vision_tower(pixel_values=x).last_hidden_state

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features [B, h*w, H] (row-major over the grid)."""
        return self.project(self.vision_features(pixel_values))

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Vision features [B, N, Hv] -> image-token embeddings [B, N, H].

        With ``config.projector_relu`` the embeddings are non-negative; with
        ``config.image_offset`` every image token carries the same large value
        in its last ``image_offset_channels`` channels. Every LM block reads an
        image token through RMSNorm, which is scale invariant, so the gradient of
        any score w.r.t. a token's state is orthogonal to that state; a large
        shared component takes up that orthogonality constraint, so the gradient
        on the remaining (feature) channels follows what the LM reads there."""
        out = self.projector(feats)
        if self.config.projector_relu:
            out = torch.relu(out)
        k = int(self.config.image_offset_channels)
        if self.config.image_offset and k > 0:
            off = torch.zeros(out.shape[-1], dtype=out.dtype, device=out.device)
            off[-k:] = float(self.config.image_offset)
            out = out + off
        return out

    def embed(self, input_ids: torch.LongTensor, pixel_values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Text embeddings with the projected image features scattered into the
        ``image_token_id`` positions (row-major, in order of appearance)."""
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got {None if input_ids is None else tuple(input_ids.shape)}")
        emb = self.language_model.embed_tokens(input_ids)
        is_img = input_ids == self.config.image_token_id
        n_img = is_img.sum(1)
        if bool((n_img == 0).all()):
            return emb
        if pixel_values is None:
            raise ValueError("pixel_values is required: input_ids contain image tokens")
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"pixel_values has batch {pixel_values.shape[0]}, input_ids {input_ids.shape[0]}")
        n = self.config.num_image_tokens
        if bool((n_img != n).any()):
            raise ValueError(f"every row of input_ids must hold exactly {n} image tokens, got {n_img.tolist()}")
        feats = self.get_image_features(pixel_values).to(emb.dtype)
        return emb.masked_scatter(is_img.unsqueeze(-1), feats)

    @staticmethod
    def bidirectional_mask(inputs_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """4-D additive mask [B, 1, L, L]: zeros (full attention), -inf-like on padded keys."""
        B, L = inputs_embeds.shape[:2]
        dt = inputs_embeds.dtype
        if attention_mask is None:
            return torch.zeros((), dtype=dt, device=inputs_embeds.device).expand(B, 1, L, L)
        if attention_mask.dim() == 4:
            return attention_mask.to(dt)
        keep = attention_mask.to(torch.bool)[:, None, None, :]
        m = torch.zeros((B, 1, 1, L), dtype=dt, device=inputs_embeds.device)
        m = m.masked_fill(~keep, torch.finfo(dt).min)
        return m.expand(B, 1, L, L)

    # --------------------------------------------------------------- forward
    def forward(self, input_ids: Optional[torch.LongTensor] = None, pixel_values: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                output_hidden_states: bool = False, return_dict: bool = True, **kwargs) -> ShapesDMLLMOutput:
        """Bidirectional forward. ``inputs_embeds`` (e.g. from :meth:`embed`) overrides
        ``input_ids``/``pixel_values``. ``attention_mask``: optional [B, L] keep-mask
        for padded batches (1 keep, 0 pad)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        mask = self.bidirectional_mask(inputs_embeds, attention_mask)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=mask, use_cache=False,
                                  output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        return ShapesDMLLMOutput(logits=logits, hidden_states=out.hidden_states if output_hidden_states else None)

    def logits_at(self, positions: torch.Tensor, input_ids: Optional[torch.LongTensor] = None,
                  pixel_values: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                  attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The logits of :meth:`forward` at ``positions`` only (``[P]`` shared by
        every row, or ``[B, P]``) -> ``[B, P, V]``.

        Every block but the last runs on the whole sequence; the last one only
        at the rows whose logits are wanted (queries at those rows, keys and
        values from every row), since nothing after it mixes positions. Same
        values as ``forward(...).logits`` at those positions, and when the
        logits are differentiated (explanations) the last block's backward
        costs P rows instead of L. The last block's forward hooks do not run
        (it is not called as a module)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        B, L, _ = inputs_embeds.shape
        positions = torch.as_tensor(positions, dtype=torch.long, device=inputs_embeds.device)
        if positions.dim() == 1:
            positions = positions.expand(B, positions.shape[0])
        if positions.dim() != 2 or positions.shape[0] != B:
            raise ValueError(f"positions must be [P] or [{B}, P], got {tuple(positions.shape)}")
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= L):
            raise ValueError(f"positions must lie in [0, {L}), got {positions.min().item()}..{positions.max().item()}")
        lm = self.language_model
        mask = self.bidirectional_mask(inputs_embeds, attention_mask)  # [B, 1, L, L]
        position_ids = torch.arange(L, device=inputs_embeds.device)[None]
        cos, sin = lm.rotary_emb(inputs_embeds, position_ids=position_ids)  # [1, L, head_dim]
        h = inputs_embeds
        layers = lm.layers[: lm.config.num_hidden_layers]
        for layer in layers[:-1]:
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=position_ids)
        rows = torch.arange(B, device=h.device)[:, None]
        h = self._last_block_at(layers[-1], h, positions, rows, mask[rows, 0, positions][:, None],
                                cos[0, positions][:, None], sin[0, positions][:, None], cos[:, None], sin[:, None])
        return self.lm_head(lm.norm(h))

    @staticmethod
    def _last_block_at(block, h, positions, rows, mask, cos_q, sin_q, cos_k, sin_k):
        """A Llama decoder layer evaluated at ``h[rows, positions]`` only (queries
        there, keys/values everywhere): the same ops as the layer's forward."""
        attn = block.self_attn
        B, L, _ = h.shape
        P = positions.shape[1]
        x = block.input_layernorm(h)
        x_q = x[rows, positions]  # [B, P, D]
        hd = attn.head_dim
        q = attn.q_proj(x_q).view(B, P, -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(B, L, -1, hd).transpose(1, 2)
        v = attn.v_proj(x).view(B, L, -1, hd).transpose(1, 2)
        q = q * cos_q + rotate_half(q) * sin_q
        k = k * cos_k + rotate_half(k) * sin_k
        k, v = repeat_kv(k, attn.num_key_value_groups), repeat_kv(v, attn.num_key_value_groups)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
        o = attn.o_proj(o.transpose(1, 2).reshape(B, P, -1))
        h_q = h[rows, positions] + o
        return h_q + block.mlp(block.post_attention_layernorm(h_q))

    # --------------------------------------------------------------- sampling
    @staticmethod
    def transfer_schedule(length: int, steps: int) -> list:
        """Tokens committed per step: ``length`` spread evenly over ``steps`` (earlier steps get the remainder)."""
        base, rem = divmod(length, steps)
        return [base + (1 if i < rem else 0) for i in range(steps)]

    @torch.no_grad()
    def generate_diffusion(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor, steps: Optional[int] = None,
                           response_length: Optional[int] = None, return_history: bool = False):
        """Greedy masked-diffusion decoding with low-confidence remasking.

        The response is the last ``response_length`` positions of ``input_ids``
        when they are (at least) that many trailing ``[MASK]`` slots, as the
        processor builds them; missing slots are appended. All slots start as
        ``[MASK]``; at each of ``steps`` steps the model predicts every masked
        slot (argmax, special tokens other than ``[EOS]`` excluded) and commits
        the most confident ``response_length/steps`` of them.

        Returns a LongTensor [B, response_length] (and, with
        ``return_history``, the list of per-step [B, Lr] snapshots).
        """
        cfg = self.config
        Lr = int(response_length if response_length is not None else cfg.response_length)
        steps = int(steps if steps is not None else Lr)
        if Lr < 1:
            raise ValueError(f"response_length must be >= 1, got {Lr}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
        ids = input_ids.clone()
        is_mask = ids == cfg.mask_token_id
        # length of the trailing run of mask tokens common to all rows
        trailing = 0
        for j in range(ids.shape[1] - 1, -1, -1):
            if bool(is_mask[:, j].all()):
                trailing += 1
            else:
                break
        if trailing < Lr:
            extra = torch.full((ids.shape[0], Lr - trailing), cfg.mask_token_id, dtype=ids.dtype, device=ids.device)
            ids = torch.cat([ids, extra], 1)
        start = ids.shape[1] - Lr
        ids[:, start:] = cfg.mask_token_id
        banned = [cfg.pad_token_id, cfg.bos_token_id, cfg.mask_token_id, cfg.image_token_id]
        history = []
        # the image features do not change across steps: embed once, swap response embeddings per step
        base = self.embed(ids, pixel_values)
        emb_table = self.language_model.embed_tokens
        for k in self.transfer_schedule(Lr, steps):
            resp = ids[:, start:]
            masked = resp == cfg.mask_token_id
            if k == 0 or not bool(masked.any()):
                history.append(resp.clone())
                continue
            emb = torch.cat([base[:, :start], emb_table(resp)], 1)
            logits = self.forward(inputs_embeds=emb).logits[:, start:].float()
            logits[..., banned] = float("-inf")
            probs = logits.softmax(-1)
            conf, pred = probs.max(-1)
            conf = conf.masked_fill(~masked, float("-inf"))
            kk = torch.clamp(masked.sum(1), max=k)
            order = conf.argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(Lr, device=ids.device).expand_as(order))
            commit = masked & (rank < kk[:, None])
            ids[:, start:] = torch.where(commit, pred, resp)
            history.append(ids[:, start:].clone())
        out = ids[:, start:].clone()
        return (out, history) if return_history else out
