"""Loading the model to explain: the bundled toy dMLLM, a saved zoo model, a
transformers checkpoint folder, a checkpoint of one of the dMLLM families
(LLaDA-V and LaViDa through the authors' ``llava`` package, MMaDA and
Lumina-DiMOO through theirs, Dream-VL with ``trust_remote_code``; recipes in
docs/FAMILIES.md), or a stand-in folder saved by :mod:`dcam.testing.standins`.

:func:`load_model` returns ``(model, processor)`` in eval mode. Whatever about
the folder is wrong (not a folder, no or broken ``config.json``, a config
field the model class refuses, missing or truncated weights, a tokenizer that
cannot load, a model without an image token, an unknown device) is one
:class:`dcam.InputError` that says what was found and what is missing; the CLI
prints it on one line naming ``--model`` (or ``--device``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple

from .errors import InputError, one_line

#: What a broken checkpoint makes the loaders raise (transformers, safetensors,
#: huggingface_hub's strict config validation, our zoo): all input errors here.
_LOAD_ERRORS: Tuple[type, ...] = (OSError, ValueError, KeyError, EOFError)


def _load_errors() -> Tuple[type, ...]:
    extra = []
    try:
        from safetensors import SafetensorError

        extra.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    try:  # a config field the (strict dataclass) config class refuses, e.g. hidden_size 7 with 2 heads
        from huggingface_hub.errors import StrictDataclassError

        extra.append(StrictDataclassError)
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    return _LOAD_ERRORS + tuple(extra)


#: What loading a user's folder may raise besides :func:`_load_errors`: a
#: config value of the wrong type (TypeError) or weights that do not fit the
#: config (RuntimeError, "size mismatch"). Caught for a folder the user names,
#: never for the bundled weights (there they would be a bug in dcam).
_USER_FOLDER_ERRORS: Tuple[type, ...] = (TypeError, RuntimeError)
PROCESSOR_CONFIG_NAME = "processor_config.json"


def check_device(device: Optional[str]):
    """``device`` as a torch.device that exists here, else InputError naming it."""
    import torch

    from .probe.hooks import DEVICE_TYPES  # (the rule Explainer holds a model's weights to)

    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device: {device!r} is not a device name ({one_line(exc)})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {device!r} is not available here (torch.cuda.is_available() is False)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device: {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"device: {device!r} is not available here")
    if dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):  # (an AssertionError later)
        raise InputError(f"device: {device!r} is not available here")
    if dev.type == "cpu" and dev.index not in (None, 0):  # (cpu:5 was taken: the CPU has no numbered devices)
        raise InputError(f"device: {device!r} does not exist (the CPU is one device: cpu)")
    if dev.type not in DEVICE_TYPES:
        raise InputError(f"device: {device!r} is not supported (use cpu, cuda, cuda:N or mps)")
    return dev


def read_config(model_dir: str) -> dict:
    """``config.json`` of a checkpoint folder as a dict (InputError otherwise)."""
    if not os.path.isdir(model_dir):
        raise InputError(f"model: {model_dir!r} is not a folder")
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise InputError(f"model: no config.json in {model_dir!r}")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"model: cannot read {path} ({one_line(exc)})") from None
    if not isinstance(cfg, dict):
        kind = {type(None): "null", list: "list", str: "string", int: "number", float: "number",
                bool: "boolean"}.get(type(cfg), type(cfg).__name__)
        raise InputError(f"model: {path} holds a JSON {kind}, not an object")
    return cfg


def _zoo(model_dir: Optional[str]):
    from . import zoo

    directory = zoo.WEIGHTS_DIR if model_dir is None else model_dir
    if not os.path.exists(os.path.join(directory, "model.safetensors")):
        what = "the bundled weights are missing" if model_dir is None else f"no model.safetensors in {directory!r}"
        raise InputError(f"model: {what}; train them with `python -m dcam.zoo.train` or pass another model")
    for name in ("tokenizer.json", PROCESSOR_CONFIG_NAME):
        if not os.path.exists(os.path.join(directory, name)):
            raise InputError(f"model: no {name} in {directory!r} (a zoo model folder holds config.json, "
                             f"model.safetensors, tokenizer.json, tokenizer_config.json, {PROCESSOR_CONFIG_NAME})")
    errors = _load_errors() + (() if model_dir is None else _USER_FOLDER_ERRORS)
    try:
        model, processor = zoo.load_pretrained(directory)
    except errors as exc:
        detail = _zoo_shape_mismatches(directory) if isinstance(exc, RuntimeError) else ""
        raise InputError(f"model: cannot load {directory!r} ("
                         + (detail or f"{type(exc).__name__}: {one_line(exc)}") + ")") from None
    _check_zoo_model(model, processor, directory)
    return model, processor


def _zoo_shape_mismatches(directory: str) -> str:
    """Which tensors of model.safetensors have another shape than config.json
    describes ("" if none found): what transformers' "size mismatch" error
    only points to in a multi-line log report."""
    import torch
    from safetensors import safe_open

    from .zoo import ShapesDMLLM, ShapesDMLLMConfig

    with torch.device("meta"):  # shapes only, no memory
        want = {k: list(v.shape) for k, v in ShapesDMLLM(ShapesDMLLMConfig.from_pretrained(directory))
                .state_dict().items()}
    with safe_open(os.path.join(directory, "model.safetensors"), "pt") as f:
        got = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    bad = [f"{k} is {got[k]} in model.safetensors but {want[k]} by config.json"
           for k in sorted(want) if k in got and got[k] != want[k]]
    return "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")


def _check_zoo_model(model, processor, directory: str) -> None:
    """A loaded zoo model whose config.json and processor_config.json agree and
    that dcam can explain; else an InputError naming the field (instead of a
    confusing failure later, deep in the explainer)."""
    cfg = model.config
    where = os.path.join(directory, "config.json")
    n = len(model.language_model.layers)
    if n < 2:
        n = getattr(cfg.text_config, "num_hidden_layers", n)
        raise InputError(f"model: {where}: text_config.num_hidden_layers is {n}; dcam needs at least 2 blocks "
                         "(the last block's image-token gradients are zero)")
    layer = cfg.default_probe_layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n or layer % n == n - 1:
        raise InputError(f"model: {where}: default_probe_layer {layer!r} is not a block before the last "
                         f"(0..{n - 2} for {n} blocks)")
    vocab = int(cfg.text_config.vocab_size)
    tok = processor.tokenizer
    for name, want in (("image_token_id", processor.image_token_id), ("mask_token_id", tok.mask_token_id),
                       ("eos_token_id", tok.eos_token_id), ("pad_token_id", tok.pad_token_id),
                       ("bos_token_id", tok.bos_token_id)):
        got = getattr(cfg, name, None)
        if isinstance(got, bool) or not isinstance(got, int) or not 0 <= got < vocab or got != want:
            raise InputError(f"model: {where}: {name} {got!r} is not the tokenizer's id {want} "
                             f"(vocabulary of {vocab})")
    strides = 1
    for v in cfg.stem_strides:
        strides *= int(v)
    vs = cfg.vision_config.image_size
    vs = int(vs[0] if isinstance(vs, (list, tuple)) else vs)
    size = cfg.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % strides or size // strides != vs:
        raise InputError(f"model: {where}: image_size {size!r} does not fit the vision tower (stem strides "
                         f"{list(cfg.stem_strides)} onto a {vs}x{vs} map: image_size {vs * strides})")
    if processor.image_size != size or tuple(processor.grid) != tuple(cfg.grid):
        raise InputError(f"model: {where}: image_size {size} and grid {tuple(cfg.grid)} do not match "
                         f"{PROCESSOR_CONFIG_NAME}'s {processor.image_size} and {tuple(processor.grid)}")
    length = cfg.response_length
    if isinstance(length, bool) or not isinstance(length, int) or length != processor.response_length:
        raise InputError(f"model: {where}: response_length {length!r} does not match "
                         f"{PROCESSOR_CONFIG_NAME}'s {processor.response_length}")
    overrides = getattr(cfg, "cam_config", None)
    if overrides is not None:
        from .ops.config import CamConfig

        why = None if isinstance(overrides, dict) else f"a JSON {type(overrides).__name__}, not an object"
        if why is None:
            try:
                CamConfig(**overrides)
            except (InputError, TypeError) as exc:
                why = one_line(exc)
        if why:
            raise InputError(f"model: {where}: cam_config {overrides!r} is not a valid CamConfig ({why})")


def _transformers(model_dir: str, cfg: dict, trust_remote_code: bool, dtype=None):
    import transformers

    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    if cfg.get("image_token_id", cfg.get("image_token_index", text_cfg.get("image_token_id"))) is None:
        raise InputError(f"model: the model in {model_dir!r} ({cfg.get('model_type', 'no model_type')}) has no "
                         "image token id in its config; it is not a multimodal model dcam can explain")
    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        if cfg.get("model_type") == "diffusion_gemma":
            model = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(model_dir, dtype=dtype, **kw)
        else:
            model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, **kw)
    except _load_errors() + _USER_FOLDER_ERRORS as exc:
        raise InputError(f"model: cannot load the weights in {model_dir!r} ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None
    try:
        processor = transformers.AutoProcessor.from_pretrained(model_dir, **kw)
    except _load_errors() + _USER_FOLDER_ERRORS as exc:
        raise InputError(f"model: cannot load the processor/tokenizer in {model_dir!r} ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None
    return model, processor


#: ``--dtype`` names.
DTYPES = ("float32", "bfloat16", "float16")


def parse_dtype(dtype):
    """``dtype`` (a name of :data:`DTYPES`, a torch dtype or None) as a torch dtype or None."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in DTYPES:
        raise InputError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, str(dtype))


def load_model(model_dir: Optional[str] = None, device: Optional[str] = None, trust_remote_code: bool = False,
               dtype=None, pan_and_scan: Optional[bool] = None) -> Tuple[Any, Any]:
    """(model, processor), eval mode, on ``device`` (default CPU), in ``dtype``
    (default: as saved; ``"bfloat16"`` for a 7-8B dMLLM on one GPU).

    model_dir: None for the bundled toy dMLLM; a folder saved by the zoo
    (``model_type`` ``shapes_dmllm``); a dMLLM family's checkpoint; a
    transformers checkpoint folder; a stand-in folder (``dcam_standin`` in its
    config.json).

    pan_and_scan: Gemma 3's crops of a wide or tall image; None: as the
    checkpoint's preprocessor config says (transformers' processor call alone
    ignores it), True / False: on / off (an InputError naming ``pan_and_scan``
    for a processor without them; :func:`dcam.probe.adapters.pan_and_scan.set_pan_and_scan`)."""
    from .probe.adapters.pan_and_scan import check_pan_and_scan_choice, refuse_pan_and_scan_early, set_pan_and_scan
    from .zoo import ShapesDMLLMConfig, ShapesProcessor

    dev = check_device(device)
    dt = parse_dtype(dtype)
    check_pan_and_scan_choice(pan_and_scan)
    # a choice of crops the processor cannot make is refused before the weights load (and before a family's
    # packages are looked for) where the folder's files or the family tell the processor's class
    cfg = None if model_dir is None else read_config(model_dir)
    if cfg is None or cfg.get("model_type") == ShapesDMLLMConfig.model_type:  # the bundled toy, or a zoo folder
        refuse_pan_and_scan_early(ShapesProcessor, pan_and_scan, ShapesDMLLMConfig.model_type)
        model, processor = _zoo(model_dir)
    elif "dcam_standin" in cfg:
        from .testing.standins import load_standin

        model, processor = load_standin(model_dir)
    else:
        loader = _FAMILY_LOADERS.get(_family_of(cfg), _transformers)
        if pan_and_scan is not None:
            refuse_pan_and_scan_early(_processor_class(loader, model_dir, cfg), pan_and_scan,
                                      cfg.get("model_type") or _family_of(cfg))
        try:
            model, processor = loader(model_dir, cfg, trust_remote_code, dt)
        except ModuleNotFoundError as exc:
            missing = missing_package(exc, model_dir)
            if missing is None:
                raise
            raise missing from None
    set_pan_and_scan(processor, pan_and_scan, getattr(getattr(model, "config", None), "model_type", None)
                     or type(model).__name__)
    model = model.to(dev) if dt is None else model.to(dev, dt)
    return model.eval(), processor


def _processor_class(loader, model_dir: str, cfg: dict) -> Optional[type]:
    """The class of the processor ``loader`` will build for the folder, known before it runs; None where
    the folder's code decides (Dream-VL's shipped processor, a transformers folder's ``auto_map``). (A
    family's was known only once its weights had loaded: LLaDA-V's 8B were read before --pan-and-scan was
    refused.)"""
    if loader is _load_llava:
        from types import SimpleNamespace

        return SimpleNamespace  # the authors' builder's tokenizer and image processor, as _load_llava holds them
    if loader in (_load_mmada, _load_dimoo):
        from .probe.adapters import DiMOOProcessor, MMaDAProcessor

        return MMaDAProcessor if loader is _load_mmada else DiMOOProcessor
    from .probe.adapters.pan_and_scan import transformers_processor_class

    return transformers_processor_class(model_dir, cfg)


# ---------------------------------------------------------------- dMLLM families

def _family_of(cfg: dict) -> Optional[str]:
    mt = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if mt in ("llava_llada", "llava_dream"):
        return "llava"
    if mt == "mmada" or "MMadaModelLM" in archs:
        return "mmada"
    if "LLaDAForMultiModalGeneration" in archs:
        return "lumina-dimoo"
    if mt == "dream-vl":
        return "dream-vl"
    return None


def _need(module: str, what: str, model_dir: str, how: str):
    """``import module`` or an InputError saying what the folder is and what is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # installed, but a package it imports is not ("pip install accelerate" did not help then)
        missing = missing_package(exc, model_dir) if (getattr(exc, "name", None) or "").split(".")[0] \
            not in ("", module.split(".")[0]) else None
        raise (missing or InputError(f"model: {model_dir!r} is {what}; loading it needs {how} (import {module!r} "
                                     f"failed: {one_line(exc)})")) from None


def missing_package(exc: ImportError, model_dir: str) -> Optional[InputError]:
    """The InputError of a package a model folder's loading imports that is not installed (accelerate,
    installed with ``pip --no-deps``, imports psutil when transformers places a model: a raw
    ModuleNotFoundError from deep inside); None where ``exc`` is not that (a module of dcam, or one
    inside an installed package: a bug or a broken install, kept with its traceback). What is missing
    is the environment's, not the folder's, but as :func:`_need`'s packages it is named on one line
    with the command that installs it, not shown as dcam's bug."""
    import importlib.util

    top = (getattr(exc, "name", None) or "").split(".")[0]
    if not top or top == __name__.split(".")[0]:
        return None
    try:
        if importlib.util.find_spec(top) is not None:
            return None
    except (ImportError, ValueError):  # (a parent that fails to import, a module without a spec)
        pass
    importer, tb = None, exc.__traceback__
    while tb is not None:  # the last frame outside the import machinery did the import
        if not tb.tb_frame.f_code.co_filename.startswith("<frozen importlib"):
            importer = tb.tb_frame.f_globals.get("__name__")
        tb = tb.tb_next
    by = str(importer).split(".")[0] if importer else None
    return InputError(f"model: loading {model_dir!r} needs the Python package {top!r}, which is not installed"
                      + (f" ({by} imports it)" if by and by not in ("__main__", top) else "")
                      + f": pip install {PIP_NAMES.get(top, top)}")


#: modules whose package on PyPI has another name (``pip install cv2`` finds nothing), among those model code
#: imports; any other module is installed under its own name
PIP_NAMES = {"cv2": "opencv-python", "sklearn": "scikit-learn", "skimage": "scikit-image", "yaml": "pyyaml",
             "PIL": "pillow", "open_clip": "open_clip_torch", "flash_attn": "flash-attn", "bs4": "beautifulsoup4",
             "Crypto": "pycryptodome", "attr": "attrs", "dateutil": "python-dateutil"}


def _load_llava(model_dir: str, cfg: dict, trust_remote_code: bool, dtype):
    """LLaDA-V / LaViDa with the authors' ``llava`` package (``load_pretrained_model``)."""
    import inspect

    import torch

    name = cfg["model_type"]
    builder = _need("llava.model.builder", f"a {name} checkpoint (LLaDA-V or LaViDa)", model_dir,
                    "the authors' llava package on the path (LLaDA-V: its train/ folder; LaViDa: pip install -e .)")
    # The builders move the vision tower to CUDA in float16 whenever device_map is not "auto", which
    # fails on a machine without CUDA ("Torch not compiled with CUDA enabled"); there "auto" leaves
    # everything on the CPU, and transformers needs accelerate for it. (load_model moves the model to
    # the device asked for afterwards.)
    device_map = "cpu" if torch.cuda.is_available() else "auto"
    if device_map == "auto":
        _need("accelerate", f"a {name} checkpoint (LLaDA-V or LaViDa)", model_dir,
              "accelerate on a machine without CUDA (pip install accelerate): the authors' builder moves the vision "
              "tower to CUDA unless transformers places the model itself")
    # the builders take the dtype by name, and default to flash attention (LLaDA-V's demo passes sdpa)
    kw = dict(device_map=device_map, torch_dtype=str(dtype or torch.bfloat16).replace("torch.", ""),
              attn_implementation="sdpa")
    if "vision_kwargs" in inspect.signature(builder.load_pretrained_model).parameters:  # LaViDa's builder
        kw["vision_kwargs"] = dict(mm_vision_tower=cfg.get("mm_vision_tower", "google/siglip-so400m-patch14-384"),
                                   mm_resampler_type=None, mm_projector_type="mlp2x_gelu",
                                   mm_hidden_size=int(cfg.get("mm_hidden_size", 1152)), use_mm_proj=True)
    try:
        tokenizer, model, image_processor, _ = builder.load_pretrained_model(model_dir, None, name, **kw)
    except _load_errors() + _USER_FOLDER_ERRORS as exc:
        raise InputError(f"model: the llava package cannot load {model_dir!r} ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None
    from types import SimpleNamespace

    return model, SimpleNamespace(tokenizer=tokenizer, image_processor=image_processor)


def _vq_folder(model_dir: str, sub: str, what: str) -> str:
    path = os.path.join(model_dir, sub)
    if not os.path.isdir(path):
        raise InputError(f"model: {model_dir!r} is a {what} checkpoint but has no {sub}/ folder with its VQ "
                         f"tokenizer (copy or link the tokenizer's weights there)")
    return path


def _load_mmada(model_dir: str, cfg: dict, trust_remote_code: bool, dtype):
    """MMaDA with the authors' ``models`` package; the MAGVIT-v2 tokenizer in ``<dir>/magvitv2``."""
    from transformers import AutoTokenizer

    from .probe.adapters import MMaDAProcessor

    models = _need("models", "an MMaDA checkpoint", model_dir, "the MMaDA repository on the path (its models/)")
    vq_dir = _vq_folder(model_dir, "magvitv2", "MMaDA")
    try:
        # the user's trust_remote_code, not True: the folder's own code (a custom_generate/ of the model, a
        # tokenizer's auto_map) runs only when they ask for it (--trust-remote-code)
        model = models.MMadaModelLM.from_pretrained(model_dir, trust_remote_code=trust_remote_code, torch_dtype=dtype)
        vq = models.MAGVITv2.from_pretrained(vq_dir).eval()
        tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left", trust_remote_code=trust_remote_code)
    except _load_errors() + _USER_FOLDER_ERRORS as exc:
        raise InputError(f"model: cannot load MMaDA from {model_dir!r} ({type(exc).__name__}: {one_line(exc)})") \
            from None
    return model, MMaDAProcessor(tok, vq, resolution=512)


def _load_dimoo(model_dir: str, cfg: dict, trust_remote_code: bool, dtype):
    """Lumina-DiMOO with the authors' ``model`` package; the diffusers VQ model in ``<dir>/vqvae``."""
    from transformers import AutoTokenizer

    from .probe.adapters import DiMOOProcessor

    pkg = _need("model", "a Lumina-DiMOO checkpoint", model_dir, "the Lumina-DiMOO repository on the path")
    diffusers = _need("diffusers", "a Lumina-DiMOO checkpoint", model_dir, "the diffusers package")
    vq_dir = _vq_folder(model_dir, "vqvae", "Lumina-DiMOO")
    try:
        model = pkg.LLaDAForMultiModalGeneration.from_pretrained(model_dir, torch_dtype=dtype)
        vq = diffusers.VQModel.from_pretrained(vq_dir).eval()
        # (was trust_remote_code=True: a folder whose tokenizer_config.json names code in it ran that code
        # without --trust-remote-code)
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except _load_errors() + _USER_FOLDER_ERRORS as exc:
        raise InputError(f"model: cannot load Lumina-DiMOO from {model_dir!r} ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None
    return model, DiMOOProcessor(tok, vq)


def _load_remote(model_dir: str, cfg: dict, trust_remote_code: bool, dtype):
    """Dream-VL: ``AutoModel`` / ``AutoProcessor`` with the modeling code shipped in the folder."""
    import transformers

    if not trust_remote_code:
        raise InputError(f"model: {model_dir!r} is a {cfg.get('model_type')} checkpoint whose modeling code ships "
                         "with it; pass --trust-remote-code (trust_remote_code=True) to run that code")
    kw = dict(local_files_only=True, trust_remote_code=True)
    try:
        model = transformers.AutoModel.from_pretrained(model_dir, dtype=dtype, **kw)
        processor = transformers.AutoProcessor.from_pretrained(model_dir, **kw)
    except _load_errors() + _USER_FOLDER_ERRORS as exc:
        raise InputError(f"model: cannot load {model_dir!r} ({type(exc).__name__}: {one_line(exc)})") from None
    return model, processor


_FAMILY_LOADERS = {"llava": _load_llava, "mmada": _load_mmada, "lumina-dimoo": _load_dimoo,
                   "dream-vl": _load_remote}


__all__ = ["load_model", "read_config", "check_device", "parse_dtype", "DTYPES"]
