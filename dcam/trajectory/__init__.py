"""Denoising trajectories: where a diffusion MLLM looked at every denoising
step, and at the step it decided each word (docs/ALGORITHM.md, "Denoising
trajectories").

- :mod:`~dcam.trajectory.core`: :func:`explain_trajectory` -> :class:`Trajectory`
  (maps ``[S, T, h, w]``, ``decided_at``, states, commit order, per-word
  numbers; ``save`` / ``write_files``; :func:`dcam.load_trajectory` reads a save back);
- :mod:`~dcam.trajectory.probing`: the batched gradients of every word on every state;
- :mod:`~dcam.trajectory.numbers`: map movement between steps, decision/final agreement;
- :mod:`~dcam.trajectory.render`: per-word animations, the step x word sheet, frame strips;
- :mod:`~dcam.trajectory.report`: the measurement on the grounding benchmark
  (``python -m dcam.trajectory.report --n 50``).

Supported by every adapter with ``records_trajectory = True`` (its sampler
exposes its steps); the others are refused with an InputError saying why.
"""
from .core import TRAJECTORY_METHOD, Trajectory, check_trajectory_request, explain_trajectory

__all__ = ["explain_trajectory", "Trajectory", "check_trajectory_request", "TRAJECTORY_METHOD"]
