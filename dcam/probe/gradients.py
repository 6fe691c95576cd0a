"""Gradient probing: activations and target-score gradients at one block.

:func:`probe` (one example) and :func:`probe_batch` (several examples in one
forward: of one layout, or padded to one, :mod:`dcam.probe.padding`) return,
for the image-token span of the hooked block, the activations and the
gradient of every explained item's target
score (an item: a token, or a word/phrase of several tokens whose score is
the sum of its tokens' scores, so one item is one gradient):

* parameters are frozen for the call (``requires_grad=False``, restored after),
  so no weight gradient is ever computed;
* the model runs under ``no_grad`` up to the hooked block; a forward hook turns
  that block's output into a fresh leaf that requires grad and switches
  autograd on, so the graph holds only the blocks above it (plus the LM head);
* all gradients come from that one forward, by batched cotangents
  (``torch.autograd.grad(..., is_grads_batched=True)``, a vmapped backward),
  ``chunk_size`` cotangents at a time. Several examples share each cotangent:
  cotangent ``k`` selects item ``k`` of EVERY example, and since the rows of
  a batch never interact, row ``b`` of its gradient is item ``k`` of example
  ``b``'s gradient. ``remask`` runs one row per item (in chunks of
  ``chunk_size`` rows) and takes one backward of the summed scores;
* with ``grad_sink``, each chunk of gradients is handed over (to be pooled)
  as soon as it exists and then dropped, so the gradients of all items never
  exist at once: peak memory is the model, the graph above the hook and one
  chunk of gradients, whatever the number of items. Gradients keep the
  model's dtype (the pooling accumulates in float32).

Probe modes and target scores: :mod:`dcam.probe.modes`. The slow published
procedure the tests compare against: :mod:`dcam.probe.published`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import DcamRuntimeWarning, InputError, NonFiniteError
from .adapters.base import ModelAdapter, Prepared
from .adapters.checks import check_image_slots, check_mask_id, check_widths, diagnosed
from ..profiling import stage
from .compiled import eager_on_donated_buffers
from .hooks import Tap, probing
from .modes import (TARGET_SCORES, LastLayerError, build_probe_inputs, check_probe_request,  # noqa: F401
                    check_target_score, pick_distractor)
from .padding import check_padding, pad_rows, pads, without_per_token_inputs
from .published import published_gradients  # noqa: F401  (re-exported)

#: ``sink(example, items, acts, grads)``: ``items`` int64 ``[k]`` item indices;
#: ``acts [r, N, D]`` and ``grads [r, k', N, D]`` laid out as in ProbeResult
#: (full/masked: r = 1, k' = k; remask: r = k, k' = 1).
GradSink = Callable[[int, Tensor, Tensor, Tensor], None]


@dataclass
class ProbeResult:
    """What a probe returns for one example (``G`` explained items).

    acts: ``[R, N, D]`` hooked activations over the image span (``R = 1`` for
        full/masked, ``G`` for remask: each row saw different inputs).
    grads: ``[1, G, N, D]`` for full/masked, ``[G, 1, N, D]`` for remask;
        ``None`` when gradients were not requested or went to a ``grad_sink``.
    scores: ``[G]`` target scores.
    context_weights: ``[G, G]``: ``W[g, h]`` = the mean over the tokens ``i``
        of ``h`` and ``t`` of ``g`` of ``relu(logit at i's position of t's
        id)``, 0 on the diagonal and where two items share a token id (for
        ``sicd="context"``).
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
        """``[G, N, D]``: the activations each item's gradient goes with."""
        G = self.scores.shape[0]
        return self.acts.expand(G, *self.acts.shape[1:]) if self.acts.shape[0] == 1 else self.acts

    def per_target_grads(self) -> Tensor:
        """``[G, N, D]``."""
        return self.grads[0] if self.grads.shape[0] == 1 else self.grads[:, 0]

    def sliced(self, span: slice) -> "ProbeResult":
        """The result restricted to part of the image span (one view of a multi-view image)."""
        cut = lambda x, dim: None if x is None else x.narrow(dim, span.start, span.stop - span.start)  # noqa: E731
        return ProbeResult(cut(self.acts, 1), cut(self.grads, 2), self.scores, self.context_weights,
                           cut(self.last_hidden, 1), self.input_ids, self.layer, self.probe, self.distractor)


@dataclass
class Targets:
    """The explained items of one example: absolute ``positions`` and
    ``token_ids`` of their tokens, and ``groups`` (indices into positions,
    one list per item)."""

    positions: List[int]
    token_ids: List[int]
    groups: List[List[int]]

    @classmethod
    def of(cls, positions, token_ids, groups=None) -> "Targets":
        positions, token_ids = [int(p) for p in positions], [int(t) for t in token_ids]
        if not positions:
            raise InputError("no token to explain")
        if len(positions) != len(token_ids):
            raise InputError(f"{len(positions)} positions but {len(token_ids)} token ids")
        groups = [[k] for k in range(len(positions))] if groups is None else [[int(k) for k in g] for g in groups]
        if not groups or any(not g or min(g) < 0 or max(g) >= len(positions) for g in groups):
            raise InputError(f"groups must be non-empty lists of indices into the {len(positions)} positions")
        return cls(positions, token_ids, groups)


def item_context_weights(W_tok: Tensor, t: Targets) -> Tensor:
    """Items' context weights from the tokens' ``W_tok[i, t]`` (logit at token
    i's position of token t's id): see :class:`ProbeResult`."""
    ids = torch.tensor(t.token_ids)
    W = torch.relu(W_tok)
    G = len(t.groups)
    out = torch.zeros(G, G)
    for g, tg in enumerate(t.groups):
        for h, ih in enumerate(t.groups):
            shared = bool(torch.isin(ids[tg], ids[ih]).any())
            if g != h and not shared:
                out[g, h] = W[ih][:, tg].mean()
    return out


def _token_scores(logits: Tensor, token_ids: Tensor, contrastive: bool, n: int) -> Tensor:
    """Scores of the first ``n`` wanted positions: their own id's logit, or
    (contrastive) all their logits minus all the distractor's (the last position)."""
    if contrastive:
        return logits[:n].sum(1) - logits[n].sum()
    return logits[:n].gather(1, token_ids[:n, None].to(logits.device))[:, 0]


def head_scores(adapter: ModelAdapter, b: int, token_ids: Tensor, contrastive: bool, n: int, tok: Tensor) -> Tensor:
    """``tok`` (the scores read off the logits of example ``b``) with their gradient taken
    through the LM head's input instead of its output.

    A word's score reads one logit, but autograd hands the head a dense gradient of the
    scored logits, rows x vocabulary, for every cotangent of a batched backward (64 words
    at a vocabulary of 126,464: 65 MB per cotangent in float32, so memory grew with the
    response). For a linear head the score is ``h . W[id] (+ b[id])`` (the contrastive
    one ``(h_i - h_distractor) . sum_v W[v]``), whose gradient reaches ``h`` as rows x
    hidden size. Used only where the adapter recorded the head's input at the scored rows
    (:meth:`~dcam.probe.adapters.base.ModelAdapter.logits_with_head_at`: the model returned
    the head's output unchanged, so no soft-capping or scaling follows it) and those
    products give back the logits' scores; elsewhere the logits' own gradient is kept.
    The values stay ``tok``'s."""
    def through_input(h, W, bias):
        if b >= h.shape[0] or h.shape[1] < n + int(contrastive):
            return None
        hb = h[b]
        if contrastive:
            return (hb[:n] - hb[n]) @ W.sum(0)
        idx = token_ids[:n].to(W.device)
        return (hb[:n] * W[idx]).sum(-1) + (bias[idx] if bias is not None else 0)
    return _scores_through_head_input(adapter, tok, through_input)


def head_logit_scores(adapter: ModelAdapter, token_ids: Tensor, tok: Tensor) -> Tensor:
    """:func:`head_scores` for the logit scores ``tok [R, P]`` (row r, scored position p) of the
    ids ``token_ids [R, P]``, every row of the forward at once (the trajectories' batches)."""
    def through_input(h, W, bias):
        if tuple(h.shape[:2]) != tuple(tok.shape):
            return None
        idx = token_ids.to(W.device)
        return (h * W[idx]).sum(-1) + (bias[idx] if bias is not None else 0)
    return _scores_through_head_input(adapter, tok, through_input)


def _scores_through_head_input(adapter: ModelAdapter, tok: Tensor, through_input: Callable) -> Tensor:
    rows = getattr(adapter, "scored_rows", None)
    if rows is None or not tok.requires_grad:
        return tok
    h, head = rows  # a plain nn.Linear (ModelAdapter.logits_with_head_at records no other)
    if h.dim() != 3 or not h.requires_grad:
        return tok
    sur = through_input(h, head.weight, head.bias)
    if sur is None:
        return tok
    sur, ref = sur.float(), tok.detach()
    tol = 1e-4 if head.weight.dtype == torch.float32 else 3e-2
    if sur.shape != ref.shape or not bool(((sur.detach() - ref).abs() <= tol * max(1.0, float(ref.abs().max()))).all()):
        return tok
    return sur + (ref - sur.detach())


def _item_scores(tok: Tensor, groups: List[List[int]]) -> Tensor:
    return torch.stack([tok[g].sum() for g in groups])


def depends_on_leaf(scores: Tensor, may_ignore: bool = False) -> bool:
    """Whether ``scores`` depend on the hooked block's output (the probe's leaf). They do
    whenever the block is on the model's path to its logits; scores without a graph come from
    an adapter that detached its logits (``torch.no_grad``, ``.detach()``, logits of another
    copy of the model), and were all-zero maps that looked like an explanation: a RuntimeError,
    unless ``may_ignore`` (the last block, probed on purpose: nothing above reads the image
    rows, and its gradients are zeros)."""
    if not scores.requires_grad and not may_ignore:
        raise RuntimeError("the words' scores do not depend on the hooked block's output: the adapter's logits "
                           "were computed without a graph to it (under torch.no_grad, detached, or by another copy "
                           "of the model); its forward_logits / logits_at must run the hooked blocks with autograd")
    return scores.requires_grad


def batched_grad(scores: Tensor, leaf: Tensor, chunk_size: int, select, on_chunk: Callable,
                 may_ignore: bool = False) -> None:
    """Gradients of the scores ``[B, K]`` (item k of example b) w.r.t. ``leaf
    [B, L, D]`` at positions ``select``, ``chunk_size`` cotangents at a time;
    cotangent k selects item k of every example. ``on_chunk(k0, k1, g)`` gets
    ``g [k1-k0, B, N, D]``; with ``select`` a list of one ``[N_b]`` per row (a padded
    batch: each example's image at its own positions), ``g`` is the list of each row's
    ``[k1-k0, N_b, D]``. Falls back to one backward per item when some op of the model
    has no batching rule. ``may_ignore``: see :func:`depends_on_leaf` (zeros then)."""
    B, K = scores.shape
    bad = ~torch.isfinite(scores.detach())
    if bool(bad.any()):  # the forward overflowed (float16): said before the backward spreads it (InputError)
        raise NonFiniteError("scores", int(bad.sum()))
    per_row = isinstance(select, (list, tuple))
    if not depends_on_leaf(scores, may_ignore):
        for k0 in range(0, K, chunk_size):
            k1 = min(K, k0 + chunk_size)
            zeros = lambda *n: leaf.new_zeros((k1 - k0, *n, leaf.shape[-1]))  # noqa: E731
            on_chunk(k0, k1, [zeros(s.numel()) for s in select] if per_row else zeros(B, select.numel()))
        return
    for k0 in range(0, K, chunk_size):
        k1 = min(K, k0 + chunk_size)
        cot = torch.zeros(k1 - k0, B, K, dtype=scores.dtype, device=scores.device)
        cot[torch.arange(k1 - k0), :, torch.arange(k0, k1)] = 1.0
        with stage("dcam.backward"):
            try:
                # retain_graph even at the last chunk: a batched backward that fails part-way has freed the
                # saved tensors of the nodes it ran, which the per-token fallback needs ("backward through
                # the graph a second time"). Memory: the caller's `scores` holds the graph until this returns
                # anyway; keeping its saved tensors through the last backward gives that backward the peak
                # every earlier chunk's had (it no longer frees them as it goes)
                g = torch.autograd.grad(scores, leaf, grad_outputs=cot, is_grads_batched=True,
                                        retain_graph=True)[0]
            except (RuntimeError, NotImplementedError) as exc:  # an op without a batching rule
                warnings.warn(f"batched-cotangent backward failed ({exc.__class__.__name__}: {str(exc)[:120]}); "
                              "falling back to one backward per token", DcamRuntimeWarning)
                g = torch.stack([torch.autograd.grad(scores, leaf, grad_outputs=c, retain_graph=True)[0]
                                 for c in cot])
        g = [g[:, b, s].detach() for b, s in enumerate(select)] if per_row else g[:, :, select].detach()
        on_chunk(k0, k1, g)
        del g


def logits_runner(adapter: ModelAdapter, layer: int, norm, ids: Tensor, inputs, want: Tensor, response_start: int):
    """The adapter's ``logits_at_rows`` when the probe reads nothing of the last block's other rows (the
    hooked block is below it, the final norm is not recorded) and ``check_rows_only`` allows it on
    these inputs; else ``logits_at``. Call it inside :func:`probing` and before the tap is set: the check runs
    forwards of its own (in the caller's train mode, dropout drew from the global RNG and failed the check).
    A padded batch is checked apart (the layer then reads the padding in its mask); it used to run every
    row of the last block, which at real sizes made a padded batch of two anyres images ~16x slower than
    the two apart."""
    if norm is None and layer < len(adapter.blocks()) - 1:
        with stage("dcam.rows_check"):  # (two forwards of its own on a model's first probe; nothing after)
            if adapter.check_rows_only(ids, inputs, want, response_start):
                return adapter.logits_at_rows
    return adapter.logits_at


def _forward(run, ids: Tensor, inputs, want: Tensor, response_start: int) -> Tensor:
    """Logits [R, P, V] of one batch of rows from ``run`` (:func:`logits_runner`); autograd is on only
    above the hooked block."""
    torch.set_grad_enabled(False)  # no graph below the hooked block (the tap switches it on)
    try:
        return run(ids, inputs, want, response_start)
    finally:
        torch.set_grad_enabled(True)


def _check_request(adapter, layer, probe, target_score, chunk_size, want_grads, allow_last_layer) -> int:
    check_target_score(target_score)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    return check_probe_request(adapter, layer, probe, want_grads, allow_last_layer=allow_last_layer)


def _wanted(adapter: ModelAdapter, t: Targets, distractor: Optional[int], width: int) -> Tensor:
    """Logit positions of one example's tokens (+ the distractor), padded to
    ``width`` by repeating the first (padding is never scored)."""
    pos = t.positions + ([distractor] if distractor is not None else [])
    pos = pos + [pos[0]] * (width - len(pos))
    return adapter.logit_positions(torch.tensor(pos, dtype=torch.long))


@eager_on_donated_buffers  # (compiled code the look before the probe did not find: once more, eagerly)
def probe_batch(adapter: ModelAdapter, preps: Sequence[Prepared], targets: Sequence[Targets], layer: int,
                probe: str = "full", target_score: str = "logit", chunk_size: int = 16, want_grads: bool = True,
                want_last_hidden: bool = False, allow_last_layer: bool = False,
                grad_sink: Optional[GradSink] = None) -> List[ProbeResult]:
    """:func:`probe` of several examples in one forward (``full``/``masked``
    probes; ``remask`` runs example by example). The examples must share the
    sequence layout (length, image and response positions), or, for a family
    that pads (:mod:`dcam.probe.padding`), its :func:`batch_key`: group them by
    it first. Padded rows give what each example gives alone."""
    # long: one forward, the per-example bookkeeping of scores, context weights and gradient chunks
    layer = _check_request(adapter, layer, probe, target_score, chunk_size, want_grads, allow_last_layer)
    for p in preps:  # (positions shifted onto text gave maps of other tokens without a word)
        check_image_slots(adapter, p)
    check_mask_id(adapter)
    if probe == "remask":
        return [_probe_remask(adapter, p, t, layer, target_score, chunk_size, want_grads, want_last_hidden,
                              allow_last_layer, b, grad_sink) for b, (p, t) in enumerate(zip(preps, targets))]
    padded = len({layout_key(p, adapter) for p in preps}) != 1
    if padded:  # (once per adapter; called here directly, a mask-dropping adapter's rows were taken as exact)
        check_padding(adapter, preps)
    if padded and len({batch_key(p, adapter) for p in preps}) != 1:
        raise InputError("probe_batch: the examples do not share one sequence layout and this model cannot pad "
                         "them to one (its family does not pad, or not these examples); group them by batch_key")
    B = len(preps)
    # each example's image span: one slice of the leaf for all when they share the layout
    img = [p.image_positions for p in preps] if padded else preps[0].image_positions
    contrastive = target_score == "contrastive"
    distractors = [pick_distractor(p, t.positions, adapter) if contrastive else None for p, t in zip(preps, targets)]
    width = max(len(t.positions) + int(contrastive) for t in targets)
    rows = [build_probe_inputs(adapter, p, t.positions, probe) for p, t in zip(preps, targets)]
    want = torch.stack([_wanted(adapter, t, d, width) for t, d in zip(targets, distractors)])
    norm = adapter.final_norm() if want_last_hidden else None
    if padded:
        ids, inputs = pad_rows(adapter, rows, preps)
    else:
        ids = torch.cat(rows, 0)
        inputs = adapter.stack_inputs(list(preps)) if B > 1 else adapter.batch_inputs(preps[0], 1)
    span = (lambda b: img[b]) if padded else (lambda b: img)  # noqa: E731
    K = max(len(t.groups) for t in targets)
    grads = [[] for _ in range(B)]
    with probing(adapter):  # (the last block's check in logits_runner too: it ran in the caller's train mode)
        run = diagnosed(adapter, preps[0], lambda: logits_runner(adapter, layer, norm, ids, inputs, want,
                                                                  preps[0].response_start))
        tap = Tap(adapter.blocks()[layer], norm, make_leaf=want_grads)
        try:
            with torch.enable_grad():
                adapter.scored_rows = None  # set by this forward where the head's input is recorded
                with stage("dcam.forward"):
                    logits = diagnosed(adapter, preps[0], lambda: _forward(run, ids, inputs, want,
                                                                           preps[0].response_start))
                leaf = tap.output()
                check_widths(adapter, logits.shape[-1], leaf.shape[-1])
                item_scores, weights = [], []
                for b, t in enumerate(targets):
                    tid = torch.tensor(t.token_ids)
                    n = len(t.positions)
                    tok = head_scores(adapter, b, tid, contrastive, n, _token_scores(logits[b], tid, contrastive, n))
                    s = _item_scores(tok, t.groups)
                    item_scores.append(torch.cat([s, s.new_zeros(K - s.shape[0])]))
                    weights.append(item_context_weights(logits[b, :n].detach()[:, tid].float().cpu(), t))
                S = torch.stack(item_scores)  # [B, K]
                # the logits (rows x vocabulary per example, 32 MB at 64 words with LLaDA's vocabulary) are
                # not held through the backwards: scores taken through the head's input do not need them
                del logits, tok, s
                if want_grads:
                    def on_chunk(k0, k1, g):
                        for b, t in enumerate(targets):
                            k_end = min(k1, len(t.groups))
                            if k_end <= k0:
                                continue
                            gb = (g[b] if padded else g[:, b])[:k_end - k0][None]  # [1, k, N, D]
                            if grad_sink is not None:
                                grad_sink(b, torch.arange(k0, k_end), leaf.detach()[b:b + 1, span(b)], gb)
                            else:
                                grads[b].append(gb)
                    batched_grad(S, leaf, chunk_size, img, on_chunk, may_ignore=allow_last_layer)
            acts = [leaf.detach()[b:b + 1, span(b)] for b in range(B)]
            hidden = [tap.norm_output()[b:b + 1, span(b)] for b in range(B)] if norm is not None else None
        finally:
            tap.remove()
    return [ProbeResult(acts=acts[b], grads=torch.cat(grads[b], 1) if grads[b] else None,
                        scores=S[b, :len(t.groups)].detach().float(), context_weights=weights[b],
                        last_hidden=None if hidden is None else hidden[b],
                        input_ids=ids[b:b + 1, :rows[b].shape[1]],  # without its padding
                        layer=layer, probe=probe, distractor=distractors[b]) for b, t in enumerate(targets)]


def layout_key(prep: Prepared, adapter: Optional[ModelAdapter] = None) -> Tuple:
    """Examples with equal keys can share one batched forward: the same sequence layout
    and, given the adapter, inputs its ``stack_inputs`` can batch (:meth:`ModelAdapter.stack_key`)."""
    key = (tuple(prep.input_ids.shape), int(prep.response_start), int(prep.response_length),
           tuple(prep.image_positions.tolist()), tuple(prep.grid))
    return key if adapter is None else key + (adapter.stack_key(prep),)


def batch_key(prep: Prepared, adapter: ModelAdapter) -> Tuple:
    """Examples with equal keys share one forward of :func:`probe_batch`: for a family that
    pads (:func:`dcam.probe.padding.pads`), any whose model inputs ``stack_inputs`` can
    batch, whatever their lengths; for the others, one sequence layout (:func:`layout_key`)."""
    if not pads(adapter):
        return layout_key(prep, adapter)
    return ("padded", adapter.stack_key(without_per_token_inputs(prep)))  # per-token inputs are padded too


def _probe_remask(adapter, prep: Prepared, t: Targets, layer: int, target_score: str, chunk_size: int,
                  want_grads: bool, want_last_hidden: bool, allow_last_layer: bool, example: int,
                  grad_sink: Optional[GradSink]) -> ProbeResult:
    """One row per item, its slots masked; rows in chunks, one backward of their summed scores."""
    contrastive = target_score == "contrastive"
    distractor = pick_distractor(prep, t.positions, adapter) if contrastive else None
    ids = build_probe_inputs(adapter, prep, t.positions, "remask", t.groups)
    img, G = prep.image_positions, len(t.groups)
    norm = adapter.final_norm() if want_last_hidden else None
    width = max(len(g) for g in t.groups) + int(contrastive)
    acts, grads, scores, hidden = [], [], [], []
    W_tok = torch.zeros(len(t.positions), len(t.positions))
    with probing(adapter):
        for r0 in range(0, G, chunk_size):
            rows = list(range(r0, min(G, r0 + chunk_size)))
            sub = [Targets([t.positions[k] for k in t.groups[r]], [t.token_ids[k] for k in t.groups[r]],
                           [list(range(len(t.groups[r])))]) for r in rows]
            want = torch.stack([_wanted(adapter, s, distractor, width) for s in sub])
            ids_r, inputs = ids[rows[0]:rows[-1] + 1], adapter.batch_inputs(prep, len(rows))
            run = diagnosed(adapter, prep, lambda: logits_runner(adapter, layer, norm, ids_r, inputs, want,
                                                                 prep.response_start))
            tap = Tap(adapter.blocks()[layer], norm, make_leaf=want_grads)
            try:
                with torch.enable_grad():
                    with stage("dcam.forward"):
                        logits = diagnosed(adapter, prep, lambda: _forward(run, ids_r, inputs, want,
                                                                           prep.response_start))
                    leaf = tap.output()
                    check_widths(adapter, logits.shape[-1], leaf.shape[-1])
                    s = torch.stack([_token_scores(logits[j], torch.tensor(sb.token_ids), contrastive,
                                                   len(sb.positions)).sum() for j, sb in enumerate(sub)])
                    for j, r in enumerate(rows):  # logits at this item's tokens of every token's id
                        n = len(t.groups[r])
                        W_tok[t.groups[r]] = logits[j, :n].detach()[:, torch.tensor(t.token_ids)].float().cpu()
                    if want_grads:  # the rows are independent: one backward of their sum
                        with stage("dcam.backward"):
                            g = (torch.autograd.grad(s.sum(), leaf)[0] if depends_on_leaf(s, allow_last_layer)
                                 else torch.zeros_like(leaf))
                        g = g[:, img].detach()[:, None]  # [R, 1, N, D]
                        if grad_sink is not None:
                            grad_sink(example, torch.tensor(rows), leaf.detach()[:, img], g)
                        else:
                            grads.append(g)
                scores.append(s.detach().float())
                acts.append(leaf.detach()[:, img])
                if norm is not None:
                    hidden.append(tap.norm_output()[:, img])
            finally:
                tap.remove()
    return ProbeResult(acts=torch.cat(acts, 0), grads=torch.cat(grads, 0) if grads else None,
                       scores=torch.cat(scores, 0), context_weights=item_context_weights(W_tok, t),
                       last_hidden=torch.cat(hidden, 0) if hidden else None, input_ids=ids, layer=layer,
                       probe="remask", distractor=distractor)


def probe(adapter: ModelAdapter, prep: Prepared, positions: Sequence[int], token_ids: Sequence[int],
          layer: int, probe: str = "full", target_score: str = "logit", chunk_size: int = 16,
          want_grads: bool = True, want_last_hidden: bool = False, allow_last_layer: bool = False,
          groups: Optional[Sequence[Sequence[int]]] = None, grad_sink: Optional[GradSink] = None) -> ProbeResult:
    """Activations and target-score gradients at block ``layer`` over the
    image span of one example (see the module docstring).

    positions: the absolute sequence positions of the explained tokens.
    token_ids: their ids (the token each position is scored on).
    groups: items made of several tokens (indices into ``positions``; default
        one item per token); an item's score is the sum of its tokens' scores.
    grad_sink: receive each chunk of gradients instead of keeping them
        (``ProbeResult.grads`` is then None).
    """
    return probe_batch(adapter, [prep], [Targets.of(positions, token_ids, groups)], layer, probe, target_score,
                       chunk_size, want_grads, want_last_hidden, allow_last_layer, grad_sink)[0]
