"""Which examples of :meth:`dcam.explain.Explainer.explain_batch` share a batch.

Examples that could share one forward (one :func:`dcam.probe.batch_key`) are cut into
batches whose padded work is close to the work the examples would cost apart. A batch
runs every example at the longest one's length (right padding, :mod:`dcam.probe.padding`)
and, through the backwards, at the largest item count (cotangent k selects item k of
every example: an example with fewer items rides along as zero rows); a short example
beside a long one, or a one-word response beside long ones, pays the other's cost.
"""
from __future__ import annotations

import math
import numbers
from typing import List

from .errors import InputError

#: how much work a batch may waste (padded positions in the forward, zero rows and padded
#: positions in the backwards), as a fraction of its examples' own backward work, before it is
#: split. 0.25: what the item-count rule of session 19 used (8 examples of 7 and 11 words ran
#: 88 rows for 64 words, ~1.35x slower than apart on a CPU; six 7s and two 11s waste none),
#: kept so that examples of one length are cut exactly as before (docs/RESULTS.md)
WORK_SLACK = 0.25


def similar_work(index: List[int], lengths: List[int], counts: List[int],
                 slack: float = WORK_SLACK) -> List[List[int]]:
    """``index`` (examples of ``lengths`` positions and ``counts`` items each) cut into batches
    whose padded work wastes at most ``slack`` of their examples' own backward work.

    Work is counted in positions times rows: an example alone costs ``length x (items + 1)``
    (its forward about one row, each item's backward one row over its length); a batch costs
    ``examples x longest length x (largest count + 1)``. The difference is the waste. Taken in
    order of length, then count, an example joins the current batch while the batch's waste
    stays within ``slack`` x (sum of length x items over its examples); each batch keeps the
    order of ``index``. Examples of one length (families that do not pad: their batch key
    separates lengths) waste nothing in the forward, so the rule is the item-count rule
    (largest count) x (examples) <= (1 + slack) x (their items)."""
    order = sorted(range(len(index)), key=lambda j: (lengths[j], counts[j], j))
    parts: List[List[int]] = []
    cur: List[int] = []
    most = own = own_backward = 0  # largest count, own work, own backward work of the current batch
    for j in order:  # lengths ascend: the newcomer's length is the batch's longest
        L, k = lengths[j], counts[j]
        padded = (len(cur) + 1) * L * (max(most, k) + 1)
        if cur and padded - (own + L * (k + 1)) > slack * (own_backward + L * k):
            parts.append(cur)
            cur, most, own, own_backward = [], 0, 0, 0
        cur.append(j)
        most = max(most, k)
        own += L * (k + 1)
        own_backward += L * k
    if cur:
        parts.append(cur)
    return [[index[j] for j in sorted(p)] for p in parts]


def check_slack(name: str, value) -> float:
    """``value`` as a float >= 0 (``math.inf`` allowed: one batch), else an InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value < 0:
        raise InputError(f"{name} must be a number >= 0 (math.inf: one batch), got {value!r}")
    return float(value)


__all__ = ["WORK_SLACK", "check_slack", "similar_work"]
