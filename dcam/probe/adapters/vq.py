"""Adapters for dMLLMs that read the image as discrete VQ tokens: MMaDA and
Lumina-DiMOO (OLMo-style LLaDA backbones, ``model.model.transformer.blocks``,
mask 126336). The image tokens are ordinary input ids, so the image span is
found from the ids themselves.

* MMaDA: ``<|mmu|> <|soi|> codes <|eoi|> chat-formatted prompt``; the codes of
  the MAGVIT-v2 tokenizer (``vq_model.get_code``, raster order, a square
  grid) offset by the text vocabulary (``image_token_offset``: the published
  inference script uses ``len(text_tokenizer)``); the image is resized
  (shorter side) and centre-cropped to ``resolution`` (512), so the map covers
  the central square (``ImageView.box``). Sampler: ``model.mmu_generate``.
* Lumina-DiMOO: the image centre-cropped to the crop size (multiples of 32
  pixels, at most ``max_patches`` of them) whose aspect is closest to the
  image's, encoded by a diffusers ``VQModel`` (16 pixels per token), codes
  offset by 126356, a newline token (126084) after every row, between
  ``<boi>`` and ``<eoi>``, inserted before the prompt's last token; the
  response canvas sits between ``<answer_start>`` and ``<answer_end>``. The
  grid is read from the newline tokens. Sampler: the published one is a
  script function, so dcam's :func:`.sampling.low_confidence_remasking`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ...errors import InputError
from ..padding import bias_from_keep, split_padding
from .base import Generation, ImageView, Prepared, load_image
from .dmllm import LLADA_MASK_ID, DMLLMAdapter, olmo_transformer, recorded_states, tokenized
from .sampling import low_confidence_remasking, steps_used


class MMaDAProcessor:
    """What MMaDA's understanding path needs: the text tokenizer, the VQ model
    (``get_code``), the square ``resolution``, the code offset and the special ids."""

    def __init__(self, tokenizer, vq_model, resolution: int = 512, image_token_offset: Optional[int] = None,
                 soi_id: int = 126084, eoi_id: int = 126085, mmu_id: int = 126089):
        self.tokenizer, self.vq_model, self.resolution = tokenizer, vq_model, int(resolution)
        self.image_token_offset = int(image_token_offset if image_token_offset is not None else len(tokenizer))
        self.soi_id, self.eoi_id, self.mmu_id = int(soi_id), int(eoi_id), int(mmu_id)


class DiMOOProcessor:
    """Lumina-DiMOO's understanding path: tokenizer, VQ model, crop sizes
    (``max_patches`` patches of ``patch_size`` pixels) and the special ids."""

    def __init__(self, tokenizer, vqvae, max_patches: int = 1024, patch_size: int = 32, newline_id: int = 126084,
                 image_token_offset: int = 126356, boi_id: int = 126349, eoi_id: int = 126350,
                 answer_start_id: int = 126354, answer_end_id: int = 126355):
        self.tokenizer, self.vqvae = tokenizer, vqvae
        self.max_patches, self.patch_size = int(max_patches), int(patch_size)
        self.newline_id, self.image_token_offset = int(newline_id), int(image_token_offset)
        self.boi_id, self.eoi_id = int(boi_id), int(eoi_id)
        self.answer_start_id, self.answer_end_id = int(answer_start_id), int(answer_end_id)


def centre_square(img: Image.Image, size: int) -> Tuple[Image.Image, Tuple[float, float, float, float]]:
    """Shorter side resized to ``size`` (bicubic), centre-cropped square; and the crop as fractions of
    the image. Rounded as MMaDA's own transform (torchvision's ``Resize(size)`` then ``CenterCrop``)
    rounds: the longer side ``int(size * long / short)``, the crop's offset ``int(round(extra / 2))``
    (Python's round: halves to even). Rounding the side and flooring the offset moved a 640 x 480
    photo's pixels by one (683 wide, not 682), changing ~2% of its VQ codes."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    side = max(size, int(size * long / short))
    nw, nh = (side, size) if w >= h else (size, side)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    out = img.resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size))
    return out, (left / nw, top / nh, (left + size) / nw, (top + size) / nh)


def crop_sizes(max_patches: int, patch: int, max_ratio: float = 4.0) -> List[Tuple[int, int]]:
    """Every (w, h) in patch multiples with at most ``max_patches`` patches and aspect <= ``max_ratio``,
    the widest first (Lumina-DiMOO's list)."""
    out, wp, hp = [], max_patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            out.append((wp * patch, hp * patch))
        if (hp + 1) * wp <= max_patches:
            hp += 1
        else:
            wp -= 1
    return out


def aspect_crop(img: Image.Image, sizes: Sequence[Tuple[int, int]]):
    """The image scaled to cover the crop size of the closest aspect and
    centre-cropped to it (the published code crops at a random offset; dcam at
    the centre); and the crop as fractions of the image. As the published
    ``center_crop``, an image at least twice the crop on both sides is first
    halved (``Image.BOX``, sides floored) until it is not, then resized bicubically
    (straight to bicubic changed most pixels of a photo, and VQ codes with them)."""
    w, h = img.size
    cw, ch = max(sizes, key=lambda s: min(s[0] / w, s[1] / h) / max(s[0] / w, s[1] / h))
    while img.size[0] >= 2 * cw and img.size[1] >= 2 * ch:
        # a halving keeps the whole image (the box fractions below are those of the original)
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.BOX)
    w, h = img.size
    scale = max(cw / w, ch / h)
    nw, nh = round(w * scale), round(h * scale)
    left, top = (nw - cw) // 2, (nh - ch) // 2
    out = img.resize((nw, nh), Image.BICUBIC).crop((left, top, left + cw, top + ch))
    return out, (left / nw, top / nh, (left + cw) / nw, (top + ch) / nh)


def _pixels(img: Image.Image, lo: float) -> Tensor:
    """``[1, 3, H, W]`` pixels in [``lo``, 1], laid out in memory as the family's published preprocessing lays
    them out: the VQ encoders' CPU convolutions pick their kernel by the layout, and another kernel's rounding
    flipped VQ codes. MMaDA (``lo`` -1): torchvision's ``ToTensor``, contiguous; Lumina-DiMOO (``lo`` 0):
    diffusers' ``VaeImageProcessor``, a ``[1, H, W, 3]`` array transposed (channels last, batch stride H*W*3;
    the permuted ``[H, W, 3]`` array has batch stride 3, which CPU kernels do not take as channels last)."""
    x = torch.from_numpy(np.stack([np.asarray(img, dtype=np.float32) / 255.0])).permute(0, 3, 1, 2)
    return (x * 2 - 1).contiguous() if lo < 0 else x


class _VQAdapter(DMLLMAdapter):
    """Shared structure: OLMo-style LLaDA blocks, image ids in the sequence."""

    #: the family's processor (dcam.probe.adapters) and the attributes of it the adapter reads
    processor_class = ""
    processor_needs: Tuple[str, ...] = ()
    #: the image slots hold the image's codebook ids, not one image token id: checked to lie in
    #: :meth:`image_code_ids` instead
    image_slots_hold_image_token = False

    def __init__(self, model, processor: Any = None, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.blocks()  # the model first: a model without the family's blocks is refused as that (auto_adapter)
        # another family's processor (a LlavaNextProcessor) was reported as the model having no image token
        # id; refused here by what it lacks, so an AttributeError later on is dcam's own bug
        lacks = [k for k in self.processor_needs if not hasattr(processor, k)]
        if lacks:
            raise InputError(f"processor: the {self.family} adapter needs a dcam.probe.adapters.{self.processor_class}"
                             f"; a {type(processor).__name__} has no {', '.join(lacks)}")

    def blocks(self):
        return olmo_transformer(self.model).blocks

    def final_norm(self):
        return olmo_transformer(self.model).ln_f

    def lm_head_weight(self) -> Tensor:
        tr = olmo_transformer(self.model)
        return (tr["ff_out"] if "ff_out" in tr else tr.wte).weight

    @property
    def image_token_id(self) -> int:
        """The first code id (the image is many ids, located by ``prepare``)."""
        return int(self.processor.image_token_offset)

    def image_code_ids(self) -> range:
        """The ids an image slot may hold, checked at every probe (:func:`.checks.check_image_slots`):
        the codes, offset past every text and special id (the newline, ``<|soi|>``/``<boi>``, the mask),
        up to the end of the vocabulary, the LM head's rows (the codebook's size is not read: no
        config field names it in both families)."""
        return range(int(self.processor.image_token_offset), int(self.lm_head_weight().shape[0]))

    #: the processor's fields of the ids written around the image's codes
    image_mark_fields: Tuple[str, ...] = ()

    def image_mark_ids(self) -> set:
        """The ids around the image's codes (MMaDA's <|soi|> <|eoi|>; Lumina-DiMOO's <boi> <eoi> and the
        newline after every row): a response given as text holding one is refused (MMaDA took them as words);
        given as ids, the model's own, they are left out of the words with a note, as special tokens are."""
        return {int(getattr(self.processor, f)) for f in self.image_mark_fields
                if getattr(self.processor, f, None) is not None}

    def chat_ids(self, prompt: Optional[str]) -> List[int]:
        from .dmllm import chat_prompt

        return self.text_ids(chat_prompt(self.tokenizer, prompt if prompt is not None else self.default_prompt))

    #: right padding, hidden by LLaDA's attention bias (:meth:`forward_logits`): MMaDA's blocks read it
    pads_batches = True

    def forward_logits(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        dev = next(self.model.parameters()).device
        _, keep = split_padding(model_inputs)
        if keep is not None:
            # a padded batch (MMaDA): the LLaDA model under the family's class, with the bias its own
            # batched sampler (mmu_generate) builds
            return self.model.model(input_ids.to(dev), attention_bias=bias_from_keep(keep, dev)).logits
        return self._plain_logits(input_ids.to(dev))

    def _plain_logits(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids).logits


class MMaDAAdapter(_VQAdapter):
    name = family = "mmada"
    processor_class = "MMaDAProcessor"
    processor_needs = ("tokenizer", "vq_model", "resolution", "image_token_offset", "soi_id", "eoi_id", "mmu_id")
    image_views = ("image",)
    blocks_per_response = 4
    image_mark_fields = ("soi_id", "eoi_id")

    def released_block(self, length: int) -> Optional[int]:
        # inference_mmu.py: block_length = max(1, max_seq_length // 4), which mmu_generate asserts divides the
        # length (10 slots: 5 blocks of 2; 9: refused, and dcam decodes one block)
        block = max(1, length // self.blocks_per_response)
        return block if length % block == 0 else None

    def release_blocks(self, length: int) -> str:
        block = max(1, length // self.blocks_per_response)
        if self.released_block(length) is not None:
            return (f", and MMaDA's release (inference_mmu.py) decodes {length} slots in blocks of {length} // 4"
                    + (", at least 1" if length < 4 else ""))
        return (f"; MMaDA's release (inference_mmu.py) decodes in blocks of {length} // 4 = {block}, which do not "
                f"divide {length} (its mmu_generate refuses that length)")

    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        p = self.processor
        img = load_image(image)
        crop, box = centre_square(img, p.resolution)
        with torch.no_grad():
            codes = p.vq_model.get_code(_pixels(crop, -1).to(next(p.vq_model.parameters()).device))
        codes = (codes.reshape(-1).cpu() + p.image_token_offset).tolist()
        s = int(math.isqrt(len(codes)))
        if s * s != len(codes):
            raise InputError(f"the VQ model gave {len(codes)} codes; MMaDA's grid is square")
        prompt_ids = [p.mmu_id, p.soi_id] + codes + [p.eoi_id] + self.chat_ids(prompt)
        resp = self.response_slots(response_ids, response_length)
        pos = torch.arange(2, 2 + len(codes))
        view = ImageView("image", pos, (s, s), box)
        return Prepared(input_ids=torch.tensor([prompt_ids + resp]), model_inputs={},
                        response_start=len(prompt_ids), response_length=len(resp), image_positions=pos,
                        grid=(s, s), image=img, prompt=prompt, views={"image": view})

    def generate(self, prep: Prepared, steps=None, response_length=None, record=False) -> Generation:
        Lr = int(response_length or prep.response_length or self.response_length)
        S, block = self.steps_and_blocks(steps, Lr)
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.mmu_generate(prep.input_ids[:, :prep.response_start].to(dev), max_new_tokens=Lr,
                                          steps=S, block_length=block, mask_id=self.mask_token_id)
        return Generation(out[0, prep.response_start:prep.response_start + Lr].tolist(), steps_used(Lr, S, block))


class DiMOOAdapter(_VQAdapter):
    name = family = "lumina-dimoo"
    processor_class = "DiMOOProcessor"
    processor_needs = ("tokenizer", "vqvae", "max_patches", "patch_size", "newline_id", "image_token_offset", "boi_id",
                       "eoi_id", "answer_start_id", "answer_end_id")
    image_views = ("image",)
    blocks_per_response = 4  # inference_mmu.py: gen_length 1024 in blocks of 256 (README: 128 in blocks of 32)
    image_mark_fields = ("boi_id", "eoi_id", "newline_id")

    def release_blocks(self, length: int) -> str:
        # its sampler (generate_text_understanding) takes a fixed block length and asserts it divides the length
        return " (Lumina-DiMOO's release decodes 1024 slots in 4 blocks of 256)"

    #: the published LLaDA blocks call SDPA with attn_mask=None: the attention bias (and the attention_mask
    #: folded into it) hides nothing, so a padded row is not what it is alone; one forward per layout
    pads_batches = False
    #: dcam runs Lumina-DiMOO's sampler itself (the published one is a script), so it records every step
    records_trajectory = True
    default_prompt_template = "<system>You are a multimodal model that can process both text and images. Answer " \
        "the following question based on the provided images. Analyze each image and combine relevant details to " \
        "answer.</system><user>{}</user>"

    @property
    def mask_token_id(self) -> int:
        """126336, as the published sampler and ``config.py`` hard-code it: the published ``LLaDAConfig``
        fills a ``config.json`` without ``mask_token_id`` with 50256 (GPT-2's end of text), which no
        Lumina-DiMOO code reads, so the config's field is not taken."""
        return LLADA_MASK_ID

    def _codes(self, crop: Image.Image) -> Tuple[List[int], int, int]:
        vq = self.processor.vqvae
        with torch.no_grad():
            lat = vq.encode(_pixels(crop, 0).to(vq.device)).latents
            idx = vq.quantize(lat)[2][2]
        h, w = lat.shape[-2:]
        return (idx.reshape(-1).cpu() + self.processor.image_token_offset).tolist(), int(h), int(w)

    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        p = self.processor
        img = load_image(image)
        crop, box = aspect_crop(img, crop_sizes(p.max_patches, p.patch_size))
        codes, h, w = self._codes(crop)
        rows = [codes[r * w:(r + 1) * w] + [p.newline_id] for r in range(h)]
        image_ids = [p.boi_id] + [t for row in rows for t in row] + [p.eoi_id]
        # with the tokenizer's own special tokens, as the published inference_mmu.py tokenises it
        text = tokenized(self.tokenizer, self.default_prompt_template.format(
            prompt if prompt is not None else self.default_prompt))
        prompt_ids = text[:-1] + image_ids + text[-1:] + [p.answer_start_id]
        resp = self.response_slots(response_ids, response_length)
        ids = torch.tensor([prompt_ids + resp + [p.answer_end_id]])
        pos = self.locate_grid(ids[0, :len(prompt_ids)], (h, w))
        view = ImageView("image", pos, (h, w), box)
        return Prepared(input_ids=ids, model_inputs={}, response_start=len(prompt_ids), response_length=len(resp),
                        image_positions=pos, grid=(h, w), image=img, prompt=prompt, views={"image": view})

    def locate_grid(self, ids: Tensor, expect: Optional[Tuple[int, int]] = None) -> Tensor:
        """Code positions between ``<boi>`` and ``<eoi>``, rows cut at the newline tokens."""
        p = self.processor
        b = (ids == p.boi_id).nonzero().reshape(-1)
        e = (ids == p.eoi_id).nonzero().reshape(-1)
        if b.numel() != 1 or e.numel() != 1:
            raise InputError("the sequence must hold exactly one <boi> ... <eoi> image")
        span = torch.arange(int(b) + 1, int(e))
        nl = span[ids[span] == p.newline_id]
        rows, start = [], int(b) + 1
        for n in nl.tolist():
            rows.append(torch.arange(start, n))
            start = n + 1
        if start != int(e) or not rows or len({r.numel() for r in rows}) != 1:
            raise InputError("the image tokens are not rows of equal length each ended by a newline token")
        if expect is not None and (len(rows), rows[0].numel()) != tuple(expect):
            raise InputError(f"image rows {len(rows)}x{rows[0].numel()} != the VQ grid {expect}")
        return torch.cat(rows)

    def generate(self, prep: Prepared, steps=None, response_length=None, record=False) -> Generation:
        Lr = int(response_length or prep.response_length or self.response_length)
        S, block = self.steps_and_blocks(steps, Lr)
        s = prep.response_start
        x = torch.cat([prep.input_ids[:, :s], torch.full((1, Lr), self.mask_token_id),
                       torch.tensor([[self.processor.answer_end_id]])], 1)
        dev = next(self.model.parameters()).device
        history: List[Tensor] = []
        x = low_confidence_remasking(lambda ids: self.model(ids, infer=True).logits, x.to(dev), s, Lr, S,
                                     self.mask_token_id, block, history=history)
        if not record:
            return Generation(x[0, s:s + Lr].tolist(), steps_used(Lr, S, block))
        states, decided_at = recorded_states([h[0, s:s + Lr] for h in history], self.mask_token_id)
        return Generation(x[0, s:s + Lr].tolist(), int(states.shape[0]), states, decided_at)

    def _plain_logits(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids, infer=True).logits


__all__ = ["MMaDAAdapter", "DiMOOAdapter", "MMaDAProcessor", "DiMOOProcessor", "centre_square", "crop_sizes",
           "aspect_crop"]
