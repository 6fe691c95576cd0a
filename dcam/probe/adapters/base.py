"""The adapter protocol: what the explainer needs to know about a model.

An adapter wraps a (model, processor) pair and answers, for that model:

* how to build the inputs of one (image, prompt, response) example
  (:meth:`ModelAdapter.prepare`), as a :class:`Prepared` record that holds one
  flat token sequence (prompt + response) and the model's other inputs;
* where the image tokens are in that sequence (located from the model's image
  token id and the grid, never from hard-coded offsets; see
  :func:`locate_image_positions`, which also drops the per-row image-newline
  column of LaViDa-style grids);
* which decoder blocks can be hooked and which one is the default;
* the mask token (``None`` for models without an absorbing mask state), the
  pad/eos ids, the LM head, and how the model generates a response;
* how to run the model on a batch of token sequences and return the logits at
  chosen positions (:meth:`ModelAdapter.logits_at`).

The explainer (:mod:`dcam.explain`) and the gradient probe
(:mod:`dcam.probe.gradients`) only ever talk to this interface.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch import Tensor, nn

from ...errors import DcamRuntimeWarning, InputError
from ...images import load_image  # noqa: F401  (re-exported for adapters)
from ...ops.config import CamConfig
from ...words import decode_shown
from ..hooks import HeadAtRows, gather_rows, shape_of, whole_logits
from ..padding import PAD_MASK
from ..rows import LastBlockAtRows, raised_at_rows, same_logits, supports_rows
from .config_values import _ids_set, config_get  # noqa: F401  (re-exported for adapters)
from .positions import locate_image_positions, located  # noqa: F401  (re-exported)
from .sampling import idle_steps

#: Probe modes, see :mod:`dcam.probe.gradients`.
PROBES = ("full", "masked", "remask")

#: The paper's hooked block, as a fraction of the depth: the Diffusion-CAM
#: release hooks LaViDa's ``model.model.transformer.blocks[10]`` of 32.
PAPER_RELATIVE_DEPTH = 10 / 32


def relative_depth_layer(n_blocks: int, fraction: float = PAPER_RELATIVE_DEPTH) -> int:
    """The block at ``fraction`` of the depth (rounded), never the last one
    (its image-token gradients are identically zero): 32 blocks -> 10, 28 -> 9,
    4 -> 1, 3 -> 1, 2 -> 0."""
    if n_blocks < 1:
        raise InputError("the model has no transformer block to hook")
    return max(0, min(n_blocks - 2, int(round(n_blocks * fraction))))


@dataclass
class ImageView:
    """One view of the image in the token sequence (a base view, a stitched high-resolution grid, ...): its
    tokens' positions in raster order over its ``grid``; for placing its map on the image, ``box`` = the part
    of the image it covers, fractions ``(x0, y0, x1, y1)`` (past [0, 1] where the model saw it padded to a square),
    and ``cells`` = where its columns and rows lie in it (a stitched map's :class:`dcam.render.cells.Cells`)."""

    name: str
    positions: Tensor
    grid: Tuple[int, int]
    box: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    cells: Optional[Any] = None


@dataclass
class Generation:
    """What a sampler returns: the response ids, the number of denoising steps
    it used (AKD's ``steps``) and, when recording was asked for (trajectories),
    ``states`` (int64 ``[S, Lr]``: the response slots entering each step,
    mask id where still masked) and ``decided_at`` (int64 ``[Lr]``: the step at
    which each slot's final token was committed)."""

    response_ids: List[int]
    steps: int
    states: Optional[Tensor] = None
    decided_at: Optional[Tensor] = None
    steps_given: bool = False  # ``steps`` are the caller's, not the sampler's count (causal models)


@dataclass
class Prepared:
    """One example laid out as a flat sequence ``prompt + response``.

    input_ids: int64 ``[1, L]``; response slots hold the response ids (or the
        mask id when no response is known yet).
    model_inputs: the model's other inputs for a batch of one (e.g.
        ``pixel_values``); :meth:`ModelAdapter.batch_inputs` repeats them.
    response_start, response_length: the response slots ``[start, start+len)``.
    image_positions: int64 ``[h*w]``, positions of the image tokens (raster order).
    grid: ``(h, w)`` of the image-token grid.
    image: the RGB image the inputs were built from.
    prompt: the prompt text (``None``: the processor's default).
    """

    input_ids: Tensor
    model_inputs: Dict[str, Any]
    response_start: int
    response_length: int
    image_positions: Tensor
    grid: Tuple[int, int]
    image: Image.Image
    prompt: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    views: Dict[str, ImageView] = field(default_factory=dict)

    def view(self, name: Optional[str] = None) -> ImageView:
        """The view ``name`` (None: the default, :attr:`image_positions` over :attr:`grid`)."""
        if name is None or (name == "default" and "default" not in self.views):
            for v in self.views.values():  # the named view the default is (it knows its box)
                if tuple(v.grid) == tuple(self.grid) and torch.equal(v.positions, self.image_positions):
                    return v
            return ImageView("default", self.image_positions, tuple(self.grid))
        if name not in self.views:
            raise InputError(f"view: this model's image has no view {name!r} "
                             f"(views: {', '.join(['default'] + sorted(self.views))})")
        return self.views[name]

    @property
    def response_ids(self) -> List[int]:
        s = self.response_start
        return self.input_ids[0, s:s + self.response_length].tolist()

    @property
    def image_height(self) -> int:
        return int(self.image.height)


class ModelAdapter:
    """Base class of the adapters (see the module docstring): subclasses set the class attributes and
    implement the abstract methods.

    is_diffusion: the model denoises a whole response in parallel, so the logit
        at a response position predicts that position's token. For a causal
        model (``False``) the logit that predicts the token at ``p`` is read at
        ``p - 1``.
    probes: the probe modes the model supports (``"masked"`` and
        ``"remask"`` need a mask token).
    has_prompt_logits: logits exist at prompt positions (used for the
        contrastive distractor when every response slot is a target).
    default_steps: the number of denoising steps used for generation when
        none is given (and recorded when the response is supplied by the user).
    logit_shift: how many positions before a token the logits that predict it
        are read: 0 for a masked-diffusion model whose logit at ``p`` predicts
        ``p``; 1 for a causal model and for diffusion models initialised from
        an autoregressive one that kept its shift (Dream, Dream-VL, LaViDa-Dream).
        None: 0 when ``is_diffusion`` else 1.
    family: the name of the model family in :data:`dcam.probe.adapters.FAMILIES`.
    image_views: the names of the views (:attr:`Prepared.views`) this adapter's
        images can have; ``()``: none beyond the default view; None: not known
        before an image is prepared. The Explainer refuses any other ``view=``
        when it is made, instead of on every image. A subclass that makes its
        images its own way (overrides ``prepare``, ``locate_views`` or
        ``_views``) without declaring its own is not checked
        (:func:`dcam.explain.declared_image_views`).
    pads_batches: examples of other lengths share a right-padded forward (:mod:`dcam.probe.padding`).
    image_slots_hold_image_token: image positions hold image_token_id, checked per probe (VQ families: False).
    closing_tokens: special tokens the chat format closes a response with beside its eos (Dream-VL's
        <|im_end|>): given text may hold them at its end only (:func:`dcam.example.refuse_special_tokens`).
    """

    name = "base"
    family = ""
    is_diffusion = True
    logit_shift: Optional[int] = None
    probes: Tuple[str, ...] = PROBES
    has_prompt_logits = True
    default_steps = 64
    image_views: Optional[Tuple[str, ...]] = None
    pads_batches = False
    image_slots_hold_image_token = True
    closing_tokens: Tuple[str, ...] = ()

    def __init__(self, model: nn.Module, processor: Any = None, newline_column: bool = False,
                 newline_token_id: Optional[int] = None):
        self.model = model
        self.processor = processor
        self.newline_column = bool(newline_column)
        self.newline_token_id = newline_token_id

    @classmethod
    def load_model(cls, folder: str) -> Tuple[nn.Module, Any]:
        """(model, processor) read from ``folder``: what ``--model DIR --adapter MODULE:CLASS`` loads on the
        command line for a model of your own classes (the model moved to ``--device`` / ``--dtype`` and put in
        eval mode by dcam). Not overridden: dcam loads the folder itself (:func:`dcam.models.load_model`)."""
        raise _missing(cls, "load_model()")

    # ------------------------------------------------------------------ ids
    @property
    def image_token_id(self) -> int:
        raise _missing(self, "image_token_id")

    @property
    def mask_token_id(self) -> Optional[int]:
        return None

    @property
    def eos_token_ids(self) -> set:
        return set()

    @property
    def pad_token_ids(self) -> set:
        return set()

    def skip_ids(self) -> set:
        """Ids that are never explained (pad, eos, mask)."""
        s = set(self.eos_token_ids) | set(self.pad_token_ids)
        if self.mask_token_id is not None:
            s.add(int(self.mask_token_id))
        return s

    # ------------------------------------------------------------------ structure
    def blocks(self) -> Sequence[nn.Module]:
        """The hookable transformer blocks, in order."""
        raise _missing(self, "blocks()")

    def default_layer(self) -> int:
        """Index of the default block to probe (a non-negative index)."""
        return max(len(self.blocks()) - 2, 0)

    def default_config(self) -> CamConfig:
        """The :class:`~dcam.CamConfig` an explainer uses when none is passed:
        ``CamConfig()`` unless the adapter knows a better setting for its model."""
        return CamConfig()

    def final_norm(self) -> Optional[nn.Module]:
        """The module whose output is the last hidden state of the token
        sequence that holds the image tokens (for TAM)."""
        return None

    def lm_head_weight(self) -> Tensor:
        """``[V, D]`` LM head rows."""
        raise _missing(self, "lm_head_weight()")

    def resolve_layer(self, layer: Optional[int]) -> int:
        n, error, what = len(self.blocks()), InputError, "layer"
        if layer is None:  # the adapter's default, checked as layer= is (-2 stayed -2; 1.0 and "1" became 1)
            layer, error, what = self.default_layer(), RuntimeError, f"{type(self).__name__}.default_layer(): layer"
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):  # 1.5 is not truncated to 1
            raise error(f"{what} must be an int, got {layer!r}")
        layer = int(layer)
        if not -n <= layer < n:
            raise error(f"{what} {layer} out of range for a model with {n} blocks")
        return layer % n

    # ------------------------------------------------------------------ inputs
    def prepare(self, image, prompt: Optional[str] = None, response_ids: Optional[Sequence[int]] = None,
                response_length: Optional[int] = None) -> Prepared:
        raise _missing(self, "prepare()")

    # Token handling: defaults for adapters that keep a Hugging Face tokenizer
    # in `self.tokenizer`; adapters with their own processor override them.
    def encode_response(self, text: str) -> List[int]:
        return list(self._tokenizer()(text, add_special_tokens=False)["input_ids"])

    def token_strings(self, ids: Sequence[int]) -> List[str]:
        ids = [int(i) for i in ids]  # an id past the tokenizer (a padded LM head's row) is named by its number
        return [f"<id {i}>" if t is None else str(t) for i, t in zip(ids, self._tokenizer().convert_ids_to_tokens(ids))]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer().decode([int(i) for i in ids], skip_special_tokens=True)

    def _tokenizer(self):
        if getattr(self, "tokenizer", None) is None:  # (was an AttributeError naming no method)
            raise _missing(self, "encode_response(), token_strings() and decode(), or keep a Hugging Face "
                                 "tokenizer in self.tokenizer,")
        return self.tokenizer

    def special_token_ids(self) -> set:
        """Ids of the tokenizer's special tokens (``<|eot_id|>``, ...): never glued to the text around them, and no
        words but for the unknown token (:mod:`dcam.example`). None without a Hugging Face tokenizer."""
        try:
            tok = self.tokenizer
        except (AttributeError, InputError):
            return set()
        ids = {int(i) for i in getattr(tok, "all_special_ids", []) or []}
        added = getattr(tok, "added_tokens_decoder", None) or {}  # extra special tokens are listed here only
        return ids | {int(i) for i, t in added.items() if getattr(t, "special", False)}

    def decode_tokens(self, ids: Sequence[int]) -> str:
        """The text of explainable tokens, special ones included: every token explained
        is one a reader sees. Words are read off this text (:func:`dcam.words.token_spans`).
        An adapter with its own :meth:`decode` (and no Hugging Face tokenizer) gets that."""
        if type(self).decode is not ModelAdapter.decode:
            return self.decode(ids)
        return decode_shown(self._tokenizer(), ids)

    def locate(self, input_ids: Tensor, grid: Tuple[int, int]) -> Tensor:
        return located(self, input_ids, grid)  # a span of another count than grid's: this adapter's bug

    def batch_inputs(self, prep: Prepared, batch: int) -> Dict[str, Any]:
        """``prep.model_inputs`` for ``batch`` rows of the same example (views, no copy)."""
        return {k: (v.expand(batch, *v.shape[1:]) if _per_row(v) and batch > 1 else v)
                for k, v in prep.model_inputs.items()}

    def stack_key(self, prep: Prepared) -> Tuple:
        """What examples must share, beside their sequence layout, for :meth:`stack_inputs`
        to batch them: the shapes past the batch dimension of the per-row inputs it
        concatenates. (LLaVA-NeXT's pixel_values are [1, tiles, 3, H, W]: two images with
        the same token layout can still have different numbers of tiles.)"""
        return tuple((k, tuple(v.shape[1:])) for k, v in sorted(prep.model_inputs.items()) if _per_row(v))

    def stack_inputs(self, preps: Sequence[Prepared]) -> Dict[str, Any]:
        """The model inputs of several examples (one row each) as one batch."""
        return {k: (torch.cat([p.model_inputs[k] for p in preps], 0) if _per_row(v) else v)
                for k, v in preps[0].model_inputs.items()}

    # ------------------------------------------------------------------ running
    #: Whether :meth:`generate` can record its states (``record=True``) for trajectories.
    records_trajectory = False

    def generate(self, prep: Prepared, steps: Optional[int] = None, response_length: Optional[int] = None,
                 record: bool = False) -> Generation:
        """Generate a response with the model's own sampler (see :class:`Generation`)."""
        raise _missing(self, "generate()")

    def generation_notes(self, steps: Optional[int], length: int, used: int) -> List[str]:
        """Notes of a generation of ``length`` slots in ``used`` steps, ``steps`` asked (None: none): other steps."""
        if steps is None or used == steps:
            return []
        why = self.fewer_steps_why(steps, length, used)
        return [f"steps: {steps} requested, the sampler used {used}" + (f" ({'; '.join(why)})" if why else "")]

    def fewer_steps_why(self, steps: int, length: int, used: int) -> List[str]:
        """Why the sampler used ``used`` of ``steps``, a phrase per reason: it runs the steps asked for and
        counts those that changed its response (:class:`Generation`); the others committed no token."""
        return [idle_steps(steps - used)] if used < steps else []

    def logit_positions(self, positions: Tensor) -> Tensor:
        """Where the logits that predict the tokens at ``positions`` are read
        (``positions - logit_shift``)."""
        shift = self.logit_shift if self.logit_shift is not None else (0 if self.is_diffusion else 1)
        return positions - int(shift)

    def logits_at(self, input_ids: Tensor, model_inputs: Dict[str, Any], positions: Tensor,
                  response_start: int) -> Tensor:
        """Run the model on ``input_ids [B, L]`` and return the logits
        (float32) at ``positions`` (``[P]`` shared by every row, or ``[B, P]``)
        -> ``[B, P, V]``. The LM head runs at those rows only (:meth:`logits_with_head_at`)."""
        return self.logits_with_head_at(lambda: self.forward_logits(input_ids, model_inputs), positions,
                                        input_ids.shape[1])

    def output_head(self) -> Optional[nn.Module]:
        """The module that maps the final hidden states to logits: by default the
        ``nn.Linear`` whose weight is :meth:`lm_head_weight`; None if there is none
        (the model multiplies by the embedding matrix itself, say)."""
        if not hasattr(self, "_output_head"):
            try:
                w = self.lm_head_weight()
            except NotImplementedError:
                w = None
            self._output_head = next((m for m in self.model.modules() if isinstance(m, nn.Linear) and m.weight is w),
                                     None) if w is not None else None
        return self._output_head

    def logits_with_head_at(self, run, positions: Tensor, length: int) -> Tensor:
        """``run()`` (a forward over sequences of ``length`` positions returning the
        logits) with the LM head applied at ``positions`` only (see
        :class:`dcam.probe.hooks.HeadAtRows` for why) -> float32 ``[B, P, V]``.
        Where the head is not one module call on the whole sequence, the full
        logits are computed and gathered."""
        head = self.output_head()
        self.scored_rows = None
        if head is None:
            return gather_positions(whole_logits(self, run(), length), positions)
        # a plain nn.Linear with no hook of anyone's computes exactly h W^T + b: a subclass or a hook
        # may soft-cap or scale inside the call, where comparing the output with the logits cannot see it
        plain = type(head) is nn.Linear and not head._forward_hooks and not head._forward_pre_hooks and \
            not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks
        hook = HeadAtRows(head, positions, length)
        try:
            logits = run()
        finally:
            hook.remove()
        if hook.calls == 0:
            return gather_positions(whole_logits(self, logits, length), positions)
        P = positions.shape[-1]
        if hook.calls != 1 or not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[1] != P:
            raise RuntimeError(f"{type(self).__name__}.forward_logits: the LM head ran {hook.calls} times and the "
                               f"model returned {shape_of(logits)}; expected one call and logits [B, {P}, V] "
                               "at the scored rows (the head's output as it is)")
        # the head's input at the scored rows and the head, when the model returns the head's output
        # as it is (no soft-capping or scaling after it): the probe differentiates the words' scores
        # through them (dcam.probe.gradients.head_scores)
        if plain and isinstance(hook.out, Tensor) and hook.out.shape == logits.shape and torch.equal(hook.out, logits):
            self.scored_rows = (hook.rows, head)
        return logits.float()

    def forward_logits(self, input_ids: Tensor, model_inputs: Dict[str, Any]) -> Tensor:
        raise _missing(self, "forward_logits()")

    def logits_at_rows(self, input_ids: Tensor, model_inputs: Dict[str, Any], positions: Tensor,
                       response_start: int) -> Tensor:
        """:meth:`logits_at` for a caller that reads nothing of the forward but
        these logits and the hidden states of the blocks before the last (no
        hook on the last block or the final norm). The last block may then run
        at ``positions`` only, so that every word's backward skips its other
        rows: by default (:mod:`dcam.probe.rows`) where :meth:`check_rows_only`
        found that this model gives the same logits that way; an adapter may
        override this with its model's own (the bundled model's does)."""
        if getattr(self, _rows_verdict(model_inputs), None) is not True or not supports_rows(self.blocks()[-1]):
            # (checked again: a wrapper the user put on the block after the one-time check)
            return self.logits_at(input_ids, model_inputs, positions, response_start)
        with LastBlockAtRows(self.blocks()[-1], positions, input_ids.shape[1]):
            return self.logits_at(input_ids, model_inputs, positions, response_start)

    def check_rows_only(self, input_ids: Tensor, model_inputs: Dict[str, Any], positions: Tensor,
                        response_start: int) -> bool:
        """Once per adapter, before the first :meth:`logits_at_rows` of a probe:
        whether the last block can run at the scored rows only (its layout is
        one :func:`dcam.probe.rows.supports_rows` knows, and on these inputs the
        logits equal :meth:`logits_at`'s within rounding). Adapters with their
        own :meth:`logits_at_rows` are taken at their word."""
        if type(self).logits_at_rows is not ModelAdapter.logits_at_rows:
            return True
        verdict = _rows_verdict(model_inputs)
        if getattr(self, verdict, None) is None:
            ok = False
            block = self.blocks()[-1]
            if supports_rows(block):
                with torch.no_grad():
                    full = self.logits_at(input_ids, model_inputs, positions, response_start)
                    try:
                        with LastBlockAtRows(block, positions, input_ids.shape[1]) as at_rows:
                            rows = self.logits_at(input_ids, model_inputs, positions, response_start)
                        ok = at_rows.ran == 1 and same_logits(full, rows, block)[0]
                        why = "does not reproduce the full block's logits on this model"
                    except Exception as exc:  # an optimisation that does not fit this layer: say so, run it whole
                        if isinstance(exc, torch.OutOfMemoryError) or not raised_at_rows(exc) or \
                                self._runs_at_rows(block, input_ids, model_inputs, positions, response_start):
                            # the model's own error (memory, a hook's: one that does not come again when the
                            # block runs at rows a second time): it was swallowed and the slower path kept
                            raise
                        at_rows, why = None, f"failed on this model ({type(exc).__name__}: {exc})"
                if (at_rows is None or at_rows.ran == 1) and not ok:
                    warnings.warn(f"{type(block).__name__} at the scored rows only {why}; the last block runs at "
                                  "every row", DcamRuntimeWarning)
            setattr(self, verdict, ok)
        return getattr(self, verdict)

    def _runs_at_rows(self, block, input_ids, model_inputs, positions, response_start) -> bool:
        """Whether the forward with ``block`` at the scored rows runs, tried once more after it
        raised (an error of the optimisation itself comes again)."""
        try:
            with LastBlockAtRows(block, positions, input_ids.shape[1]):
                self.logits_at(input_ids, model_inputs, positions, response_start)
        except Exception:  # noqa: BLE001 - the same failure again: the optimisation does not fit
            return False
        return True

    # ------------------------------------------------------------------ misc
    def check_image_tokens(self):
        """Raise InputError when the model has no image token."""
        try:
            tid = self.image_token_id
        except (AttributeError, NotImplementedError):
            tid = None
        if tid is None:
            raise InputError(f"{type(self.model).__name__} has no image token id; it cannot be explained")


def _rows_verdict(model_inputs) -> str:
    """Where ``check_rows_only`` keeps its verdict: apart for padded batches (their mask holds padding)."""
    return "_rows_only_ok_padded" if PAD_MASK in model_inputs else "_rows_only_ok"


def _missing(adapter, what: str) -> NotImplementedError:
    """The error of a member ``adapter`` (an adapter, or its class) lacks."""
    name = adapter.__name__ if isinstance(adapter, type) else type(adapter).__name__
    return NotImplementedError(f"{name} does not implement {what} which dcam needs of an adapter "
                               "(docs/FAMILIES.md, 'Bring your own dMLLM')")


def gather_positions(logits: Tensor, positions: Tensor) -> Tensor:
    """``logits [B, L, V]`` at ``positions`` (``[P]`` or ``[B, P]``) -> ``[B, P, V]`` float32."""
    return gather_rows(logits, positions).float()


def _per_row(v) -> bool:
    """A model input with one row per example (batched along dim 0)."""
    return isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == 1
