"""Examples of different lengths in one forward: right padding, per family.

Examples whose sequences differ (another prompt, another response length,
another image size and so another number of image tokens) share a batched
forward when their family can be padded: every row is padded on the right to
the longest one, and the padded positions are hidden from the attention
(keys only, as the published models' own padding masks do). Right padding
keeps every real token at its own position (rotary positions count from the
start), and a padded key gets no attention weight, so every real row computes
what it computes alone, up to rounding in reductions of another length.

How the mask reaches the model is the family's: the batch carries it as
``model_inputs["attention_mask"]`` (``[B, L]``, 1 keep, 0 pad) and each
adapter's :meth:`~dcam.probe.adapters.base.ModelAdapter.forward_logits` hands
it over in the form its model takes (the bundled model and transformers' VLMs:
as it is; LLaDA-backbone models: an attention bias, as their own batched
samplers build it; LLaDA-V / LaViDa: after expanding each row's image alone).
Families whose published forward takes no padding mask for the probe's inputs
(Dream backbones: position ids and masks built by the sampler; DiffusionGemma:
an encoder and a decoder) are not padded: their examples share a forward only
when their layouts are equal. :attr:`ModelAdapter.pads_batches` says which.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

PAD_MASK = "attention_mask"


def pads(adapter) -> bool:
    """Whether this adapter's examples of different layouts may share a padded forward."""
    return bool(getattr(adapter, "pads_batches", False))


def padding_id(adapter) -> int:
    """A token id for the padded positions: the tokenizer's pad (else end-of-text) id.
    Its value never reaches a real row (the positions are masked), but it must be a
    text token the embedding can look up, not an image placeholder."""
    for ids in (adapter.pad_token_ids, adapter.eos_token_ids):
        ids = sorted(int(i) for i in ids if i is not None and int(i) >= 0)
        if ids:
            return ids[0]
    return 0


def pad_rows(adapter, rows: Sequence[Tensor], preps) -> Tuple[Tensor, Dict[str, Any]]:
    """``rows`` (each ``[1, L_b]``, example ``b``'s probe inputs) padded on the right to the longest
    -> (ids ``[B, L]``, the batch's model inputs with the keep mask under :data:`PAD_MASK`)."""
    L = max(int(r.shape[1]) for r in rows)
    pad = padding_id(adapter)
    ids = torch.cat([F.pad(r, (0, L - r.shape[1]), value=pad) for r in rows], 0)
    keep = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        keep[b, :r.shape[1]] = 1
    inputs = adapter.stack_inputs(list(preps))
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


def bias_from_keep(keep: Tensor, device) -> Tensor:
    """LLaDA's attention bias for a padded batch, as its own batched samplers build it:
    ``[B, 1, L, L]`` True where both the query and the key are real tokens."""
    k = keep.to(device=device, dtype=torch.bool)
    return (k[:, :, None] & k[:, None, :])[:, None]


__all__ = ["PAD_MASK", "pads", "padding_id", "pad_rows", "split_padding", "row_lengths", "bias_from_keep"]
