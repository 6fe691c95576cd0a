"""What a probe runs on: probe modes, target scores, the contrastive
distractor, and the one check of what is asked of a probe.

Probe modes (response = the slots after the prompt):

* ``"full"``: prompt + complete response, nothing masked (the published method).
* ``"masked"``: every response slot replaced by the mask token (the state of
  the first denoising step); each target is scored by the logit of its final
  token at its slot.
* ``"remask"``: one row per explained item (a token, or every piece of a
  word), that item's slots masked, the rest of the response visible.

Target scores: ``"logit"``: the token's own logit at its position (a word or
phrase of several tokens: the sum of its tokens' logits). ``"contrastive"``
(the published variant): the sum of all logits at the target position minus
the sum of all logits at a distractor position, chosen deterministically: the
first response slot that is not a target (pad/eos slots included); when every
response slot is a target, the last prompt token that is not an image token.
For a causal model the logits of a position are read one position earlier
(the row that predicts its token).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from .adapters.base import PROBES, ModelAdapter, Prepared

TARGET_SCORES = ("logit", "contrastive")


class LastLayerError(InputError):
    """Raised when the last block is probed for gradients: its image-token
    gradients are identically zero (every later op is per position)."""


def check_probe_request(adapter: ModelAdapter, layer: Optional[int], probe: Optional[str] = None,
                        want_grads: bool = True, method_probes: Optional[Sequence[str]] = None,
                        allow_last_layer: bool = False) -> int:
    """The one place that checks what is asked of a probe; returns the
    resolved (non-negative) layer. ``probe`` None: only the layer is checked.
    ``method_probes``: the probe modes the map method accepts (None: any)."""
    blocks = adapter.blocks()
    layer = adapter.resolve_layer(layer)
    if want_grads and layer == len(blocks) - 1 and not allow_last_layer:
        raise LastLayerError(
            f"layer {layer} is the last block: the image-token gradients there are identically zero (every later "
            "op is per position, so a response logit does not depend on the image tokens' last hidden states); "
            "probe an earlier block")
    if probe is not None:
        if probe not in PROBES:
            raise InputError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")
        if probe not in adapter.probes:
            raise InputError(f"probe={probe!r} is not supported by the {adapter.family or adapter.name} model "
                             f"(supported: {', '.join(adapter.probes)})")
        if probe != "full" and adapter.mask_token_id is None:  # said before a generation, not after it
            raise InputError(_no_mask_token(adapter, probe))
        if method_probes is not None and probe not in method_probes:
            raise InputError(f"probe={probe!r} is not supported by this method (supported: "
                             f"{', '.join(method_probes)})")
    return layer


def _no_mask_token(adapter: ModelAdapter, probe: str) -> str:
    return (f"probe={probe!r} needs a mask token and the {adapter.family or adapter.name} model has none "
            "(supported probes without one: full)")


def check_target_score(target_score: str) -> str:
    if target_score not in TARGET_SCORES:
        raise InputError(f"target_score must be one of {', '.join(TARGET_SCORES)}, got {target_score!r}")
    return target_score


def build_probe_inputs(adapter: ModelAdapter, prep: Prepared, positions: Sequence[int], probe: str,
                       groups: Optional[Sequence[Sequence[int]]] = None) -> Tensor:
    """The ``[R, L]`` sequences a probe runs on (see the module docstring).
    For ``remask``: one row per group of ``positions`` (default: one per position)."""
    ids = prep.input_ids
    if probe == "full":
        return ids.clone()
    mask_id = adapter.mask_token_id
    if mask_id is None:
        raise InputError(_no_mask_token(adapter, probe))
    if probe == "masked":
        out = ids.clone()
        out[0, prep.response_start:prep.response_start + prep.response_length] = int(mask_id)
        return out
    if probe == "remask":
        pos = list(positions)
        groups = [[k] for k in range(len(pos))] if groups is None else groups
        out = ids.expand(len(groups), ids.shape[1]).clone()
        for r, members in enumerate(groups):
            out[r, torch.as_tensor([pos[k] for k in members], dtype=torch.long)] = int(mask_id)
        return out
    raise InputError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")


def pick_distractor(prep: Prepared, positions: Sequence[int], adapter: ModelAdapter) -> int:
    """The contrastive distractor position (see the module docstring)."""
    targets = set(int(p) for p in positions)
    s = prep.response_start
    for p in range(s, s + prep.response_length):
        if p not in targets:
            return p
    if not adapter.has_prompt_logits:
        raise InputError("target_score='contrastive' needs a response slot that is not a target on "
                         f"{adapter.family or adapter.name} (it has no logits at prompt positions); leave one token "
                         "out of targets")
    ids = prep.input_ids[0]
    img = int(adapter.image_token_id)
    for p in range(s - 1, 0 if adapter.is_diffusion else 1, -1):  # the last prompt token that is not an image token
        if int(ids[p]) != img:
            return p
    raise InputError("target_score='contrastive': no prompt token outside the image span to use as distractor")


__all__ = ["TARGET_SCORES", "LastLayerError", "check_probe_request", "check_target_score", "build_probe_inputs",
           "pick_distractor"]
