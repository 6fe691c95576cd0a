"""Examples of different lengths in one forward: right padding, per family.

Examples whose sequences differ (another prompt, another response length,
another image size and so another number of image tokens) share a batched
forward when their family can be padded: every row is padded on the right to
the longest one, and no real token attends to a padded one. Right padding
keeps every real token at its own position (rotary positions count from the
start), and a padded key gets no attention weight, so every real row computes
what it computes alone, up to rounding in reductions of another length.

How the mask reaches the model is the family's: the batch carries it as
``model_inputs["attention_mask"]`` (``[B, L]``, 1 keep, 0 pad) and each
adapter's :meth:`~dcam.probe.adapters.base.ModelAdapter.forward_logits` hands
it over in the form its model takes: as it is (the bundled model,
transformers' VLMs, the LLaDA backbones of LLaDA-V and LaViDa, after each
row's image is expanded alone), as LLaDA's attention bias (MMaDA, Lumina-DiMOO:
what their own batched samplers build), or as a 4-D mask (the Dream models,
whose attention passes a 4-D mask on as it is). Per-position inputs (Qwen-VL's
``mm_token_type_ids``, Gemma 3's ``token_type_ids``) are padded with the
sequence, and anyres pixel inputs with all-zero tiles, which the models leave
out themselves (``tiled_inputs`` of the transformers adapters). DiffusionGemma
splits each padded row at its own response start into an encoder prompt and a
decoder canvas, each padded apart, within its encoder's sliding window.
:attr:`ModelAdapter.pads_batches` says which families pad, and docs/FAMILIES.md
how each takes the mask. An adapter's word for it is checked once
(:func:`check_padding`): one that sets the flag but drops the mask is warned
about and no longer padded.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DcamRuntimeWarning, warn_at_caller
from ..profiling import stage
from .hooks import probing
from .rows import same_logits

PAD_MASK = "attention_mask"


def pads(adapter) -> bool:
    """Whether this adapter's examples of different layouts may share a padded forward: it sets
    ``pads_batches`` and :func:`check_padding` did not find its padded rows to differ."""
    return bool(getattr(adapter, "pads_batches", False)) and getattr(adapter, "_padding_ok", None) is not False


def check_padding(adapter, preps) -> None:
    """Once per adapter, before the first padded forward of ``preps`` (a batch's examples): whether a
    padded row's logits at its response rows equal the example's alone, as :meth:`~dcam.probe.adapters.
    base.ModelAdapter.check_rows_only` checks its optimisation. An adapter whose ``forward_logits`` drops
    the keep mask let real tokens attend to the padding (maps off by up to 0.16, without a word): warned
    about (RuntimeWarning), and from then on :func:`pads` is False for it (one forward per layout, each
    example's maps as alone). Costs one forward of two examples and one of one, once."""
    if not pads(adapter) or getattr(adapter, "_padding_ok", None) is not None:
        return
    pair, seen = None, {}
    for p in preps:  # the first two examples that one padded forward would hold at different lengths
        first = seen.setdefault(adapter.stack_key(without_per_token_inputs(p)), p)
        if first.input_ids.shape[1] != p.input_ids.shape[1]:
            pair = [first, p]
            break
    if pair is None:  # nothing padded in this batch: checked at the first batch that pads
        return
    short = min(range(2), key=lambda b: int(pair[b].input_ids.shape[1]))
    want = [adapter.logit_positions(torch.arange(p.response_start, p.response_start + p.response_length))
            for p in pair]
    width = max(int(w.numel()) for w in want)
    want = torch.stack([torch.cat([w, w[:1].expand(width - w.numel())]) for w in want])  # (repeats never compared)
    n = int(pair[short].response_length)
    with probing(adapter), torch.no_grad(), stage("dcam.padding_check"):
        ids, inputs = pad_rows(adapter, [p.input_ids for p in pair], pair)
        padded = adapter.logits_at(ids, inputs, want, pair[0].response_start)[short, :n]
        alone = adapter.logits_at(pair[short].input_ids, adapter.batch_inputs(pair[short], 1), want[short:short + 1],
                                  pair[short].response_start)[0, :n]
    adapter._padding_ok, diff = same_logits(alone, padded, adapter.blocks()[-1])
    if not adapter._padding_ok:
        warn_at_caller(f"{type(adapter).__name__} sets pads_batches, but a padded row's logits differ from the "
                       f"example's alone by up to {diff:.3g} (does its forward_logits() hand model_inputs"
                       f"['{PAD_MASK}'] to the model?); examples of other layouts are explained apart, one "
                       "forward per layout", DcamRuntimeWarning)


def padding_id(adapter) -> int:
    """A token id for the padded positions: the tokenizer's pad id, else an end-of-text
    id, else another id the adapter never explains. Its value never reaches a real row
    (the positions are masked), but it must be a text token the embedding looks up: never
    an image placeholder (the model would count one more image token than it has
    features) nor the mask token. (An adapter's ``pad_token_ids`` may hold the image
    token, which is never explained either, so it is not taken from there blindly.)"""
    not_text = {adapter.image_token_id, adapter.mask_token_id}
    placeholders = getattr(adapter, "placeholder_ids", None)
    if callable(placeholders):
        not_text |= set(placeholders())
    tok = getattr(adapter, "tokenizer", None)
    for ids in ({getattr(tok, "pad_token_id", None)}, adapter.eos_token_ids, adapter.pad_token_ids):
        ids = sorted(int(i) for i in ids if i is not None and int(i) >= 0 and int(i) not in not_text)
        if ids:
            return ids[0]
    return next(i for i in range(len(not_text) + 1) if i not in not_text)


def per_token_inputs(prep) -> List[str]:
    """The model inputs with one value per position of the sequence (``[1, L]``: Qwen-VL's
    ``mm_token_type_ids``, Gemma 3's ``token_type_ids``): padded with the sequence (0: text)."""
    shape = tuple(prep.input_ids.shape)
    return [k for k, v in prep.model_inputs.items() if isinstance(v, Tensor) and tuple(v.shape) == shape]


def without_per_token_inputs(prep):
    """``prep`` without its per-token inputs (what a padded batch's examples must share the rest of)."""
    drop = per_token_inputs(prep)
    return replace(prep, model_inputs={k: v for k, v in prep.model_inputs.items() if k not in drop})


def pad_rows(adapter, rows: Sequence[Tensor], preps) -> Tuple[Tensor, Dict[str, Any]]:
    """``rows`` (each ``[1, L_b]``, example ``b``'s probe inputs) padded on the right to the longest
    -> (ids ``[B, L]``, the batch's model inputs with the keep mask under :data:`PAD_MASK`)."""
    L = max(int(r.shape[1]) for r in rows)
    pad = padding_id(adapter)
    ids = torch.cat([F.pad(r, (0, L - r.shape[1]), value=pad) for r in rows], 0)
    keep = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        keep[b, :r.shape[1]] = 1
    padded = []
    for p in preps:
        per_token = per_token_inputs(p)
        padded.append(replace(p, model_inputs={k: F.pad(v, (0, L - v.shape[1])) if k in per_token else v
                                               for k, v in p.model_inputs.items()}))
    inputs = adapter.stack_inputs(padded)
    inputs[PAD_MASK] = keep
    return ids, inputs


def split_padding(model_inputs: Dict[str, Any]) -> Tuple[Dict[str, Any], Any]:
    """(the model inputs without the keep mask, the mask or None): for families whose model
    takes the mask in another form."""
    rest = {k: v for k, v in model_inputs.items() if k != PAD_MASK}
    return rest, model_inputs.get(PAD_MASK)


def row_lengths(keep: Tensor) -> List[int]:
    """Each row's real length (its ones come first: right padding)."""
    return [int(n) for n in keep.sum(1).tolist()]


def key_mask(keep: Tensor, device, dtype: torch.dtype) -> Tensor:
    """``[B, 1, L, L]`` additive mask in ``dtype``: 0 where the key is a real token, the dtype's
    lowest value where it is padding, so every query sees the real keys only. For the Dream
    models, whose attention hands a 4-D mask on as it is: their SDPA attention to
    ``scaled_dot_product_attention`` (a 2-D one is widened only on CUDA, and to query-and-key:
    a padded query row with no key to see), their eager attention adds it to the scores. A
    boolean mask would be added as 1 and 0 there, hiding nothing, so it is additive for both."""
    k = keep.to(device=device, dtype=torch.bool)
    bias = torch.zeros(k.shape, device=device, dtype=dtype).masked_fill(~k, torch.finfo(dtype).min)
    return bias[:, None, None, :].expand(k.shape[0], 1, k.shape[1], k.shape[1])


def bias_from_keep(keep: Tensor, device) -> Tensor:
    """LLaDA's attention bias for a padded batch, as its own batched samplers build it:
    ``[B, 1, L, L]`` True where both the query and the key are real tokens."""
    k = keep.to(device=device, dtype=torch.bool)
    return (k[:, :, None] & k[:, None, :])[:, None]


__all__ = ["PAD_MASK", "pads", "check_padding", "padding_id", "per_token_inputs", "without_per_token_inputs",
           "pad_rows", "split_padding", "row_lengths", "key_mask", "bias_from_keep"]
