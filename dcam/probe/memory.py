"""Choosing how many cotangents (items) one backward takes from a memory budget.

The probe's peak memory is the model, the graph of the blocks above the hook
(kept for every chunk) and one chunk of gradients: a vmapped backward holds,
for each cotangent of the chunk, the gradient of every intermediate of those
blocks at every position. :func:`chunk_for_budget` estimates both from the
sizes involved (sequence length ``L``, hidden size ``D``, MLP width ``I``,
attention heads, blocks above the hook, the model's dtype) and returns the
largest chunk that fits; ``bench/bench_real_size.py`` measures the real peak
against the budget.
"""
from __future__ import annotations

import decimal
import math
import numbers
import re
from typing import Optional, Union

import torch

from ..errors import InputError

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
        number, unit = decimal.Decimal(m.group(1)), _UNITS[m.group(2).lower()]
        if unit == 1 and number != number.to_integral_value():  # "1.5" bytes: no rounding what is a byte count
            raise InputError(f"{name} must be a whole number of bytes or a size like 8GB, got {value!r}")
        # compared before multiplying: "1e999999999GB" is a valid Decimal that no product can hold
        size = MAX_SIZE + 1 if number > decimal.Decimal(MAX_SIZE) / unit else int(number * unit)
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


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def per_cotangent_bytes(model, seq_len: int, blocks_above: int, dtype: Optional[torch.dtype] = None) -> int:
    """Estimated bytes one cotangent of a vmapped backward holds: per block
    above the hook, the gradients of its activations (attention in/out and
    projections ~8 x L x D, MLP ~3 x L x I) plus the attention probabilities'
    gradient (heads x L x L, float32 where the attention is materialised)."""
    cfg = _text_config(model)
    D = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or 1024)
    I = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "mlp_hidden_size", 0) or 4 * D)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 0) or max(1, D // 128))
    elem = torch.finfo(dtype or next(model.parameters()).dtype).bits // 8
    L = int(seq_len)
    per_block = L * (8 * D + 3 * I) * elem + heads * L * L * 4
    return max(1, (blocks_above + 1) * per_block)


def chunk_for_budget(model, seq_len: int, blocks_above: int, n_items: int, budget: Union[int, str],
                     rows: int = 1) -> int:
    """The largest number of cotangents per backward that fits ``budget``
    (bytes, or a size string) next to the model and one forward graph of
    ``rows`` sequences; at least 1, at most ``n_items``."""
    budget_bytes = parse_size(budget)
    per = per_cotangent_bytes(model, seq_len, blocks_above) * max(1, rows)
    graph = per  # the forward graph above the hook holds about what one cotangent's gradients do
    room = budget_bytes - model_bytes(model) - graph
    if room < per:
        raise InputError(f"memory_budget: {budget_bytes / 1e9:.3g} GB ({budget_bytes} bytes) is too small for this "
                         f"model and sequence (the model takes "
                         f"{model_bytes(model) / 1e9:.2f} GB and one item about {per / 1e9:.2f} GB)")
    return int(max(1, min(n_items, room // per)))


__all__ = ["parse_size", "chunk_for_budget", "per_cotangent_bytes", "model_bytes"]
