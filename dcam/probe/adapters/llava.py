"""Adapters for transformers' autoregressive VLMs, and the LLaVA family.

:class:`HFVisionLanguageAdapter` is what every transformers VLM shares: the
processor expands the image placeholder of the prompt into the image tokens
(``config.image_token_id``); the response is appended to the prompt; the model
is causal, so the logit that scores the token at ``p`` is read at ``p - 1``;
there is no mask token, so the only probe is ``"full"`` (the published
method); ``generate`` is autoregressive, one token per step: ``steps`` never
change the answer (``response_length`` sets its length), they are the number
AKD reads (default: the number of generated tokens, one per step). Blocks:
``model.model.language_model.layers``; default block at the paper's relative
depth. Per-token processor outputs (``token_type_ids``, ``mm_token_type_ids``)
are extended over the response.

* :class:`LlavaAdapter` (``LlavaForConditionalGeneration`` and look-alikes):
  one fixed grid ``image_size / patch_size`` per side; with
  ``vision_feature_select_strategy="full"`` the first image token is the CLS
  feature and is left out of the grid.
* :class:`LlavaNextAdapter` (LLaVA-NeXT and LLaVA-OneVision): anyres; the
  views ``"base"`` and ``"highres"`` located from the processor's
  ``image_sizes`` and the config's pinpoints (:mod:`.anyres`); default
  ``"highres"``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ...errors import InputError, one_line, positive_int
from ...words import PLACEHOLDER, refuse_ids
from .anyres import anyres_layout, anyres_views, max_tiles_of, seen_fraction, seen_part
from .base import Generation, ImageView, ModelAdapter, Prepared, _ids_set, config_get, load_image, \
    locate_image_positions, relative_depth_layer
from .positions import SpanCountError

DEFAULT_PROMPT = "Describe the image."
#: Processor outputs with one entry per token: extended over the response (value 0).
PER_TOKEN_INPUTS = ("token_type_ids", "mm_token_type_ids")


def is_transformers_processor(processor) -> bool:
    """Whether ``processor`` is one of transformers' own multimodal processor classes (False where
    transformers moved its table: nothing is checked then)."""
    try:
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    except ImportError:
        return False
    return type(processor).__name__ in set(PROCESSOR_MAPPING_NAMES.values())


def refuse_foreign_processor(processor, classes: Tuple[str, ...], kind: str,
                             own: str = "the processor of the model's own checkpoint") -> None:
    """InputError naming ``processor`` when it is a transformers processor whose class name starts with
    none of ``classes`` (another family's: its inputs failed deep in the model); one transformers does
    not know is the caller's."""
    name = type(processor).__name__
    if is_transformers_processor(processor) and not name.startswith(classes):
        raise InputError(f"processor: a {name} does not go with this {kind} model; pass {own}")


class HFVisionLanguageAdapter(ModelAdapter):
    """Base of the transformers-VLM adapters (see the module docstring)."""

    name = "hf-vlm"
    is_diffusion = False
    #: transformers' VLMs take the [B, L] padding mask and build their own attention mask and (M-RoPE)
    #: positions from it; causal, so right padding never reaches a real row. Examples whose pixel
    #: inputs cannot stack (another number of tiles) run apart (stack_key).
    pads_batches = True
    probes = ("full",)
    has_prompt_logits = True

    def __init__(self, model: nn.Module, processor: Any = None, newline_column: bool = False,
                 newline_token_id: Optional[int] = None, response_length: int = 16,
                 default_prompt: str = DEFAULT_PROMPT, grid: Optional[Tuple[int, int]] = None):
        super().__init__(model, processor, newline_column, newline_token_id)
        self.blocks()  # the model first: one without the family's blocks is refused as that (auto_adapter)
        self.check_processor_family()
        self.response_length = positive_int("response_length", response_length) or 16  # (None: the default)
        self.default_steps = self.response_length
        self.default_prompt = default_prompt
        self._grid = tuple(grid) if grid is not None else None

    #: names (prefixes) of the transformers processor classes that go with this family's models
    processor_classes: Tuple[str, ...] = ()

    def check_processor_family(self) -> None:
        """Refuse a transformers processor of another family (a LlavaProcessor beside a Qwen2-VL model
        ended in "KeyError: 'image_grid_thw'"); a processor transformers does not know is the caller's."""
        if getattr(self.model, "config", None) is None:  # a look-alike of its blocks alone: an AttributeError
            raise InputError(f"model: {type(self.model).__name__} has no config, which {type(self).__name__} reads "
                             "(image token id, image size); for a model of your own write an adapter "
                             "(docs/FAMILIES.md, 'Bring your own dMLLM')")
        name = type(self.processor).__name__
        # (no tokenizer: an AttributeError in explain(); not callable where encode() calls it: a TypeError there)
        if self.processor is None or not hasattr(self.processor, "tokenizer") or \
                (type(self).encode is HFVisionLanguageAdapter.encode and not callable(self.processor)):
            kind = getattr(self.model.config, "model_type", type(self.model).__name__)
            raise InputError(f"processor: this {kind} model needs its transformers processor (with a tokenizer), "
                             f"got {name}")
        if self.processor_classes:
            refuse_foreign_processor(self.processor, self.processor_classes,
                                     getattr(self.model.config, "model_type", type(self.model).__name__))

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
        tok = self.tokenizer
        s = _ids_set(config_get(self.model.config, "pad_token_id")) | _ids_set(getattr(tok, "pad_token_id", None))
        return s | _ids_set(getattr(tok, "bos_token_id", None)) | {self.image_token_id}

    # ------------------------------------------------------------------ structure
    def _lm(self):
        return self.model.model.language_model

    def blocks(self):
        return self._lm().layers

    def default_layer(self) -> int:
        return relative_depth_layer(len(self.blocks()))

    def final_norm(self):
        return getattr(self._lm(), "norm", None)

    def lm_head_weight(self) -> Tensor:
        return self.model.lm_head.weight

    # ------------------------------------------------------------------ inputs
    #: the token the processor expands into the image's features, when it does not name it
    #: (Dream-VL's released processor has no ``image_token``)
    default_image_token = "<image>"

    def image_token_text(self) -> str:
        return getattr(self.processor, "image_token", None) or self.default_image_token

    def image_marker(self) -> str:
        return self.image_token_text()

    def prompt_text(self, prompt: Optional[str]) -> str:
        text = prompt if prompt is not None else self.default_prompt
        marker = self.image_marker()
        return text if marker in text else f"{marker}\n{text}"

    def encode(self, img, text: str) -> Dict[str, Any]:
        """The processor's outputs for one (image, prompt)."""
        return dict(self.processor(images=img, text=text, return_tensors="pt"))

    def locate_views(self, prompt_ids: Tensor, enc: Dict[str, Any], img) \
            -> Tuple[Tensor, Tuple[int, int], Dict[str, ImageView]]:
        """(positions of the default view, its grid, every view by name)."""
        raise NotImplementedError

    def check_one_image_marker(self, text: str) -> None:
        """One image per prompt: a prompt that names more (its own image tokens or the
        marker dcam adds) is refused here, naming the prompt, before the processor's own
        ValueError ("Found total 2 <image> tokens and 1 images")."""
        marks = {self.image_token_text(), self.image_marker()}
        n = max(text.count(m) for m in marks) if marks else 1
        if n > 1:
            raise InputError(f"prompt: exactly one image marker ({' or '.join(sorted(marks))}) is supported, "
                             f"got {n}")
        video = getattr(self.processor, "video_token", None)
        if video and video in text:  # (the processor's "Found 1 <video> tokens but no videos were passed")
            raise InputError(f"prompt: holds the video marker {video!r}; dcam explains one image, not videos")

    def placeholder_ids(self) -> set:
        """Ids the processor expands into an image's (or a video's) features: never generated."""
        return self.image_placeholder_ids() | _ids_set(config_get(self.model.config, "video_token_id",
                                                                   "video_token_index"))

    def image_placeholder_ids(self) -> set:
        """Ids the model fills with an image's features: never part of a response, given as ids too (the model
        would count one image token more than it has features for). The video placeholder is not among them:
        with no video passed the model reads it as any token (its features are scattered only with a video's)."""
        return _ids_set(config_get(self.model.config, "image_token_id", "image_token_index"))

    #: config fields of the ids the processor writes around an image's features (Qwen's <|vision_start|> and
    #: <|vision_end|>, Gemma 3's <start_of_image> and <end_of_image>, Gemma 4's, which dcam writes itself)
    image_mark_fields = ("vision_start_token_id", "vision_end_token_id", "boi_token_id", "boi_token_index",
                         "eoi_token_id", "eoi_token_index")

    def image_mark_ids(self) -> set:
        """Ids of the tokens that mark where an image's features go, beyond :meth:`placeholder_ids`: a given
        response holding one is refused as one holding the placeholder is (Gemma 3 took its <start_of_image>
        there as a word, with a map). A generated response is what the model wrote: never refused for them."""
        marks = set()
        for field in self.image_mark_fields:
            marks |= _ids_set(config_get(self.model.config, field))
        return marks - self.placeholder_ids()

    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        img = load_image(image)
        text = self.prompt_text(prompt)
        self.check_one_image_marker(text)
        resp = [] if response_ids is None else [int(v) for v in response_ids]
        # the model would count one image token too many ("features and image tokens do not match")
        refuse_ids(self.token_strings, self.image_placeholder_ids(), PLACEHOLDER, response=resp)
        try:
            enc = self.encode(img, text)
        except InputError:
            raise
        except ValueError as exc:  # e.g. Qwen's "absolute aspect ratio must be smaller than 200"
            w, h = img.size
            raise InputError(f"image: the processor refused the {w}x{h} image ({one_line(str(exc))})") from None
        ids = torch.as_tensor(enc.pop("input_ids"))[:1].long()
        enc.pop("attention_mask", None)
        Lp = ids.shape[1]
        self.check_positions(Lp, len(resp), "response")
        if resp:
            ids = torch.cat([ids, torch.tensor([resp], dtype=torch.long)], 1)
        pos, grid, views = self.locate_views(ids[:, :Lp], enc, img)
        model_inputs = {}
        for k, v in enc.items():
            v = torch.as_tensor(v)
            if k in PER_TOKEN_INPUTS:
                v = torch.cat([v[:1], v.new_zeros(1, len(resp))], 1)
            model_inputs[k] = v
        return Prepared(input_ids=ids, model_inputs=model_inputs, response_start=Lp, response_length=len(resp),
                        image_positions=pos, grid=grid, image=img, prompt=prompt, views=views)

    #: per-row inputs whose second dimension counts an image's tiles, which the model trims itself
    #: (LLaVA-NeXT / -OneVision keep the tiles ``image_sizes`` implies, Idefics3 drops all-zero
    #: ones): a batch pads them with zero tiles, so images with other numbers of tiles stack
    tiled_inputs: Tuple[str, ...] = ()

    def stack_key(self, prep: Prepared) -> Tuple:
        return tuple((k, shape[1:] if k in self.tiled_inputs else shape) for k, shape in super().stack_key(prep))

    def stack_inputs(self, preps) -> Dict[str, Any]:
        tiles = {k: max(p.model_inputs[k].shape[1] for p in preps) for k in self.tiled_inputs
                 if k in preps[0].model_inputs}
        if tiles:
            preps = [replace(p, model_inputs={k: _zero_tiles(v, tiles[k]) if k in tiles else v
                                              for k, v in p.model_inputs.items()}) for p in preps]
        return super().stack_inputs(preps)

    #: whether the i-th token sits at position i (M-RoPE models give an image's tokens grid positions: fewer)
    sequential_positions = True

    def check_positions(self, Lp: int, Lr: int, name: str) -> None:
        """The model's positions (``max_position_embeddings``) bound prompt, image and response, a given
        response as a generated one (a given one ran past them silently; a prompt past them alone was told
        to ask for a negative number of tokens)."""
        most = config_get(self.model.config, "max_position_embeddings")
        if most is not None and not self.sequential_positions and Lr > int(most):  # M-RoPE: the response's alone
            raise InputError(f"{name}: {Lr} tokens pass this model's {int(most)} positions (max_position_embeddings)")
        if most is None or not self.sequential_positions:
            return
        if Lp >= int(most):
            raise InputError(f"image: with the prompt it takes {Lp} positions, and this model has {int(most)} "
                             f"(max_position_embeddings): none left for a response (a smaller image or prompt)")
        if Lp + Lr > int(most):
            raise InputError(f"{name}: {Lr} tokens after a prompt of {Lp} pass this model's {int(most)} positions "
                             f"(max_position_embeddings); at most {int(most) - Lp} fit")

    # ------------------------------------------------------------------ running
    def generate(self, prep: Prepared, steps=None, response_length=None, record=False) -> Generation:
        # steps never cut the answer (--steps 2 answered two tokens): a causal model takes one step per token,
        # so they only count for AKD, which reads the steps given (default: one per generated token)
        Lr = int(response_length or self.response_length)
        L = prep.response_start
        self.check_positions(L, Lr, "response_length")  # (10**6 new tokens ran until killed)
        inputs = {k: (v[:, :L] if k in PER_TOKEN_INPUTS else v) for k, v in prep.model_inputs.items()}
        # a placeholder id in the response would make the model's next forward count one image token too many
        banned = sorted(self.placeholder_ids())
        with torch.no_grad():
            out = self.model.generate(input_ids=prep.input_ids[:, :L], **inputs, max_new_tokens=Lr, do_sample=False,
                                      suppress_tokens=banned or None)
        seq = out.sequences if hasattr(out, "sequences") else out
        new = seq[0, L:].tolist()
        return Generation(new, int(steps) if steps else len(new), steps_given=bool(steps))

    def forward_logits(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        # no KV cache: a probe never decodes further, and with a cache the last block cannot run at rows only
        return self.model(input_ids=input_ids, use_cache=False, **model_inputs).logits


class LlavaAdapter(HFVisionLanguageAdapter):
    """LLaVA (one fixed grid; see the module docstring)."""

    image_views = ()
    name = "llava"
    family = "llava"
    processor_classes = ("LlavaProcessor",)

    def _tile_and_patch(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """(height, width) of the tower's input and of its patches."""
        vc = self.model.config.vision_config
        s, p = vc.image_size, vc.patch_size
        s = s if isinstance(s, (list, tuple)) else (s, s)
        p = p if isinstance(p, (list, tuple)) else (p, p)
        return (int(s[0]), int(s[1])), (int(p[0]), int(p[1]))

    @property
    def grid(self) -> Tuple[int, int]:
        if self._grid is not None:
            return self._grid
        (sh, sw), (ph, pw) = self._tile_and_patch()
        return sh // ph, sw // pw

    def locate(self, input_ids: Tensor, grid):
        strategy = config_get(self.model.config, "vision_feature_select_strategy", default="default")
        if strategy == "full" and not self.newline_column:
            pos = torch.nonzero(input_ids.reshape(-1) == self.image_token_id).reshape(-1)
            h, w = grid
            if pos.numel() != h * w + 1:
                raise SpanCountError(pos.numel(), h * w + 1, f"a {h}x{w} grid plus CLS")
            return pos[1:].clone()
        return locate_image_positions(input_ids, self.image_token_id, grid, self.newline_column,
                                      self.newline_token_id)

    def locate_views(self, prompt_ids, enc, img):
        grid = self.grid
        try:
            pos = self.locate(prompt_ids, grid)
        except SpanCountError as exc:  # the grid is the model config's or grid='s, the span the user's processor's
            h, w = grid
            if self._grid is not None:
                raise InputError(f"grid: {h}x{w} (given) needs {exc.needed} image tokens, but the processor placed "
                                 f"{exc.found}") from None
            raise InputError(f"processor: it placed {exc.found} image tokens, and the model's {h}x{w} grid needs "
                             f"{exc.needed}; pass the processor of the model's own checkpoint") from None
        box = center_crop_box(getattr(self.processor, "image_processor", None), img.size)
        if self._grid is None:  # (a grid given by hand says nothing of the patches)
            (sh, sw), (ph, pw) = self._tile_and_patch()
            box = seen_part(box, seen_fraction(sw, pw), seen_fraction(sh, ph))  # the pixels the tower reads
        # the one view, named "default" (no view to report), knows where on the image the model looked
        return pos, grid, ({} if box == (0.0, 0.0, 1.0, 1.0) else {"default": ImageView("default", pos, grid, box)})


def _size_get(size, key):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def center_crop_box(image_processor, image_wh) -> Tuple[float, float, float, float]:
    """The part of an image of ``image_wh`` a CLIP-style processor keeps, as fractions
    ``(x0, y0, x1, y1)``: the shortest edge resized (``size["shortest_edge"]``, the long
    one rounded down as transformers does), then a centre crop of ``crop_size`` (its
    offset rounded down). LLaVA-1.5 sees the middle square of a wide image, not all of it."""
    if image_processor is None or not getattr(image_processor, "do_center_crop", False):
        return 0.0, 0.0, 1.0, 1.0
    crop = getattr(image_processor, "crop_size", None)
    ch, cw = _size_get(crop, "height"), _size_get(crop, "width")
    if not ch or not cw:
        return 0.0, 0.0, 1.0, 1.0
    w, h = int(image_wh[0]), int(image_wh[1])
    size = getattr(image_processor, "size", None)
    short = _size_get(size, "shortest_edge") if getattr(image_processor, "do_resize", False) else None
    sh, sw = _size_get(size, "height"), _size_get(size, "width")
    if short:
        if w <= h:
            nw, nh = int(short), int(int(short) * h / w)
        else:
            nh, nw = int(short), int(int(short) * w / h)
    elif getattr(image_processor, "do_resize", False) and sh and sw:
        nh, nw = int(sh), int(sw)
    else:
        nh, nw = h, w
    top, left = (nh - int(ch)) // 2, (nw - int(cw)) // 2
    return left / nw, top / nh, (left + int(cw)) / nw, (top + int(ch)) / nh


class LlavaNextAdapter(HFVisionLanguageAdapter):
    """LLaVA-NeXT / LLaVA-OneVision: anyres views (see the module docstring)."""

    image_views = ("highres", "base")
    name = "llava-next"
    processor_classes = ("LlavaNext", "LlavaOnevision")
    tiled_inputs = ("pixel_values",)

    @property
    def family(self) -> str:
        return "llava-onevision" if self.model.config.model_type == "llava_onevision" else "llava-next"

    def layout(self, image_hw: Tuple[int, int]):
        cfg = self.model.config
        vc = cfg.vision_config
        tile, unit = int(vc.image_size), int(vc.image_size) // int(vc.patch_size)
        aspect = getattr(cfg, "vision_aspect_ratio", None) if cfg.model_type == "llava_onevision" else None
        newline = getattr(self.model.model, "image_newline", None) is not None
        return anyres_layout(image_hw, cfg.image_grid_pinpoints, tile, unit, wh_pinpoints=False, rounding="hf",
                             max_tiles=max_tiles_of(aspect), newline=newline,
                             seen=seen_fraction(tile, int(vc.patch_size)))

    def locate_views(self, prompt_ids, enc, img):
        sizes = enc.get("image_sizes")
        if sizes is None:
            raise InputError("the processor gave no image_sizes; an anyres model needs them to place its views")
        hw = tuple(int(v) for v in torch.as_tensor(sizes).reshape(-1, 2)[0].tolist())
        span = torch.nonzero(prompt_ids.reshape(-1) == self.image_token_id).reshape(-1)
        return anyres_views(span, self.layout(hw))


def _zero_tiles(v: Tensor, n: int) -> Tensor:
    """``v [1, t, ...]`` with ``n - t`` all-zero tiles after its own."""
    return torch.cat([v, v.new_zeros((v.shape[0], n - v.shape[1], *v.shape[2:]))], 1) if v.shape[1] < n else v


__all__ = ["HFVisionLanguageAdapter", "LlavaAdapter", "LlavaNextAdapter", "PER_TOKEN_INPUTS",
           "is_transformers_processor", "refuse_foreign_processor"]
