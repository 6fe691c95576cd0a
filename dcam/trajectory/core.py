"""Denoising trajectories: where the model looked at every step, and at the
step it decided each word (docs/ALGORITHM.md, "Denoising trajectories").

    traj = explain_trajectory(explainer, image)            # generates, recording the sampler's states
    traj.maps            # float32 [S, T, h, w]: word t's map on the state entering step s
    traj.decided_at      # int64 [T]: the step each word's final token was committed at
    traj.decision_maps   # float32 [T, h, w]: maps[decided_at[t], t]
    traj.final_maps      # float32 [T, h, w]: on the finished response, the word's slot masked again
    traj.commit_order, traj.numbers, traj.save("out/")    # dcam.load_trajectory("out/") reads it back
    traj.sheet(), traj.strip("circle"), traj.gif("circle", "circle.gif")   # its pictures
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import ops
from ..errors import InputError
from ..images import WHITE, load_image_with_notes
from ..ops.config import CamConfig
from ..output import file_digest, write_bytes_atomic
from ..probe.adapters.checks import check_mask_id
from ..probe.gradients import Targets, item_context_weights
from ..probe.hooks import explaining, generating, generation_watch
from ..probe.modes import check_probe_request
from ..profiling import stage
from ..targets import check_granularity
from ..phrases import closest_item, find_item, written_hint
from ..words import clean_token
from ..render.cells import Cells
from ..render.overlay import DISPLAY_MAX_SIDE
from .numbers import per_word_numbers
from .probing import trajectory_gradients

#: The map method a trajectory's maps are made with.
TRAJECTORY_METHOD = "diffusion-cam"


@dataclass(eq=False, repr=False)  # as Explanation: == of tensor fields raised, the repr printed every tensor
class Trajectory:
    """Every explained word's map on every denoising state of one generation.

    tokens / token_ids / word_numbers / response_indices / pieces: the
        explained words (items, as in :class:`dcam.explanation.Explanation`;
        pieces: the response slots of each word's tokens).
    maps: float32 ``[S, T, h, w]``; final_maps: float32 ``[T, h, w]``.
    decided_at: int64 ``[T]`` per word (the step its last piece was committed at);
        slot_decided_at: int64 ``[Lr]`` per response slot.
    states: int64 ``[S, Lr]``: the response slots entering each step (mask id where masked).
    scores: ``[S, T]`` target scores (logit of the word's final token at its slot); final_scores ``[T]``.
    remasked: bool ``[S, T]``: some slot of the word held a token in that state, so its map is the remask
        probe's (the word's slots masked again).
    stats: per-map statistics of the refinement, each ``[S, T]``.
    numbers: per-word numbers (:func:`dcam.trajectory.numbers.per_word_numbers`).
    state_tokens: the states as token strings (``[S][Lr]``).
    cost: forwards / rows / backward passes / cotangents the maps took.
    """

    tokens: List[str]
    token_ids: List[int]
    word_numbers: List[int]
    response_indices: List[int]
    pieces: List[List[int]]
    maps: Tensor
    final_maps: Tensor
    decided_at: Tensor
    slot_decided_at: Tensor
    states: Tensor
    scores: Tensor
    final_scores: Tensor
    remasked: Tensor
    stats: Dict[str, Tensor]
    numbers: Dict[str, Tensor]
    image: Image.Image
    prompt: Optional[str]
    response: str
    response_ids: List[int]
    response_tokens: List[str]
    state_tokens: List[List[str]]
    layer: int
    config: CamConfig
    grid: tuple
    repeat_ratio: float
    model_name: str = ""
    notes: List[str] = field(default_factory=list)
    cost: Dict[str, int] = field(default_factory=dict)
    box: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # the part of the image the maps cover
    #: the words of the whole response, traced or not (a negative word number counts from its end)
    word_count: int = 0
    cells: Optional[Cells] = None  # where the maps' columns and rows lie in the box (None: evenly)

    @property
    def steps(self) -> int:
        """S, the denoising steps the sampler used."""
        return int(self.maps.shape[0])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def decision_maps(self) -> Tensor:
        """float32 ``[T, h, w]``: each word's map at the step it was decided."""
        return self.maps[self.decided_at.long(), torch.arange(len(self.tokens))]

    @property
    def first_step_maps(self) -> Tensor:
        """float32 ``[T, h, w]``: the maps on the first state (every slot masked: the masked probe)."""
        return self.maps[0]

    @property
    def commit_order(self) -> List[int]:
        """Word numbers in the order the sampler committed them (ties in a step: by slot)."""
        return [self.word_numbers[k] for k in self._commit_sequence()]

    def _commit_sequence(self) -> List[int]:
        """Item indices in commit order (ties in a step: by slot, then by item)."""
        return sorted(range(len(self.tokens)), key=lambda k: (int(self.decided_at[k]), self.response_indices[k], k))

    @property
    def committed_per_step(self) -> List[List[int]]:
        """For each step, the word numbers committed at it."""
        out: List[List[int]] = [[] for _ in range(self.steps)]
        for k in range(len(self.tokens)):
            out[int(self.decided_at[k])].append(self.word_numbers[k])
        return [sorted(x, key=lambda n: self.response_indices[self.word_numbers.index(n)]) for x in out]

    def __repr__(self) -> str:
        return (f"Trajectory(tokens={self.tokens!r}, maps={list(self.maps.shape)}, steps={self.steps}, "
                f"grid={tuple(self.grid)}, image={self.image.size[0]}x{self.image.size[1]})")

    def index(self, word) -> int:
        """Index into ``tokens`` of a word number (the word's number in the response, negative from
        its end, as ``targets`` reads one) or a word (its first occurrence). (``Explanation.index``
        reads an int as a place in its ``tokens`` instead: there the maps are the list.)"""
        if isinstance(word, (int, np.integer)) and not isinstance(word, bool):
            n = int(word) + (self.word_count if int(word) < 0 else 0)
            if n not in self.word_numbers:
                raise InputError(f"word number {word} is not among the traced words {self.word_numbers}")
            return self.word_numbers.index(n)
        k = find_item(self.tokens, str(word))
        if k is not None:
            return k
        near = written_hint(closest_item(self.tokens, str(word)), str(word))
        raise InputError(f"word {word!r} is not among the traced words{near} {[clean_token(t) for t in self.tokens]}")

    def word_table(self) -> List[Dict[str, Any]]:
        """Per word: its number, text, decision step and the numbers of :attr:`numbers`, JSON-ready."""
        nb = self.numbers
        # each item's place in the commit order, by item (a phrase shares its first word's number:
        # ranked by number, both got the first one's rank)
        ranks = [0] * len(self.tokens)
        for rank, k in enumerate(self._commit_sequence()):
            ranks[k] = rank
        out = []
        for k, tok in enumerate(self.tokens):
            out.append(dict(
                word_number=self.word_numbers[k], word=clean_token(tok), response_index=self.response_indices[k],
                decided_at=int(self.decided_at[k]), commit_rank=ranks[k],
                mean_movement=_num(nb["mean_movement"][k]), mean_centroid_shift=_num(nb["mean_shift"][k]),
                movement_iou=[_num(v) for v in nb["movement_iou"][k]],
                centroid_shift=[_num(v) for v in nb["centroid_shift"][k]],
                decision_final_iou=_num(nb["decision_final_iou"][k]), agrees_with_final=bool(nb["agrees"][k])))
        return out

    def meta(self) -> dict:
        """The ``trajectory`` entry of ``meta.json``."""
        return dict(
            steps=self.steps, tokens=self.tokens, token_ids=self.token_ids, word_numbers=self.word_numbers,
            response_indices=self.response_indices, pieces=self.pieces, decided_at=self.decided_at.tolist(),
            slot_decided_at=self.slot_decided_at.tolist(), commit_order=self.commit_order,
            committed_per_step=self.committed_per_step, states=self.state_tokens, words=self.word_table(),
            method=TRAJECTORY_METHOD, layer=self.layer, target_score="logit", config=self.config.as_dict(),
            repeat_ratio=self.repeat_ratio, cost=self.cost, notes=self.notes, box=list(self.box),
            cells=None if self.cells is None else self.cells.as_dict(), word_count=self.word_count,
            definition="maps[s, t]: Diffusion-CAM map of word t on the state entering step s (its slot masked "
                       "again once committed); final_maps: on the finished response, each word's slot masked")

    def tensors(self) -> Dict[str, Tensor]:
        """The contents of ``trajectory.safetensors``."""
        out = {"maps": self.maps.float().contiguous(), "decided_at": self.decided_at.long().contiguous(),
               "states": self.states.long().contiguous(), "final_maps": self.final_maps.float().contiguous(),
               "slot_decided_at": self.slot_decided_at.long().contiguous(),
               "token_ids": torch.tensor(self.token_ids, dtype=torch.long),
               "word_numbers": torch.tensor(self.word_numbers, dtype=torch.long),
               "response_indices": torch.tensor(self.response_indices, dtype=torch.long),
               "scores": self.scores.float().contiguous(), "final_scores": self.final_scores.float().contiguous(),
               "remasked": self.remasked.to(torch.uint8).contiguous()}
        for k in ("movement_iou", "centroid_shift", "decision_final_iou"):
            out[f"numbers.{k}"] = self.numbers[k].double().contiguous()
        for k, v in self.stats.items():
            out[f"stats.{k}"] = v.contiguous()
        return out

    def check_names(self, folder: str) -> None:
        """Nothing in ``folder`` is in the way of the trajectory's files (a folder where a file
        goes, or the reverse): refused before the first file (FileExistsError half-way through)."""
        from ..output import refuse_names_in_the_way

        refuse_names_in_the_way(folder, "the trajectory", files=("trajectory.safetensors", "trajectory_sheet.png",
                                                                 "meta.json"), folders=("trajectory",))

    def check_maps(self, prefix: str = "") -> None:
        """Every map the files hold (``maps``, ``final_maps``), checked as :func:`dcam.render.overlay` checks
        one, before the first file is written; ``prefix`` goes before the maps' names in the error (a NaN
        in a step's map left trajectory.safetensors and the trajectory folder written, in an error naming
        "cam")."""
        from ..render.overlay import check_map

        maps, final = self.maps.detach().cpu().float().numpy(), self.final_maps.detach().cpu().float().numpy()
        words = [f"word {n} {clean_token(tok)!r}" for n, tok in zip(self.word_numbers, self.tokens)]
        for s in range(maps.shape[0]):
            for k, word in enumerate(words):
                check_map(maps[s, k], f"{prefix}maps[{s}][{k}] (step {s}, {word})")
        for k, word in enumerate(words):
            check_map(final[k], f"{prefix}final_maps[{k}] ({word})")

    def _checked_picture_args(self, alpha, colormap) -> None:
        from ..render.overlay import check_picture_args

        check_picture_args(alpha, colormap)
        self.check_maps()

    def sheet(self, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The step x word sheet ``trajectory_sheet.png`` holds, as a PIL image (:func:`.render.sheet`)."""
        from .render import sheet

        self._checked_picture_args(alpha, colormap)
        return sheet(self, alpha, colormap)

    def frames(self, word, alpha: float = 0.5, colormap: str = "jet") -> List[Image.Image]:
        """One word's frames (a word number or the word, as :meth:`index` reads it), a PIL image per step:
        the frames of its GIF (:func:`.render.word_frames`)."""
        from .render import word_frames

        self._checked_picture_args(alpha, colormap)
        return word_frames(self, self.index(word), alpha, colormap)

    def strip(self, word, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """One word's frames side by side (:func:`.render.strip`), a PIL image."""
        from .render import strip

        self._checked_picture_args(alpha, colormap)
        return strip(self, word, alpha, colormap)

    def gif(self, word, path, alpha: float = 0.5, colormap: str = "jet", overwrite: bool = False) -> str:
        """One word's looping GIF (as ``trajectory/NN_word.gif``) written whole at ``path`` (an existing file
        replaced only with ``overwrite``); returns the path."""
        import io

        from ..output import check_output_file, folder_path
        from .render import write_animation

        path = check_output_file(folder_path(path, "path"), "path", overwrite=overwrite)
        self._checked_picture_args(alpha, colormap)
        buf = io.BytesIO()
        write_animation(self, self.index(word), buf, alpha, colormap)
        write_bytes_atomic(path, buf.getvalue(), "path")
        return path

    def write_files(self, folder: str, alpha: float = 0.5, colormap: str = "jet",
                    max_side: int = DISPLAY_MAX_SIDE) -> Dict[str, Any]:
        """Write the trajectory into the existing ``folder`` (e.g. inside an
        :class:`~dcam.output.AtomicFolder`, next to an explanation's files):
        ``trajectory.safetensors``, ``trajectory/NN_word.gif`` (one frame per
        step, the image at most ``max_side`` pixels long as the overlays),
        ``trajectory_sheet.png`` (rows: steps, columns: words, decision steps
        framed), and a ``trajectory`` entry added to ``meta.json``; where no meta.json is there, one is
        made, with ``image.png`` (the image as the frames show it), so that :func:`dcam.load_trajectory`
        reads the folder back. Returns the written paths."""
        from safetensors.torch import save_file

        from ..explanation import SAVE_MAKES_ONE, _check_max_side
        from ..output import check_existing_folder
        from ..render.overlay import check_picture_args
        from .render import write_animations, write_sheet

        # every argument and the meta.json it adds to are checked before the first file is written
        max_side = _check_max_side(max_side)
        check_picture_args(alpha, colormap)
        folder = check_existing_folder(folder, SAVE_MAKES_ONE)  # (a str from here, as Explanation.write_files)
        paths: Dict[str, Any] = {"meta": os.path.join(folder, "meta.json")}
        meta: Optional[Dict[str, Any]] = None
        if os.path.exists(paths["meta"]):
            try:
                with open(paths["meta"]) as f:
                    meta = json.load(f)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise InputError(f"folder: cannot read {paths['meta']!r} to add the trajectory to it "
                                 f"({type(exc).__name__}: {exc})") from None
            if not isinstance(meta, dict):
                raise InputError(f"folder: {paths['meta']!r} holds a JSON {type(meta).__name__}, not an "
                                 "explanation's meta.json object")
        self.check_names(folder)
        self._check_same_explanation(folder, meta or {})
        paths["image"] = os.path.join(folder, "image.png")
        if meta is None and os.path.lexists(paths["image"]):  # (no explanation's: it would be replaced)
            raise InputError(f"folder: {paths['image']!r} is there without a meta.json saying whose image it "
                             "is; the trajectory writes its own image.png (save into a new folder)")
        self.check_maps()
        paths["tensors"] = os.path.join(folder, "trajectory.safetensors")
        save_file(self.tensors(), paths["tensors"])
        paths["animations"] = write_animations(self, os.path.join(folder, "trajectory"), alpha, colormap, max_side)
        paths["sheet"] = write_sheet(self, os.path.join(folder, "trajectory_sheet.png"), alpha, colormap)
        if meta is None:  # the trajectory alone: what dcam.load_trajectory needs besides the trajectory entry
            from .render import frame_image

            frame_image(self, max_side=max_side).save(paths["image"])  # (the image the GIFs' frames are drawn on)
            meta = dict(response=self.response, response_ids=self.response_ids, response_tokens=self.response_tokens,
                        prompt=self.prompt, model=self.model_name, grid=list(self.grid),
                        image_size=list(self.image.size), image_sha256=file_digest(paths["image"]),
                        box=list(self.box),  # where the maps lie on the image, as an explanation's meta says
                        cells=None if self.cells is None else self.cells.as_dict())
        else:
            del paths["image"]  # (the explanation's)
        meta["trajectory"] = {**self.meta(), "tensors_sha256": file_digest(paths["tensors"])}
        with open(paths["meta"], "w") as f:
            json.dump(meta, f, indent=2)
        return paths

    def _check_same_explanation(self, folder: str, meta: Dict[str, Any]) -> None:
        """The folder's meta.json is this trajectory's explanation's (another image's or response's
        took this trajectory, with the old one's GIFs left beside the new), and holds no trajectory yet."""
        mine = {"response_ids": [int(i) for i in self.response_ids], "image_size": list(self.image.size)}
        for key, value in mine.items():
            if key in meta and meta[key] != value:
                raise InputError(f"folder: its meta.json is another explanation's (its {key} differ from this "
                                 "trajectory's); write it next to its own explanation or into a new folder")
        held = [n for n in ("trajectory.safetensors", "trajectory", "trajectory_sheet.png")
                if os.path.lexists(os.path.join(folder, n))]
        held += ["meta.json's trajectory"] if "trajectory" in meta else []
        if held:
            raise InputError(f"folder: {folder!r} holds a trajectory already ({', '.join(held)}); save into a new "
                             "folder (Trajectory.save / Explanation.save with overwrite=True replace a whole one)")

    def save(self, out_dir: str, overwrite: bool = False, alpha: float = 0.5, colormap: str = "jet",
             max_side: int = DISPLAY_MAX_SIDE) -> dict:
        """:meth:`write_files` into the folder ``out_dir``, whole or not at all
        (:class:`dcam.output.AtomicFolder`; a non-empty ``out_dir`` needs ``overwrite``), with ``image.png``
        and a ``meta.json`` of its own: :func:`dcam.load_trajectory` reads it back."""
        from ..explanation import _check_max_side
        from ..output import AtomicFolder, check_output_folder, moved_paths

        max_side = _check_max_side(max_side)  # refused before the folder is touched
        target = check_output_folder(out_dir, overwrite, option="out_dir")
        with AtomicFolder(target, overwrite=overwrite) as tmp:
            written = self.write_files(tmp, alpha=alpha, colormap=colormap, max_side=max_side)
        return moved_paths(written, tmp, target)


def _num(v) -> Optional[float]:
    v = float(v)
    return None if math.isnan(v) else v


def _rows_per_batch(explainer, prep, n_pairs: int, scored_rows: int = 0) -> int:
    """Rows per forward and row-gradients per backward: the explainer's
    ``chunk_size``, or with a ``memory_budget`` half the cotangents that fit it
    for one row (a batch holds its rows' graph and about as many row-gradients)."""
    budget = getattr(explainer, "memory_budget", None)
    if budget is None:
        return explainer.chunk_size
    from ..probe.memory import chunk_for_budget

    above = len(explainer.adapter.blocks()) - 1 - explainer.layer
    return max(1, chunk_for_budget(explainer.model, prep.input_ids.shape[1], above, n_pairs, budget,
                                   scored_rows=scored_rows) // 2)


def check_trajectory_request(explainer) -> None:
    """InputError (one line, why) unless ``explainer`` can trace trajectories."""
    a = explainer.adapter
    name = getattr(a, "family", None) or a.name  # the family `dcam families` lists, not the adapter's name
    no_mask = f"trajectory: the {name} model has no mask token; a trajectory masks each word's slot"
    # a diffusion model without a mask (DiffusionGemma's uniform noise): the reason the family table gives
    if a.is_diffusion and a.mask_token_id is None:
        raise InputError(no_mask)
    if not getattr(a, "records_trajectory", False):
        raise InputError(f"trajectory: the {name} model's sampler does not expose its denoising steps "
                         "(its adapter cannot record the states entering each step), so it has no trajectory")
    if a.mask_token_id is None:
        raise InputError(no_mask)
    if explainer.method_name != TRAJECTORY_METHOD:
        raise InputError(f"trajectory: maps are {TRAJECTORY_METHOD} maps; the explainer's method is "
                         f"{explainer.method_name!r}")
    check_probe_request(a, explainer.layer, "remask")


def explain_trajectory(explainer, image, prompt: Optional[str] = None, steps: Optional[int] = None,
                       response_length: Optional[int] = None, targets="all", background: Sequence[int] = WHITE,
                       chunk_size: Optional[int] = None, granularity: Optional[str] = None,
                       view: Optional[str] = None) -> Trajectory:
    """Generate a response to (image, prompt) with the model's own sampler,
    recording the state entering every step, and map every explained word on
    every state (docs/ALGORITHM.md, "Denoising trajectories").

    explainer: a :class:`dcam.Explainer` (its layer, config, backend, view;
        method ``"diffusion-cam"``) over an adapter with ``records_trajectory``.
    steps / response_length: for the sampler, as in :meth:`Explainer.explain`.
    targets: the words to trace (``"all"``, word numbers, words; :mod:`dcam.targets`).
    chunk_size: rows per forward and row-gradients per backward (None: the
        explainer's ``chunk_size``, or what its ``memory_budget`` allows).
    granularity: ``"words"`` / ``"tokens"`` (None: the explainer's).
    view: the image view to map (None: the explainer's).
    """
    check_trajectory_request(explainer)
    # the generation's forwards too run under the model's lock: another thread's explanation on the same
    # model saw them pass its hooks ("the hooked block ran 2 times in one forward")
    with explaining(explainer.model):
        return _traced(explainer, image, prompt, steps, response_length, targets, background, chunk_size,
                       granularity, view)


def _traced(explainer, image, prompt, steps, response_length, targets, background, chunk_size, granularity,
            view) -> Trajectory:
    """:func:`explain_trajectory` under the model's lock."""
    from ..example import ExampleBuilder, check_generated
    from ..errors import positive_int
    from ..targets import repeat_ratio

    a = explainer.adapter
    steps = positive_int("steps", steps)
    response_length = positive_int("response_length", response_length)
    chunk = None if chunk_size is None else positive_int("chunk_size", chunk_size, allow_none=False)
    if targets is None:
        raise InputError("targets must be 'all', word numbers or words, got None")
    from ..explain import check_view  # (explain imports this module)

    # refused before the generation runs, not after it
    view = explainer.view if view is None else check_view(a, view)
    granularity = explainer.granularity if granularity is None else check_granularity(granularity)
    img, notes = load_image_with_notes(image, background)
    with generating(a.model, watch=generation_watch(a)):
        blank = a.prepare(img, prompt, None, response_length)  # the response slots still masked
        # "all" maps the image's one view with tokens, as without a trajectory (it was refused); the image
        # decides, not the adapter's declared views: LaViDa without anyres ("pad") makes the base view alone,
        # and its declared (highres, base) refused "all", then "highres" as a view the image has not
        views = tuple(name for name, v in blank.views.items() if v.positions.numel())
        if view == "all" and len(views) > 1:
            raise InputError("view: a trajectory maps one image view at a time (view='all' is not supported); "
                             f"pick one of {', '.join(views)}")
        check_mask_id(a)  # (as before a plain generation: a bad mask id failed inside the sampler)
        with stage("dcam.generate"):
            gen = a.generate(blank, steps, response_length, record=True)
    check_generated(a, gen.response_ids, response_length)  # (else a bad id was blamed on the user's response)
    if gen.states is None or gen.decided_at is None:
        raise RuntimeError(f"the {a.name} adapter has records_trajectory but its generate(record=True) "
                           "returned no states")
    if not (isinstance(gen.states, torch.Tensor) and isinstance(gen.decided_at, torch.Tensor)):
        raise RuntimeError(f"the {a.name} adapter's generate(record=True) returned states "  # (an AttributeError)
                           f"{type(gen.states).__name__} and decided_at {type(gen.decided_at).__name__}; "
                           "both must be int64 tensors (docs/FAMILIES.md, 'Bring your own dMLLM')")
    S = int(gen.steps)
    notes.extend(a.generation_notes(steps, len(gen.response_ids), S))
    ex = ExampleBuilder(explainer, S, response_length, background, granularity, view, generated=True)(
        img, prompt, gen.response_ids, targets)  # the model's ids: "the response", not the user's "response: [...]"
    prep, resp_ids = ex.prep, ex.response_ids
    if tuple(gen.states.shape) != (S, prep.response_length) or gen.decided_at.shape[0] != prep.response_length:
        raise RuntimeError(f"the {a.name} adapter recorded states {tuple(gen.states.shape)} and decided_at "
                           f"{tuple(gen.decided_at.shape)} for {S} steps and {prep.response_length} slots")
    if bool(((gen.decided_at < 0) | (gen.decided_at >= S)).any()):  # (an IndexError in the per-word numbers)
        raise RuntimeError(f"the {a.name} adapter recorded decided_at {gen.decided_at.tolist()}: each slot's step "
                           f"must lie in 0..{S - 1}")
    items = [list(it.slots) for it in ex.items]
    chunk = chunk or _rows_per_batch(explainer, prep, (S + 1) * len(items), sum(len(it) for it in items) + 1)
    states = torch.cat([gen.states.long(), torch.tensor([resp_ids], dtype=torch.long)], 0)  # + the finished response
    tg = trajectory_gradients(a, prep, states, items, explainer.layer, explainer.config.grad_relu, chunk,
                              explainer.backend)
    rho = repeat_ratio(ex.explainable_ids)
    cw = None
    if explainer.config.sicd == "context":
        targets_ = Targets.of(ex.positions, ex.token_ids, ex.groups)
        cw = torch.stack([item_context_weights(tg.token_logits[s], targets_) for s in range(S + 1)])
    with stage("dcam.maps"):
        out = ops.refine(tg.raw, config=explainer.config, steps=S, image_size=prep.image_height, repeat_ratio=rho,
                         context_weights=cw, degenerate=tg.degenerate, backend=explainer.backend, check_finite=False)
    maps = out.maps.float().cpu()
    slot_decided = gen.decided_at.long()
    decided_at = torch.tensor([int(slot_decided[it].max()) for it in items], dtype=torch.long)  # last piece
    notes = notes + [n for n in ex.notes if n not in notes]
    return Trajectory(
        **ex.word_fields(), maps=maps[:S].contiguous(),
        final_maps=maps[S].contiguous(), decided_at=decided_at, slot_decided_at=slot_decided,
        states=gen.states.long(), scores=tg.scores[:S], final_scores=tg.scores[S], remasked=tg.remasked[:S],
        stats={k: v[:S].cpu() for k, v in out.stats().items()},
        numbers=per_word_numbers(maps[:S], decided_at, maps[S]), image=prep.image, prompt=prompt,
        response=ex.response_text, response_ids=list(resp_ids), response_tokens=a.token_strings(resp_ids),
        state_tokens=[a.token_strings(row) for row in gen.states.tolist()], layer=explainer.layer,
        config=explainer.config, grid=tuple(prep.grid), repeat_ratio=rho, model_name=type(explainer.model).__name__,
        notes=notes, cost=tg.cost, box=tuple(ex.views[0].box), cells=ex.views[0].cells, word_count=ex.word_count)


__all__ = ["Trajectory", "explain_trajectory", "check_trajectory_request", "TRAJECTORY_METHOD"]
