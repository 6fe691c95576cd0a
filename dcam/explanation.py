"""The result of an explanation: one map per explained word, and its pictures.

    e.tokens, e.token_ids, e.maps      # maps: float32 [T, h, w], one per explained word
    e.stats                            # per-map statistics, each [T]
    e.overlay("circle", alpha=0.5)     # PIL image: heatmap upsampled and blended onto the image
    e.contact_sheet()                  # PIL image: the image and every overlay (contact_sheet.png)
    e.save("out/")                     # overlays, contact sheet, image.png, maps.safetensors, meta.json,
                                       # index.html (and the trajectory's files, if it has one)
"""
from __future__ import annotations

import json
import numbers
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import InputError
from .ops.config import CamConfig
from .output import check_existing_folder, file_digest, refuse_names_in_the_way
from .render.overlay import DISPLAY_MAX_SIDE, DISPLAY_MIN_SIDE, RENDER_MAX_SIDE, check_map, display_size
from .render.overlay import rendered_at
from .render.cells import Cells
from .render.overlay import overlay as overlay_image
from .render.sheet import contact_sheet
from .phrases import closest_item, find_item, inside_a_token, written_hint
from .words import clean_token

TokenRef = Union[int, str]


def _name_part(c: str) -> str:
    """One character of a word in a file name: itself where it is a letter, digit, mark (an accent
    written apart), ``_`` or ``-``; ``u`` and its hex code point where it is a symbol (an emoji:
    "u1f431" for a cat's face; a skin tone too); else a separator (a space, punctuation, a character
    a file system refuses: ``/\\:*?"<>|``), written ``_``. Variation selectors and joiners, which
    only choose how an emoji is drawn, are dropped."""
    if c.isalnum() or c in "_-":  # (isalnum rather than \w: the same letters and digits, of any script)
        return c
    cat = unicodedata.category(c)
    if "\ufe00" <= c <= "\ufe0f" or c == "\u200d":
        return ""
    if cat.startswith("M"):
        return c
    if cat == "So" or "\U0001f3fb" <= c <= "\U0001f3ff":
        return f"_u{ord(c):x}_"
    return "_"


def safe_file_name(s: str, max_len: int = 64, max_bytes: int = 160) -> str:
    """A token as a file-name part every system takes: the word NFC-composed (an accent written as its
    own code point joins its letter, as macOS and most editors write it), its letters and digits of any
    script and its marks kept, each symbol (an emoji) written as ``u`` and its hex code point (``"😀"``:
    ``u1f600``), anything else (spaces, punctuation, ``/\\:*?"<>|``) one ``_`` (:func:`_name_part`); at
    most ``max_len`` characters and ``max_bytes`` bytes in UTF-8, so a long word, a URL say, with a word
    number before it and ``-k.png`` after, stays under the file system's 255-byte limit: 64 letters of 4
    bytes each did not. ``tok`` when nothing is left."""
    word = unicodedata.normalize("NFC", clean_token(s))
    s = re.sub(r"_+", "_", "".join(_name_part(c) for c in word)).strip("_")[:max_len]
    while len(s.encode("utf-8")) > max_bytes:
        s = s[:-1]
    return s.rstrip("_") or "tok"


def word_file_names(word_numbers: Sequence[int], tokens: Sequence[str], ext: str) -> List[str]:
    """``NN_word.ext`` per explained item, distinct, also where a file system does not tell capitals
    from small letters (Windows, macOS): two items can share a word number and a name (a phrase and
    its first word, "red" and "red 日" as safe names): the later ones get ``-2``, ``-3``, ... rather
    than overwrite the first one's file."""
    names: List[str] = []
    taken = set()
    for n, tok in zip(word_numbers, tokens):
        stem = f"{n:02d}_{safe_file_name(tok)}"
        name, k = f"{stem}.{ext}", 1
        while name.lower() in taken:
            k += 1
            name = f"{stem}-{k}.{ext}"
        taken.add(name.lower())
        names.append(name)
    return names


#: how a writer into an existing folder says where one comes from
SAVE_MAKES_ONE = " (Explanation.save makes one)"


def _check_max_side(max_side) -> int:
    if isinstance(max_side, (bool, np.bool_)) or not isinstance(max_side, numbers.Integral) \
            or not 16 <= max_side <= RENDER_MAX_SIDE:
        raise InputError(f"max_side must be an int in [16, {RENDER_MAX_SIDE}], got {max_side!r}")
    return int(max_side)


@dataclass(eq=False, repr=False)  # tensor fields: == of two copies raised "Boolean value of Tensor ... ambiguous"
class Explanation:
    """The maps of one response (see the module docstring).

    tokens: the explained items' texts (words by default; tokens with
    ``granularity="tokens"``; phrases). token_ids / response_indices: the id
    and response slot of each item's first token; pieces: the response slots
    of all its tokens. word_numbers: each item's number among the response's
    words (eos/pad slots not counted; what ``targets=`` and the file names
    use). view / view_maps: the explained view of a multi-view image and, with
    ``view="all"``, every view's maps. box: the part of the image the maps
    cover, as fractions ``(x0, y0, x1, y1)`` (a model that sees a crop:
    overlays and metrics place the maps there); view_boxes: each view's box
    with ``view="all"`` (``overlay(word, view=...)`` places that view's map). cells / view_cells: where
    the columns and rows of a map stitched from tiles lie in its box (:class:`dcam.render.cells.Cells`;
    None, or no entry: evenly over it). trajectory: the
    :class:`dcam.trajectory.Trajectory` when explained with ``trajectory=True``.
    steps / steps_source: the denoising steps AKD's kernel reads and where they
    came from: ``"generation"`` (the sampler's count), ``"given"`` (``steps=``:
    a given response's, or a causal model's, whose sampler takes one step per
    token) or ``"default"`` (a given response's, the adapter's default).
    maps: float32 ``[T, h, w]``. stats: per-map
    statistics (each a ``[T]`` tensor). scores: the target scores.
    layer / target_score / config: the hooked block, the differentiated score and
    the refinement's :class:`~dcam.ops.config.CamConfig`; None where the method uses
    none (``"tam"``: all three; ``"grad-cam"`` and ``"llava-cam"``: config), in
    memory as in meta.json and after a load.
    raw_maps: the pooled, min-max normalised maps before refinement
    (``"diffusion-cam"`` only; ``dcam.refine`` of them with any config that
    keeps ``grad_relu`` gives that config's maps: ``grad_relu`` acts in the
    pooling, before these maps). extra: ``distractor`` (contrastive position) and
    ``context_weights`` ``[T, T]``. model_dtype / device: the dtype of the model's
    blocks (its last block's parameters) and the device of its parameters
    (float16 and bfloat16 maps differ from float32 ones by their rounding:
    meta.json says which made them).
    """

    tokens: List[str]
    token_ids: List[int]
    word_numbers: List[int]
    response_indices: List[int]
    pieces: List[List[int]]
    maps: Tensor
    stats: Dict[str, Tensor]
    image: Image.Image
    response: str
    response_ids: List[int]
    response_tokens: List[str]
    prompt: Optional[str]
    steps: int
    steps_source: str
    method: str
    probe: str
    layer: Optional[int]
    target_score: Optional[str]
    grid: Tuple[int, int]
    repeat_ratio: float
    scores: Tensor
    config: Optional[CamConfig]
    model_name: str = ""
    raw_maps: Optional[Tensor] = None
    notes: List[str] = field(default_factory=list)
    granularity: str = "words"
    view: Optional[str] = None
    view_maps: Dict[str, Tensor] = field(default_factory=dict)
    box: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    view_boxes: Dict[str, Tuple[float, float, float, float]] = field(default_factory=dict)
    trajectory: Optional[Any] = None
    model_dtype: str = ""
    device: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)
    cells: Optional[Cells] = None
    view_cells: Dict[str, Cells] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        # the generated repr printed every tensor, the config and the image (~24 KB)
        return (f"Explanation(method={self.method!r}, tokens={self.tokens!r}, maps={list(self.maps.shape)}, "
                f"grid={tuple(self.grid)}, layer={self.layer}, probe={self.probe!r}, "
                f"image={self.image.size[0]}x{self.image.size[1]})")

    def index(self, i_or_word: TokenRef) -> int:
        """Index into ``tokens`` of an int (negative allowed) or a word (its first occurrence)."""
        if isinstance(i_or_word, (int, np.integer)) and not isinstance(i_or_word, bool):
            i = int(i_or_word)
            if not -len(self.tokens) <= i < len(self.tokens):
                raise InputError(f"token index {i} out of range for {len(self.tokens)} explained tokens")
            return i % len(self.tokens)
        if isinstance(i_or_word, str):
            k = find_item(self.tokens, i_or_word)
            if k is not None:
                return k
            why = inside_a_token(self.tokens, i_or_word)
            near = written_hint(closest_item(self.tokens, i_or_word), i_or_word)
            raise InputError(f"word {i_or_word!r} is not among the explained tokens{why}{near} {self.tokens}")
        raise InputError(f"expected a token index or a word, got {type(i_or_word).__name__}")

    def _view_of(self, view: Optional[str], placed: bool = True) -> Tuple[Tensor, tuple, Optional[Cells]]:
        """(maps, box, cells) of ``view`` (None, or ``"default"`` as everywhere else, unless a saved view has that
        name: the explained view's); ``placed``: its box is needed."""
        if view == "default" and view not in self.view_maps:  # (it was refused: "not among this explanation's views")
            view = None
        if view is None or (view == self.view and view not in self.view_maps):
            return self.maps, self.box, self.cells
        if view not in self.view_maps:
            # (a model with one view: view="all" keeps no view maps, its one view's are .maps; the message told
            # a caller who had passed view="all" to pass it)
            have = ", ".join(sorted(self.view_maps)) or \
                "none: it holds one view's maps, .maps; view='all' keeps each view's where the model has several"
            raise InputError(f"view: {view!r} is not among this explanation's views ({have})")
        box = self.view_boxes.get(view, self.box if view == self.view else None)
        if box is None and placed:  # (a save of a dcam that kept the explained view's box alone)
            raise InputError(f"view: where the {view!r} view lies on the image was not saved with this explanation")
        return self.view_maps[view], box, self.view_cells.get(view, self.cells if view == self.view else None)

    def map(self, i_or_word: TokenRef, view: Optional[str] = None) -> Tensor:
        """One item's map (``view``: that view's, of an explanation with ``view="all"``)."""
        return self._view_of(view, placed=False)[0][self.index(i_or_word)]

    def overlay(self, i_or_word: TokenRef, alpha: float = 0.5, colormap: str = "jet",
                size: Optional[Tuple[int, int]] = None, view: Optional[str] = None) -> Image.Image:
        """The heatmap of one token upsampled to the image and blended onto it (along a side with fewer
        pixels than cells, each pixel the mean of the cells it covers: :func:`dcam.render.overlay.upsample_map`)
        (size ``(W, H)``: render at that size; default the image's size; ``view``: that
        view's map, placed where the view lies on the image, with ``view="all"``)."""
        maps, box, cells = self._view_of(view)
        return overlay_image(self.image, maps[self.index(i_or_word)], alpha=alpha, colormap=colormap, size=size,
                             box=box, cells=cells)

    def stats_lists(self) -> Dict[str, list]:
        return {k: v.tolist() for k, v in self.stats.items()}

    @property
    def hooked_layer(self) -> Optional[int]:
        """The layer the method hooked; None for a method that hooks none (tam: its pictures said "layer 0",
        and a loaded one, "layer None")."""
        from .methods.base import METHODS

        method = METHODS.get(self.method)
        return self.layer if method is None or method.needs_gradients else None

    def layer_words(self) -> str:
        """``", layer N"`` for the titles, or nothing when the method hooks no layer."""
        return "" if self.hooked_layer is None else f", layer {self.hooked_layer}"

    def meta(self) -> dict:
        from .methods.base import METHODS

        # what the method never used is recorded as none (tam's meta.json carried the full Diffusion-CAM
        # config and a "logit" target score it never differentiated; grad-cam the config)
        method = METHODS.get(self.method)
        config = self.config.as_dict() if method is None or method.uses_config else None
        target_score = self.target_score if method is None or method.needs_gradients else None
        layer = self.hooked_layer
        return dict(
            tokens=self.tokens, token_ids=self.token_ids, word_numbers=self.word_numbers,
            response_indices=self.response_indices, pieces=self.pieces, granularity=self.granularity,
            view=self.view, response=self.response,
            response_ids=self.response_ids, response_tokens=self.response_tokens, prompt=self.prompt,
            steps=self.steps, steps_source=self.steps_source, method=self.method, probe=self.probe,
            layer=layer, target_score=target_score, grid=list(self.grid),
            image_size=list(self.image.size), repeat_ratio=self.repeat_ratio,
            scores=self.scores.tolist(), stats=self.stats_lists(), config=config,
            model=self.model_name, model_dtype=self.model_dtype, device=self.device, notes=self.notes,
            box=list(self.box), distractor=self.extra.get("distractor"),
            views={view: list(vmaps.shape[1:]) for view, vmaps in self.view_maps.items()},
            view_boxes={view: list(b) for view, b in self.view_boxes.items()},
            cells=None if self.cells is None else self.cells.as_dict(),
            view_cells={view: c.as_dict() for view, c in self.view_cells.items()},
            # the code, machine and settings that made the maps (dcam.provenance.explainer_record); a loaded
            # explanation keeps the record it was saved with, so a save of it never claims this process's code
            provenance=self.extra.get("provenance"),
        )

    def save(self, out_dir: str, alpha: float = 0.5, colormap: str = "jet", max_side: int = DISPLAY_MAX_SIDE,
             overwrite: bool = False, trajectory_bytes: Optional[int] = None) -> dict:
        """Write the explanation into the folder ``out_dir``, whole or not at all
        (:class:`dcam.output.AtomicFolder`; a non-empty ``out_dir`` needs
        ``overwrite``, which replaces it whole):

        - ``NN_word.png``: one overlay per word (NN: its word number);
        - ``contact_sheet.png``: the image and every overlay, the response as
          title, a colour bar; at most 4096 pixels a side;
        - ``image.png``: the image as rendered under the overlays;
        - ``maps.safetensors``: ``maps`` [T,h,w] float32 (full precision),
          ``token_ids``, ``word_numbers``, ``response_indices``, ``scores``,
          ``stats.<name>``, and with ``view="all"`` ``view_maps.<view>``
          [T,h',w'] (every view's maps, each on its own grid);
          ``raw_maps`` and ``context_weights`` where the method made them;
        - ``meta.json``: everything else (:meth:`meta`);
        - ``index.html``: the explanation's page (words as buttons, heatmaps
          drawn in the browser), as in Jupyter; a trajectory's steps on it within
          ``trajectory_bytes`` bytes of maps (None: 1 MiB,
          :data:`dcam.render.html.PAGE_TRAJECTORY_BYTES`; past them evenly spaced steps, said
          in a note: :func:`dcam.render.html.trajectory_frames`);
        - with a trajectory, also ``trajectory.safetensors``,
          ``trajectory/NN_word.gif`` and ``trajectory_sheet.png``
          (:meth:`dcam.trajectory.Trajectory.write_files`).

        :func:`dcam.load_explanation` reads the folder back.

        Overlays are rendered at :func:`dcam.render.display_size` of the image
        (longest side at most ``max_side``), so a photo-sized image costs what
        a small one does. Returns the written paths (in ``out_dir``)."""
        from .output import AtomicFolder, moved_paths

        from .render.html import check_trajectory_bytes

        max_side = _check_max_side(max_side)
        trajectory_bytes = check_trajectory_bytes(trajectory_bytes)  # (refused before the folder is touched)
        folder = AtomicFolder(out_dir, overwrite=overwrite, option="out_dir")
        with folder as tmp:
            written = self.write_files(tmp, alpha=alpha, colormap=colormap, max_side=max_side,
                                       trajectory_bytes=trajectory_bytes)
        return moved_paths(written, tmp, folder.target)

    def write_files(self, folder: str, alpha: float = 0.5, colormap: str = "jet",
                    max_side: int = DISPLAY_MAX_SIDE, trajectory_bytes: Optional[int] = None) -> dict:
        """The files of :meth:`save`, written straight into the existing ``folder``."""
        from safetensors.torch import save_file

        from .render.html import check_trajectory_bytes, write_explanation_page
        from .render.overlay import check_picture_args

        max_side = _check_max_side(max_side)  # (0 wrote 1x1 overlays)
        trajectory_bytes = check_trajectory_bytes(trajectory_bytes)  # (the page is written last)
        check_picture_args(alpha, colormap)
        folder = check_existing_folder(folder, SAVE_MAKES_ONE)  # (a str from here: bytes met str names)
        # every name is checked before the first file is written: a folder in the way of meta.json
        # was a bare IsADirectoryError, of index.html an error naming "filename", files already written
        names = word_file_names(self.word_numbers, self.tokens, "png")
        refuse_names_in_the_way(folder, "the explanation", files=names + [
            "contact_sheet.png", "image.png", "maps.safetensors", "meta.json", "index.html"])
        if self.trajectory is not None:
            self.trajectory.check_names(folder)
        self._check_maps()
        if self.trajectory is not None:  # (its GIFs are written after this explanation's files)
            self.trajectory.check_maps("trajectory.")

        size, tiles = self._tiles(alpha, colormap, max_side)
        base = tiles[0]
        paths: Dict[str, Any] = {"overlays": []}
        for k, im in enumerate(tiles[1:]):
            p = os.path.join(folder, names[k])
            im.save(p)
            paths["overlays"].append(p)
        sheet = self._sheet(tiles, colormap)
        paths["contact_sheet"] = os.path.join(folder, "contact_sheet.png")
        sheet.save(paths["contact_sheet"])
        paths["image"] = os.path.join(folder, "image.png")
        base.save(paths["image"])
        tensors = {"maps": self.maps.float().contiguous(),
                   "token_ids": torch.tensor(self.token_ids, dtype=torch.long),
                   "word_numbers": torch.tensor(self.word_numbers, dtype=torch.long),
                   "response_indices": torch.tensor(self.response_indices, dtype=torch.long),
                   "scores": self.scores.float().contiguous()}
        for k, v in self.stats.items():
            tensors[f"stats.{k}"] = v.contiguous()
        if self.raw_maps is not None:  # kept so that a loaded explanation refines them again
            tensors["raw_maps"] = self.raw_maps.float().contiguous()
        if isinstance(self.extra.get("context_weights"), Tensor):
            tensors["context_weights"] = self.extra["context_weights"].float().contiguous()
        for view, vmaps in self.view_maps.items():  # view="all": each view's maps on its own grid
            tensors[f"view_maps.{view}"] = vmaps.float().clone()  # one is the maps' own storage
        paths["maps"] = os.path.join(folder, "maps.safetensors")
        save_file(tensors, paths["maps"])
        paths["meta"] = os.path.join(folder, "meta.json")
        # (the digests: dcam.load_explanation finds a maps file or an image of another save)
        with open(paths["meta"], "w") as f:
            json.dump({**self.meta(), "rendered_size": list(size), "maps_sha256": file_digest(paths["maps"]),
                       "image_sha256": file_digest(paths["image"])}, f, indent=2)
        if self.trajectory is not None:  # trajectory.safetensors, the GIFs, the sheet; adds to meta.json
            paths["trajectory"] = self.trajectory.write_files(folder, alpha=alpha, colormap=colormap,
                                                              max_side=max_side)
        paths["page"] = write_explanation_page(folder, self, colormap=colormap, alpha=alpha,
                                               trajectory_bytes=trajectory_bytes)
        return paths

    def _tiles(self, alpha: float, colormap, max_side: int) -> Tuple[Tuple[int, int], List[Image.Image]]:
        """(the size the files are rendered at, [the image there, then every item's overlay on it])."""
        size = display_size(self.image.size, DISPLAY_MIN_SIDE, max_side)
        base = self._rendered(size)
        return size, [base] + [overlay_image(base, self.maps[k], alpha=alpha, colormap=colormap, box=self.box,
                                             cells=self.cells) for k in range(len(self.tokens))]

    def _sheet(self, tiles: List[Image.Image], colormap) -> Image.Image:
        labels = ["image"] + [f"{n}: {clean_token(tok)}" for n, tok in zip(self.word_numbers, self.tokens)]
        return contact_sheet(tiles, labels, title=f"{self.response}  ({self.method}{self.layer_words()})",
                             colormap=colormap)

    def contact_sheet(self, alpha: float = 0.5, colormap: str = "jet",
                      max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
        """The contact sheet :meth:`save` writes as ``contact_sheet.png`` (with the same arguments), as a PIL
        image: the image and every item's overlay, labelled, the response as title, a colour bar."""
        from .render.overlay import check_picture_args

        max_side = _check_max_side(max_side)
        check_picture_args(alpha, colormap)
        self._check_maps()
        return self._sheet(self._tiles(alpha, colormap, max_side)[1], colormap)

    def _rendered(self, size: Tuple[int, int]) -> Image.Image:
        """The image rendered at ``size`` (W, H) for the files; a loaded explanation's on its image.png
        where that is the size (``_saved_rendering``, set by :mod:`dcam.saved`: :func:`rendered_at`)."""
        return rendered_at(self.image, size, getattr(self, "_saved_rendering", None))

    def _check_maps(self) -> None:
        """Every map the files hold, checked as :func:`dcam.render.overlay` checks one, before the first file
        is written (a NaN in word 2's map left word 0's and 1's overlays written, in an error naming "cam")."""
        named = [(f"maps[{k}] (word {n} {clean_token(tok)!r})", self.maps[k])
                 for k, (n, tok) in enumerate(zip(self.word_numbers, self.tokens))]
        named += [(f"raw_maps[{k}]", m) for k, m in enumerate(self.raw_maps if self.raw_maps is not None else [])]
        named += [(f"view_maps[{view!r}][{k}]", m) for view, vmaps in self.view_maps.items()
                  for k, m in enumerate(vmaps)]
        for name, m in named:
            check_map(m.detach().cpu().float().numpy(), name)

    def _repr_html_(self) -> str:
        """The explanation's page in a Jupyter cell (words as buttons, heatmaps drawn in the browser)."""
        from .render.html import explanation_html

        self._check_maps()  # (the page drew a NaN as 0 and 5.0 as 1, which overlay() and save() refuse)
        return explanation_html(self)


__all__ = ["Explanation", "safe_file_name", "word_file_names", "TokenRef"]
