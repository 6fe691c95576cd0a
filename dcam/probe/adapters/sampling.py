"""The dMLLM samplers, written once here for the families whose model object
has no sampler of its own (Lumina-DiMOO ships it as a script function) and
for the stand-in models of :mod:`dcam.testing`.

:func:`low_confidence_remasking`: the semi-autoregressive greedy sampler of
the LLaDA family (LLaDA-V, LaViDa without cache, MMaDA, Lumina-DiMOO).

The response canvas starts fully masked and is split into blocks of
``block_length`` slots decoded left to right; each block gets ``steps /
n_blocks`` steps; at every step the model predicts every slot, and the masked
slots of the current block with the most confident greedy prediction are
committed, ``transfer_schedule(masked, steps)[i]`` of them at step ``i`` (the
linear schedule: ``masked // steps`` each, one more in the first ``masked %
steps`` steps; LaViDa decodes on its ``"shift"`` schedule). A step that commits nothing (more steps than slots) is not
counted in :func:`steps_used`.

:func:`dream_remasking`: Dream's greedy sampler (Dream-VL, LaViDa-Dream):
``steps`` steps on times linearly spaced from 1 to ``eps``; at step ``i``,
``int(masked * (1 - t[i+1] / t[i]))`` slots are committed (all that remain at
the last step), the most confident first (``"maskgit_plus"``: top
probability; ``"entropy"``: negative entropy).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ...errors import InputError


def transfer_schedule(masked: int, steps: int, schedule: Optional[str] = None, shift: float = 3.0) -> List[int]:
    """Tokens committed at each of ``steps`` steps for ``masked`` masked slots.

    ``schedule=None``: linear, ``masked // steps`` each, one more in the first ``masked % steps``.
    ``"shift"`` (LaViDa's ``schedule='shift'``, which its ``predict.py`` and the Diffusion-CAM
    release decode with): the fraction of slots decided by time ``t`` follows
    ``shift * t / (1 + (shift - 1) * t)`` over ``min(steps, masked)`` equal steps, truncated to
    whole slots, at least one per step (the surplus taken back one slot at a time from the
    first steps holding more than one), then read backwards: few slots at first, most at the
    end. Steps past ``masked`` commit nothing."""
    masked, steps = int(masked), int(steps)
    if schedule is None:
        base, extra = divmod(masked, steps)
        return [base + (1 if i < extra else 0) for i in range(steps)]
    if schedule != "shift":
        raise ValueError(f"unknown schedule {schedule!r}")
    n = min(steps, masked)
    if n == 0:
        return [0] * steps
    t = torch.linspace(0, 1, n + 1)  # float32, as the release's
    done = (shift * t / (1 + (shift - 1) * t) * masked).to(torch.int64).tolist()
    counts = [max(b - a, 1) for a, b in zip(done, done[1:])]
    surplus, j = sum(counts) - masked, 0
    while surplus > 0:
        j %= n
        if counts[j] > 1:
            counts[j] -= 1
            surplus -= 1
        j += 1
    return counts[::-1] + [0] * (steps - n)


def block_plan(length: int, steps: int, block_length: Optional[int]) -> Tuple[int, int]:
    """(number of blocks, steps per block); InputError when they do not divide."""
    block_length = int(block_length or length)
    if length % block_length:
        raise InputError(f"response_length {length} is not a multiple of the block length {block_length}")
    n_blocks = length // block_length
    if steps % n_blocks:
        raise InputError(f"steps {steps} is not a multiple of the number of blocks {n_blocks}")
    return n_blocks, steps // n_blocks


def steps_used(length: int, steps: int, block_length: Optional[int] = None) -> int:
    """Denoising steps that commit at least one token (AKD's ``steps``)."""
    n_blocks, per_block = block_plan(length, steps, block_length)
    per = (block_length or length)
    return n_blocks * sum(1 for k in transfer_schedule(per, per_block) if k > 0)


def idle_steps(n: int) -> str:
    """Why ``n`` of a sampler's steps are not in the count it used (:func:`steps_used`)."""
    return f"{n} step committed no token and is not counted" if n == 1 else \
        f"{n} steps committed no token and are not counted"


@torch.no_grad()
def low_confidence_remasking(logits_fn: Callable[[Tensor], Tensor], x: Tensor, start: int, length: int,
                             steps: int, mask_id: int, block_length: Optional[int] = None,
                             history: Optional[list] = None, schedule: Optional[str] = None) -> Tensor:
    """Fill the masked canvas ``x[:, start:start+length]`` (``x`` int64 ``[1, L]``,
    modified in place and returned). ``logits_fn(x)`` returns ``[1, L, V]``
    logits aligned with ``x`` (the logit at ``p`` predicts ``p``).
    ``history``: a list that receives ``x`` after every step; ``schedule``: of
    :func:`transfer_schedule`."""
    n_blocks, per_block = block_plan(length, steps, block_length)
    blen = length // n_blocks
    for b in range(n_blocks):
        lo, hi = start + b * blen, start + (b + 1) * blen
        counts = transfer_schedule(int((x[0, lo:hi] == mask_id).sum()), per_block, schedule)
        for k in counts:
            if k == 0:
                continue
            logits = logits_fn(x)[0].float()
            pred = logits.argmax(-1)
            conf = torch.softmax(logits.double(), -1).gather(-1, pred[:, None])[:, 0]
            masked = x[0] == mask_id
            conf = torch.where(masked, conf, torch.full_like(conf, -float("inf")))
            conf[:lo] = -float("inf")
            conf[hi:] = -float("inf")
            pick = torch.topk(conf, k).indices
            x[0, pick] = pred[pick]
            if history is not None:
                history.append(x.clone())
    return x


@torch.no_grad()
def dream_remasking(logits_fn: Callable[[Tensor], Tensor], x: Tensor, start: int, steps: int, mask_id: int,
                    alg: str = "maskgit_plus", eps: float = 1e-3) -> List[Tensor]:
    """Fill the masked slots of ``x[:, start:]`` (``[1, L]``, in place);
    ``logits_fn(x)`` returns ``[1, L, V]`` logits already shifted so that the
    logit at ``p`` predicts ``p``. Returns ``x`` after every step."""
    t = torch.linspace(1, eps, steps + 1)
    history = []
    for i in range(steps):
        masked = x[0] == mask_id
        masked[:start] = False
        if not bool(masked.any()):
            break
        p = torch.softmax(logits_fn(x)[0].float()[masked], -1)
        conf, pred = p.max(-1)
        if alg == "entropy":
            conf = (p * torch.log(p + 1e-10)).sum(-1)
        n = int(masked.sum())
        k = int(n * (1 - t[i + 1] / t[i])) if i < steps - 1 else n
        if k > 0:
            top = torch.topk(conf, k).indices
            x[0, torch.nonzero(masked).reshape(-1)[top]] = pred[top]
        history.append(x.clone())
    return history


def shift_right(logits: Tensor) -> Tensor:
    """Dream's shift: ``[B, L, V]`` logits where position ``p`` holds the
    logit computed at ``p - 1`` (position 0 keeps its own)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], 1)


__all__ = ["transfer_schedule", "block_plan", "steps_used", "idle_steps", "low_confidence_remasking",
           "dream_remasking", "shift_right"]
