"""Adapter for the dMLLMs of the authors' ``llava`` packages: LLaDA-V
(``llava_llada``, ``model.model.layers``), LaViDa with a LLaDA backbone
(``llava_llada``, ``model.model.transformer.blocks``) and with a Dream
backbone (``llava_dream``, ``model.model.layers``, logits shifted by one).

The image span is produced *inside* the model: the prompt holds one
placeholder id (-200) that ``model.prepare_inputs_labels_for_multimodal``
replaces by the image features. So :meth:`LlavaDMLLMAdapter.prepare` lays the
sequence out expanded (one slot per image feature, each holding -200), with
the positions of every view computed from the processor's outputs (the image
size, the model config's pinpoints, tile size and pooling; see
:mod:`.anyres`) and checked against the length the model's own expansion
produces. Each forward collapses the slots back to one placeholder per row,
lets the model build the embeddings, and runs the backbone on them the way
the published samplers do (``model.get_model()(None, input_embeddings=...)``
for LaViDa-LLaDA, ``model.forward_dream`` for LaViDa-Dream,
``model.lm_head(model.model(inputs_embeds=...)[0])`` for LLaDA-V).

Views: ``"base"`` (the whole image squashed to one tile) and ``"highres"``
(the stitched tiles, cropped to the image's aspect, newline column dropped);
the default map is ``"highres"``, what the Diffusion-CAM release pools.

Processor: ``(tokenizer, image_processor)`` as returned by the ``llava``
package's ``load_pretrained_model`` (or any object with ``.tokenizer`` and
``.image_processor``); the tiles are cut here (the ``llava`` package's
``process_images`` rule) and each preprocessed by ``image_processor``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ...errors import InputError
from ..padding import key_mask, row_lengths, split_padding
from ..rows import block_dtype, weights_dtype
from .anyres import anyres_layout, anyres_tiles, anyres_views, max_tiles_of, seen_part, stack_pixels
from .base import Generation, ImageView, Prepared, config_get, load_image
from .dmllm import (DMLLMAdapter, DREAM_MASK_ID, chat_prompt, changed_steps, llama_stack, olmo_transformer,
                    recorded_states, tokenized)
from .llava import refuse_foreign_processor
from .sampling import steps_used

IMAGE_TOKEN_INDEX = -200
IMAGE_MARKER = "<image>"

#: the system turn of the conversation templates the releases prompt with (LaViDa's ``llada``
#: and ``dream``, LLaDA-V's ``llava_llada``): the model's conditioning, so the maps', too
RELEASE_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                  "that the user provides, and assist the user with a variety of tasks using natural language.")


def backbone_of(model) -> Optional[str]:
    """``"llada_v"``, ``"lavida_llada"``, ``"lavida_dream"`` or None, from the
    config's model type and the module layout."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt == "llava_dream":
        return "lavida_dream"
    if mt == "llava_llada":
        return "lavida_llada" if olmo_transformer(model) is not None else "llada_v"
    return None



def expand_to_square(img: Image.Image, colour) -> Image.Image:
    """``img`` centred on a square of its longer side filled with ``colour`` (LLaVA's
    ``image_aspect_ratio="pad"``; the offset is rounded down, as the release does)."""
    w, h = img.size
    if w == h:
        return img
    out = Image.new(img.mode, (max(w, h), max(w, h)), colour)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def padded_square_box(image_wh) -> Tuple[float, float, float, float]:
    """Where the map of :func:`expand_to_square`'s square lies on the image, as fractions
    of the image ``(x0, y0, x1, y1)``: past its edges on the padded sides."""
    w, h = int(image_wh[0]), int(image_wh[1])
    if w > h:
        y0 = -((w - h) // 2) / h
        return 0.0, y0, 1.0, y0 + w / h
    if h > w:
        x0 = -((h - w) // 2) / w
        return x0, 0.0, x0 + h / w, 1.0
    return 0.0, 0.0, 1.0, 1.0


def release_prompt_ids(tokenizer, chunks: Sequence[str]) -> List[int]:
    """The ids of the text around ``<image>`` (``chunks``: before, after) joined as the releases' own
    ``tokenizer_image_token`` joins them (LaViDa's and LLaDA-V's ``mm_utils``; their training and
    inference both prompt through it): each chunk through the tokenizer with its own special tokens;
    when the first chunk opens with BOS, the chunk after the image loses its first token. That token
    is the BOS a tokenizer adds to every call, or, with a tokenizer that adds none (the chat template
    writes the BOS as text), the first real token after ``<image>``: the models were trained on the
    prompt cut so, and dcam reads what they read."""
    before, after = (tokenized(tokenizer, c) for c in chunks)
    bos = getattr(tokenizer, "bos_token_id", None)
    cut = 1 if before and bos is not None and before[0] == bos else 0
    return before + [IMAGE_TOKEN_INDEX] + after[cut:]


class LlavaDMLLMAdapter(DMLLMAdapter):
    """See the module docstring. ``family`` is set per backbone."""

    image_views = ("highres", "base")
    name = "llava-dmllm"

    def __init__(self, model, processor: Any = None, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.backbone = backbone_of(model)
        if self.backbone is None:
            raise InputError(f"{type(model).__name__} is not an LLaDA-V / LaViDa model (config.model_type "
                             f"{getattr(model.config, 'model_type', None)!r})")
        self.family = {"llada_v": "llada-v", "lavida_llada": "lavida", "lavida_dream": "lavida-dream"}[self.backbone]
        # LaViDa's samplers return their history (verbose / output_history); LLaDA-V's returns the answer only
        self.records_trajectory = self.backbone != "llada_v"
        # LLaDA-V takes the [B, L] padding mask with embeddings; LaViDa-Dream's inference forward drops any
        # mask, so a padded batch goes to the Dream model below it with a 4-D one. LaViDa's LLaDA reads no
        # mask: its forward folds attention_mask into an attention_bias its attention never hands to SDPA
        # (attn_mask=None), and a padded row read the padding (0.44 off): one forward per layout there
        self.pads_batches = self.backbone != "lavida_llada"
        if self.backbone == "lavida_dream":
            self.logit_shift = 1  # Dream keeps the autoregressive shift
            self.default_mask_id = DREAM_MASK_ID
            self.default_eos_ids = (151643, 151645)
        self.check_processor()

    def check_processor(self) -> None:
        """Refuse a processor of another family when the adapter is made: transformers' own
        processors are never these models' (a LlavaNextProcessor's tiles ended in "too many values
        to unpack" in the SigLIP tower), bar a SigLIP one; the tokenizer and image processor must
        be there. (A foreign image processor is refused by the shape of its pixels, stack_pixels.)"""
        refuse_foreign_processor(self.processor, ("Siglip",), self.model.config.model_type,
                                 own="the (tokenizer, image_processor) of the model's own checkpoint (its llava "
                                     "package's load_pretrained_model)")
        _ = self.tokenizer, self.image_processor  # each raises the InputError naming what is missing

    @property
    def image_processor(self):
        ip = getattr(self.processor, "image_processor", None)
        if ip is None and isinstance(self.processor, (tuple, list)) and len(self.processor) > 1:
            ip = self.processor[1]
        if ip is None:
            raise InputError(f"processor: the {self.family} adapter needs (tokenizer, image_processor), got "
                             f"{type(self.processor).__name__}")
        return ip

    @property
    def image_token_id(self) -> int:
        return IMAGE_TOKEN_INDEX

    # ------------------------------------------------------------------ structure
    def blocks(self):
        tr = olmo_transformer(self.model)
        return tr.blocks if tr is not None else llama_stack(self.model).layers

    def final_norm(self):
        tr = olmo_transformer(self.model)
        return tr.ln_f if tr is not None else llama_stack(self.model).norm

    def lm_head_weight(self) -> Tensor:
        tr = olmo_transformer(self.model)
        if tr is not None:
            return (tr["ff_out"] if "ff_out" in tr else tr.wte).weight
        return self.model.lm_head.weight

    # ------------------------------------------------------------------ layout
    def _tower(self):
        tower = self.model.get_vision_tower()
        return int(tower.image_size), int(tower.num_patches_per_side)

    def _seen(self) -> float:
        """The share of a tile's side its tokens stand for: the patches the tower reads (SigLIP 384/14:
        27, 378 px), less a last odd patch that LaViDa's average or max pooling drops (13 cells, 364 px;
        its bilinear pooling spreads 14 cells over all 27). 1 when the tower's config names no patch size."""
        patch = getattr(getattr(self.model.get_vision_tower(), "config", None), "patch_size", None)
        if not patch:
            return 1.0
        tile, patches = self._tower()
        stride = self.pool_stride()
        mode = config_get(self.model.config, "mm_spatial_pool_mode", default="bilinear")
        if stride and mode != "bilinear":
            patches = patches // stride * stride
        return patches * int(patch) / tile

    def pool_stride(self) -> Optional[int]:
        """LaViDa pools every tile's feature map with its ``get_2dPool`` at that function's
        default stride, 2 (not ``config.mm_pooler_ratio``, which it never reads there),
        unless the environment sets ``NOT_ALWASY_DO_2DPOOL`` (as its grounding and
        LLaDA-V-style scripts do); LLaDA-V pools only videos. None: no pooling."""
        if self.backbone == "llada_v" or os.environ.get("NOT_ALWASY_DO_2DPOOL"):
            return None
        return 2

    def layout(self, image_wh: Tuple[int, int]):
        """The anyres layout of an image of ``image_wh`` (None: one tile, no grid)."""
        cfg = self.model.config
        tile, side = self._tower()
        stride = self.pool_stride()
        if stride:  # LaViDa pools every tile's map
            mode = config_get(cfg, "mm_spatial_pool_mode", default="bilinear")
            side = math.ceil(side / stride) if mode == "bilinear" else side // stride
        aspect = config_get(cfg, "image_aspect_ratio", default="square") or "square"
        if not aspect.startswith("anyres"):
            return None, side
        merge = config_get(cfg, "mm_patch_merge_type", default="spatial_unpad")
        return anyres_layout((image_wh[1], image_wh[0]), config_get(cfg, "image_grid_pinpoints"), tile, side,
                             wh_pinpoints=True, rounding="llava", max_tiles=max_tiles_of(aspect),
                             newline="unpad" in merge, has_base="nobase" not in merge,
                             seen=self._seen()), side

    def _pixels(self, img) -> Tensor:
        cfg = self.model.config
        tile, _ = self._tower()
        aspect = config_get(cfg, "image_aspect_ratio", default="square") or "square"
        if aspect.startswith("anyres"):
            images = anyres_tiles(img, config_get(cfg, "image_grid_pinpoints"), tile)
        elif aspect == "pad":  # the release pads to a square in the processor's mean colour, which resizes it
            mean = tuple(int(v * 255) for v in getattr(self.image_processor, "image_mean", (0.5, 0.5, 0.5)))
            images = [expand_to_square(img, mean)]
        else:
            images = [img.resize((tile, tile))]
        return stack_pixels(images, self.image_processor, tile).to(self._vision_dtype())

    def _vision_dtype(self) -> torch.dtype:
        """The dtype the pixels go to: the projector's (``mm_projector``), which takes the vision tower's
        features in the pixels' dtype (the published towers compute in their own dtype and hand their
        features back in the pixels'). Not the tower's: the builders leave it in float16 on a GPU beside a
        bfloat16 projector. Nor the first parameter's: LaViDa's is its ``image_newline``, bfloat16 whatever
        the model's dtype (``dtype = torch.bfloat16  # hack``). Without a projector found by that name,
        the dtype most of the weights have."""
        for name, module in self.model.named_modules():
            if name.rsplit(".", 1)[-1] == "mm_projector":
                return block_dtype(module)
        return weights_dtype(self.model)

    def _views(self, span: Tensor, image_wh) -> Tuple[Tensor, Tuple[int, int], Dict[str, ImageView]]:
        layout, side = self.layout(image_wh)
        if layout is not None:
            return anyres_views(span, layout)
        if span.numel() not in (side * side, side * side + 1):  # one tile (+ one trailing newline with unpad)
            raise InputError(f"image span has {span.numel()} tokens; one {side}x{side} tile needs {side * side}")
        pos = span[:side * side].clone()
        aspect = config_get(self.model.config, "image_aspect_ratio", default="square") or "square"
        box = padded_square_box(image_wh) if aspect == "pad" else (0.0, 0.0, 1.0, 1.0)
        box = seen_part(box, self._seen())  # the pixels the tower reads
        return pos, (side, side), {"base": ImageView("base", pos, (side, side), box)}

    # ------------------------------------------------------------------ inputs
    def prompt_text(self, prompt: Optional[str]) -> str:
        """The prompt as the model reads it: a prompt without ``<image>`` goes after the
        image in the release's conversation (system turn, user turn, assistant opened)."""
        text = prompt if prompt is not None else self.default_prompt
        if IMAGE_MARKER not in text:
            text = chat_prompt(self.tokenizer, f"{IMAGE_MARKER}\n{text}", system=RELEASE_SYSTEM)
        return text

    def prompt_ids(self, prompt: Optional[str]) -> list:
        chunks = self.prompt_text(prompt).split(IMAGE_MARKER)
        if len(chunks) != 2:
            raise InputError(f"prompt: exactly one {IMAGE_MARKER} marker is supported, got {len(chunks) - 1}")
        ids = release_prompt_ids(self.tokenizer, chunks)
        if len(ids) == 1:  # the released models embed no image for a one-token prompt (inputs_embeds None)
            raise InputError(f"prompt: {prompt!r} holds nothing but the image marker; add text around it, or leave "
                             f"{IMAGE_MARKER} out to get the release's conversation template")
        return ids

    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        img = load_image(image)
        compact = self.prompt_ids(prompt)
        pix = self._pixels(img)
        model_inputs = {"images": pix, "image_sizes": (int(img.size[0]), int(img.size[1]))}
        with torch.no_grad():
            emb = self._embed(torch.tensor([compact], device=self.device), model_inputs)
        n_img = emb.shape[1] - (len(compact) - 1)
        s0 = compact.index(IMAGE_TOKEN_INDEX)
        prompt_ids = compact[:s0] + [IMAGE_TOKEN_INDEX] * n_img + compact[s0 + 1:]
        resp = self.response_slots(response_ids, response_length)
        limit = config_get(self.model.config, "tokenizer_model_max_length", default=None)
        if limit and len(prompt_ids) + len(resp) > int(limit):  # the release cuts the sequence there silently
            name = "response" if response_ids is not None else "response_length"
            raise InputError(f"{name}: prompt and image take {len(prompt_ids)} positions and the response "
                             f"{len(resp)}, past the model's tokenizer_model_max_length {int(limit)}")
        ids = torch.tensor([prompt_ids + resp], dtype=torch.long)
        pos, grid, views = self._views(torch.arange(s0, s0 + n_img), img.size)
        return Prepared(input_ids=ids, model_inputs=model_inputs, response_start=len(prompt_ids),
                        response_length=len(resp), image_positions=pos, grid=grid, image=img, prompt=prompt,
                        views=views)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def batch_inputs(self, prep: Prepared, batch: int) -> Dict[str, Any]:
        return dict(prep.model_inputs)  # one image per row: repeated in _embed

    def stack_key(self, prep: Prepared) -> Tuple:
        return ()  # images travel as lists, any number of tiles each

    def stack_inputs(self, preps) -> Dict[str, Any]:
        return {"images": [p.model_inputs["images"] for p in preps],
                "image_sizes": [p.model_inputs["image_sizes"] for p in preps]}

    # ------------------------------------------------------------------ running
    def _embed(self, compact: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        """The model's own expansion of ``compact`` (one -200 per row)."""
        R = compact.shape[0]
        images, sizes = model_inputs["images"], model_inputs["image_sizes"]
        if isinstance(images, Tensor):
            images, sizes = [images] * R, [sizes] * R
        dev = self.device
        out = self.model.prepare_inputs_labels_for_multimodal(compact.to(dev), None, None, None, None,
                                                              [im.to(dev) for im in images], ["image"] * R,
                                                              image_sizes=[tuple(s) for s in sizes])
        return out[4]

    def _collapse(self, input_ids: Tensor) -> Tensor:
        """Each row's run of image slots back to one placeholder."""
        is_img = (input_ids == IMAGE_TOKEN_INDEX).nonzero()
        if is_img.numel() == 0:
            raise InputError("no image placeholder in the sequence")
        s0, s1 = int(is_img[:, 1].min()), int(is_img[:, 1].max()) + 1
        return torch.cat([input_ids[:, :s0 + 1], input_ids[:, s1:]], 1)

    def _expanded(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        emb = self._embed(self._collapse(input_ids), model_inputs)
        if emb.shape[1] != input_ids.shape[1]:
            raise RuntimeError(f"the model expanded the image to {emb.shape[1]} positions, the prepared sequence "
                               f"has {input_ids.shape[1]}")
        return emb

    def _padded_embeddings(self, input_ids: Tensor, model_inputs: Dict[str, Any], keep: Tensor) -> Tensor:
        """A padded batch's embeddings: each row's image expanded alone (its own span and
        tiles), then padded on the right with zeros (masked keys: no real row reads them)."""
        rows = []
        for b, n in enumerate(row_lengths(keep)):
            one = {"images": [model_inputs["images"][b]], "image_sizes": [model_inputs["image_sizes"][b]]}
            rows.append(self._expanded(input_ids[b:b + 1, :n], one))
        return torch.cat([F.pad(e, (0, 0, 0, input_ids.shape[1] - e.shape[1])) for e in rows], 0)

    def forward_logits(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        rest, keep = split_padding(model_inputs)
        if keep is None:
            emb, mask = self._expanded(input_ids, model_inputs), {}
        else:
            emb, mask = self._padded_embeddings(input_ids, rest, keep), {"attention_mask": keep.to(self.device)}
        if self.backbone == "lavida_llada":
            return self.model.get_model()(None, input_embeddings=emb, **mask).logits
        if self.backbone == "lavida_dream":
            # (its decoder layers are @torch.compile'd as published: the probe runs them eagerly,
            # dcam.probe.compiled; generate() keeps them compiled)
            if keep is not None:  # forward_dream would drop the mask
                return self.model.lm_head(self.model.model(
                    inputs_embeds=emb, attention_mask=key_mask(keep, emb.device, emb.dtype))[0])
            return self.model.forward_dream(None, None, None, inputs_embeds=emb).logits
        # LLaDA-V's sampler: the top-level forward fails on embeddings alone (conversation_ids unset)
        return self.model.lm_head(self.model.model(inputs_embeds=emb, **mask)[0])

    def generate(self, prep: Prepared, steps=None, response_length=None, record=False) -> Generation:
        Lr = int(response_length or prep.response_length or self.response_length)
        S, block = self.steps_and_blocks(steps, Lr)
        compact = self._collapse(prep.input_ids[:, :prep.response_start]).to(self.device)
        images = [prep.model_inputs["images"].to(self.device)]
        sizes = [prep.model_inputs["image_sizes"]]
        with torch.no_grad():
            if self.backbone == "llada_v":
                out = self.model.generate(compact, images=images, image_sizes=sizes, steps=S, gen_length=Lr,
                                          block_length=block, tokenizer=self.tokenizer)
                return Generation(out[0, -Lr:].tolist(), steps_used(Lr, S, block))
            if self.backbone == "lavida_llada":
                n_blocks = Lr // block
                ratio = (S // n_blocks + 0.5) / block  # LaViDa's steps per block: int(block * step_ratio)
                # on the "shift" schedule, as LaViDa's predict.py and the Diffusion-CAM release decode
                x, history = self.model.generate(compact, images=images, image_sizes=sizes, max_new_tokens=Lr,
                                                 block_length=block, step_ratio=ratio, prefix_lm=True, verbose=True,
                                                 tokenizer=self.tokenizer, schedule="shift")
                ids = x[0, -Lr:]
            else:
                # greedy, as LaViDa's own evaluation decodes: the release's defaults sample (temperature 0.2)
                out = self.model.generate(compact, images=images, image_sizes=sizes, max_new_tokens=Lr, steps=S,
                                          temperature=0.0, top_p=None, output_history=True)
                ids, history = out.sequences[0, -Lr:], list(out.history or [])
        responses = [h.reshape(-1)[-Lr:] for h in history]
        if not record:
            return Generation(ids.tolist(), changed_steps(responses, self.mask_token_id))
        states, decided_at = recorded_states(responses, self.mask_token_id)
        return Generation(ids.tolist(), int(states.shape[0]), states, decided_at)


__all__ = ["LlavaDMLLMAdapter", "backbone_of", "IMAGE_TOKEN_INDEX"]
