"""Probing: activations and target-score gradients at a hooked block.

- :mod:`dcam.probe.gradients`: :func:`probe` / :func:`probe_batch` (one
  forward, batched cotangents, autograd only above the hooked block, gradients
  streamed to a sink chunk by chunk);
- :mod:`dcam.probe.modes`: probe modes (``full``, ``masked``, ``remask``),
  target scores (``logit``, ``contrastive``), the one check of a request;
- :mod:`dcam.probe.hooks`: the hooks and the parameter freeze;
- :mod:`dcam.probe.published`: :func:`published_gradients`, the slow
  published procedure the tests compare against;
- :mod:`dcam.probe.adapters`: how each model family lays out the image and
  the response, which blocks can be hooked, how it generates.
"""
from .adapters import ADAPTERS, ModelAdapter, Prepared, auto_adapter, register_adapter
from .gradients import GradSink, ProbeResult, Targets, batch_key, layout_key, probe, probe_batch
from .modes import TARGET_SCORES, LastLayerError, build_probe_inputs, check_probe_request, pick_distractor
from .published import published_gradients

__all__ = ["probe", "probe_batch", "published_gradients", "ProbeResult", "Targets", "GradSink", "layout_key",
           "batch_key",
           "LastLayerError", "TARGET_SCORES", "build_probe_inputs", "check_probe_request", "pick_distractor",
           "ModelAdapter", "Prepared", "auto_adapter", "register_adapter", "ADAPTERS"]
