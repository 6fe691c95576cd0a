"""The shared base of the map methods: what a method receives and returns.

A method turns one probe (:class:`dcam.probe.ProbeResult`: activations and
target-score gradients at the hooked block, or last hidden states) into one
map per explained token. Each method is a small subclass of :class:`CamMethod`
in its own file (pytorch-grad-cam's layout), registered by name with
:func:`register_method`; the explainer looks it up in :data:`METHODS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor

from ..errors import InputError, NonFiniteError
from ..ops.config import CamConfig
from ..ops.reference import EPS_NORM
from ..ops.validation import check_grid, check_tensor
from ..probe.adapters.base import ModelAdapter
from ..probe.gradients import ProbeResult


@dataclass
class MethodInputs:
    """Everything a method may use for one response."""

    result: ProbeResult
    grid: Tuple[int, int]
    token_ids: Tensor  # the first token id of each item
    config: CamConfig
    steps: int
    image_size: int
    repeat_ratio: float
    adapter: ModelAdapter
    backend: str = "auto"
    item_token_ids: Optional[List[List[int]]] = None  # every token id of each item (None: token_ids alone)

    def __post_init__(self):
        if self.item_token_ids is None:
            self.item_token_ids = [[int(i)] for i in self.token_ids.tolist()]


@dataclass
class MapResult:
    """What every method returns: maps float32 ``[T, h, w]`` in [0, 1], per-map
    statistics (each a ``[T]`` tensor; at least ``degenerate``) and, for
    methods that refine pooled maps, the raw maps before refinement."""

    maps: Tensor
    stats: Dict[str, Tensor]
    raw_maps: Optional[Tensor] = None
    extra: Dict[str, Tensor] = field(default_factory=dict)


class CamMethod:
    """Base class of the map methods.

    needs_gradients / needs_last_hidden: what the probe must return (a method
    without gradients hooks no layer and has no target score).
    uses_config: whether a CamConfig shapes its maps.
    default_target_score: the target score used when the caller gives none.
    probes: the probe modes the method accepts (None: any).

    A gradient method that reduces each item's gradients on its own
    implements :meth:`reduce_gradients` (one chunk of items -> per-item
    tensors, item first: their maps, or anything smaller from which
    :meth:`finish` makes them) and :meth:`finish` (all items' reductions, in
    item order -> the result); the explainer then streams the probe's
    gradients chunk by chunk through the method's :meth:`reducer` (by
    default :meth:`reduce_gradients` per chunk; Diffusion-CAM writes each
    chunk's channel weights into one table), so the gradients of all items
    never exist at once. :meth:`compute_maps` (a whole probe result at once)
    is the same computation in one chunk.
    """

    name = "base"
    needs_gradients = True
    needs_last_hidden = False
    #: whether the maps are refined with a CamConfig (a config given to another method would
    #: be recorded but never applied, so the explainer refuses it)
    uses_config = False
    default_target_score = "logit"
    probes: Optional[Tuple[str, ...]] = None

    @property
    def streams(self) -> bool:
        """Whether this method reduces each item's gradients on its own (see above)."""
        return type(self).reduce_gradients is not CamMethod.reduce_gradients

    def reduce_gradients(self, acts: Tensor, grads: Tensor, inputs: MethodInputs) -> Tuple[Tensor, ...]:
        """One chunk of items: ``acts [r, N, D]``, ``grads [r, k', N, D]`` (a
        probe's layout, ``r * k'`` items) -> per-item tensors, each ``[k, ...]``
        (default :meth:`finish`: maps float32 ``[k, h, w]``, degenerate bool ``[k]``)."""
        raise NotImplementedError

    def finish(self, reduced: Tuple[Tensor, ...], inputs: MethodInputs) -> MapResult:
        """All items' :meth:`reduce_gradients` outputs, concatenated in item
        order -> the result (default: the maps and degenerate flags as they are)."""
        maps, degenerate = reduced
        return MapResult(maps, {"degenerate": degenerate})

    def reducer(self, inputs: MethodInputs, items: int) -> "ChunkReducer":
        """What the explainer streams one view's gradients through: ``items`` items in
        all, each chunk given to :meth:`ChunkReducer.add`, the result from
        :meth:`ChunkReducer.finish`. By default each chunk's :meth:`reduce_gradients`
        kept, concatenated in item order for :meth:`finish`."""
        return ChunkReducer(self, inputs)

    def compute_maps(self, inputs: MethodInputs) -> MapResult:
        if not self.streams:
            raise NotImplementedError
        return self.finish(self.reduce_gradients(inputs.result.acts, inputs.result.grads, inputs), inputs)

    @staticmethod
    def zero_map_stats(maps: Tensor) -> Dict[str, Tensor]:
        """Statistics of a method without refinement: only which maps are all zero."""
        return {"degenerate": ~(maps.flatten(1).amax(1) > 0)}


class ChunkReducer:
    """A method's reductions of one view's chunks of items (:meth:`CamMethod.reducer`)."""

    def __init__(self, method: CamMethod, inputs: MethodInputs):
        self.method, self.inputs = method, inputs
        self.chunks: List[Tuple[Tensor, Tuple[Tensor, ...]]] = []

    def add(self, items: Tensor, acts: Tensor, grads: Tensor) -> None:
        """One chunk: the items' indices, ``acts [r, N, D]``, ``grads [r, k', N, D]``."""
        self.chunks.append((items, self.method.reduce_gradients(acts, grads, self.inputs)))

    def finish(self, inputs: MethodInputs) -> MapResult:
        """The result, from the inputs of the whole probe (its activations, context weights)."""
        order = torch.cat([c[0] for c in self.chunks])
        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.numel())
        parts = zip(*(c[1] for c in self.chunks))
        return self.method.finish(tuple(torch.cat(p)[inv] for p in parts), inputs)


METHODS: Dict[str, Type[CamMethod]] = {}


def register_method(cls: Type[CamMethod]) -> Type[CamMethod]:
    """Class decorator: make ``cls`` available as ``method=cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> CamMethod:
    if not isinstance(name, str) or name not in METHODS:  # (a list was "unhashable type", a TypeError)
        raise InputError(f"method: unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]()


# ------------------------------------------------------------------ helpers shared by the baselines

def batched_pool_inputs(acts: Tensor, grads: Tensor, grid):
    """(acts [B,N,D], grads [B,T,N,D], h, w) from batched or single-image inputs, checked as the
    operators check theirs (a numpy array was an AttributeError, a size-0 one torch's RuntimeError;
    a grid of (4.5, 4) was cut to 4, "44" taken, (-4, -4) and (4,) raw errors)."""
    acts = check_tensor("acts", acts, ranks=(2, 3))
    grads = check_tensor("grads", grads, ranks=(3, 4))
    if acts.dim() == 2:
        acts = acts[None]
    if grads.dim() == 3:
        grads = grads[None]
    if acts.dim() != 3 or grads.dim() != 4:
        raise InputError(f"acts must be [B,N,D] and grads [B,T,N,D], got {tuple(acts.shape)} and "
                         f"{tuple(grads.shape)}")
    if grads.shape[0] != acts.shape[0] or grads.shape[2:] != acts.shape[1:]:
        raise InputError(f"grads {tuple(grads.shape)} do not match acts {tuple(acts.shape)}")
    h, w = check_grid(grid, acts.shape[1])
    refuse_nonfinite(acts=acts, grads=grads)
    return acts, grads, h, w


def refuse_nonfinite(**tensors: Tensor) -> None:
    """An InputError naming the first tensor holding NaN/Inf. The baselines' min-max
    turned a NaN row into an all-zero "degenerate" map, scored as a real one."""
    for name, x in tensors.items():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise NonFiniteError(name, int(bad.sum()))


def minmax_or_zero(x: Tensor) -> Tensor:
    """Per-row min-max of [M, N]; constant rows become 0 (as a degenerate
    Diffusion-CAM map does)."""
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    const = ~(hi > lo)
    y = (x - lo) / (hi - lo + EPS_NORM)
    return torch.where(const, torch.zeros_like(y), y)
