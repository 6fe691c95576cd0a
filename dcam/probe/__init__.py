"""Probing: activations and target-score gradients at a hooked block.

- :mod:`dcam.probe.gradients`: :func:`probe` (one forward, batched
  cotangents, autograd only above the hooked block), the probe modes
  (``full``, ``masked``, ``remask``), target scores (``logit``,
  ``contrastive``) and :func:`published_gradients`, the slow published
  procedure the tests compare against;
- :mod:`dcam.probe.adapters`: how each model family lays out the image and
  the response, which blocks can be hooked, how it generates.
"""
from .adapters import ADAPTERS, ModelAdapter, Prepared, auto_adapter, register_adapter
from .gradients import (TARGET_SCORES, LastLayerError, ProbeResult, build_probe_inputs, check_probe_request, probe,
                        published_gradients)

__all__ = ["probe", "published_gradients", "ProbeResult", "LastLayerError", "TARGET_SCORES", "build_probe_inputs",
           "check_probe_request", "ModelAdapter", "Prepared", "auto_adapter", "register_adapter", "ADAPTERS"]
