"""The operators of Diffusion-CAM: gradient pooling and refinement.

    pool_gradients(acts, grads, grid)   -> RawMaps      (docs/ALGORITHM.md section 1)
    channel_weights(grads)              -> weights      (its two halves, for gradients
    weighted_maps(acts, weights, grid)  -> RawMaps       that arrive in chunks)
    WeightStream(batch, tokens, hidden) .add(chunk) ... .weights  (channel_weights, chunk by chunk)
    refine(raw_maps, config, ...)       -> Refined      (sections 2-7)
    diffusion_cam(acts, grads, grid, config, ...)      (both, no host sync between them)

Where each part lives:

- :mod:`~dcam.ops.api`: these functions and their result types;
- :mod:`~dcam.ops.streaming`: :class:`WeightStream`, the weights of chunks into one table;
- :mod:`~dcam.ops.validation`: argument checks (:class:`dcam.InputError`);
- :mod:`~dcam.ops.library`: the ``torch.library`` ops ``dcam::pool_gradients``,
  ``dcam::channel_weights``, ``dcam::weighted_maps`` and ``dcam::refine``
  (schema, fake kernel, one kernel per device);
- :mod:`~dcam.ops.reference`: the PyTorch reference, the executable contract;
- :mod:`~dcam.ops.cpp`: the C++ kernels (``dcam._C``, csrc/);
- :mod:`~dcam.ops.triton_launch`: the Triton launchers (kernels in ``dcam.kernels``);
- :mod:`~dcam.ops.constants`: the contract's numbers, defined once;
- :mod:`~dcam.ops.config`: :class:`CamConfig`, every knob of the refinement;
- :mod:`~dcam.ops.backends`: which backends are usable here;
- :mod:`~dcam.ops.bench`: the benchmark cases (``dcam bench``).
"""
import importlib

# Imported on first use: dcam.ops.constants and dcam.ops.config stay light
# (no torch), which keeps `dcam --help` fast.
_LAZY = {"RawMaps": "api", "Refined": "api", "all_finite": "api", "diffusion_cam": "api", "pool_gradients": "api",
         "channel_weights": "api", "weighted_maps": "api", "refine": "api", "WeightStream": "streaming", "BACKENDS": "backends",
         "available_backends": "backends", "CamConfig": "config", "DACG_STRATEGIES": "config", "SICD_MODES": "config"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"dcam.ops.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dcam.ops' has no attribute {name!r}")


__all__ = sorted(_LAZY)
