"""High-level API: explain every word a (diffusion) multimodal LLM wrote.

    exp = dcam.Explainer(model, processor, layer=None, config=None, method="diffusion-cam")
    e = exp.explain(image, prompt=None, response=None, targets="all", probe=None, target_score=None)
    e.tokens, e.token_ids, e.maps          # maps: float32 [T, h, w], one per explained token
    e.stats                                # the engine's per-map statistics, each [T]
    e.overlay("circle", alpha=0.5)         # PIL image, heatmap upsampled and blended
    e.save("out/")                         # PNG per token, contact sheet, maps.safetensors, meta.json

Pipeline of :meth:`Explainer.explain`:

1. build the inputs with the model's adapter (:mod:`dcam.adapters`); when
   ``response`` is None, generate it with the model's own sampler and record
   the number of denoising steps ``S`` it used (a given response records
   ``steps`` or the adapter's default);
2. select the explained tokens (``targets``; pad/eos slots are never explained);
3. probe the hooked block (:func:`dcam.adapters.probing.probe`): activations
   and the gradients of every target score over the image-token span, from one
   forward with batched cotangents (parameters frozen, autograd only above the
   hooked block);
4. turn them into maps with the chosen method: ``"diffusion-cam"`` pools and
   refines with the engine (``dcam.pool_gradients`` + ``dcam.refine``, with
   ``steps=S``, ``image_size`` = the input image's height in pixels,
   ``repeat_ratio`` of the response and, for ``sicd="context"``, the
   context weights ``W[t, i] = relu(logit[pos_i, id_t])``); the baselines
   ``"grad-cam"``, ``"llava-cam"`` and ``"tam"`` call :mod:`dcam.baselines`.

Default probe: :data:`DEFAULT_DMLLM_PROBE` for diffusion models (chosen on the
grounding benchmark, see ``grounding_report`` in :mod:`dcam.cli_explain`),
``"full"`` for others (the only mode a model without a mask token has).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .adapters import ModelAdapter, auto_adapter
from .adapters.probing import ProbeResult, probe as run_probe
from .config import CamConfig
from .overlay import contact_sheet, display_size, overlay as overlay_image

#: Default probe mode for diffusion MLLMs: the mode whose Diffusion-CAM maps
#: localised best on the grounding benchmark with the bundled weights and their
#: recommended config (``python -m dcam.grounding_report --n 50 --variants``;
#: 50 test images, 244 object words, uniform-map chance 0.410). Diffusion-CAM
#: rates, layers 0/1/2: full 0.828/0.791/0.525, masked 0.828/0.799/0.545,
#: remask 0.824/0.775/0.516. masked ties full at layer 0 and is what a masked
#: diffusion model sees at its first denoising step (full scores logits the
#: model never trained at visible positions); remask needs one forward per target.
DEFAULT_DMLLM_PROBE = "masked"

TokenRef = Union[int, str]


# --------------------------------------------------------------------------- methods

@dataclass
class MethodInputs:
    """Everything a map method may use."""

    result: ProbeResult
    grid: Tuple[int, int]
    token_ids: Tensor
    config: CamConfig
    steps: int
    image_size: int
    repeat_ratio: float
    adapter: ModelAdapter
    backend: str = "auto"


class CamMethod:
    """Base class of the map methods (one small class per method).

    needs_gradients / needs_last_hidden: what the probe must return.
    default_target_score: the target score used when the caller gives none.
    probes: the probe modes the method accepts (None: any).
    """

    name = "base"
    needs_gradients = True
    needs_last_hidden = False
    default_target_score = "logit"
    probes: Optional[Tuple[str, ...]] = None

    def compute(self, x: MethodInputs) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Returns (maps float32 [T, h, w], stats: dict of [T] tensors); a
        method may also return a third item, the raw maps [T, h, w]."""
        raise NotImplementedError

    @staticmethod
    def _flat(maps: Tensor, T: int) -> Tensor:
        h, w = maps.shape[-2:]
        return maps.reshape(T, h, w).float().contiguous()

    @staticmethod
    def _zero_stats(maps: Tensor) -> Dict[str, Tensor]:
        return {"degenerate": ~(maps.flatten(1).amax(1) > 0)}


METHODS: Dict[str, Type[CamMethod]] = {}


def register_method(cls: Type[CamMethod]) -> Type[CamMethod]:
    """Class decorator: make ``cls`` available as ``method=cls.name``."""
    METHODS[cls.name] = cls
    return cls


@register_method
class DiffusionCam(CamMethod):
    """Gradient pooling (SPEC section 1) refined by AKD, DACG, CBA and SICD."""

    name = "diffusion-cam"

    def compute(self, x: MethodInputs):
        from . import engine

        r = x.result
        T = r.scores.shape[0]
        h, w = x.grid
        raw = engine.pool_gradients(r.acts, r.grads, x.grid, grad_relu=x.config.grad_relu, backend=x.backend)
        raw_maps = raw.maps.reshape(1, T, h, w)
        degenerate = raw.degenerate.reshape(1, T)
        cw = r.context_weights[None].float() if x.config.sicd == "context" else None
        out = engine.refine(raw_maps, config=x.config, steps=x.steps, image_size=x.image_size,
                            repeat_ratio=x.repeat_ratio, context_weights=cw, degenerate=degenerate,
                            backend=x.backend)
        stats = {k: v[0] for k, v in out.stats().items()}
        return out.maps[0].contiguous(), stats, raw_maps[0]


class _GradientBaseline(CamMethod):
    """A baseline map computed by ``dcam.baselines.<baseline>(acts, grads, grid)``
    from the same probe as Diffusion-CAM; no refinement statistics."""

    baseline = ""

    def compute(self, x: MethodInputs):
        from . import baselines

        T = x.result.scores.shape[0]
        fn = getattr(baselines, self.baseline)
        maps = self._flat(fn(x.result.acts, x.result.grads, x.grid), T)
        return maps, self._zero_stats(maps)


@register_method
class GradCam(_GradientBaseline):
    """Canonical Grad-CAM on the same probe (``dcam.baselines.grad_cam``)."""

    name = "grad-cam"
    baseline = "grad_cam"


@register_method
class LlavaCam(_GradientBaseline):
    """The published LLaVA-CAM extractor (``dcam.baselines.llava_cam``), fed by
    the contrastive target score unless another one is asked for."""

    name = "llava-cam"
    baseline = "llava_cam"
    default_target_score = "contrastive"


@register_method
class Tam(CamMethod):
    """Token Activation Map (``dcam.baselines.tam``): the image tokens' last
    hidden states against each token's LM-head row, no gradient."""

    name = "tam"
    needs_gradients = False
    needs_last_hidden = True
    probes = ("full", "masked")

    def compute(self, x: MethodInputs):
        from . import baselines

        r = x.result
        rows = x.adapter.lm_head_weight().detach()[x.token_ids]
        maps = baselines.tam(r.last_hidden[0], rows, x.token_ids, r.context_weights, x.grid).float()
        return maps, self._zero_stats(maps)


# --------------------------------------------------------------------------- explanation

def clean_token(s: str) -> str:
    """A token string as a word: sentencepiece/BPE space markers and
    surrounding whitespace removed, lower case."""
    return s.replace("\u2581", " ").replace("\u0120", " ").strip().lower()


def _safe_name(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", clean_token(s)).strip("_")
    return s or "tok"


@dataclass
class Explanation:
    """The maps of one response (see the module docstring).

    tokens / token_ids / positions: the explained tokens, their ids and their
    indices in the response. maps: float32 ``[T, h, w]``. stats: per-map
    statistics (each a ``[T]`` tensor). scores: the target scores.
    raw_maps: the pooled, min-max normalised maps before refinement
    (``"diffusion-cam"`` only; ``dcam.refine`` of them with any config gives
    that config's maps). extra: ``distractor`` (contrastive position) and
    ``context_weights`` ``[T, T]``.
    """

    tokens: List[str]
    token_ids: List[int]
    positions: List[int]
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
    layer: int
    target_score: str
    grid: Tuple[int, int]
    repeat_ratio: float
    scores: Tensor
    config: CamConfig
    model_name: str = ""
    raw_maps: Optional[Tensor] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def index(self, i_or_word: TokenRef) -> int:
        """Index into ``tokens`` of an int (negative allowed) or a word (its first occurrence)."""
        if isinstance(i_or_word, (int, np.integer)) and not isinstance(i_or_word, bool):
            i = int(i_or_word)
            if not -len(self.tokens) <= i < len(self.tokens):
                raise IndexError(f"token index {i} out of range for {len(self.tokens)} explained tokens")
            return i % len(self.tokens)
        if isinstance(i_or_word, str):
            want = clean_token(i_or_word)
            for k, t in enumerate(self.tokens):
                if clean_token(t) == want:
                    return k
            raise ValueError(f"word {i_or_word!r} is not among the explained tokens {self.tokens}")
        raise TypeError(f"expected a token index or a word, got {type(i_or_word).__name__}")

    def map(self, i_or_word: TokenRef) -> Tensor:
        return self.maps[self.index(i_or_word)]

    def overlay(self, i_or_word: TokenRef, alpha: float = 0.5, colormap: str = "jet",
                size: Optional[Tuple[int, int]] = None) -> Image.Image:
        """The heatmap of one token upsampled to the image and blended onto it
        (size ``(W, H)``: render at that size; default the image's size)."""
        return overlay_image(self.image, self.map(i_or_word), alpha=alpha, colormap=colormap, size=size)

    def stats_lists(self) -> Dict[str, list]:
        return {k: v.tolist() for k, v in self.stats.items()}

    def meta(self) -> dict:
        return dict(
            tokens=self.tokens, token_ids=self.token_ids, positions=self.positions, response=self.response,
            response_ids=self.response_ids, response_tokens=self.response_tokens, prompt=self.prompt,
            steps=self.steps, steps_source=self.steps_source, method=self.method, probe=self.probe,
            layer=self.layer, target_score=self.target_score, grid=list(self.grid),
            image_size=list(self.image.size), repeat_ratio=self.repeat_ratio,
            scores=self.scores.tolist(), stats=self.stats_lists(), config=_config_dict(self.config),
            model=self.model_name,
        )

    def save(self, out_dir: str, alpha: float = 0.5, colormap: str = "jet", min_side: Optional[int] = None) -> dict:
        """Write one overlay PNG per token (``NN_word.png``), ``contact_sheet.png``
        (the image, then every overlay, labelled), ``image.png``,
        ``maps.safetensors`` (``maps`` [T,h,w], ``token_ids``, ``positions``,
        ``scores`` and ``stats.<name>``) and ``meta.json``. Overlays are
        rendered at :func:`dcam.overlay.display_size` (the image scaled up by an
        integer factor to a shortest side of at least ``min_side``, default 256).
        Returns the written paths."""
        from safetensors.torch import save_file

        from .overlay import DISPLAY_MIN_SIDE

        os.makedirs(out_dir, exist_ok=True)
        size = display_size(self.image, DISPLAY_MIN_SIDE if min_side is None else min_side)
        paths: Dict[str, Any] = {"overlays": []}
        tiles = [self.image.convert("RGB").resize(size, Image.BICUBIC)]
        labels = ["image"]
        for k, tok in enumerate(self.tokens):
            im = self.overlay(k, alpha=alpha, colormap=colormap, size=size)
            p = os.path.join(out_dir, f"{k:02d}_{_safe_name(tok)}.png")
            im.save(p)
            paths["overlays"].append(p)
            tiles.append(im)
            labels.append(f"{k}: {clean_token(tok)}")
        sheet = contact_sheet(tiles, labels)
        paths["contact_sheet"] = os.path.join(out_dir, "contact_sheet.png")
        sheet.save(paths["contact_sheet"])
        paths["image"] = os.path.join(out_dir, "image.png")
        self.image.save(paths["image"])
        tensors = {"maps": self.maps.float().contiguous(),
                   "token_ids": torch.tensor(self.token_ids, dtype=torch.long),
                   "positions": torch.tensor(self.positions, dtype=torch.long),
                   "scores": self.scores.float().contiguous()}
        for k, v in self.stats.items():
            tensors[f"stats.{k}"] = v.contiguous()
        paths["maps"] = os.path.join(out_dir, "maps.safetensors")
        save_file(tensors, paths["maps"])
        paths["meta"] = os.path.join(out_dir, "meta.json")
        with open(paths["meta"], "w") as f:
            json.dump(self.meta(), f, indent=2)
        return paths


def _config_dict(cfg: CamConfig) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def repeat_ratio(ids: Sequence[int]) -> float:
    """Distinct ids occurring more than once / number of tokens (0 for none)."""
    ids = list(ids)
    if not ids:
        return 0.0
    counts: Dict[int, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    return sum(1 for c in counts.values() if c > 1) / len(ids)


# --------------------------------------------------------------------------- explainer

class Explainer:
    """Explains the words of a model's response with a map per word.

    model, processor: a supported pair (the bundled ``ShapesDMLLM``,
        transformers' ``DiffusionGemmaForBlockDiffusion``, or a LLaVA-style
        ``LlavaForConditionalGeneration``); or pass ``adapter=`` directly.
    layer: the block to hook (None: the adapter's default; negative indices
        count from the end; the last block is refused, its image-token
        gradients are identically zero).
    config: the pooling and refinement config (``method="diffusion-cam"``;
        None: the adapter's :meth:`~dcam.adapters.ModelAdapter.default_config`,
        ``CamConfig()`` except where the model recommends otherwise: the
        bundled model's config sets ``grad_relu=False``).
    method: ``"diffusion-cam"`` (default), ``"grad-cam"``, ``"llava-cam"``, ``"tam"``.
    chunk_size: cotangents per batched backward (and rows per remask batch).
    backend: the engine backend.
    """

    def __init__(self, model=None, processor=None, layer: Optional[int] = None, config: Optional[CamConfig] = None,
                 method: str = "diffusion-cam", adapter: Optional[ModelAdapter] = None, chunk_size: int = 16,
                 backend: str = "auto", **adapter_kwargs):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")
        self.adapter = adapter if adapter is not None else auto_adapter(model, processor, **adapter_kwargs)
        self.adapter.check_image_tokens()
        self.model = self.adapter.model
        self.processor = self.adapter.processor
        self.layer = self.adapter.resolve_layer(layer)
        if self.layer == len(self.adapter.blocks()) - 1 and METHODS[method].needs_gradients:
            from .adapters.probing import LastLayerError

            raise LastLayerError(f"layer {layer} is the last block, whose image-token gradients are identically "
                                 "zero; choose an earlier block")
        self.config = config if config is not None else self.adapter.default_config()
        if not isinstance(self.config, CamConfig):
            raise TypeError(f"config must be a dcam.CamConfig, got {type(self.config).__name__}")
        self.method_name = method
        self.method = METHODS[method]()
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.backend = backend

    @property
    def default_probe(self) -> str:
        """:data:`DEFAULT_DMLLM_PROBE` for diffusion models that support it (and
        methods that accept it), else ``"full"``."""
        ok = self.adapter.is_diffusion and DEFAULT_DMLLM_PROBE in self.adapter.probes and \
            (self.method.probes is None or DEFAULT_DMLLM_PROBE in self.method.probes)
        return DEFAULT_DMLLM_PROBE if ok else "full"

    # ------------------------------------------------------------------ targets
    def select_targets(self, response_ids: Sequence[int], targets="all") -> List[int]:
        """Response indices of the tokens to explain.

        Explainable: every response slot before the first eos that is not a
        pad/eos/mask id. ``targets``: ``"all"``; an int or a list of ints
        (response indices); a word or a list of words (every explainable
        token equal to the word, case-insensitive). Unknown words, indices out
        of range and indices of pad/eos slots raise ValueError.
        """
        ids = list(response_ids)
        skip = self.adapter.skip_ids()
        eos = self.adapter.eos_token_ids
        explainable = []
        for i, t in enumerate(ids):
            if t in eos:
                break
            if t not in skip:
                explainable.append(i)
        if isinstance(targets, str) and targets == "all":
            sel = explainable
        else:
            items = [targets] if isinstance(targets, (str, int, np.integer)) else list(targets)
            if not items:
                raise ValueError("targets is empty")
            strings = [clean_token(s) for s in self.adapter.token_strings(ids)]
            sel = []
            for it in items:
                if isinstance(it, (int, np.integer)) and not isinstance(it, bool):
                    i = int(it)
                    if not -len(ids) <= i < len(ids):
                        raise ValueError(f"target index {i} out of range for a response of {len(ids)} tokens")
                    i %= len(ids)
                    if i not in explainable:
                        raise ValueError(f"target index {i} is a pad/eos slot ({self.adapter.token_strings([ids[i]])[0]!r})")
                    sel.append(i)
                elif isinstance(it, str):
                    want = clean_token(it)
                    hits = [i for i in explainable if strings[i] == want]
                    if not hits:
                        words = [strings[i] for i in explainable]
                        raise ValueError(f"word {it!r} is not in the response (words: {words})")
                    sel.extend(hits)
                else:
                    raise ValueError(f"targets must be 'all', indices or words, got {it!r}")
            sel = sorted(set(sel))
        if not sel:
            raise ValueError("the response has no token to explain")
        return sel

    # ------------------------------------------------------------------ main
    def explain(self, image, prompt: Optional[str] = None, response: Union[None, str, Sequence[int]] = None,
                targets="all", probe: Optional[str] = None, target_score: Optional[str] = None,
                steps: Optional[int] = None, response_length: Optional[int] = None) -> Explanation:
        """Explain the response to (image, prompt); see the module docstring.

        response: None (generate it), text, or a list of ids.
        probe: ``"full"``, ``"masked"`` or ``"remask"`` (None: :attr:`default_probe`).
        target_score: ``"logit"`` or ``"contrastive"`` (None: the method's default,
            ``"logit"`` except for llava-cam).
        steps: denoising steps for generation (None: the adapter's default);
            with a given response, the number recorded for AKD.
        """
        a = self.adapter
        probe = probe or self.default_probe
        if probe not in ("full", "masked", "remask"):
            raise ValueError(f"probe must be 'full', 'masked' or 'remask', got {probe!r}")
        if probe not in a.probes:
            raise ValueError(f"probe={probe!r} is not supported by the {a.name} adapter "
                             f"(supported: {', '.join(a.probes)})")
        if self.method.probes is not None and probe not in self.method.probes:
            raise ValueError(f"method {self.method_name!r} does not support probe={probe!r}")
        target_score = target_score or self.method.default_target_score
        if steps is not None and int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")

        if response is None:
            prep0 = a.prepare(image, prompt, None, response_length)
            resp_ids, S = a.generate(prep0, steps, response_length)
            steps_source = "generation"
        else:
            resp_ids = a.encode_response(response) if isinstance(response, str) else [int(v) for v in response]
            S = int(steps) if steps is not None else int(a.default_steps)
            steps_source = "given" if steps is not None else "default"
        prep = a.prepare(image, prompt, resp_ids, response_length)
        resp_ids = prep.response_ids
        sel = self.select_targets(resp_ids, targets)
        positions = [prep.response_start + i for i in sel]
        tok_ids = [resp_ids[i] for i in sel]

        res = run_probe(a, prep, positions, tok_ids, self.layer, probe=probe, target_score=target_score,
                        chunk_size=self.chunk_size, want_grads=self.method.needs_gradients,
                        want_last_hidden=self.method.needs_last_hidden)
        explained_ids = [t for i, t in enumerate(resp_ids) if i < self._end(resp_ids) and t not in a.skip_ids()]
        rho = repeat_ratio(explained_ids)
        x = MethodInputs(result=res, grid=prep.grid, token_ids=torch.tensor(tok_ids, dtype=torch.long),
                         config=self.config, steps=int(S), image_size=prep.image_height, repeat_ratio=rho,
                         adapter=a, backend=self.backend)
        out = self.method.compute(x)
        maps, stats = out[0], out[1]
        raw_maps = out[2].float().cpu() if len(out) > 2 and out[2] is not None else None
        tokens = a.token_strings(tok_ids)
        return Explanation(
            tokens=tokens, token_ids=tok_ids, positions=sel, maps=maps.float().cpu(),
            stats={k: v.cpu() for k, v in stats.items()}, image=prep.image, response=a.decode(resp_ids),
            response_ids=list(resp_ids), response_tokens=a.token_strings(resp_ids), prompt=prompt, steps=int(S),
            steps_source=steps_source, method=self.method_name, probe=probe, layer=self.layer,
            target_score=target_score, grid=tuple(prep.grid), repeat_ratio=rho, scores=res.scores.cpu(),
            config=self.config, model_name=type(self.model).__name__, raw_maps=raw_maps,
            extra={"distractor": res.distractor, "context_weights": res.context_weights.cpu()},
        )

    def _end(self, ids: Sequence[int]) -> int:
        for i, t in enumerate(ids):
            if t in self.adapter.eos_token_ids:
                return i
        return len(ids)


__all__ = ["Explainer", "Explanation", "CamMethod", "METHODS", "register_method", "DiffusionCam", "GradCam",
           "LlavaCam", "Tam", "DEFAULT_DMLLM_PROBE", "repeat_ratio", "clean_token"]
