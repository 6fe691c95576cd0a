"""Gradient probing: activations and target-score gradients at one block.

:func:`probe` runs the model once (or once per chunk of rows for
``probe="remask"``) and returns, for the image-token span of the hooked block,
the activations and the gradient of every explained token's target score:

* parameters are frozen for the call (``requires_grad=False``, restored after),
  so no weight gradient is ever computed;
* the model runs under ``no_grad`` up to the hooked block; a forward hook turns
  that block's output into a fresh leaf that requires grad and switches autograd
  on, so the graph holds only the blocks above it (plus the LM head);
* all ``T`` gradients come from that one forward, by batched cotangents
  (``torch.autograd.grad(..., is_grads_batched=True)``, i.e. a vmapped
  backward), ``chunk_size`` cotangents at a time to bound memory. ``remask``
  runs its ``T`` variants as one batch (in chunks of ``chunk_size`` rows) and
  takes one backward of the summed scores: the rows are independent, so each
  row's slice of the gradient is that row's own gradient.

Probe modes (response = the slots after the prompt):

* ``"full"``: prompt + complete response, nothing masked (the published method).
* ``"masked"``: every response slot replaced by the mask token (the state of
  the first denoising step); each target position is scored by the logit of
  its final token.
* ``"remask"``: one row per target, that target's slot masked, the rest of the
  response visible.

Target scores: ``"logit"``: the token's own logit at its position.
``"contrastive"`` (the published variant): the sum of all logits at the
target position minus the sum of all logits at a distractor position, chosen
deterministically: the first response slot that is not a target (pad/eos slots
included); when every response slot is a target, the last prompt token that is
not an image token. For a causal model the logits of a position are read one
position earlier (the row that predicts its token).

:func:`published_gradients` is the slow reference procedure (one full forward
and backward, with parameter gradients, per token), used by the tests and the
benchmark.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

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
            raise InputError(f"probe={probe!r} is not supported by the {adapter.name} model "
                             f"(supported: {', '.join(adapter.probes)})")
        if method_probes is not None and probe not in method_probes:
            raise InputError(f"probe={probe!r} is not supported by this method (supported: "
                             f"{', '.join(method_probes)})")
    return layer


@dataclass
class ProbeResult:
    """What one probe returns.

    acts: ``[R, N, D]`` hooked activations over the image span (``R = 1`` for
        full/masked, ``T`` for remask: each row saw different inputs).
    grads: ``[R, T', N, D]``: ``[1, T, N, D]`` for full/masked, ``[T, 1, N, D]``
        for remask (``None`` when gradients were not requested).
    scores: ``[T]`` target scores.
    context_weights: ``[T, T]`` ``W[t, i] = relu(logit at i's position of t's
        id)``, 0 on the diagonal and for equal ids (for ``sicd="context"``).
    last_hidden: ``[R, N, D]`` last hidden states of the image tokens (after
        the final norm) when requested, else ``None``.
    input_ids: ``[R, L]`` the sequences the model was run on.
    """

    acts: Tensor
    grads: Optional[Tensor]
    scores: Tensor
    context_weights: Tensor
    last_hidden: Optional[Tensor]
    input_ids: Tensor
    layer: int
    probe: str
    distractor: Optional[int]

    def per_target_acts(self) -> Tensor:
        """``[T, N, D]``: the activations each target's gradient goes with."""
        T = self.scores.shape[0]
        return self.acts.expand(T, *self.acts.shape[1:]) if self.acts.shape[0] == 1 else self.acts

    def per_target_grads(self) -> Tensor:
        """``[T, N, D]``."""
        return self.grads[0] if self.grads.shape[0] == 1 else self.grads[:, 0]


@contextmanager
def frozen(model: nn.Module):
    """Parameters with ``requires_grad=False`` (restored on exit), eval mode."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(training)


class _Tap:
    """Forward hooks: the hooked block's output becomes a grad-requiring leaf
    (and autograd is switched on from there), the final norm's output is
    recorded."""

    def __init__(self, block: nn.Module, norm: Optional[nn.Module], make_leaf: bool, retain: bool = False):
        self.block_outputs: List[Tensor] = []
        self.norm_outputs: List[Tensor] = []
        self.make_leaf = make_leaf
        self.retain = retain
        self.handles = [block.register_forward_hook(self._block_hook)]
        if norm is not None:
            self.handles.append(norm.register_forward_hook(self._norm_hook))

    def _block_hook(self, module, args, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        if self.make_leaf:
            new = h.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # autograd from the hooked block upwards
        else:
            new = h
            if self.retain and h.requires_grad:
                h.retain_grad()
        self.block_outputs.append(new)
        if new is h:
            return None
        if isinstance(output, tuple):
            return (new,) + tuple(output[1:])
        if isinstance(output, list):
            return [new] + list(output[1:])
        return new

    def _norm_hook(self, module, args, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        self.norm_outputs.append(h.detach())

    def remove(self):
        for hd in self.handles:
            hd.remove()

    def output(self) -> Tensor:
        if len(self.block_outputs) != 1:
            raise RuntimeError(f"the hooked block ran {len(self.block_outputs)} times in one forward; expected once")
        return self.block_outputs[0]

    def norm_output(self) -> Tensor:
        if len(self.norm_outputs) != 1:
            raise RuntimeError("the final norm did not run exactly once")
        return self.norm_outputs[0]


def build_probe_inputs(adapter: ModelAdapter, prep: Prepared, positions: Sequence[int], probe: str) -> Tensor:
    """The ``[R, L]`` sequences a probe runs on (see the module docstring)."""
    ids = prep.input_ids
    if probe == "full":
        return ids.clone()
    mask_id = adapter.mask_token_id
    if mask_id is None:
        raise InputError(f"probe={probe!r} needs a mask token and {adapter.name} has none "
                         f"(supported probes: {', '.join(adapter.probes)})")
    if probe == "masked":
        out = ids.clone()
        out[0, prep.response_start:prep.response_start + prep.response_length] = int(mask_id)
        return out
    if probe == "remask":
        T = len(positions)
        out = ids.expand(T, ids.shape[1]).clone()
        out[torch.arange(T), torch.as_tensor(list(positions), dtype=torch.long)] = int(mask_id)
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
                         f"{adapter.name} (it has no logits at prompt positions); leave one token out of targets")
    ids = prep.input_ids[0]
    img = int(adapter.image_token_id)
    for p in range(s - 1, 0 if adapter.is_diffusion else 1, -1):  # the last prompt token that is not an image token
        if int(ids[p]) != img:
            return p
    raise InputError("target_score='contrastive': no prompt token outside the image span to use as distractor")


def _batched_grad(scores: Tensor, leaf: Tensor, rows: Tensor, chunk_size: int, select: Tensor) -> Tensor:
    """Gradient of every entry of ``scores [T]`` w.r.t. ``leaf`` (its rows
    ``rows`` and positions ``select``) -> ``[T, len(rows), N, D]``, by batched
    cotangents in chunks. Falls back to one backward per score if the vmapped
    backward is not supported by some op of the model."""
    T = scores.shape[0]
    if not scores.requires_grad:  # the scores do not depend on the hooked block at all
        return leaf.new_zeros((T, rows.numel(), select.numel(), leaf.shape[-1]))
    out = []
    for c0 in range(0, T, chunk_size):
        c1 = min(T, c0 + chunk_size)
        last = c1 == T
        cot = torch.zeros(c1 - c0, T, dtype=scores.dtype, device=scores.device)
        cot[torch.arange(c1 - c0), torch.arange(c0, c1)] = 1.0
        try:
            g = torch.autograd.grad(scores, leaf, grad_outputs=cot, is_grads_batched=True,
                                    retain_graph=not last)[0]
        except (RuntimeError, NotImplementedError) as exc:  # an op without a batching rule
            warnings.warn(f"batched-cotangent backward failed ({exc.__class__.__name__}: {str(exc)[:120]}); "
                          "falling back to one backward per token", RuntimeWarning)
            g = torch.stack([torch.autograd.grad(scores[t], leaf, retain_graph=True)[0] for t in range(c0, c1)])
        out.append(g[:, rows][:, :, select].detach())
        del g
    return torch.cat(out, 0)


@dataclass
class _Plan:
    """What one probe call runs, resolved once."""

    ids: Tensor  # [R, L] the sequences (probe mode applied)
    token_ids: Tensor  # [T]
    logit_pos: Tensor  # [T] where each target's logits are read
    distractor_pos: Optional[Tensor]  # [1] (contrastive score) or None
    image_positions: Tensor  # [N]
    rows_only: bool  # the adapter may run the last block at the scored rows only
    norm: Optional[nn.Module]  # the final norm, hooked for last hidden states

    def row_chunks(self, remask: bool, chunk_size: int):
        T = self.token_ids.shape[0]
        return [(c0, min(T, c0 + chunk_size)) for c0 in range(0, T, chunk_size)] if remask else [(0, 1)]

    def wanted(self, remask: bool, r0: int, r1: int) -> Tensor:
        """Logit positions to read: [R, 1(+1)] per row for remask, [T(+1)] shared otherwise."""
        if remask:
            want = self.logit_pos[r0:r1, None]
            return want if self.distractor_pos is None else torch.cat(
                [want, self.distractor_pos.expand(r1 - r0, 1)], 1)
        return self.logit_pos if self.distractor_pos is None else torch.cat([self.logit_pos, self.distractor_pos])


def _plan(adapter: ModelAdapter, prep: Prepared, positions, token_ids, layer: int, probe: str,
          target_score: str, want_last_hidden: bool) -> Tuple[_Plan, Optional[int]]:
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    distractor = pick_distractor(prep, positions, adapter) if target_score == "contrastive" else None
    norm = adapter.final_norm() if want_last_hidden else None
    plan = _Plan(ids=build_probe_inputs(adapter, prep, positions, probe),
                 token_ids=torch.as_tensor(list(token_ids), dtype=torch.long),
                 logit_pos=adapter.logit_positions(pos),
                 distractor_pos=None if distractor is None else adapter.logit_positions(torch.tensor([distractor])),
                 image_positions=prep.image_positions,
                 # nothing reads the last block or the final norm: it may run at the scored rows only
                 rows_only=norm is None and layer < len(adapter.blocks()) - 1, norm=norm)
    return plan, distractor


def _forward(adapter: ModelAdapter, prep: Prepared, plan: _Plan, tap: "_Tap", ids: Tensor, want: Tensor) -> Tensor:
    """Logits [R, P, V] of one row chunk; autograd is on only above the hooked block."""
    torch.set_grad_enabled(False)  # no graph below the hooked block (the tap switches it on)
    try:
        run = adapter.logits_at_rows if plan.rows_only else adapter.logits_at
        return run(ids, adapter.batch_inputs(prep, ids.shape[0]), want, prep.response_start)
    finally:
        torch.set_grad_enabled(True)


def _scores(logits: Tensor, plan: _Plan, remask: bool, r0: int, r1: int) -> Tuple[Tensor, Tensor]:
    """(target scores of the chunk's targets, their logits at every target's id [rows, T])."""
    tid = plan.token_ids
    contrastive = plan.distractor_pos is not None
    if remask:
        own = logits[:, 0]  # [R, V]: each row reads its own target
        s = own.sum(1) - logits[:, 1].sum(1) if contrastive else own.gather(1, tid[r0:r1, None])[:, 0]
    else:
        T = tid.shape[0]
        own = logits[0, :T]  # [T, V]
        s = own.sum(1) - logits[0, T].sum() if contrastive else own.gather(1, tid[:, None])[:, 0]
    return s, own.detach()[:, tid].float()


def _context_weights(W_logits: Tensor, token_ids: Tensor) -> Tensor:
    """``W[t, i] = relu(logit at i's position of t's id)``, 0 for equal ids (diagonal included)."""
    W = torch.relu(W_logits.t().contiguous())
    same = token_ids[:, None] == token_ids[None, :]
    return torch.where(same, torch.zeros_like(W), W)


def probe(adapter: ModelAdapter, prep: Prepared, positions: Sequence[int], token_ids: Sequence[int],
          layer: int, probe: str = "full", target_score: str = "logit", chunk_size: int = 16,
          want_grads: bool = True, want_last_hidden: bool = False, allow_last_layer: bool = False) -> ProbeResult:
    """Activations and target-score gradients at block ``layer`` over the
    image span (see the module docstring).

    positions: the absolute sequence positions of the ``T`` explained tokens.
    token_ids: their ids (the token each position is scored on).
    """
    if target_score not in TARGET_SCORES:
        raise InputError(f"target_score must be one of {', '.join(TARGET_SCORES)}, got {target_score!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    layer = check_probe_request(adapter, layer, probe, want_grads, allow_last_layer=allow_last_layer)
    T = len(positions)
    if T == 0:
        raise InputError("no token to explain")
    plan, distractor = _plan(adapter, prep, positions, token_ids, layer, probe, target_score, want_last_hidden)
    remask, img = probe == "remask", plan.image_positions
    acts, grads, scores, last_hidden = [], [], [], []
    W_logits = torch.zeros(T, T)  # [i, t] logit at i's position of t's id
    with frozen(adapter.model):
        for r0, r1 in plan.row_chunks(remask, chunk_size):
            tap = _Tap(adapter.blocks()[layer], plan.norm, make_leaf=want_grads)
            try:
                with torch.enable_grad():
                    logits = _forward(adapter, prep, plan, tap, plan.ids[r0:r1], plan.wanted(remask, r0, r1))
                    leaf = tap.output()
                    s, w_rows = _scores(logits, plan, remask, r0, r1)
                    W_logits[r0:r1 if remask else T] = w_rows
                    if want_grads and remask:  # the rows are independent: one backward of their sum
                        g = torch.autograd.grad(s.sum(), leaf)[0] if s.requires_grad else torch.zeros_like(leaf)
                        grads.append(g[:, img].detach()[:, None])  # [R, 1, N, D]
                    elif want_grads:
                        g = _batched_grad(s, leaf, torch.tensor([0]), chunk_size, img)  # [T, 1, N, D]
                        grads.append(g.permute(1, 0, 2, 3))  # [1, T, N, D]
                scores.append(s.detach().float())
                acts.append(leaf.detach()[:, img])
                if plan.norm is not None:
                    last_hidden.append(tap.norm_output()[:, img])
            finally:
                tap.remove()
    return ProbeResult(acts=torch.cat(acts, 0), grads=torch.cat(grads, 0) if want_grads else None,
                       scores=torch.cat(scores, 0), context_weights=_context_weights(W_logits, plan.token_ids),
                       last_hidden=torch.cat(last_hidden, 0) if last_hidden else None, input_ids=plan.ids,
                       layer=layer, probe=probe, distractor=distractor)


def published_gradients(adapter: ModelAdapter, prep: Prepared, positions: Sequence[int],
                        token_ids: Sequence[int], layer: int, probe: str = "full",
                        target_score: str = "logit") -> torch.Tensor:
    """The published procedure: for every token, one full forward and one full
    backward with parameter gradients (autograd through the whole model).
    Returns the image-span gradients ``[T, N, D]`` at block ``layer``
    (row ``t`` from the input the probe mode gives token ``t``)."""
    blocks = adapter.blocks()
    layer = adapter.resolve_layer(layer)
    ids = build_probe_inputs(adapter, prep, positions, probe)
    img = prep.image_positions
    contrastive = target_score == "contrastive"
    distractor = pick_distractor(prep, positions, adapter) if contrastive else None
    model = adapter.model
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    model.eval()
    out = []
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        for t, (p_t, id_t) in enumerate(zip(positions, token_ids)):
            row = t if probe == "remask" else 0
            want = adapter.logit_positions(torch.tensor([p_t] + ([distractor] if contrastive else [])))
            tap = _Tap(blocks[layer], None, make_leaf=False, retain=True)
            try:
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    logits = adapter.logits_at(ids[row:row + 1], adapter.batch_inputs(prep, 1), want,
                                              prep.response_start)
                    s = logits[0, 0, int(id_t)] if not contrastive else logits[0, 0].sum() - logits[0, 1].sum()
                    s.backward()
                h = tap.output()
                out.append(h.grad[0, img].detach().clone())
            finally:
                tap.remove()
        model.zero_grad(set_to_none=True)
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(training)
    return torch.stack(out)
