"""Choosing how many cotangents (items) one backward takes from a memory budget.

The probe's peak memory is the model, the graph of the blocks above the hook
(kept for every chunk) and one chunk of gradients: a vmapped backward holds,
for each cotangent of the chunk, the gradient of every intermediate of those
blocks at every position, and, where the LM head is more than a linear map
(:func:`dcam.probe.gradients.head_scores` differentiates a linear head's
scores through its input), the dense gradient of the logits of the scored
rows: ``2 x P x V`` values per cotangent (at LLaDA's vocabulary of 126,464
and 64 words, 65 MB in float32), counted here in every case, as which head a
model has shows only in its forward.
:func:`chunk_for_budget` estimates all of these from the sizes involved
(sequence length ``L``, hidden size ``D``, MLP width ``I``, attention heads,
blocks above the hook, scored rows, vocabulary, the model's dtype) and
returns the largest chunk that fits.
"""
from __future__ import annotations

import decimal
import math
import numbers
import re
from typing import Optional, Union

import torch

from ..errors import InputError
from .rows import weights_dtype

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}


#: the largest budget read (2**63 bytes, 9.2 EB): past every machine's memory, and what
#: a signed 64-bit byte count holds
MAX_SIZE = 2 ** 63


def parse_size(value: Union[int, float, str], name: str = "memory_budget") -> int:
    """Bytes from an int, a float holding a whole number, or a string like ``"8GB"``,
    ``"512MiB"``, ``"1.5 gb"``, ``"1e3GB"`` (exact: a string's value is rounded down
    to whole bytes, never converted through a float, so a budget of any size
    is read as written; a byte count must be whole)."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a size like 8GB, got {value!r}")
    if isinstance(value, numbers.Integral):
        size = int(value)
    elif isinstance(value, numbers.Real):
        if not math.isfinite(value) or value != int(value):
            raise InputError(f"{name} must be a whole number of bytes or a size like 8GB, got {value!r}")
        size = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise InputError(f"{name} must be a size like 8GB or 512MiB, got {value!r}")
        if m.group(2)[-1:] == "b" and m.group(2) != m.group(2).lower():  # "8Gb", "512Mib": bits, 8 x fewer bytes
            raise InputError(f"{name} must be a size in bytes; {m.group(2)!r} is bits (a lower-case b): write "
                             f"{m.group(2)[:-1]}B, got {value!r}")
        unit = _UNITS[m.group(2).lower()]
        try:
            number = decimal.Decimal(m.group(1))
        except decimal.InvalidOperation:  # an exponent past Decimal's range: far past or below any size
            number = decimal.Decimal("1e40") if "-" not in m.group(1) else decimal.Decimal("1e-40")
        if unit == 1 and number != number.to_integral_value():  # "1.5" bytes: no rounding what is a byte count
            raise InputError(f"{name} must be a whole number of bytes or a size like 8GB, got {value!r}")
        exact = decimal.Context(prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])
        # compared before multiplying: "1e999999999GB" is a valid Decimal that no product can hold; an
        # exponent past Decimal's own range ("1e99999999999999999999GB") is past any budget too
        if number.adjusted() > 30:
            size = MAX_SIZE + 1
        elif number.adjusted() < -30:
            size = 0
        else:  # 60 digits hold every value below 2**63 bytes exactly, so the floor is exact
            size = int(exact.multiply(number, decimal.Decimal(unit)).to_integral_value(rounding=decimal.ROUND_FLOOR))
    if size < 1:
        raise InputError(f"{name} must be a positive size, got {value!r}")
    if size > MAX_SIZE:
        raise InputError(f"{name} must be at most 2**63 bytes, got {value!r}")
    return size


def _text_config(model):
    cfg = getattr(model, "config", None)
    for sub in ("text_config", "llm_config", "language_config"):
        if getattr(cfg, sub, None) is not None:
            return getattr(cfg, sub)
    return cfg


def _layer_sizes(model) -> dict:
    """Sizes read off the modules, for a model whose config does not give them (a user's own
    nn.Module: a fixed hidden size of 1024 made a 24-wide model's estimate ~50x too large):
    D and V of the token embedding (the largest nn.Embedding), I the widest linear layer
    that is not the vocabulary, heads of nn.MultiheadAttention. 0 where none is found."""
    from torch import nn

    embeds = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    emb = max(embeds, key=lambda m: m.num_embeddings, default=None)
    V = emb.num_embeddings if emb is not None else 0
    widths = [w for m in model.modules() if isinstance(m, nn.Linear) for w in (m.in_features, m.out_features)
              if w != V]
    heads = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return {"D": emb.embedding_dim if emb is not None else 0, "V": V, "I": max(widths, default=0),
            "heads": max(heads, default=0)}


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def per_cotangent_bytes(model, seq_len: int, blocks_above: int, dtype: Optional[torch.dtype] = None) -> int:
    """Estimated bytes one cotangent of a vmapped backward holds: per block
    above the hook, the gradients of its activations (attention in/out and
    projections ~8 x L x D, MLP ~3 x L x I) plus the attention probabilities'
    gradient (heads x L x L, float32 where the attention is materialised)."""
    cfg = _text_config(model)
    found: dict = {}

    def layers(key: str) -> int:  # read off the modules once, and only where the config is silent
        if not found:
            found.update(_layer_sizes(model))
        return found[key]
    D = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or layers("D") or 1024)
    I = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "mlp_hidden_size", 0) or layers("I") or 4 * D)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 0) or layers("heads")
                or max(1, D // 128))
    elem = torch.finfo(dtype or weights_dtype(model)).bits // 8
    L = int(seq_len)
    per_block = L * (8 * D + 3 * I) * elem + heads * L * L * 4
    return max(1, (blocks_above + 1) * per_block)


class BudgetError(InputError):
    """The memory budget is too small for the model and sequence: a run option, not a
    record's fault (``dcam run`` stops on it rather than failing every record)."""


def head_cotangent_bytes(model, scored_rows: int) -> int:
    """Bytes of the logits' gradient one cotangent carries through the LM head: two
    dense ``scored_rows x V`` tensors (the gather's gradient and the head's input to
    its matrix product) in the model's dtype."""
    V = int(getattr(_text_config(model), "vocab_size", 0) or _layer_sizes(model)["V"])
    elem = torch.finfo(weights_dtype(model)).bits // 8
    return 2 * int(scored_rows) * V * elem


def check_budget_holds_model(model, budget: Union[int, str]) -> None:
    """Refuse a budget that cannot hold the model's own parameters: what the
    sequence adds is known only once an input is prepared."""
    budget_bytes = parse_size(budget)
    weights = model_bytes(model)
    if budget_bytes < weights:
        raise BudgetError(f"memory_budget: {budget_bytes / 1e9:.3g} GB ({budget_bytes} bytes) is too small for this "
                          f"model: its parameters alone take {weights / 1e9:.3g} GB")


def chunk_for_budget(model, seq_len: int, blocks_above: int, n_items: int, budget: Union[int, str],
                     rows: int = 1, scored_rows: int = 0) -> int:
    """The largest number of cotangents per backward that fits ``budget``
    (bytes, or a size string) next to the model and one forward graph of
    ``rows`` sequences with ``scored_rows`` logit rows each; at least 1, at most
    ``n_items``."""
    budget_bytes = parse_size(budget)
    rows = max(1, rows)
    blocks = per_cotangent_bytes(model, seq_len, blocks_above) * rows
    per = blocks + head_cotangent_bytes(model, scored_rows) * rows
    graph = blocks  # the forward graph above the hook holds about what one cotangent's gradients do
    weights = model_bytes(model)
    need = weights + graph + per
    if budget_bytes < need:
        raise BudgetError(f"memory_budget: {budget_bytes / 1e9:.3g} GB ({budget_bytes} bytes) is too small for this "
                          f"model and sequence: it needs at least {need / 1e9:.3g} GB (the model "
                          f"{weights / 1e9:.3g} GB, the forward graph about {graph / 1e9:.3g} GB and one "
                          f"item about {per / 1e9:.3g} GB)")
    return int(max(1, min(n_items, (budget_bytes - weights - graph) // per)))


__all__ = ["BudgetError", "check_budget_holds_model", "parse_size", "chunk_for_budget", "per_cotangent_bytes", "head_cotangent_bytes", "model_bytes"]
