"""dcam: Diffusion-CAM explanations for diffusion multimodal LLMs.

Engine (batched, three backends behind one API):
    dcam.CamConfig, dcam.pool_gradients, dcam.refine, dcam.diffusion_cam,
    dcam.RawMaps, dcam.Refined, dcam.available_backends
"""
from .config import CamConfig, DACG_STRATEGIES, SICD_MODES
from .engine import RawMaps, Refined, available_backends, diffusion_cam, pool_gradients, refine

__version__ = "0.1.0"

__all__ = [
    "CamConfig", "DACG_STRATEGIES", "SICD_MODES", "RawMaps", "Refined", "available_backends",
    "diffusion_cam", "pool_gradients", "refine", "__version__",
]
