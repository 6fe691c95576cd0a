"""dcam: Diffusion-CAM, where in the image a diffusion multimodal LLM looked for each word.

The pipeline, one folder per stage:

    dcam.probe      activations and gradients at a hooked block; model adapters
    dcam.ops        the operators: pool_gradients (= weighted_maps of channel_weights),
                    refine, diffusion_cam (+ CamConfig)
    dcam.methods    one map method per file (diffusion-cam, grad-cam, llava-cam, tam)
    dcam.explain    Explainer: explain every word of a response -> dcam.explanation.Explanation
    dcam.saved      load_explanation, load_trajectory: a saved explanation's / trajectory's folder read back
    dcam.render     overlays, contact sheets
    dcam.eval       metrics, data sets, faithfulness, grounding, the evaluation runner
    dcam.zoo        the bundled toy dMLLM and its data
    dcam.cli        the `dcam` command
    dcam.c_api      where the C header and library (libdcam.so) of the C++ backend are installed

Every name below is imported on first use, so ``import dcam`` (and ``dcam
--help``) stays fast; the heavy parts (torch, transformers, PIL) load when used.
"""
import importlib

__version__ = "0.1.0"

_LAZY_ATTRS = {
    "CamConfig": "dcam.ops", "DACG_STRATEGIES": "dcam.ops", "SICD_MODES": "dcam.ops",
    "RawMaps": "dcam.ops", "Refined": "dcam.ops", "available_backends": "dcam.ops",
    "diffusion_cam": "dcam.ops", "pool_gradients": "dcam.ops", "channel_weights": "dcam.ops",
    "weighted_maps": "dcam.ops", "refine": "dcam.ops", "InputError": "dcam.errors",
    "BudgetError": "dcam.probe.memory", "Explainer": "dcam.explain", "Explanation": "dcam.explanation",
    "evaluate": "dcam.eval",
    "load_run": "dcam.runs", "load_explanation": "dcam.saved", "load_trajectory": "dcam.saved",
}
_LAZY_MODULES = ("ops", "probe", "methods", "explain", "explanation", "render", "eval", "zoo", "cli", "models",
                 "words", "errors", "kernels", "runs", "trajectory", "testing", "targets", "images", "output",
                 "saved", "c_api")


def __getattr__(name):
    if name in _LAZY_ATTRS:
        value = getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
        globals()[name] = value
        return value
    if name in _LAZY_MODULES:
        return importlib.import_module(f"dcam.{name}")
    raise AttributeError(f"module 'dcam' has no attribute {name!r}")


def __dir__():  # the public names only (the module's globals listed importlib and the dunders): __all__'s,
    # __version__ among them (it was dropped with the dunders), and the lazily imported ones
    return sorted(set(__all__) | set(_LAZY_ATTRS) | set(_LAZY_MODULES))


__all__ = ["CamConfig", "DACG_STRATEGIES", "SICD_MODES", "RawMaps", "Refined", "available_backends",
           "diffusion_cam", "pool_gradients", "channel_weights", "weighted_maps", "refine", "InputError",
           "BudgetError", "Explainer", "Explanation", "evaluate", "load_run", "load_explanation", "load_trajectory",
           "__version__"]
