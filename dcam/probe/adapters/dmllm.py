"""What the dMLLM adapters share (LLaDA-V, LaViDa, MMaDA, Lumina-DiMOO,
Dream-VL): module paths of the two backbone layouts, the switch-off of
training-time activation checkpointing, prompt formatting, token handling,
and the special ids.

Backbone layouts (from the public code):

* OLMo-style LLaDA (LaViDa-LLaDA, MMaDA, Lumina-DiMOO): blocks
  ``<llada>.transformer.blocks``, final norm ``transformer.ln_f``, LM head
  ``transformer.ff_out`` (``transformer.wte`` when weights are tied);
* LLaMA / Qwen2 names (LLaDA-V, LaViDa-Dream, Dream-VL): blocks
  ``model.model.layers``, norm ``model.model.norm``, head ``model.lm_head``.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ...errors import InputError, positive_int
from .base import ModelAdapter, _ids_set, config_get, relative_depth_layer
from .sampling import idle_steps

#: LLaDA's ids (tokenizer of GSAI-ML/LLaDA-8B-Instruct): mask, <|endoftext|>, <|eot_id|>.
LLADA_MASK_ID, LLADA_EOS_IDS = 126336, (126081, 126348)
#: Dream's mask id (Dream-org/Dream-v0-7B, Dream-VL).
DREAM_MASK_ID = 151666
DEFAULT_PROMPT = "Describe the image."


def olmo_transformer(model: nn.Module) -> Optional[nn.Module]:
    """``transformer`` ModuleDict of an OLMo-style LLaDA under ``model`` (or None)."""
    for inner in (getattr(model, "model", None), model):
        tr = getattr(inner, "transformer", None)
        if tr is not None and hasattr(tr, "blocks"):
            return tr
    return None


def llama_stack(model: nn.Module) -> Optional[nn.Module]:
    """``model.model`` when it has ``layers`` (LLaMA / Qwen2 names), else None."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "layers") else None


def no_activation_checkpointing(model: nn.Module) -> None:
    """Turn training-time activation checkpointing off (LaViDa turns
    ``"whole_layer"`` on in ``__init__``): a checkpointed block re-runs in the
    backward, hooks included, and the gradients would not reach the probe."""
    for m in (getattr(model, "model", None), model):
        if m is not None and hasattr(m, "set_activation_checkpointing") and \
                getattr(m, "activation_checkpointing_strategy", None) is not None:
            m.set_activation_checkpointing(None)
    if hasattr(model, "gradient_checkpointing_disable") and \
            any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        model.gradient_checkpointing_disable()


def chat_prompt(tokenizer, text: str, system: Optional[str] = None) -> str:
    """``text`` as the user turn of the tokenizer's chat template (after a ``system``
    turn, when given) with the assistant turn opened; the text itself when the
    tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return text


def generation_steps(steps: Optional[int], given_steps: Optional[int], length: int) -> int:
    """Denoising steps for a generation of ``length`` slots: the call's, else the adapter's, else half of
    ``length`` (the Diffusion-CAM release decodes 64 tokens in 32 steps; MMaDA's release runs L // 2).
    Half of the call's own length: a per-call length had run the adapter's ``response_length // 2``."""
    return int(steps or given_steps or max(1, length // 2))


def tokenized(tokenizer, text: str) -> List[int]:
    """``text``'s ids with the tokenizer's own special tokens (a BOS it opens every call with, say), as
    the releases tokenise their prompts (``tokenizer(prompt)``)."""
    return [int(i) for i in tokenizer(text)["input_ids"]]


class DMLLMAdapter(ModelAdapter):
    """Base of the dMLLM adapters: a tokenizer in ``self.tokenizer``, the
    family's mask id and eos ids, the default layer at the paper's relative
    depth, generation settings (``response_length``, ``block_length``,
    ``default_steps``)."""

    is_diffusion = True
    has_prompt_logits = True
    default_mask_id = LLADA_MASK_ID
    default_eos_ids: Tuple[int, ...] = LLADA_EOS_IDS

    def __init__(self, model: nn.Module, processor: Any = None, newline_column: bool = False,
                 newline_token_id: Optional[int] = None, response_length: int = 64,
                 block_length: Optional[int] = None, steps: Optional[int] = None,
                 default_prompt: str = DEFAULT_PROMPT):
        super().__init__(model, processor, newline_column, newline_token_id)
        self.response_length = positive_int("response_length", response_length) or 64  # (None: the default)
        self.block_length = positive_int("block_length", block_length)
        self.given_steps = positive_int("steps", steps)  # (None: generation_steps)
        self.default_steps = generation_steps(None, self.given_steps, self.response_length)
        self.default_prompt = default_prompt
        no_activation_checkpointing(model)

    # ------------------------------------------------------------------ ids
    @property
    def tokenizer(self):
        tok = getattr(self.processor, "tokenizer", None)
        if tok is None and isinstance(self.processor, (tuple, list)):
            tok = self.processor[0]
        if tok is None:
            tok = self.processor if hasattr(self.processor, "convert_ids_to_tokens") else None
        if tok is None:
            raise InputError(f"processor: the {self.family or self.name} adapter needs a processor with a tokenizer, "
                             f"got {type(self.processor).__name__}")
        return tok

    @property
    def mask_token_id(self) -> Optional[int]:
        v = config_get(self.model.config, "mask_token_id")
        return int(v) if v is not None else self.default_mask_id

    @property
    def eos_token_ids(self) -> set:
        tok = self.tokenizer
        return set(self.default_eos_ids) | _ids_set(getattr(tok, "eos_token_id", None)) | \
            _ids_set(config_get(self.model.config, "eos_token_id"))

    @property
    def pad_token_ids(self) -> set:
        return _ids_set(getattr(self.tokenizer, "pad_token_id", None)) - {self.mask_token_id}

    def default_layer(self) -> int:
        return relative_depth_layer(len(self.blocks()))

    def text_ids(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def response_slots(self, response_ids: Optional[Sequence[int]], response_length: Optional[int]) -> List[int]:
        """The response ids, or ``response_length`` mask ids to generate into."""
        if response_ids is not None:
            return [int(v) for v in response_ids]
        return [int(self.mask_token_id)] * int(response_length or self.response_length)

    #: without a ``block_length``, the response is decoded in this many blocks as the family's
    #: release does (MMaDA's ``inference_mmu.py``: blocks of ``max_seq_length // 4``; Lumina-DiMOO's: 1024
    #: slots in blocks of 256) where that many divide it; None: one block
    blocks_per_response: Optional[int] = None

    def released_block(self, length: int) -> Optional[int]:
        """The block length of a generation of ``length`` slots without a ``block_length``: ``length``
        over :attr:`blocks_per_response` where they divide it; None (one block) otherwise."""
        n = self.blocks_per_response
        return length // n if n and length % n == 0 else None

    def release_blocks(self, length: int) -> str:
        """How the family's release parts ``length`` slots into blocks, for the note of a length it is not
        parted in :attr:`blocks_per_response` blocks (:meth:`generation_notes`); "" to say nothing more."""
        return ""

    def steps_and_blocks(self, steps: Optional[int], length: int) -> Tuple[int, int]:
        """(steps, block length) for a generation of ``length`` slots (:func:`generation_steps`)."""
        S = generation_steps(steps, self.given_steps, length)
        block = self.block_length or self.released_block(length) or length
        if length % block:
            block = length
        n_blocks = length // block
        return max(S - S % n_blocks, n_blocks), block

    def generation_notes(self, steps: Optional[int], length: int, used: int) -> List[str]:
        """Also a note of blocks other than asked (a ``block_length`` that does not divide the length) or
        than documented (:attr:`blocks_per_response`, a length they do not divide), whatever the steps."""
        _, block = self.steps_and_blocks(steps, length)
        parts = "one block" if block == length else f"{length // block} blocks"
        ran = f"blocks: {parts} of {block} slot{'s' if block != 1 else ''}"
        notes = []
        if self.block_length and block != self.block_length:
            notes.append(f"{ran}: the block length {self.block_length} does not divide the {length} response slots")
        elif not self.block_length and self.blocks_per_response and block * self.blocks_per_response != length:
            n = self.blocks_per_response
            notes.append(f"{ran}: {n} blocks need a length that {n} divides{self.release_blocks(length)}")
        return notes + super().generation_notes(steps, length, used)

    def fewer_steps_why(self, steps: int, length: int, used: int) -> List[str]:
        """Each of the sampler's blocks takes the same number of steps, and of the ``S`` it ran,
        those that committed no token are not counted."""
        S, block = self.steps_and_blocks(steps, length)
        why = []
        if S != steps:
            n = length // block
            why.append(f"{n} blocks of {block} slots take the same number of steps each, at least one: {S} in all")
        if used < S:
            why.append(idle_steps(S - used))
        return why


def _changed(responses: Sequence[Tensor], mask_id: int) -> List[Tensor]:
    """The response slots (1-D, long, CPU) after each step of a recorded sampler history that
    changed them (a step that commits nothing does not denoise), compared from the all-mask
    start: a first step that committed nothing was kept as a step of its own."""
    after, prev = [], None
    for r in responses:
        r = r.reshape(-1).long().cpu()
        if prev is None:
            prev = torch.full_like(r, int(mask_id))
        if not torch.equal(r, prev):
            after.append(r)
        prev = r
    return after


def changed_steps(responses: Sequence[Tensor], mask_id: int) -> int:
    """Steps of a recorded sampler history that changed the response (at least one)."""
    return max(len(_changed(responses, mask_id)), 1)


def recorded_states(responses: Sequence[Tensor], mask_id: int) -> Tuple[Tensor, Tensor]:
    """A trajectory from a sampler's history: ``responses`` holds the response
    slots after every step (1-D, or ``[1, Lr]``). Returns ``(states [S, Lr],
    decided_at [Lr])`` over the S steps that changed something: the slots
    entering each step (all masks entering the first) and the step each
    slot's token was committed at. These samplers never revisit a committed
    slot; a history that does is a bug, not an input."""
    after = _changed(responses, mask_id)
    if not after:
        raise RuntimeError("the sampler recorded no step")
    start = torch.full_like(after[0], int(mask_id))
    states = torch.stack([start] + after[:-1])
    for prev, nxt in zip(states[1:], after[1:]):
        if bool(((prev != mask_id) & (nxt != prev)).any()):
            raise RuntimeError("the sampler changed a committed slot: its history is not a trajectory")
    # a slot committed during step d is masked in the states entering steps 0..d
    return states, (states == mask_id).sum(0).long() - 1


__all__ = ["DMLLMAdapter", "olmo_transformer", "llama_stack", "no_activation_checkpointing", "chat_prompt",
           "changed_steps", "recorded_states", "LLADA_MASK_ID", "LLADA_EOS_IDS", "DREAM_MASK_ID", "DEFAULT_PROMPT",
           "generation_steps", "tokenized"]
