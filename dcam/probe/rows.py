"""The last decoder block at the scored rows only.

Why: every word's backward crosses the blocks above the hooked one at every
position of the sequence (about 3,000 with an anyres image). In the last
block only the scored rows reach the logits, so its queries, attention
output, residual and MLP are needed at those rows alone; its keys and values
still come from every position. Running it that way cuts that block's
backward (and forward) to the key/value projections at every row plus the
rest at P rows. The gradients at the hooked block are the same: the other
rows of the last block's output are read by nothing but the LM head, which
:class:`dcam.probe.hooks.HeadAtRows` restricts to the scored rows too.

Supported: transformers-style pre-norm decoder layers (LLaMA, Qwen2, Qwen3,
Mistral and copies of them: ``input_layernorm``, ``self_attn`` with
``q_proj/k_proj/v_proj/o_proj`` and optional ``q_norm/k_norm``,
``post_attention_layernorm``, ``mlp``) with rotary embeddings passed in as
``position_embeddings``. :meth:`dcam.probe.ModelAdapter.check_rows_only`
compares the result with the full forward once per model before it is used,
so a layer that only looks alike falls back to the full block.
"""
from __future__ import annotations

import sys
import threading
from typing import Optional, Tuple

import torch
from torch import Tensor, nn


_LAYER_PARTS = {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}
_ATTN_PARTS = {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "rotary_emb"}


def supports_rows(layer: nn.Module) -> bool:
    """Whether ``layer`` has the layout this module knows how to run at rows."""
    if hasattr(layer, "_hf_hook") or "forward" in vars(layer):
        return False  # its forward is wrapped already (accelerate's offloading, say): leave it alone
    parts = {n for n, _ in layer.named_children()}
    attn = getattr(layer, "self_attn", None)
    if parts != _LAYER_PARTS or attn is None:
        return False
    if not {"q_proj", "k_proj", "v_proj", "o_proj"} <= {n for n, _ in attn.named_children()} or \
            not {n for n, _ in attn.named_children()} <= _ATTN_PARTS:
        return False
    module = sys.modules.get(type(attn).__module__)
    return all(hasattr(attn, a) for a in ("head_dim", "scaling", "config")) and \
        hasattr(module, "apply_rotary_pos_emb") and hasattr(module, "ALL_ATTENTION_FUNCTIONS")


def _mask_rows(attention_mask: Optional[Tensor], attn: nn.Module, rows: Tensor, L: int, dtype):
    """The rows' part ``[., 1, P, L]`` of the block's attention mask, or None (no mask). Without a
    mask a causal layer sees keys up to its own row: an additive mask says so explicitly (the
    attention's own causal flag would align a P x L mask at the top left)."""
    if attention_mask is None:
        if not getattr(attn, "is_causal", True):
            return None
        keys = torch.arange(L, device=rows.device)
        hidden = keys[None, None, None, :] > rows[None, None, :, None]
        return torch.zeros(hidden.shape, dtype=dtype, device=rows.device).masked_fill(hidden, torch.finfo(dtype).min)
    return attention_mask[:, :, rows.to(attention_mask.device), :]


def layer_at_rows(layer: nn.Module, rows: Tensor, hidden_states: Tensor, attention_mask=None,
                  position_embeddings=None) -> Tensor:
    """``layer(hidden_states)`` at ``rows`` (1-D, unique) -> ``[B, P, D]``; keys and values from every row."""
    attn = layer.self_attn
    module = sys.modules[type(attn).__module__]
    B, L, _ = hidden_states.shape
    rows = rows.to(hidden_states.device)
    x = layer.input_layernorm(hidden_states)
    xr = x[:, rows]
    P, hd = xr.shape[1], attn.head_dim
    q = attn.q_proj(xr).view(B, P, -1, hd)
    k = attn.k_proj(x).view(B, L, -1, hd)
    v = attn.v_proj(x).view(B, L, -1, hd).transpose(1, 2)
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = position_embeddings
    cos, sin = cos.expand(B, *cos.shape[1:]), sin.expand(B, *sin.shape[1:])
    q, _ = module.apply_rotary_pos_emb(q, q, cos[:, rows], sin[:, rows])
    _, k = module.apply_rotary_pos_emb(k, k, cos, sin)
    impl = attn.config._attn_implementation
    run = module.eager_attention_forward if impl in (None, "eager") else module.ALL_ATTENTION_FUNCTIONS[impl]
    mask = _mask_rows(attention_mask, attn, rows, L, q.dtype)
    out, _ = run(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling, is_causal=False)
    h = hidden_states[:, rows] + attn.o_proj(out.reshape(B, P, -1).contiguous())
    return h + layer.mlp(layer.post_attention_layernorm(h))


class LastBlockAtRows:
    """While active, ``block`` computes its output at ``rows`` only (the other
    rows are zeros, read by nothing that is scored) when it is called on a
    sequence of ``length`` positions without a cache; other calls run the block
    as it is. ``ran`` counts the calls it served."""

    def __init__(self, block: nn.Module, positions: Tensor, length: int):
        self.block, self.length, self.ran = block, int(length), 0
        self.thread = threading.get_ident()  # another thread's calls run the block as it is
        self.rows = torch.unique(positions.reshape(-1))  # sorted, no repeats: each row's gradient counted once
        self.original = block.forward
        self.own = vars(block).get("forward")  # a forward set on the instance (a wrapper of the user's)

    def _forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        cached = kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None or \
            kwargs.get("use_cache")
        usable = threading.get_ident() == self.thread and isinstance(hidden, Tensor) and hidden.dim() == 3 and \
            hidden.shape[1] == self.length and not cached and kwargs.get("position_embeddings") is not None and \
            (mask is None or (isinstance(mask, Tensor) and mask.dim() == 4))
        if not usable:
            return self.original(*args, **kwargs)
        self.ran += 1
        rows = self.rows.to(hidden.device)
        h = layer_at_rows(self.block, rows, hidden, mask, kwargs["position_embeddings"])
        return hidden.new_zeros(hidden.shape).index_copy(1, rows, h)

    def __enter__(self):
        self.block.forward = self._forward
        return self

    def __exit__(self, *exc):
        if self.own is not None:  # (deleting it dropped a wrapper the user put on the block after the check)
            self.block.forward = self.own
        else:
            del self.block.forward  # the class's forward again
        return False


def raised_at_rows(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while the block ran at rows (in :func:`layer_at_rows` or below
    it): the optimisation does not fit the layer. An error raised elsewhere in the forward (a
    user's hook, another block, an out-of-memory anywhere) is the model's own."""
    codes = {layer_at_rows.__code__, LastBlockAtRows._forward.__code__}
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def block_dtype(block: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 if none)."""
    return next((p.dtype for p in block.parameters() if p.is_floating_point()), torch.float32)


def weights_dtype(model) -> torch.dtype:
    """The floating dtype that holds most of the model's parameter elements: the dtype its
    activations and their gradients come in. Not the first parameter's: LaViDa's is an
    ``image_newline`` made bfloat16 whatever the model's dtype, which halved a float32 model's
    estimates."""
    counts: dict = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def same_logits(reference: Tensor, other: Tensor, block: nn.Module) -> Tuple[bool, float]:
    """(whether ``other`` equals ``reference`` within rounding, their largest difference): the test of
    the optimisations that must not change a model's logits (the last block at the scored rows only,
    examples padded into one forward). Within 1e-4 of the logits' scale (at least 1) when the logits
    and ``block`` (the model's last block) are float32, 3e-2 otherwise."""
    tol = 1e-4 if reference.dtype == torch.float32 and block_dtype(block) == torch.float32 else 3e-2
    diff = float((other.float() - reference.float()).abs().max())
    return diff <= tol * max(1.0, float(reference.abs().max())), diff


__all__ = ["supports_rows", "layer_at_rows", "LastBlockAtRows", "raised_at_rows", "block_dtype", "weights_dtype",
           "same_logits"]
