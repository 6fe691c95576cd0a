"""transformers VLMs with dynamic image layouts (see :mod:`.llava` for the shared base).

* :class:`QwenVLAdapter`, Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the image is
  resized to a multiple of ``patch * merge`` pixels per side and its patches
  merged ``merge x merge``; the grid is the *merged* grid ``(h / merge, w /
  merge)`` of the processor's ``image_grid_thw`` (tokens in raster order).
  ``pixel_values`` holds every patch of every image (not one row per
  example), so batches repeat it.
* :class:`Idefics3Adapter`, Idefics3 / SmolVLM: the image is split into
  ``rows x cols`` tiles plus a global view; each tile's ``s x s`` tokens
  (pixel-shuffled, raster order) follow a ``<row_r_col_c>`` token. The tile
  counts are read from those tokens; views ``"highres"`` (the tiles stitched,
  default) and ``"base"`` (the global image). Blocks:
  ``model.model.text_model.layers``.
* :class:`Gemma3Adapter`: one square grid of ``mm_tokens_per_image`` tokens;
  with pan-and-scan (``do_pan_and_scan``) one more per crop, the views
  ``"highres"`` (the crops stitched, default) and ``"base"`` (the whole image),
  see :mod:`.pan_and_scan`.
* :class:`Gemma4Adapter`: a variable grid read from the image processor's
  patch positions (as DiffusionGemma's encoder); the sequence ``[BOS] <boi>
  <image> x n <eoi> prompt`` is built here from ``processor.image_processor``
  and ``processor.tokenizer``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from ...errors import InputError
from ...words import refuse_ids
from .anyres import seen_fraction, seen_part, stitched_cells
from .base import ImageView, Prepared, config_get
from .llava import PER_TOKEN_INPUTS, HFVisionLanguageAdapter
from .pan_and_scan import pan_and_scan_views
from .positions import no_image_token


def image_span(prompt_ids: Tensor, image_token_id: int) -> Tensor:
    pos = torch.nonzero(prompt_ids.reshape(-1) == int(image_token_id)).reshape(-1)
    if pos.numel() == 0:
        raise no_image_token(image_token_id)
    return pos


def check_patch_positions(ppos: Tensor, vision_config, image) -> None:
    """Gemma 4's vision tower looks each patch's (x, y) up in a table of
    ``position_embedding_size`` rows per axis; the image processor keeps the aspect, so
    a very elongated image (1000 x 50 on a tiny config) gets patch positions past the
    table, which the model met with an IndexError deep in its embedding."""
    size = config_get(vision_config, "position_embedding_size")
    if size is None:
        return
    top = int(ppos.max())
    if top >= int(size):
        w, h = image.size
        raise InputError(f"image: at {w}x{h} pixels the vision tower's patches reach position {top}, past its "
                         f"table of {int(size)} per axis (vision_config.position_embedding_size); crop or pad "
                         "the image closer to square")


def grid_from_patch_positions(pos: Tensor, pool: int, n: int) -> Tuple[int, int]:
    """``(h, w)`` of a pooled soft-token grid from the ``[P, 2]`` (x, y) patch
    positions of Gemma-4-style image processors (``-1`` rows are padding)."""
    valid = (pos != -1).all(-1)
    p = pos[valid]
    w = (int(p[:, 0].max()) + 1) // pool
    h = (int(p[:, 1].max()) + 1) // pool
    if h * w != n:
        raise InputError(f"patch positions give a {h}x{w} grid but the image has {n} soft tokens")
    return h, w


class QwenVLAdapter(HFVisionLanguageAdapter):
    image_views = ()
    name = "qwen-vl"
    family = "qwen-vl"
    processor_classes = ("Qwen",)

    default_image_token = "<|image_pad|>"
    sequential_positions = False  # M-RoPE (the positions check counts the response only)

    def image_marker(self) -> str:
        return f"<|vision_start|>{self.image_token_text()}<|vision_end|>"

    def prompt_text(self, prompt):
        text = prompt if prompt is not None else self.default_prompt
        tok = self.image_token_text()
        return text if tok in text else f"{self.image_marker()}{text}"

    def locate_views(self, prompt_ids, enc, img):
        thw = torch.as_tensor(enc["image_grid_thw"]).reshape(-1, 3)[0].tolist()
        merge = int(config_get(self.model.config.vision_config, "spatial_merge_size", default=2))
        t, h, w = int(thw[0]), int(thw[1]) // merge, int(thw[2]) // merge
        pos = image_span(prompt_ids, self.image_token_id)
        if pos.numel() != t * h * w or t != 1:
            raise InputError(f"image span has {pos.numel()} tokens; image_grid_thw {thw} merged {merge}x{merge} "
                             f"gives {t}x{h}x{w}")
        return pos, (h, w), {}

    def batch_inputs(self, prep: Prepared, batch: int) -> Dict[str, Any]:
        return self.stack_inputs([prep] * batch)

    def stack_key(self, prep: Prepared) -> Tuple:
        return ()  # patches of any number and grids concatenate along dim 0

    def stack_inputs(self, preps) -> Dict[str, Any]:
        out = {}
        for k in preps[0].model_inputs:
            out[k] = torch.cat([p.model_inputs[k] for p in preps], 0)  # patches and grids of every image
        return out


class Idefics3Adapter(HFVisionLanguageAdapter):
    image_views = ("highres", "base")
    name = "idefics3"
    #: its chat format closes every turn, the assistant's too, with <end_of_utterance>
    closing_tokens = ("<end_of_utterance>",)
    family = "idefics3"
    processor_classes = ("Idefics3", "SmolVLM")
    tiled_inputs = ("pixel_values", "pixel_attention_mask")

    def _lm(self):
        return self.model.model.text_model

    def image_mark_ids(self) -> set:
        """The processor's tokens around an image's features: ``<fake_token_around_image>``, ``<global-img>``
        and the ``<row_r_col_c>`` tile markers (no config field names them)."""
        tok = self.tokenizer
        names = [getattr(self.processor, "fake_image_token", None), getattr(self.processor, "global_image_tag", None)]
        names += [t for t in getattr(tok, "get_added_vocab", dict)() if re.fullmatch(r"<row_\d+_col_\d+>", t)]
        ids = {tok.convert_tokens_to_ids(n) for n in names if n}
        known = {int(i) for i in ids if i is not None and i != getattr(tok, "unk_token_id", None)}
        return (super().image_mark_ids() | known) - self.placeholder_ids()

    def locate_views(self, prompt_ids, enc, img):
        ids = prompt_ids.reshape(-1)
        pos = image_span(prompt_ids, self.image_token_id)
        tiles = []
        # only the markers inside the image block (each just before its tile's tokens): a prompt's text may
        # spell one too, which the tokenizer makes the same token (it was counted as a tile, blaming the image)
        block = ids[max(int(pos[0]) - 1, 0):int(pos[-1]) + 1]
        for t in self.tokenizer.convert_ids_to_tokens(block.tolist()):
            m = re.fullmatch(r"<row_(\d+)_col_(\d+)>", t or "")
            if m:
                tiles.append((int(m.group(1)), int(m.group(2))))
        rows, cols = (max(r for r, _ in tiles), max(c for _, c in tiles)) if tiles else (0, 0)
        n_views = rows * cols + 1
        per = pos.numel() // n_views
        s = int(math.isqrt(per))
        if per * n_views != pos.numel() or s * s != per or len(tiles) != rows * cols:
            raise InputError(f"image span has {pos.numel()} tokens; {rows}x{cols} tiles plus a global view of "
                             "square tiles cannot hold them")
        # the tower reads the first (side // patch) * patch pixels of a tile (SmolVLM-2.2B: 378 of 384); the
        # global view is the image squashed to one tile, the tiles cut the image stretched to rows x cols of them
        side = int(enc["pixel_values"].shape[-1])
        seen = seen_fraction(side, int(self.model.config.vision_config.patch_size))
        base = ImageView("base", pos[rows * cols * per:].clone(), (s, s), seen_part((0.0, 0.0, 1.0, 1.0), seen))
        if not tiles:
            return base.positions, (s, s), {"base": base}
        # tile (r, c) holds s*s tokens in raster order; stitch them into one (rows*s) x (cols*s) grid
        t = pos[:rows * cols * per].reshape(rows, cols, s, s).permute(0, 2, 1, 3).reshape(-1).clone()
        unseen = side * (1.0 - seen)  # pixels past the last tile's last patch
        # the canvas is the image stretched to whole tiles; each tile's cells stand for the pixels it reads
        canvas = (rows * side, cols * side)
        cells = stitched_cells(canvas, canvas, (rows, cols), s, side, seen, (0, 0))[1] \
            if seen < 1.0 and rows * cols > 1 else None
        hi = ImageView("highres", t, (rows * s, cols * s),
                       (0.0, 0.0, 1.0 - unseen / (cols * side), 1.0 - unseen / (rows * side)), cells)
        return t, hi.grid, {"highres": hi, "base": base}  # the default view first


class Gemma3Adapter(HFVisionLanguageAdapter):
    image_views = ("highres", "base")  # with pan-and-scan crops; without, the one grid (no named view)
    name = "gemma3"
    family = "gemma3"
    processor_classes = ("Gemma3",)

    def image_marker(self) -> str:
        return getattr(self.processor, "boi_token", "<start_of_image>")

    def locate_views(self, prompt_ids, enc, img):
        n = int(config_get(self.model.config, "mm_tokens_per_image"))
        s = int(math.isqrt(n))
        pos = image_span(prompt_ids, self.image_token_id)
        pix = enc.get("pixel_values")
        # pan-and-scan: pixel_values holds the whole image, then one entry per crop, each with its span of n tokens
        crops = int(torch.as_tensor(pix).shape[0]) - 1 if pix is not None else 0
        if pos.numel() != n * (1 + crops) or s * s != n:
            raise InputError(f"image span has {pos.numel()} tokens; Gemma 3 places {n} per image and per "
                             f"pan-and-scan crop (pixel_values: the image and {crops} crops), {n * (1 + crops)}")
        if crops == 0:  # the whole image alone: its one view is "base" (as Idefics3 names an image it does not split),
            # so view="base" holds for every image, cropped or not (a batch with one uncropped image failed whole)
            return pos, (s, s), {"base": ImageView("base", pos.clone(), (s, s))}
        return pan_and_scan_views(pos, img.size, crops, s)

    # a batch's pixel_values: every example's image and crops one after another (the model fills its image
    # tokens with their features in that order), so images with other numbers of crops stack
    def stack_key(self, prep: Prepared) -> Tuple:
        key = tuple(item for item in super().stack_key(prep) if item[0] != "pixel_values")
        pix = prep.model_inputs.get("pixel_values")
        return key + ((("pixel_values", tuple(pix.shape[1:])),) if pix is not None else ())

    def stack_inputs(self, preps) -> Dict[str, Any]:
        out = super().stack_inputs(preps)
        if "pixel_values" in out:
            out["pixel_values"] = torch.cat([p.model_inputs["pixel_values"] for p in preps], 0)
        return out

    def batch_inputs(self, prep: Prepared, batch: int) -> Dict[str, Any]:
        pix = prep.model_inputs.get("pixel_values")
        if batch > 1 and pix is not None and pix.shape[0] != 1:  # (a crop-less image: one row, expanded)
            return self.stack_inputs([prep] * batch)
        return super().batch_inputs(prep, batch)


def placed_by_dcam(layout: str) -> str:
    """The reason ``refuse_ids`` gives for the tokens an adapter writes itself (``layout``: where)."""
    return f"dcam places itself ({layout}); give the text without it"


#: where a Gemma 4 vision model's image goes (Gemma 4, DiffusionGemma): dcam writes these tokens, never the prompt
GEMMA_LAYOUT = "[BOS] <boi> image <eoi> come before the prompt"


def gemma_placed_ids(config, image_token_id: int) -> set:
    """The ids of :data:`GEMMA_LAYOUT` in a Gemma 4 vision model's ``config``: never in a prompt or response."""
    return {int(v) for v in (config_get(config, "bos_token_id"), config.boi_token_id, config.eoi_token_id,
                             image_token_id) if v is not None}


class Gemma4Adapter(HFVisionLanguageAdapter):
    image_views = ()
    name = "gemma4"
    family = "gemma4"
    processor_classes = ("Gemma4",)

    def prompt_text(self, prompt):
        return prompt if prompt is not None else self.default_prompt

    def encode(self, img, text: str) -> Dict[str, Any]:
        ip = getattr(self.processor, "image_processor", None)
        if ip is None or getattr(self.processor, "tokenizer", None) is None:
            raise InputError("Gemma 4 needs a processor with .image_processor and .tokenizer")
        out = ip(images=[img], return_tensors="pt")
        pool = int(self.model.config.vision_config.pooling_kernel_size)
        ppos = out["image_position_ids"][:1]
        check_patch_positions(ppos, self.model.config.vision_config, img)
        n = int(out["num_soft_tokens_per_image"][0]) if "num_soft_tokens_per_image" in out else \
            int((ppos[0] != -1).all(-1).sum()) // (pool * pool)
        c = self.model.config
        bos = config_get(c, "bos_token_id")
        p_ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        refuse_ids(self.token_strings, gemma_placed_ids(c, self.image_token_id), placed_by_dcam(GEMMA_LAYOUT),
                   prompt=p_ids)
        ids = ([int(bos)] if bos is not None else []) + [int(c.boi_token_id)] + [self.image_token_id] * n + \
            [int(c.eoi_token_id)] + p_ids
        return {"input_ids": torch.tensor([ids]), "pixel_values": out["pixel_values"][:1],
                "image_position_ids": ppos}

    def locate_views(self, prompt_ids, enc, img):
        h, w = grid_from_patch_positions(enc["image_position_ids"][0],
                                         int(self.model.config.vision_config.pooling_kernel_size),
                                         int(image_span(prompt_ids, self.image_token_id).numel()))
        pos = image_span(prompt_ids, self.image_token_id)
        return pos, (h, w), {}


__all__ = ["QwenVLAdapter", "Idefics3Adapter", "Gemma3Adapter", "Gemma4Adapter", "grid_from_patch_positions",
           "image_span", "PER_TOKEN_INPUTS"]
