"""Named ranges for the stages of an explanation, for ``torch.profiler``.

Each stage runs inside ``torch.profiler.record_function(name)``, so a trace of
an explanation (``torch.profiler.profile``, Chrome's trace viewer, ``dcam
explain --profile FILE``) shows where its time went, stage by stage, with the
model's and dcam's operators (``dcam::...``) inside:

- ``dcam.prepare``: the image read and the model's inputs built (the adapter's ``prepare``);
- ``dcam.generate``: the model writing the response (none when a response is given);
- ``dcam.rows_check``: whether the model's last block may run at the scored rows only, decided
  by two forwards of the model's first probe (on later probes the range is empty);
- ``dcam.padding_check``: whether a family that pads examples of other lengths into one
  forward computes each as alone, decided by two forwards of an adapter's first padded batch;
- ``dcam.forward``: the probe's forward, up to the scored rows (one per batch of examples,
  or per chunk of rows for the ``remask`` probe);
- ``dcam.backward``: one per chunk of cotangents (``chunk_size`` words at a time);
- ``dcam.reduce``: a chunk's gradients reduced as they arrive (Diffusion-CAM: pooled to
  channel weights), one per chunk and view;
- ``dcam.maps``: the maps made from them (the product with the activations, then the
  refinement), one per view of each example;
- ``dcam.trajectory``: a trajectory (``explain(..., trajectory=True)``): its generation, a
  forward per batch of step rows, backwards, reductions and the maps of every step, each
  in its own range inside this one.

Without an active profiler a range costs a few microseconds, against milliseconds for
any stage it marks.
"""
from __future__ import annotations

import torch

#: the stage names, in pipeline order
STAGES = ("dcam.prepare", "dcam.generate", "dcam.rows_check", "dcam.padding_check", "dcam.forward",
          "dcam.backward", "dcam.reduce", "dcam.maps", "dcam.trajectory")


def stage(name: str):
    """The profiler range of one stage (a context manager); ``name`` is one of :data:`STAGES`."""
    if name not in STAGES:  # a typo here would make a stage nobody looks for
        raise ValueError(f"unknown stage {name!r}")
    return torch.profiler.record_function(name)


__all__ = ["STAGES", "stage"]
