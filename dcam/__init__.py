"""dcam: Diffusion-CAM explanations for diffusion multimodal LLMs.

Engine (batched, three backends behind one API):
    dcam.CamConfig, dcam.pool_gradients, dcam.refine, dcam.diffusion_cam,
    dcam.RawMaps, dcam.Refined, dcam.available_backends
Models (loaded on first use, they import transformers):
    dcam.Explainer, dcam.Explanation     explain every word of a response
    dcam.metrics, dcam.baselines, dcam.datasets, dcam.data, dcam.zoo
"""
import importlib

from .config import CamConfig, DACG_STRATEGIES, SICD_MODES
from .engine import RawMaps, Refined, available_backends, diffusion_cam, pool_gradients, refine

__version__ = "0.1.0"

_LAZY_ATTRS = {"Explainer": "dcam.explain", "Explanation": "dcam.explain"}
_LAZY_MODULES = ("metrics", "baselines", "datasets", "data", "zoo", "adapters", "overlay", "evaluate", "reference")


def __getattr__(name):
    # heavy parts (transformers, PIL, matplotlib) load only when used
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"dcam.{name}")
    raise AttributeError(f"module 'dcam' has no attribute {name!r}")


__all__ = [
    "CamConfig", "DACG_STRATEGIES", "SICD_MODES", "RawMaps", "Refined", "available_backends",
    "diffusion_cam", "pool_gradients", "refine", "Explainer", "Explanation", "__version__",
]
