"""The map methods, one per file over one base (:mod:`dcam.methods.base`):

    diffusion-cam   dcam.methods.diffusion_cam.DiffusionCam   (the paper's method)
    grad-cam        dcam.methods.grad_cam.GradCam
    llava-cam       dcam.methods.llava_cam.LlavaCam
    tam             dcam.methods.tam.Tam

A new method: subclass :class:`CamMethod`, implement ``compute_maps`` and
decorate it with :func:`register_method`; ``Explainer(method=name)`` finds it.
"""
from .base import METHODS, CamMethod, MapResult, MethodInputs, get_method, register_method
from .diffusion_cam import DiffusionCam
from .grad_cam import GradCam, grad_cam
from .llava_cam import LLAVA_CAM_THRESHOLD, LlavaCam, llava_cam
from .tam import TAM_KERNEL, Tam, tam

__all__ = ["METHODS", "CamMethod", "MapResult", "MethodInputs", "get_method", "register_method", "DiffusionCam",
           "GradCam", "LlavaCam", "Tam", "grad_cam", "llava_cam", "tam", "LLAVA_CAM_THRESHOLD", "TAM_KERNEL"]
