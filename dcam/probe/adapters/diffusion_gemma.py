"""Adapter for transformers' DiffusionGemma (``DiffusionGemmaForBlockDiffusion``).

DiffusionGemma is a multimodal block-diffusion model (transformers >= 5.23):
an encoder (a Gemma-4 text stack with the Gemma-4 vision tower; causal, or
bidirectional over image blocks with ``use_bidirectional_attention="vision"``)
encodes the prompt, image included, into a KV cache; a decoder sharing its
weights denoises a canvas of response tokens with bidirectional
self-attention over ``cache + canvas``. So:

* the image tokens live in the ENCODER: the hooked blocks are
  ``model.model.encoder.language_model.layers``; a response logit reaches
  block ``l``'s image-token output through the cached keys/values of the
  encoder blocks ``l+1..`` (hence the last encoder block's gradients are zero:
  the decoder never reads its output);
* the response is the decoder canvas (``decoder_input_ids``); the logit at a
  canvas slot predicts that slot (no shift);
* the noise is UNIFORM (a canvas starts as random tokens, and there is no
  mask token), so ``probe="masked"`` and ``"remask"`` have no meaning here;
  the only probe is ``"full"``: prompt + the complete response as the canvas
  (the published method, unmasked). There are no logits at prompt positions,
  so the contrastive distractor must be a non-target canvas slot;
* generation: ``model.generate`` (entropy-bounded sampler); the number of
  denoising steps actually used is recovered from ``tokens_per_forward``;
* padded batches (:mod:`dcam.probe.padding`): each row's prompt goes to the
  encoder padded on the right, its response to the decoder's canvas padded
  on the right, the canvas placed after that row's own prompt
  (``decoder_position_ids``) and every padded key hidden from the decoder
  (``decoder_attention_mask``). The encoder's sliding-window layers cache
  only their last ``sliding_window - 1`` keys for the decoder: a prompt
  longer than that would lose real keys to its padding, so such examples
  share a forward only with examples of their own layout.

Inputs: ``[BOS] <boi> <image> x n <eoi> prompt`` with the processor's
``image_processor`` (a ``Gemma4ImageProcessor``/``Gemma4ImageProcessorPil``:
``pixel_values`` patches, ``image_position_ids``) and ``tokenizer``; the
grid is read from the patch positions: ``(max_y + 1) / k x (max_x + 1) / k``
for pooling kernel ``k`` (the pooled soft tokens are in raster order). Chat
templates are not applied: pass an already formatted ``prompt`` if the
checkpoint expects one.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...errors import InputError, positive_int
from ...words import refuse_ids
from ..padding import padding_id, row_lengths, split_padding
from .base import Generation, ModelAdapter, Prepared, _ids_set, config_get, load_image, relative_depth_layer
from .hf_vlm import GEMMA_LAYOUT, check_patch_positions, gemma_placed_ids, grid_from_patch_positions, \
    placed_by_dcam
from .llava import refuse_foreign_processor

DEFAULT_PROMPT = "Describe the image."
#: the model-inputs key under which a stacked batch carries each row's response start (taken out
#: before the model is called)
RESPONSE_STARTS = "response_starts"


#: transformers' processor class for DiffusionGemma checkpoints (its auto table maps diffusion_gemma there)
PROCESSOR_CLASSES = ("Gemma4Processor",)


class DiffusionGemmaAdapter(ModelAdapter):
    image_views = ()
    name = family = "diffusion-gemma"
    is_diffusion = True
    probes = ("full",)
    has_prompt_logits = False
    #: prompts and canvases padded apart (see the module's docstring), within the sliding window
    pads_batches = True

    def __init__(self, model: nn.Module, processor: Any, newline_column: bool = False,
                 newline_token_id: Optional[int] = None, response_length: Optional[int] = None,
                 default_prompt: str = DEFAULT_PROMPT):
        super().__init__(model, processor, newline_column, newline_token_id)
        self.blocks()  # the model first: one without the family's blocks is refused as that (auto_adapter)
        self._check_processor()
        self.response_length = positive_int("response_length", response_length) or \
            int(getattr(model.config, "canvas_length", 256))
        gc = getattr(model, "generation_config", None)
        self.default_steps = int(getattr(gc, "max_denoising_steps", None) or 48)
        self.default_prompt = default_prompt

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", None)

    def _check_processor(self) -> None:
        """Refuse, up front, a processor without what prepare() reads, or another family's transformers
        processor (a LlavaProcessor ended in "KeyError: 'image_position_ids'" inside explain())."""
        name = type(self.processor).__name__
        if self.processor is None or not hasattr(self.processor, "image_processor") or self.tokenizer is None:
            raise InputError(f"processor: DiffusionGemma needs its processor (with .image_processor and .tokenizer), "
                             f"got {name}")
        refuse_foreign_processor(self.processor, PROCESSOR_CLASSES, "diffusion_gemma")

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def eos_token_ids(self) -> set:
        gc = getattr(self.model, "generation_config", None)
        return _ids_set(getattr(gc, "eos_token_id", None)) | _ids_set(config_get(self.model.config, "eos_token_id"))

    def image_mark_ids(self) -> set:
        """<boi> and <eoi>, written around the image (by dcam, :data:`.hf_vlm.GEMMA_LAYOUT`): a given response
        holding one is refused as Gemma 4's is (a text one was told they end a response, as padding does)."""
        c = self.model.config
        return _ids_set(getattr(c, "boi_token_id", None)) | _ids_set(getattr(c, "eoi_token_id", None))

    def placed_ids(self) -> set:
        """[BOS] <boi> image <eoi>: dcam writes them before the prompt and its sampler never writes them, so a
        response holding one, as text or as ids, is refused (prepare()), the text's line offering no ids."""
        return gemma_placed_ids(self.model.config, self.image_token_id)

    @property
    def pad_token_ids(self) -> set:
        c = self.model.config
        return _ids_set(config_get(c, "pad_token_id")) | _ids_set(config_get(c, "bos_token_id")) | \
            _ids_set(getattr(c, "boi_token_id", None)) | _ids_set(getattr(c, "eoi_token_id", None))

    # ------------------------------------------------------------------ structure
    def _encoder_lm(self):
        return self.model.model.encoder.language_model

    def blocks(self):
        return self._encoder_lm().layers

    def generation_modules(self):
        """The decoder's last layer: generation denoises the canvas there (the blocks are the
        encoder's), so an overflow in it is watched too (dcam.probe.hooks.generation_watch)."""
        return [self.model.model.decoder.layers[-1]]

    def default_layer(self) -> int:
        return relative_depth_layer(len(self.blocks()))

    def final_norm(self):
        return self._encoder_lm().norm

    def lm_head_weight(self) -> Tensor:
        return self.model.lm_head.weight

    # ------------------------------------------------------------------ inputs
    def _grid_from_positions(self, pos: Tensor, n: int) -> Tuple[int, int]:
        return grid_from_patch_positions(pos, int(self.model.config.vision_config.pooling_kernel_size), n)

    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        img = load_image(image)
        out = self.processor.image_processor(images=[img], return_tensors="pt")
        pix = out["pixel_values"][:1]
        ppos = out["image_position_ids"][:1]
        check_patch_positions(ppos, self.model.config.vision_config, img)
        n = int(out["num_soft_tokens_per_image"][0]) if "num_soft_tokens_per_image" in out else None
        if n is None:
            k = int(self.model.config.vision_config.pooling_kernel_size)
            n = int((ppos[0] != -1).all(-1).sum()) // (k * k)
        grid = self._grid_from_positions(ppos[0], n)
        c = self.model.config
        text = prompt if prompt is not None else self.default_prompt
        bos = config_get(c, "bos_token_id")
        prefix = ([int(bos)] if bos is not None else []) + [int(c.boi_token_id)] + [self.image_token_id] * n + \
            [int(c.eoi_token_id)]
        p_ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        # dcam writes "[BOS] <boi> image <eoi>" before the prompt: a prompt (or response) holding those tokens put
        # a second BOS and <boi> in the sequence, or one image token too many, without a word
        resp = [] if response_ids is None else [int(v) for v in response_ids]
        refuse_ids(self.token_strings, self.placed_ids(), placed_by_dcam(GEMMA_LAYOUT), prompt=p_ids, response=resp)
        ids = prefix + p_ids
        Lp = len(ids)
        t = torch.tensor([ids + resp], dtype=torch.long)
        return Prepared(input_ids=t, model_inputs={"pixel_values": pix, "image_position_ids": ppos},
                        response_start=Lp, response_length=len(resp), image_positions=self.locate(t[:, :Lp], grid),
                        grid=grid, image=img, prompt=prompt)

    # ------------------------------------------------------------------ batches
    def _cached_prompt_length(self) -> Optional[int]:
        """How many prompt keys the encoder's sliding-window layers keep for the decoder (None:
        no such layer, every key is kept)."""
        tc = self.model.config.get_text_config()
        window = getattr(tc, "sliding_window", None)
        if window is None or "sliding_attention" not in (getattr(tc, "layer_types", None) or ()):
            return None
        return int(window) - 1

    def stack_key(self, prep: Prepared) -> Tuple:
        key = super().stack_key(prep)
        kept = self._cached_prompt_length()
        if kept is not None and prep.response_start > kept:  # padding would push real keys out of the window
            key += (("layout", tuple(prep.input_ids.shape), int(prep.response_start)),)
        return key

    def stack_inputs(self, preps) -> Dict[str, Any]:
        inputs = super().stack_inputs(preps)
        # each row's own response start: a padded batch's rows split into prompt and canvas apart
        inputs[RESPONSE_STARTS] = torch.tensor([int(p.response_start) for p in preps])
        return inputs

    def _split_rows(self, input_ids: Tensor, keep: Optional[Tensor], starts: Tensor):
        """``input_ids`` (each row its prompt, then its response, then padding) -> the encoder's
        prompts and the decoder's canvases, each padded on the right, with their keep masks."""
        B = input_ids.shape[0]
        lengths = row_lengths(keep) if keep is not None else [input_ids.shape[1]] * B
        Lp, Lr = int(starts.max()), max(n - int(s) for n, s in zip(lengths, starts.tolist()))
        pad = padding_id(self)
        enc = input_ids.new_full((B, Lp), pad)
        dec = input_ids.new_full((B, Lr), pad)
        enc_keep = torch.zeros(B, Lp, dtype=torch.long, device=input_ids.device)
        dec_keep = torch.zeros(B, Lr, dtype=torch.long, device=input_ids.device)
        for b, (n, s) in enumerate(zip(lengths, starts.tolist())):
            enc[b, :s], enc_keep[b, :s] = input_ids[b, :s], 1
            dec[b, :n - s], dec_keep[b, :n - s] = input_ids[b, s:n], 1
        return enc, enc_keep, dec, dec_keep

    # ------------------------------------------------------------------ running
    def generate(self, prep: Prepared, steps=None, response_length=None, record=False) -> Generation:
        Lr = int(response_length or self.response_length)
        S = int(steps or self.default_steps)
        # the tokens dcam places around the image are never drawn into a response (prepare refuses them)
        from transformers import LogitsProcessorList, SuppressTokensLogitsProcessor

        placed = sorted(self.placed_ids())
        suppress = LogitsProcessorList([SuppressTokensLogitsProcessor(placed, device=prep.input_ids.device)])
        with torch.no_grad():  # (its generate takes no suppress_tokens: a logits processor does it)
            out = self.model.generate(input_ids=prep.input_ids[:, :prep.response_start], **prep.model_inputs,
                                      max_new_tokens=Lr, max_denoising_steps=S, return_dict_in_generate=True,
                                      logits_processor=suppress)
        new = out.sequences[0, prep.response_start:prep.response_start + Lr].tolist()
        pad = _ids_set(config_get(self.model.config, "pad_token_id"))
        n_valid = sum(1 for t in out.sequences[0, prep.response_start:].tolist() if t not in pad)
        tpf = float(out.tokens_per_forward[0])
        used = int(round(n_valid / tpf)) if tpf > 0 else S
        return Generation(new, max(1, min(used, S * max(1, -(-Lr // int(self.model.config.canvas_length))))))

    def fewer_steps_why(self, steps: int, length: int, used: int) -> List[str]:
        # its sampler stops a canvas early (adaptive stopping): it does not run the rest
        return ["it stops denoising a canvas once it is stable and confident"] if used < steps else []

    def logits_at(self, input_ids: Tensor, model_inputs: Dict[str, Any], positions: Tensor,
                  response_start: int) -> Tensor:
        """The encoder reads ``input_ids[:, :response_start]`` (prompt and image),
        the decoder the canvas after it. A batch from ``stack_inputs`` carries each
        row's own response start, and a padded one its keep mask: each row is then
        split at its own start (:meth:`_split_rows`)."""
        inputs, keep = split_padding(model_inputs)
        starts = inputs.pop(RESPONSE_STARTS, None)
        B = input_ids.shape[0]
        starts = torch.full((B,), int(response_start)) if starts is None else starts
        positions = positions.to(input_ids.device)
        canvas = (positions if positions.dim() == 2 else positions.expand(B, -1)) - starts[:, None].to(positions)
        if bool((canvas < 0).any()):
            raise InputError("DiffusionGemma has no logits at prompt positions (only on the response canvas)")
        if keep is None and bool((starts == starts[0]).all()):  # one layout: no padding anywhere
            Lp = int(starts[0])
            return self.logits_with_head_at(
                lambda: self.model(input_ids=input_ids[:, :Lp], decoder_input_ids=input_ids[:, Lp:],
                                   **inputs).logits, canvas if positions.dim() == 2 else positions - Lp,
                input_ids.shape[1] - Lp)
        enc, enc_keep, dec, dec_keep = self._split_rows(input_ids, keep, starts)
        where = torch.arange(dec.shape[1], device=dec.device)[None] + starts[:, None].to(dec.device)
        return self.logits_with_head_at(
            lambda: self.model(input_ids=enc, attention_mask=enc_keep, decoder_input_ids=dec,
                               decoder_attention_mask=torch.cat([enc_keep, dec_keep], 1),
                               decoder_position_ids=where, **inputs).logits, canvas, dec.shape[1])

    def forward_logits(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:  # pragma: no cover
        raise NotImplementedError("DiffusionGemma: use logits_at (the canvas is a separate input)")
