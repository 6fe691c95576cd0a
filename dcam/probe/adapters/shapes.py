"""Adapter for the bundled toy dMLLM (:class:`dcam.zoo.ShapesDMLLM`)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ...errors import InputError
from ...ops.config import CamConfig
from .base import Generation, ModelAdapter, Prepared, load_image


class ShapesAdapter(ModelAdapter):
    """LLaDA-V-style masked-diffusion MLLM: ``[BOS] prompt <image>*(h*w) response``.

    Blocks: ``model.language_model.layers``; default block:
    ``model.default_probe_layer``. Generation: ``model.generate_diffusion``
    (greedy masked diffusion, ``response_length / steps`` tokens committed per
    step; the steps actually used are ``min(steps, response_length)``).
    """

    image_views = ()
    name = family = "shapes"
    is_diffusion = True
    has_prompt_logits = True

    def __init__(self, model: nn.Module, processor: Any, newline_column: bool = False,
                 newline_token_id: Optional[int] = None):
        super().__init__(model, processor, newline_column, newline_token_id)
        self.default_steps = int(getattr(model.config, "response_length", 12))  # (a model without one: refused first)
        self.blocks()
        # checked here: None or another object was accepted, and explain() failed later with an AttributeError
        missing = [a for a in ("build", "encode_response", "decode", "tokenizer", "response_length")
                   if not hasattr(processor, a)]
        if missing:
            raise InputError(f"processor: the shapes model needs its ShapesProcessor (dcam.zoo.load_default() "
                             f"returns both), got {type(processor).__name__} (no {missing[0]})")
        model_grid = tuple(int(v) for v in model.config.grid)  # (not self.grid: a subclass's is its own)
        laid_out = tuple(int(v) for v in getattr(processor, "grid", model_grid))
        if laid_out != model_grid:  # (a span of another count was called the image's; it is the processor's)
            raise InputError(f"processor: it lays an image out as {laid_out[0]}x{laid_out[1]} tokens and the model's "
                             f"grid is {model_grid[0]}x{model_grid[1]}; pass the model's own processor "
                             "(dcam.zoo.load_default() returns both)")

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def mask_token_id(self) -> Optional[int]:
        return int(self.model.config.mask_token_id)

    @property
    def eos_token_ids(self) -> set:
        return {int(self.model.config.eos_token_id)}

    @property
    def pad_token_ids(self) -> set:
        return {int(self.model.config.pad_token_id), int(self.model.config.bos_token_id)}

    @property
    def grid(self) -> Tuple[int, int]:
        return tuple(int(v) for v in self.model.config.grid)

    def blocks(self):
        return self.model.language_model.layers

    def default_layer(self) -> int:
        return int(self.model.default_probe_layer)

    def default_config(self) -> CamConfig:
        """``CamConfig()`` with the overrides the model's config recommends
        (``cam_config``; the bundled weights: ``grad_relu=False``)."""
        overrides = getattr(self.model.config, "cam_config", None) or {}
        try:
            return CamConfig(**overrides)
        except (TypeError, ValueError) as exc:
            raise InputError(f"the model config's cam_config {overrides!r} is not a valid CamConfig: {exc}") from exc

    def final_norm(self):
        return self.model.language_model.norm

    def lm_head_weight(self) -> Tensor:
        return self.model.lm_head.weight

    # ------------------------------------------------------------------ inputs
    def check_response_length(self, response_length) -> None:
        """The processor lays out a fixed number of response slots; another length generated
        into the last slots of that layout (a 5-token response after 7 [MASK]s) and was then
        explained at the first ones, a context the model never saw (or, traced, a RuntimeError)."""
        n = int(self.processor.response_length)
        if response_length is not None and int(response_length) != n:
            raise InputError(f"response_length: this model writes exactly {n} response slots (its processor's "
                             f"response_length; shorter responses end in eos), got {response_length}")

    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        self.check_response_length(response_length)
        img = load_image(image)
        enc = self.processor.build(img, prompt, response_ids)
        ids = enc["input_ids"]
        return Prepared(input_ids=ids, model_inputs={"pixel_values": enc["pixel_values"]},
                        response_start=int(enc["response_start"]), response_length=int(enc["response_length"]),
                        image_positions=self.locate(ids, self.grid), grid=self.grid, image=img, prompt=prompt)

    def encode_response(self, text: str) -> List[int]:
        return list(self.processor.encode_response(text))

    def token_strings(self, ids: Sequence[int]) -> List[str]:
        return [self.processor.tokenizer.convert_ids_to_tokens(int(i)) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode(list(ids))

    def decode_tokens(self, ids: Sequence[int]) -> str:
        return " ".join(self.token_strings(ids))  # a word-level vocabulary: its words, spaced

    # ------------------------------------------------------------------ running
    #: generate_diffusion exposes its steps (``return_history``): trajectories are supported
    records_trajectory = True
    #: the model takes a [B, L] keep mask (padded keys hidden), in forward and logits_at alike
    pads_batches = True

    def generate(self, prep: Prepared, steps=None, response_length=None, record=False) -> Generation:
        """Greedy low-confidence-remasking generation. ``record``: also the
        response slots entering each used step (``states [S, Lr]``, mask id
        where still masked) and the step each slot was committed at
        (``decided_at [Lr]``); the sampler never revisits a committed slot, so
        that is the step of its final token."""
        self.check_response_length(response_length)
        Lr = int(response_length or prep.response_length)
        # steps beyond the response length commit nothing (the schedule is one token per step for
        # the first Lr steps): run only those, so --steps 100000 costs what --steps Lr does
        S = min(int(steps or self.default_steps), Lr)
        with torch.no_grad():
            out = self.model.generate_diffusion(prep.input_ids, prep.model_inputs["pixel_values"], steps=S,
                                                response_length=Lr, return_history=record)
        used = sum(1 for k in self.model.transfer_schedule(Lr, S) if k > 0)
        if not record:
            return Generation(out[0].tolist(), used)
        out, history = out
        mask = int(self.mask_token_id)
        # history[s] is the response after step s; the steps that commit nothing (k = 0) come last
        after = torch.stack([h[0] for h in history[:used]]).long().cpu()  # [S, Lr]
        states = torch.cat([torch.full((1, Lr), mask, dtype=torch.long), after[:-1]], 0)
        decided_at = (after == mask).sum(0).long()  # a slot stays masked for exactly decided_at steps
        return Generation(out[0].tolist(), used, states=states, decided_at=decided_at)

    def fewer_steps_why(self, steps: int, length: int, used: int) -> List[str]:
        # the steps past the response length are not run (each step commits at least one token)
        return ["it commits at least one token per step"]

    def _embeddings(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tuple[Tensor, Dict[str, Any]]:
        """Input embeddings and the remaining model inputs."""
        pix = model_inputs.get("pixel_values")
        rest = {k: v for k, v in model_inputs.items() if k != "pixel_values"}
        R = input_ids.shape[0]
        if R > 1 and pix is not None and pix.shape[0] == R and pix.stride(0) == 0:
            # the rows of one probe share the image (only response slots differ): run the vision
            # tower once and give every row the same image-token embeddings
            is_img = input_ids == self.image_token_id
            if bool((is_img == is_img[:1]).all()):
                img_emb = self.model.embed(input_ids[:1], pix[:1])
                tok_emb = self.model.language_model.embed_tokens(input_ids)
                return torch.where(is_img[..., None], img_emb.expand(R, -1, -1), tok_emb), rest
        return self.model.embed(input_ids, pix), rest

    def forward_logits(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        emb, rest = self._embeddings(input_ids, model_inputs)
        return self.model(inputs_embeds=emb, **rest).logits

    def logits_at_rows(self, input_ids: Tensor, model_inputs: Dict[str, Any], positions: Tensor,
                       response_start: int) -> Tensor:
        emb, rest = self._embeddings(input_ids, model_inputs)
        # the last block at the scored rows only (ShapesDMLLM.logits_at): same logits, and the
        # batched backward of an explanation skips that block's other L - P rows
        return self.model.logits_at(positions, inputs_embeds=emb, **rest).float()
