"""Stand-ins for the dMLLMs of the authors' ``llava`` packages: LLaDA-V
(``llava_llada``, LLaMA names), LaViDa-LLaDA (``llava_llada``, OLMo names) and
LaViDa-Dream (``llava_dream``, Qwen2 names).

What they reproduce (from the public code): the prompt holds one placeholder
id ``-200`` that :meth:`prepare_inputs_labels_for_multimodal` replaces by the
image features (base view, then the high-resolution tiles stitched, cropped
back to the image's aspect, shrunk for ``anyres_max_N``, a learned
``image_newline`` after every row); LaViDa pools every tile 2x2 first
(``get_2dPool``'s default stride, whatever ``mm_pooler_ratio`` says; not with
``NOT_ALWASY_DO_2DPOOL`` set); ``images`` is a list of ``[1 + tiles, 3, S, S]``
tensors and ``image_sizes`` a list of ``(width, height)``; the mask id and the
sampler signatures of each family; LaViDa turns activation checkpointing on
for its blocks. The vision tower is transformers' SigLIP (tiny). As the
authors' classes run (checked against them): LaViDa's LLaDA reads no padding
mask; LaViDa's ``image_newline`` is bfloat16 and the model's first parameter;
LaViDa-Dream's decoder layers are ``torch.compile``'d (``compiled_layers=True``
of :func:`tiny_lavida_dream`); LLaDA-V's sampler never writes the ids
``LLADA_V_SUPPRESSED`` at a masked slot.
"""
from __future__ import annotations

import math
import os
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..probe.adapters.anyres import parse_pinpoints, select_best_resolution
from ..probe.adapters.sampling import dream_remasking, low_confidence_remasking, shift_right
from .llada import LLaDAConfig, LLaDAModel, BidirectionalDecoder

IMAGE_TOKEN_INDEX = -200
DREAM_MASK_ID = 151666
#: the ids LLaDA-V's sampler (``generate_with_embeds``) sets to -inf at the masked slots
LLADA_V_SUPPRESSED = [126081, 126080, 126346, 126347]


class LlavaDMLLMConfig(PretrainedConfig):
    """One config for the three stand-ins; ``backbone`` picks the layout."""

    model_type = "llava_llada"

    def __init__(self, backbone: str = "llada_v", hidden_size: int = 32, num_hidden_layers: int = 4,
                 num_attention_heads: int = 2, intermediate_size: int = 64, vocab_size: int = 126464,
                 vision_size: int = 28, patch_size: int = 7, vision_hidden: int = 16,
                 image_aspect_ratio: str = "anyres_max_4", image_grid_pinpoints=None,
                 mm_patch_merge_type: str = "spatial_unpad", mm_pooler_ratio: Optional[int] = None,
                 mm_spatial_pool_mode: str = "bilinear", mask_token_id: int = 126336, **kwargs):
        self.backbone, self.hidden_size, self.num_hidden_layers = backbone, hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size, self.vocab_size = num_attention_heads, intermediate_size, \
            vocab_size
        self.vision_size, self.patch_size, self.vision_hidden = vision_size, patch_size, vision_hidden
        self.image_aspect_ratio, self.mm_patch_merge_type = image_aspect_ratio, mm_patch_merge_type
        self.image_grid_pinpoints = image_grid_pinpoints or [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]
        self.mm_pooler_ratio, self.mm_spatial_pool_mode = mm_pooler_ratio, mm_spatial_pool_mode
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)
        if backbone == "lavida_dream":
            self.model_type = "llava_dream"


class VisionTower(nn.Module):
    """SigLIP (transformers, tiny) with the ``llava`` tower's ``image_size`` and ``num_patches_per_side``."""

    def __init__(self, config: LlavaDMLLMConfig):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        self.vision_tower = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=config.vision_hidden, intermediate_size=2 * config.vision_hidden, num_hidden_layers=1,
            num_attention_heads=2, image_size=config.vision_size, patch_size=config.patch_size))
        self.config = self.vision_tower.config  # (the releases' tower keeps its SigLipVisionConfig here)
        self.image_size, self.num_patches_per_side = config.vision_size, config.vision_size // config.patch_size

    def forward(self, images: Tensor) -> Tensor:
        """As the releases' ``SigLipVisionTower.forward``: the pixels cast to the tower's dtype, the
        features handed back in the pixels' dtype (LaViDa's float32 model fed bfloat16 pixels gave its
        float32 projector bfloat16 features)."""
        dtype = next(self.vision_tower.parameters()).dtype
        return self.vision_tower(pixel_values=images.to(dtype)).last_hidden_state.to(images.dtype)


class LlavaParts(nn.Module):
    """The vision parts every stand-in carries: tower, 2-layer MLP projector, newline (``newline``:
    the model's own, registered here too; else a float32 one made here)."""

    def __init__(self, config: LlavaDMLLMConfig, newline: Optional[nn.Parameter] = None):
        super().__init__()
        self.vision_tower = VisionTower(config)
        d = config.hidden_size
        self.mm_projector = nn.Sequential(nn.Linear(config.vision_hidden, d), nn.GELU(), nn.Linear(d, d))
        self.image_newline = newline if newline is not None else nn.Parameter(torch.randn(d) * 0.5)


def lavida_newline(module: nn.Module, config: LlavaDMLLMConfig) -> nn.Parameter:
    """LaViDa's ``image_newline``, as published: a parameter of ``model.model`` itself, so the model's
    first parameter, and bfloat16 whatever the model's dtype (its model classes set ``dtype =
    torch.bfloat16  # hack``, which ``LlavaMetaModel`` creates the newline with). Returns it."""
    module.image_newline = nn.Parameter((torch.randn(config.hidden_size) * 0.5).to(torch.bfloat16))
    return module.image_newline


def _unpad(feat: Tensor, size_wh) -> Tensor:
    """Crop ``feat [C, H, W]`` back to the aspect of an image of ``size_wh`` (the ``llava`` rule: int())."""
    ow, oh = size_wh
    H, W = feat.shape[1:]
    if ow / oh > W / H:
        new_h = int(oh * (W / ow))
        pad = (H - new_h) // 2
        return feat[:, pad:H - pad, :]
    new_w = int(ow * (H / oh))
    pad = (W - new_w) // 2
    return feat[:, :, pad:W - pad]


class LlavaMixin:
    """``prepare_inputs_labels_for_multimodal`` and the helpers the three stand-ins share."""

    def get_model(self):
        return self.model

    def get_vision_tower(self):
        return self.model.parts.vision_tower

    def encode_images(self, images: Tensor) -> Tensor:
        return self.model.parts.mm_projector(self.get_vision_tower()(images))

    def _pool(self, feat: Tensor) -> Tensor:
        """LaViDa's ``get_2dPool`` at its default stride, 2: every tile's map pooled."""
        n = self.get_vision_tower().num_patches_per_side
        x = feat.view(feat.shape[0], n, n, -1).permute(0, 3, 1, 2)
        s = 2
        if self.config.mm_spatial_pool_mode == "bilinear":
            x = nn.functional.interpolate(x, size=[math.ceil(n / s)] * 2, mode="bilinear")
        else:
            x = nn.functional.avg_pool2d(x, s)
        return x.permute(0, 2, 3, 1).reshape(feat.shape[0], -1, feat.shape[-1])

    def _pack(self, feats: Tensor, size_wh) -> Tensor:
        """Base view + stitched, unpadded high-resolution grid with a newline per row."""
        cfg = self.config
        newline = self.model.parts.image_newline  # LaViDa's is bfloat16: torch.cat promotes it, as published
        if feats.shape[0] == 1:
            return torch.cat([feats[0], newline[None]], 0)
        base, tiles = feats[0], feats[1:]
        u = int(math.isqrt(base.shape[0]))
        tile = self.get_vision_tower().image_size
        bw, bh = select_best_resolution(tuple(size_wh), parse_pinpoints(cfg.image_grid_pinpoints, tile))
        rows, cols = bh // tile, bw // tile
        grid = tiles.view(rows, cols, u, u, -1).permute(4, 0, 2, 1, 3).reshape(-1, rows * u, cols * u)
        grid = _unpad(grid, size_wh)
        if cfg.image_aspect_ratio.startswith("anyres_max_"):
            n_max = int(cfg.image_aspect_ratio[len("anyres_max_"):])
            c, h, w = grid.shape
            times = math.sqrt(h * w / (n_max * u ** 2))
            if times > 1.1:
                grid = nn.functional.interpolate(grid[None], [int(h // times), int(w // times)], mode="bilinear")[0]
        grid = torch.cat([grid, newline[:, None, None].expand(grid.shape[0], grid.shape[1], 1)], -1)
        return torch.cat([base, grid.flatten(1).t()], 0)

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                             images, modalities=("image",), image_sizes=None):
        """The published signature and return value: ``(None, position_ids,
        attention_mask, past_key_values, inputs_embeds, labels)``; rows of
        different lengths are right-padded (mask 0)."""
        if isinstance(images, Tensor) and images.dim() == 4:
            images = [images]
        feats = [self.encode_images(im) for im in images]  # as published: the pixels as they come
        # LaViDa pools images unless NOT_ALWASY_DO_2DPOOL is set (read when its module loads;
        # here at each call); LLaDA-V pools only videos
        if self.config.backbone != "llada_v" and not os.environ.get("NOT_ALWASY_DO_2DPOOL"):
            feats = [self._pool(f) for f in feats]
        packed = [self._pack(f, image_sizes[i]) for i, f in enumerate(feats)]
        rows, k = [], 0
        for ids in input_ids:
            parts, start = [], 0
            for p in torch.nonzero(ids == IMAGE_TOKEN_INDEX).reshape(-1).tolist():
                parts += [self.embed_ids(ids[start:p]), packed[k]]
                k, start = k + 1, p + 1
            rows.append(torch.cat(parts + [self.embed_ids(ids[start:])], 0))
        L = max(r.shape[0] for r in rows)
        emb = torch.stack([torch.cat([r, r.new_zeros(L - r.shape[0], r.shape[1])]) for r in rows])
        mask = torch.stack([torch.arange(L) < r.shape[0] for r in rows]).to(emb.device)
        return None, position_ids, (mask if not bool(mask.all()) else attention_mask), past_key_values, emb, labels

    def embed_ids(self, ids: Tensor) -> Tensor:
        return self.model.embed_tokens(ids)

    def _prompt_embeds(self, inputs, images, image_sizes) -> Tensor:
        return self.prepare_inputs_labels_for_multimodal(inputs, None, None, None, None, images,
                                                         image_sizes=image_sizes)[4]

    def _canvas(self, prompt: Tensor, length: int, mask_id: int):
        """The samplers' state: ids ``x`` (placeholder prompt slots, then
        ``length`` mask ids) and ``embed(ids)``, which keeps the prompt's own
        embeddings (image features included) in the prompt slots."""
        Lp = prompt.shape[1]
        x = torch.full((1, Lp + length), mask_id, dtype=torch.long, device=prompt.device)
        x[:, :Lp] = 0

        def embed(ids: Tensor) -> Tensor:
            emb = self.embed_ids(ids)
            emb[:, :Lp] = prompt
            return emb

        return x, embed


# ---------------------------------------------------------------- LLaDA-V

class LlavaDecoderModel(BidirectionalDecoder):
    """``model.model`` of LLaDA-V (LLaMA layers) and LaViDa-Dream (Qwen2 layers), plus the vision parts."""

    kind = "llama"
    lavida = False  # LaViDa's newline: lavida_newline

    def __init__(self, config: LlavaDMLLMConfig):
        import transformers

        cls = transformers.LlamaConfig if self.kind == "llama" else transformers.Qwen2Config
        super().__init__(self.kind, cls(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_attention_heads))
        self.parts = LlavaParts(config, newline=lavida_newline(self, config) if self.lavida else None)


class LlavaLLaDAModel(LlavaDecoderModel):
    kind = "llama"


class _Base(LlavaMixin, PreTrainedModel):
    config_class = LlavaDMLLMConfig
    base_model_prefix = "model"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.1)


class LlavaLLaDAModelLM(_Base):
    """LLaDA-V: ``model.model.layers`` (LLaMA names), ``model.lm_head``; like
    the published class, ``forward`` only works when it embeds the inputs itself
    (with ``inputs_embeds`` it fails on an unset ``conversation_ids``), so the
    sampler runs ``lm_head(model(inputs_embeds=...)[0])``."""

    def __init__(self, config: LlavaDMLLMConfig):
        super().__init__(config)
        self.model = LlavaLLaDAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, output_attentions=None, output_hidden_states=None, images=None,
                image_sizes=None, return_dict=None, modalities=("image",), **kwargs):
        if inputs_embeds is not None:  # as published: conversation_ids is only set when the model embeds
            raise NameError("name 'conversation_ids' is not defined")
        _, position_ids, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
            input_ids, position_ids, attention_mask, None, labels, images, modalities, image_sizes)
        h, hidden = self.model(inputs_embeds, position_ids=position_ids, attention_mask=attention_mask,
                               output_hidden_states=bool(output_hidden_states))
        return CausalLMOutputWithPast(logits=self.lm_head(h), hidden_states=hidden)

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, modalities=("image",), steps=128, gen_length=128,
                 block_length=128, temperature=0.0, remasking="low_confidence", mask_id=126336, tokenizer=None,
                 stopping_criteria=None, **kwargs):
        """LLaDA-V's ``generate``: the generated slots ``[1, gen_length]``."""
        prompt = self._prompt_embeds(inputs, images, image_sizes)
        x, embed = self._canvas(prompt, gen_length, mask_id)

        def logits(ids: Tensor) -> Tensor:  # the published sampler forbids these ids at the masked slots
            out = self.lm_head(self.model(inputs_embeds=embed(ids))[0]).float()
            out[..., LLADA_V_SUPPRESSED] = out[..., LLADA_V_SUPPRESSED].masked_fill((ids == mask_id)[..., None],
                                                                                  -float("inf"))
            return out

        low_confidence_remasking(logits, x, prompt.shape[1], gen_length, steps, mask_id, block_length)
        return x[:, prompt.shape[1]:]


# ---------------------------------------------------------------- LaViDa (LLaDA backbone)

class LlavaLladaModel(LLaDAModel):
    """LaViDa's LLaDA: its attention calls SDPA with ``attn_mask=None``, so neither
    ``attention_mask`` nor ``attention_bias`` reaches it (a padded row reads the padding)."""

    reads_attention_bias = False

    def __init__(self, config: LlavaDMLLMConfig):
        super().__init__(LLaDAConfig(d_model=config.hidden_size, n_layers=config.num_hidden_layers,
                                     n_heads=config.num_attention_heads, mlp_hidden_size=config.intermediate_size,
                                     vocab_size=config.vocab_size, mask_token_id=config.mask_token_id))
        self.parts = LlavaParts(config, newline=lavida_newline(self, config))

    def embed_tokens(self, x):
        return self.transformer.wte(x)


class LlavaLladaForMaskedDiffusion(_Base):
    """LaViDa-LLaDA: ``model.model.transformer.blocks``; the logits come from
    ``model.model(None, input_embeddings=...)``."""

    def __init__(self, config: LlavaDMLLMConfig):
        super().__init__(config)
        self.model = LlavaLladaModel(config)
        self.model.set_activation_checkpointing("whole_layer")
        self.post_init()

    def embed_ids(self, ids):
        return self.model.embed_tokens(ids)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, output_attentions=None, output_hidden_states=None, images=None,
                image_sizes=None, return_dict=None, modalities=("image",), **kwargs):
        if inputs_embeds is None:
            _, _, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                input_ids, position_ids, attention_mask, None, labels, images, modalities, image_sizes)
        out = self.model(None, input_embeddings=inputs_embeds, attention_mask=attention_mask,
                         output_hidden_states=bool(output_hidden_states))
        return CausalLMOutputWithPast(logits=out.logits, hidden_states=out.hidden_states)

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, modalities=("image",), max_new_tokens=128,
                 block_length=128, step_ratio=None, prefix_lm=False, verbose=False, mask_id=126336, tokenizer=None,
                 schedule=None, **kwargs):
        """LaViDa's ``generate`` (``steps = max_new_tokens`` per the published
        code, divided by the blocks and scaled by ``step_ratio``; ``prefix_lm``
        caches the prompt's keys/values once). Returns the canvas (``prefix_lm``)
        or prompt + canvas, and with ``verbose`` also the per-step history."""
        prompt = self._prompt_embeds(inputs, images, image_sizes)
        n_blocks = max_new_tokens // block_length
        per_block = max_new_tokens // n_blocks
        if step_ratio:
            per_block = int(per_block * step_ratio)
        history: List[Tensor] = [] if verbose else None
        if prefix_lm:
            past = self.model(None, input_embeddings=prompt, use_cache=True).attn_key_values
            x = torch.full((1, max_new_tokens), mask_id, dtype=torch.long, device=prompt.device)
            start = 0

            def logits(ids):
                return self.model(None, input_embeddings=self.model.embed_tokens(ids), past_key_values=past).logits
        else:
            start = prompt.shape[1]
            x, embed = self._canvas(prompt, max_new_tokens, mask_id)

            def logits(ids):
                return self.model(None, input_embeddings=embed(ids)).logits
        low_confidence_remasking(logits, x, start, max_new_tokens, per_block * n_blocks, mask_id, block_length,
                                 history=history, schedule=schedule)
        return (x, history) if verbose else x


# ---------------------------------------------------------------- LaViDa (Dream backbone)

class LlavaDreamModel(LlavaDecoderModel):
    kind = "qwen2"
    lavida = True


def compile_dream_layers(model: "LlavaDreamForMaskedDiffusion") -> None:
    """LaViDa-Dream's decoder layers as published (``@torch.compile def forward`` in its
    ``modeling_dream.py``): their compiled backward takes neither batched cotangents nor a second
    backward (its buffers are donated)."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    class CompiledDreamDecoderLayer(Qwen2DecoderLayer):
        forward = torch.compile(Qwen2DecoderLayer.forward)

    for layer in model.model.layers:
        layer.__class__ = CompiledDreamDecoderLayer


class LlavaDreamForMaskedDiffusion(_Base):
    """LaViDa-Dream: ``model.model.layers`` (Qwen2 names), mask 151666, and
    Dream's shift: the logit at ``p`` predicts the token at ``p + 1``."""

    def __init__(self, config: LlavaDMLLMConfig):
        super().__init__(config)
        self.model = LlavaDreamModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    forward = LlavaLLaDAModelLM.forward

    def forward_dream(self, input_ids=None, attention_mask=None, tok_idx=None, inputs_embeds=None,
                      past_key_values=None, use_cache=False):
        """LaViDa-Dream's inference forward (what its sampler calls)."""
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        h, _ = self.model(inputs_embeds, position_ids=tok_idx, attention_mask=attention_mask)
        return CausalLMOutputWithPast(logits=self.lm_head(h))

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, modalities=("image",), max_new_tokens=512,
                 steps=512, temperature=0.2, top_p=0.95, alg="entropy", output_history=False, eps=1e-3, **kwargs):
        """Dream's sampler: ``steps`` steps on linearly spaced times,
        ``int(masked * (1 - s/t))`` slots committed per step (all at the last),
        by confidence (``alg``: ``"maskgit_plus"`` top probability,
        ``"entropy"`` negative entropy). Returns ``.sequences`` (the canvas)
        and ``.history``. The release's defaults sample (temperature 0.2, top-p
        0.95); this stand-in decodes greedily only, so a caller that leaves them
        (and would get random responses from the release) is refused."""
        from types import SimpleNamespace

        if temperature:
            raise ValueError(f"stand-in: sampling at temperature {temperature} is not reproduced (the release "
                             "samples); pass temperature=0 for the greedy decoding")

        prompt = self._prompt_embeds(inputs, images, image_sizes)
        Lp, mask_id = prompt.shape[1], int(self.config.mask_token_id)
        x, embed = self._canvas(prompt, max_new_tokens, mask_id)
        history = [h[:, Lp:] for h in dream_remasking(
            lambda ids: shift_right(self.forward_dream(None, None, None, inputs_embeds=embed(ids)).logits), x, Lp,
            steps, mask_id, alg, eps)]
        return SimpleNamespace(sequences=x[:, Lp:], history=history if output_history else None)


class ReleaseSigLipImageProcessor:
    """The image processor the LaViDa and LLaDA-V releases' ``load_pretrained_model`` hands
    out (their ``llava`` package's ``SigLipImageProcessor``), by its published behaviour:
    only ``preprocess(images, return_tensors)`` (the object cannot be called), each image
    resized to ``size`` (bicubic), scaled to [0, 1], then normalised by mean and std 0.5,
    channels first."""

    def __init__(self, side: int):
        self.image_mean = self.image_std = (0.5, 0.5, 0.5)
        self.size = (side, side)
        self.crop_size = {"height": side, "width": side}

    def preprocess(self, images, return_tensors=None):
        from PIL import Image
        from transformers.image_processing_utils import BatchFeature

        images = [images] if isinstance(images, Image.Image) else list(images)
        out = []
        for im in images:
            im = (im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))).convert("RGB")
            x = np.asarray(im.resize(self.size[::-1], Image.BICUBIC), dtype=np.float32) / 255.0
            mean, std = np.asarray(self.image_mean, np.float32), np.asarray(self.image_std, np.float32)
            out.append(((x - mean) / std).transpose(2, 0, 1))
        return BatchFeature(data={"pixel_values": out}, tensor_type=return_tensors)


def _processor(config: LlavaDMLLMConfig, dream: bool):
    from types import SimpleNamespace

    from .llada import LLADA_EOS_ID, LLADA_EOT_ID, LLADA_MASK_ID
    from .vocab import word_tokenizer

    if dream:
        sp = {"<|endoftext|>": 151643, "<|im_end|>": 151645, "<|mask|>": DREAM_MASK_ID}
        tok = word_tokenizer(sp, named={"eos_token": "<|endoftext|>", "mask_token": "<|mask|>"})
    else:
        sp = {"<|endoftext|>": LLADA_EOS_ID, "<|eot_id|>": LLADA_EOT_ID, "<|mdm_mask|>": LLADA_MASK_ID}
        tok = word_tokenizer(sp, named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"})
    ip = ReleaseSigLipImageProcessor(config.vision_size)
    return SimpleNamespace(tokenizer=tok, image_processor=ip)


def tiny_llada_v(seed: int = 0, layers: int = 4, **config):
    """(model, processor) of a tiny LLaDA-V (``anyres_max_4``, 28-pixel tiles of 4x4 patches)."""
    torch.manual_seed(seed)
    cfg = LlavaDMLLMConfig(backbone="llada_v", num_hidden_layers=layers, **config)
    return LlavaLLaDAModelLM(cfg).eval(), _processor(cfg, dream=False)


def tiny_lavida(seed: int = 0, layers: int = 4, **config):
    """(model, processor) of a tiny LaViDa-LLaDA (``anyres``, tiles pooled 2x2, checkpointing on as published)."""
    torch.manual_seed(seed)
    config.setdefault("mm_pooler_ratio", 2)  # the published config's value (its pooling ignores it)
    config.setdefault("image_aspect_ratio", "anyres")  # (a caller's anyres_max_N was a TypeError)
    cfg = LlavaDMLLMConfig(backbone="lavida_llada", num_hidden_layers=layers, **config)
    return LlavaLladaForMaskedDiffusion(cfg).eval(), _processor(cfg, dream=False)


def tiny_lavida_dream(seed: int = 0, layers: int = 4, compiled_layers: bool = False, **config):
    """(model, processor) of a tiny LaViDa-Dream (Dream's vocabulary, mask and shift).
    ``compiled_layers``: its decoder layers ``torch.compile``'d as published
    (:func:`compile_dream_layers`); off by default, as compiling costs each first call
    seconds (about 10 on two CPU cores) that the other tests need not pay."""
    torch.manual_seed(seed)
    for k, v in (("mm_pooler_ratio", 2), ("image_aspect_ratio", "anyres"), ("vocab_size", 152064),
                 ("mask_token_id", DREAM_MASK_ID)):
        config.setdefault(k, v)
    cfg = LlavaDMLLMConfig(backbone="lavida_dream", num_hidden_layers=layers, **config)
    model = LlavaDreamForMaskedDiffusion(cfg).eval()
    if compiled_layers:
        compile_dream_layers(model)
    return model, _processor(cfg, dream=True)


__all__ = ["tiny_llada_v", "tiny_lavida", "tiny_lavida_dream", "LlavaDMLLMConfig", "LlavaLLaDAModelLM", "LlavaLladaForMaskedDiffusion", "LlavaDreamForMaskedDiffusion",
           "IMAGE_TOKEN_INDEX", "DREAM_MASK_ID"]
