"""Stand-ins for the dMLLMs that see an image as discrete VQ tokens: MMaDA and
Lumina-DiMOO (both an OLMo-style LLaDA, ``model.model.transformer.blocks``).

* MMaDA (``MMadaModelLM``, ``model_type "mmada"``): a MAGVIT-v2 tokenizer
  (``get_code(pixels) -> [B, h*w]`` codes, raster order) whose codes are offset
  by the text vocabulary; the understanding prompt is ``<|mmu|> <|soi|> codes
  <|eoi|> chat``; ``mmu_generate(idx, max_new_tokens, steps, block_length)``
  returns prompt + response.
* Lumina-DiMOO (``LLaDAForMultiModalGeneration``): a diffusers ``VQModel``
  (``encode(x).latents``, ``quantize(latents)[2][2]`` the code indices;
  ``2**(len(block_out_channels)-1)`` pixels per token) whose codes are offset by
  126356, a newline token 126084 after every row, between ``<boi>`` 126349 and
  ``<eoi>`` 126350; ``forward(input_ids, infer=True).logits`` (without
  ``infer=True`` the training path, which wants ``labels``); the sampler is a
  script function in the published code (the adapter uses dcam's). Its LLaDA
  blocks call SDPA with ``attn_mask=None``, so ``attention_bias`` and
  ``attention_mask`` change nothing (a padded row is not what it is alone);
  its ``LLaDAConfig`` defaults ``mask_token_id`` to 50256 when ``config.json``
  lacks it, while its sampler and ``config.py`` use 126336.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from ..probe.adapters.sampling import low_confidence_remasking
from .llada import LLADA_VOCAB, LLaDAConfig, LLaDAModel, LLaDAModelLM

MMADA_SPECIALS = {"<|soi|>": 126084, "<|eoi|>": 126085, "<|mmu|>": 126089}
DIMOO_SPECIALS = {"newline": 126084, "boi": 126349, "eoi": 126350, "answer_start": 126354, "answer_end": 126355,
                  "image_token_offset": 126356}


class TinyCodebook(nn.Module):
    """Strided conv encoder + nearest-codebook quantiser (no decoder)."""

    def __init__(self, codebook_size: int, downsample: int, dim: int = 8):
        super().__init__()
        self.encoder = nn.Conv2d(3, dim, kernel_size=downsample, stride=downsample)
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))

    def codes(self, latents: Tensor) -> Tensor:
        z = latents.permute(0, 2, 3, 1)  # [B, h, w, C]
        return torch.cdist(z.reshape(-1, z.shape[-1]), self.codebook).argmin(-1).view(z.shape[:3])


class TinyMagvit(TinyCodebook):
    """MAGVIT-v2's interface: ``get_code(pixels in [-1, 1]) -> [B, h*w]``."""

    @torch.no_grad()
    def get_code(self, pixel_values: Tensor) -> Tensor:
        return self.codes(self.encoder(pixel_values.float())).flatten(1)


class TinyVQModel(TinyCodebook):
    """diffusers ``VQModel``'s interface: ``config.block_out_channels``,
    ``encode(x).latents``, ``quantize(latents) -> (z_q, loss, (perplexity,
    encodings, indices))``; pixels in [0, 1]."""

    def __init__(self, codebook_size: int, n_blocks: int = 5, dim: int = 8):
        super().__init__(codebook_size, 2 ** (n_blocks - 1), dim)
        self.config = SimpleNamespace(block_out_channels=[dim] * n_blocks)

    @property
    def device(self):
        return self.codebook.device

    def encode(self, x: Tensor):
        return SimpleNamespace(latents=self.encoder(x.float()))

    def quantize(self, latents: Tensor):
        idx = self.codes(latents)
        zq = self.codebook[idx].permute(0, 3, 1, 2)
        return zq, zq.new_zeros(()), (None, None, idx.reshape(-1))


class MMadaConfig(LLaDAConfig):
    model_type = "mmada"

    def __init__(self, llm_vocab_size: int = LLADA_VOCAB, codebook_size: int = 64, num_vq_tokens: int = 64,
                 **kwargs):
        kwargs.setdefault("vocab_size", llm_vocab_size + codebook_size)
        self.llm_vocab_size, self.codebook_size, self.num_vq_tokens = llm_vocab_size, codebook_size, num_vq_tokens
        self.new_vocab_size = kwargs["vocab_size"]
        super().__init__(**kwargs)


class MMadaModelLM(LLaDAModelLM):
    """MMaDA: an OLMo-style LLaDA whose vocabulary holds the VQ codes."""

    config_class = MMadaConfig

    @torch.no_grad()
    def mmu_generate(self, idx=None, input_embeddings=None, max_new_tokens=128, steps=128, block_length=128,
                     temperature=0.0, top_k=None, eot_token=None, cfg_scale=0.0, remasking="low_confidence",
                     mask_id=126336, attention_mask=None):
        """Prompt + ``max_new_tokens`` generated slots (greedy low-confidence remasking)."""
        x = torch.full((idx.shape[0], idx.shape[1] + max_new_tokens), mask_id, dtype=torch.long, device=idx.device)
        x[:, :idx.shape[1]] = idx
        return low_confidence_remasking(lambda ids: self(ids).logits, x, idx.shape[1], max_new_tokens, steps,
                                        mask_id, block_length)


class DiMOOLLaDAModel(LLaDAModel):
    """Lumina-DiMOO's LLaDA: the published ``LLaDABlock.attention`` casts the attention bias (into which
    ``attention_mask`` is folded) and then calls SDPA with ``attn_mask=None``, so neither hides a key."""

    reads_attention_bias = False


class LLaDAForMultiModalGeneration(LLaDAModelLM):
    """Lumina-DiMOO's model class: ``forward(input_ids, labels=None, infer=False, ...)``."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config, DiMOOLLaDAModel(config))

    def forward(self, input_ids=None, labels=None, infer=False, use_cache=False, to_compute_mask=None, cat="",
                **kwargs):
        if not infer:
            # the published forward's training path pads ``labels`` (one list per row) and returns a loss;
            # without labels it fails there
            raise TypeError("forward() without infer=True is Lumina-DiMOO's training path, which needs labels")
        # the published forward hands the model its own all-ones bias (ignored, as any) and drops ``kwargs``
        return super().forward(input_ids, use_cache=use_cache)


def tiny_mmada(seed: int = 0, layers: int = 4, resolution: int = 64, downsample: int = 8, codebook_size: int = 64):
    """(model, processor) of a tiny MMaDA; the processor is
    :class:`dcam.probe.adapters.MMaDAProcessor` over a stand-in tokenizer and VQ."""
    from ..probe.adapters.vq import MMaDAProcessor
    from .vocab import word_tokenizer
    from .llada import LLADA_EOS_ID, LLADA_MASK_ID, LLADA_EOT_ID

    torch.manual_seed(seed)
    n = (resolution // downsample) ** 2
    model = MMadaModelLM(MMadaConfig(d_model=32, n_layers=layers, mlp_hidden_size=64, codebook_size=codebook_size,
                                     num_vq_tokens=n)).eval()
    tok = word_tokenizer(dict(MMADA_SPECIALS, **{"<|endoftext|>": LLADA_EOS_ID, "<|mdm_mask|>": LLADA_MASK_ID,
                                                 "<|eot_id|>": LLADA_EOT_ID}),
                         named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"})
    vq = TinyMagvit(codebook_size, downsample).eval()
    return model, MMaDAProcessor(tok, vq, resolution=resolution, image_token_offset=LLADA_VOCAB)


def tiny_dimoo(seed: int = 0, layers: int = 4, max_patches: int = 16, patch: int = 32, codebook_size: int = 64):
    """(model, processor) of a tiny Lumina-DiMOO (crops of at most ``max_patches``
    32-pixel patches, 16 pixels per token)."""
    from ..probe.adapters.vq import DiMOOProcessor
    from .vocab import word_tokenizer
    from .llada import LLADA_EOS_ID, LLADA_MASK_ID

    torch.manual_seed(seed)
    offset = DIMOO_SPECIALS["image_token_offset"]
    # mask_token_id: the published LLaDAConfig's default, which a config.json without the field gets
    model = LLaDAForMultiModalGeneration(LLaDAConfig(d_model=32, n_layers=layers, mlp_hidden_size=64,
                                                     vocab_size=max(LLADA_VOCAB, offset + codebook_size),
                                                     mask_token_id=50256)).eval()
    specials = {"<|endoftext|>": LLADA_EOS_ID, "<|mdm_mask|>": LLADA_MASK_ID, "<system>": 500, "</system>": 501,
                "<user>": 502, "</user>": 503}
    tok = word_tokenizer(specials, named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"})
    vq = TinyVQModel(codebook_size).eval()
    return model, DiMOOProcessor(tok, vq, max_patches=max_patches, patch_size=patch)


__all__ = ["TinyMagvit", "TinyVQModel", "MMadaConfig", "MMadaModelLM", "DiMOOLLaDAModel",
           "LLaDAForMultiModalGeneration", "tiny_mmada", "tiny_dimoo", "MMADA_SPECIALS", "DIMOO_SPECIALS"]
