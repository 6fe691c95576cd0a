"""Where Gemma 3's pan-and-scan crops lie on the image.

With ``do_pan_and_scan`` Gemma 3's image processor (transformers 5.24,
``Gemma3ImageProcessor.pan_and_scan_batched``) cuts an image whose long side
is long enough into ``k`` crops along that side only: a landscape or square
image into ``1 x k`` crops side by side, a portrait one into ``k x 1`` stacked.
Every crop but the last is ``c = ceil(side / k)`` pixels along the cut side (the
whole other side); crop ``i`` starts at ``i * c`` and the last one ends at the
image's edge, so the crops tile the image, the last one narrower where ``k``
does not divide the side. Each crop and the whole image are resized to the
tower's square input; ``pixel_values`` holds the whole image first, then the
crops in order, and the sequence holds one span of ``mm_tokens_per_image``
tokens per entry, in the same order, with text between the spans.

``k`` is read from the processor's outputs (``pixel_values`` rows less one),
never recomputed from its settings; the orientation from the image's size.

Whether the processor crops at all: transformers 5.24's ``Gemma3Processor``
call hands the image processor its class's ``images_kwargs``
(``do_pan_and_scan`` False, ``pan_and_scan_min_crop_size`` 256,
``pan_and_scan_max_num_crops`` 4, ``pan_and_scan_min_ratio_to_activate``
1.2) over the settings the image processor was loaded with (the checkpoint's
preprocessor config), so only a call keyword or the processor's own
``images_kwargs`` turns crops on. :func:`set_pan_and_scan` makes the
checkpoint's settings (or the caller's choice) the processor's.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from torch import Tensor

from ...errors import InputError
from ...render.cells import Cells
from .base import ImageView


@dataclass(frozen=True)
class PanAndScanCrops:
    """``tiles``: (rows, cols) of crops; ``xs``, ``ys``: the crops' pixel edges along each axis
    (``cols + 1`` and ``rows + 1`` values, from 0 to the image's width and height)."""

    tiles: Tuple[int, int]
    xs: Tuple[int, ...]
    ys: Tuple[int, ...]

    def boxes(self) -> list:
        """Every crop's pixel box ``(left, top, right, bottom)`` in the processor's order (row-major)."""
        return [(self.xs[c], self.ys[r], self.xs[c + 1], self.ys[r + 1])
                for r in range(self.tiles[0]) for c in range(self.tiles[1])]


def _edges(side: int, k: int) -> Tuple[int, ...]:
    step = int(math.ceil(side / k))
    return tuple(min(i * step, side) for i in range(k)) + (side,)


def pan_and_scan_crops(image_wh: Tuple[int, int], crops: int) -> PanAndScanCrops:
    """The ``crops`` crops of an image of ``image_wh`` = (width, height) pixels (see the module docstring)."""
    w, h = int(image_wh[0]), int(image_wh[1])
    rows, cols = (1, crops) if w >= h else (crops, 1)
    found = PanAndScanCrops((rows, cols), _edges(w, cols), _edges(h, rows))
    if any(b <= a for a, b in zip(found.xs, found.xs[1:])) or any(b <= a for a, b in zip(found.ys, found.ys[1:])):
        raise InputError(f"image: {crops} pan-and-scan crops of a {w}x{h} image leave a crop without pixels; the "
                         "processor's crops are not the ones dcam reads from its outputs")
    return found


def _centres(edges: Tuple[int, ...], unit: int, size: int) -> Tuple[float, ...]:
    """The centres (fractions of ``size``) of ``unit`` cells spread evenly over each crop between ``edges``."""
    return tuple((a + (j + 0.5) * (b - a) / unit) / size for a, b in zip(edges, edges[1:]) for j in range(unit))


def pan_and_scan_views(span: Tensor, image_wh: Tuple[int, int], crops: int, unit: int) \
        -> Tuple[Tensor, Tuple[int, int], dict]:
    """``(positions, grid, views)`` of an image span holding the whole image's ``unit x unit`` tokens, then each
    crop's (raster order each): ``"highres"`` (the default, the crops stitched in their places, ``rows * unit``
    by ``cols * unit`` cells) and ``"base"`` (the whole image). The stitched map covers the whole image; where the
    crops differ in size its cells are placed crop by crop (:class:`Cells`), so each lies on its crop's pixels."""
    per = unit * unit
    base = ImageView("base", span[:per].clone(), (unit, unit))
    found = pan_and_scan_crops(image_wh, crops)
    rows, cols = found.tiles
    grid = span[per:].reshape(rows, cols, unit, unit).permute(0, 2, 1, 3).reshape(-1).clone()
    w, h = int(image_wh[0]), int(image_wh[1])
    cells: Optional[Cells] = None
    if w % cols or h % rows:  # a narrower last crop: its cells are narrower too
        cells = Cells(_centres(found.xs, unit, w), _centres(found.ys, unit, h))
    hi = ImageView("highres", grid, (rows * unit, cols * unit), (0.0, 0.0, 1.0, 1.0), cells)
    return grid, hi.grid, {"highres": hi, "base": base}  # the default view first


#: the image processor's pan-and-scan settings, as a checkpoint's preprocessor config saves them (null: the
#: processor's default)
PAN_AND_SCAN_SETTINGS = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                         "pan_and_scan_min_ratio_to_activate")


def has_pan_and_scan(processor) -> bool:
    """Whether ``processor`` is a transformers processor whose image processor can crop (Gemma 3's)."""
    ip = getattr(processor, "image_processor", None)
    return ip is not None and hasattr(ip, "do_pan_and_scan") and \
        isinstance(getattr(processor, "images_kwargs", None), dict)


def check_pan_and_scan_choice(on) -> None:
    """InputError naming ``pan_and_scan`` unless ``on`` is True, False or None."""
    if on is not None and not isinstance(on, bool):
        raise InputError(f"pan_and_scan: expected True, False or None (the checkpoint's choice), got {on!r}")


def set_pan_and_scan(processor: Any, on: Optional[bool] = None, model_type: Optional[str] = None) -> Any:
    """``processor``, its calls cropping as its checkpoint says (``on`` None: the image processor's saved
    ``do_pan_and_scan`` and crop settings, where not null) or as ``on`` says (the saved crop settings
    kept). The choice goes into the processor's own ``images_kwargs`` (its class's are left alone) and the
    image processor's ``do_pan_and_scan``. ``on`` given for a processor that cannot crop is an InputError
    naming ``model_type``; None leaves such a processor as it is."""
    check_pan_and_scan_choice(on)
    if not has_pan_and_scan(processor):
        if on is None:
            return processor
        raise _no_pan_and_scan(type(processor).__name__, model_type)
    ip = processor.image_processor
    chosen = {k: getattr(ip, k) for k in PAN_AND_SCAN_SETTINGS if getattr(ip, k, None) is not None}
    if on is not None:
        chosen["do_pan_and_scan"] = ip.do_pan_and_scan = on
    if chosen:
        processor.images_kwargs = {**processor.images_kwargs, **chosen}
    return processor


def _no_pan_and_scan(processor_name: str, model_type: Optional[str]) -> InputError:
    kind = f"{model_type} model" if model_type else "model"
    return InputError(f"pan_and_scan: this {kind}'s processor ({processor_name}) has no pan-and-scan (Gemma 3's "
                      "crops); leave it out")


def refuse_pan_and_scan_early(processor_class: Optional[type], on: Optional[bool], model_type: Optional[str]) -> None:
    """The InputError :func:`set_pan_and_scan` would raise, before any weights are read: ``on`` given and
    ``processor_class`` (the class the model's processor will have; None: not known before loading) one
    whose processors never crop. That is a class without a dict of ``images_kwargs``: transformers 5.24's
    processors keep theirs on the class (Gemma3Processor's), none sets one on an instance, and without it
    :func:`has_pan_and_scan` is False whatever the image processor. A class with such a dict is left to
    :func:`set_pan_and_scan`, which sees the image processor it was loaded with."""
    if on is not None and processor_class is not None and \
            not isinstance(getattr(processor_class, "images_kwargs", None), dict):
        raise _no_pan_and_scan(processor_class.__name__, model_type)


def _json_object(path: str) -> dict:
    """The JSON object in ``path``; {} where there is none or it does not parse (the loaders name that)."""
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def transformers_processor_class(model_dir: str, config: dict) -> Optional[type]:
    """The class ``transformers.AutoProcessor.from_pretrained(model_dir)`` will build, read from the folder's
    files alone as transformers 5.24 picks it (``AutoProcessor.from_pretrained``): the ``processor_class`` of
    processor_config.json, else of preprocessor_config.json (video_preprocessor_config.json where that is
    absent), else of tokenizer_config.json, else of config.json, else the processor transformers maps the
    ``model_type`` to. None where the files leave it open: code shipped with the folder (an ``auto_map``
    naming an AutoProcessor), a name transformers does not know or cannot import here (a class whose backend is
    missing, e.g. Pixtral's without torchvision), no processor class (AutoProcessor then falls back to a
    tokenizer or an image processor)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES, processor_class_from_name

    files = ["processor_config.json", "preprocessor_config.json", "tokenizer_config.json"]
    if not os.path.exists(os.path.join(model_dir, "preprocessor_config.json")):
        files.insert(2, "video_preprocessor_config.json")
    found = [_json_object(os.path.join(model_dir, name)) for name in files] + [config]
    if any(isinstance(f.get("auto_map"), dict) and "AutoProcessor" in f["auto_map"] for f in found):
        return None
    names = [f["processor_class"] for f in found if isinstance(f.get("processor_class"), str)]
    name = names[0] if names else PROCESSOR_MAPPING_NAMES.get(config.get("model_type"))
    if not isinstance(name, str):
        return None
    try:
        found = processor_class_from_name(name)
        # a class whose backend is not installed is transformers' dummy (metaclass DummyObject), whose
        # attributes raise ImportError when read: cannot tell, so its loading says what is missing, one line
        if found is not None and not getattr(type(found), "is_dummy", False):
            getattr(found, "images_kwargs", None)
            return found
    except ImportError:
        pass
    return None


__all__ = ["PanAndScanCrops", "pan_and_scan_crops", "pan_and_scan_views", "PAN_AND_SCAN_SETTINGS",
           "has_pan_and_scan", "check_pan_and_scan_choice", "set_pan_and_scan", "refuse_pan_and_scan_early",
           "transformers_processor_class"]
