"""Explain every word a (diffusion) multimodal LLM wrote, with a map per word.

    exp = dcam.Explainer(model, processor, layer=None, config=None, method="diffusion-cam")
    e = exp.explain(image, prompt=None, response=None, targets="all")
    e.tokens, e.maps, e.stats, e.overlay("circle"), e.save("out/")   # dcam.explanation.Explanation

Pipeline of :meth:`Explainer.explain`:

1. read the image (:mod:`dcam.images`) and build the inputs with the model's
   adapter (:mod:`dcam.probe.adapters`); when ``response`` is None, generate
   it with the model's own sampler and record the number of denoising steps
   ``S`` it used (a given response records ``steps`` or the adapter's default);
2. select the explained tokens (``targets``; pad/eos slots are never explained);
3. probe the hooked block (:func:`dcam.probe.probe`): activations and the
   gradients of every target score over the image-token span, from one
   forward with batched cotangents;
4. turn them into maps with the chosen method (:mod:`dcam.methods`): the
   default ``"diffusion-cam"`` pools and refines with :mod:`dcam.ops`
   (``steps=S``, ``image_size`` = the image's height in pixels, the
   response's ``repeat_ratio``).

Default probe: :data:`DEFAULT_DMLLM_PROBE` for diffusion models, ``"full"``
for others (the only mode a model without a mask token has).
"""
from __future__ import annotations

import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .errors import InputError
from .explanation import Explanation
from .images import WHITE, load_image_with_notes
from .methods import MethodInputs, get_method
from .ops.backends import BACKENDS
from .ops.config import CamConfig
from .probe import ModelAdapter, auto_adapter, check_probe_request
from .probe import probe as run_probe
from .probe.gradients import TARGET_SCORES
from .words import clean_token

#: Default probe mode for diffusion MLLMs: the mode whose Diffusion-CAM maps
#: localised best on the grounding benchmark with the bundled weights and their
#: recommended config (``dcam grounding --n 50 --variants``; 50 test images,
#: 244 object words, uniform-map chance 0.410). Diffusion-CAM rates, layers
#: 0/1/2: full 0.828/0.791/0.525, masked 0.828/0.799/0.545, remask
#: 0.824/0.775/0.516. masked ties full at layer 0 and is what a masked
#: diffusion model sees at its first denoising step (full scores logits the
#: model never trained at visible positions); remask needs one forward per target.
DEFAULT_DMLLM_PROBE = "masked"


def repeat_ratio(ids: Sequence[int]) -> float:
    """Distinct ids occurring more than once / number of tokens (0 for none)."""
    ids = list(ids)
    if not ids:
        return 0.0
    counts: Dict[int, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    return sum(1 for c in counts.values() if c > 1) / len(ids)


def _positive_int(name: str, value, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InputError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


class Explainer:
    """Explains the words of a model's response with a map per word.

    model, processor: a supported pair (see ``dcam families``); or pass
        ``adapter=`` directly.
    layer: the block to hook (None: the adapter's default; negative indices
        count from the end; the last block is refused, its image-token
        gradients are identically zero).
    config: the pooling and refinement config (``method="diffusion-cam"``;
        None: the adapter's :meth:`~dcam.probe.ModelAdapter.default_config`,
        ``CamConfig()`` except where the model recommends otherwise: the
        bundled model's config sets ``grad_relu=False``).
    method: ``"diffusion-cam"`` (default), ``"grad-cam"``, ``"llava-cam"``, ``"tam"``.
    chunk_size: cotangents per batched backward (and rows per remask batch).
    backend: the operators' backend (``"auto"``: chosen by device).
    """

    def __init__(self, model=None, processor=None, layer: Optional[int] = None, config: Optional[CamConfig] = None,
                 method: str = "diffusion-cam", adapter: Optional[ModelAdapter] = None, chunk_size: int = 16,
                 backend: str = "auto", **adapter_kwargs):
        self.method = get_method(method)
        self.method_name = method
        self.adapter = adapter if adapter is not None else auto_adapter(model, processor, **adapter_kwargs)
        self.adapter.check_image_tokens()
        self.model = self.adapter.model
        self.processor = self.adapter.processor
        self.layer = check_probe_request(self.adapter, layer, want_grads=self.method.needs_gradients)
        self.config = config if config is not None else self.adapter.default_config()
        if not isinstance(self.config, CamConfig):
            raise InputError(f"config must be a dcam.CamConfig, got {type(self.config).__name__}")
        self.chunk_size = _positive_int("chunk_size", chunk_size, allow_none=False)
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend

    @property
    def default_probe(self) -> str:
        """:data:`DEFAULT_DMLLM_PROBE` for diffusion models that support it (and
        methods that accept it), else ``"full"``."""
        ok = self.adapter.is_diffusion and DEFAULT_DMLLM_PROBE in self.adapter.probes and \
            (self.method.probes is None or DEFAULT_DMLLM_PROBE in self.method.probes)
        return DEFAULT_DMLLM_PROBE if ok else "full"

    # ------------------------------------------------------------------ targets
    def explainable_indices(self, response_ids: Sequence[int]) -> List[int]:
        """Response indices of the explainable tokens: every slot before the
        first eos that is not a pad/eos/mask id. Word numbers (``targets=3``,
        file names ``03_word.png``) count these, not the response slots."""
        skip = self.adapter.skip_ids()
        eos = self.adapter.eos_token_ids
        out = []
        for i, t in enumerate(response_ids):
            if t in eos:
                break
            if t not in skip:
                out.append(i)
        return out

    def select_targets(self, response_ids: Sequence[int], targets="all") -> List[int]:
        """Positions in :meth:`explainable_indices` of the tokens to explain.

        ``targets``: ``"all"``; an int or a list of ints (word numbers,
        negative from the end); a word or a list of words (every explainable
        token equal to the word, case-insensitive). Unknown words and numbers
        out of range raise InputError naming ``targets``.
        """
        ids = list(response_ids)
        explainable = self.explainable_indices(ids)
        words = [clean_token(s) for s in self.adapter.token_strings([ids[i] for i in explainable])]
        if not explainable:
            raise InputError("the response has no word to explain (only eos/pad tokens)")
        if isinstance(targets, str) and targets == "all":
            return list(range(len(explainable)))
        if targets is None:
            raise InputError("targets must be 'all', word numbers or words, got None")
        items = [targets] if isinstance(targets, (str, numbers.Integral)) else list(targets)
        if not items:
            raise InputError("targets is empty")
        sel = []
        for it in items:
            if isinstance(it, numbers.Integral) and not isinstance(it, bool):
                k = int(it)
                if not -len(explainable) <= k < len(explainable):
                    raise InputError(f"targets: word number {k} is out of range for a response of "
                                     f"{len(explainable)} words ({' '.join(words)})")
                sel.append(k % len(explainable))
            elif isinstance(it, str):
                want = clean_token(it).strip(".,;:!?\"'")
                hits = [k for k, w in enumerate(words) if w == want]
                if not hits:
                    raise InputError(f"targets: word {it!r} is not in the response (words: {' '.join(words)})")
                sel.extend(hits)
            else:
                raise InputError(f"targets must be 'all', word numbers or words, got {it!r}")
        return sorted(set(sel))

    # ------------------------------------------------------------------ main
    def _response(self, image_prep, response, steps, response_length) -> Tuple[List[int], int, str, List[str]]:
        """(response ids, steps for AKD, where the steps came from, notes)."""
        a = self.adapter
        notes: List[str] = []
        if response is None:
            gen = a.generate(image_prep, steps, response_length)
            resp_ids, used = gen.response_ids, gen.steps
            if steps is not None and used < steps:
                notes.append(f"steps: {steps} requested, the sampler used {used} (it commits at least one "
                             f"token per step)")
            return resp_ids, int(used), "generation", notes
        if isinstance(response, str):
            resp_ids = a.encode_response(response)
        else:
            try:
                resp_ids = [int(v) for v in response]
            except (TypeError, ValueError):
                raise InputError(f"response must be text or a list of token ids, got {type(response).__name__}")
        S = steps if steps is not None else int(a.default_steps)
        return resp_ids, S, ("given" if steps is not None else "default"), notes

    def explain(self, image, prompt: Optional[str] = None, response: Union[None, str, Sequence[int]] = None,
                targets="all", probe: Optional[str] = None, target_score: Optional[str] = None,
                steps: Optional[int] = None, response_length: Optional[int] = None,
                background: Sequence[int] = WHITE) -> Explanation:
        """Explain the response to (image, prompt); see the module docstring.

        image: a path, a PIL image or an array (:mod:`dcam.images`);
            transparency is composited on ``background``.
        response: None (generate it), text, or a list of ids.
        targets: ``"all"``, word numbers or words (:meth:`select_targets`).
        probe: ``"full"``, ``"masked"`` or ``"remask"`` (None: :attr:`default_probe`).
        target_score: ``"logit"`` or ``"contrastive"`` (None: the method's default).
        steps: denoising steps for generation (None: the adapter's default);
            with a given response, the number recorded for AKD.
        """
        a = self.adapter
        probe = probe or self.default_probe
        check_probe_request(a, self.layer, probe, self.method.needs_gradients, self.method.probes)
        target_score = target_score or self.method.default_target_score
        if target_score not in TARGET_SCORES:
            raise InputError(f"target_score must be one of {', '.join(TARGET_SCORES)}, got {target_score!r}")
        steps = _positive_int("steps", steps)
        response_length = _positive_int("response_length", response_length)
        if targets is None:
            raise InputError("targets must be 'all', word numbers or words, got None")
        img, notes = load_image_with_notes(image, background)

        prep0 = a.prepare(img, prompt, None, response_length) if response is None else None
        resp_ids, S, steps_source, more = self._response(prep0, response, steps, response_length)
        notes += more
        prep = a.prepare(img, prompt, resp_ids, response_length)
        resp_ids = prep.response_ids
        explainable = self.explainable_indices(resp_ids)
        sel = self.select_targets(resp_ids, targets)  # word numbers
        slots = [explainable[k] for k in sel]  # response indices
        tok_ids = [resp_ids[i] for i in slots]
        res = run_probe(a, prep, [prep.response_start + i for i in slots], tok_ids, self.layer, probe=probe,
                        target_score=target_score, chunk_size=self.chunk_size,
                        want_grads=self.method.needs_gradients, want_last_hidden=self.method.needs_last_hidden)
        rho = repeat_ratio([resp_ids[i] for i in explainable])
        out = self.method.compute_maps(MethodInputs(
            result=res, grid=prep.grid, token_ids=torch.tensor(tok_ids, dtype=torch.long), config=self.config,
            steps=int(S), image_size=prep.image_height, repeat_ratio=rho, adapter=a, backend=self.backend))
        return Explanation(
            tokens=a.token_strings(tok_ids), token_ids=tok_ids, word_numbers=sel, response_indices=slots,
            maps=out.maps.float().cpu(), stats={k: v.cpu() for k, v in out.stats.items()}, image=prep.image,
            response=a.decode(resp_ids), response_ids=list(resp_ids), response_tokens=a.token_strings(resp_ids),
            prompt=prompt, steps=int(S), steps_source=steps_source, method=self.method_name, probe=probe,
            layer=self.layer, target_score=target_score, grid=tuple(prep.grid), repeat_ratio=rho,
            scores=res.scores.cpu(), config=self.config, model_name=type(self.model).__name__,
            raw_maps=None if out.raw_maps is None else out.raw_maps.float().cpu(), notes=notes,
            extra={"distractor": res.distractor, "context_weights": res.context_weights.cpu()},
        )

    def explain_batch(self, images: Sequence, prompts: Optional[Sequence[Optional[str]]] = None,
                      responses: Optional[Sequence[Union[None, str, Sequence[int]]]] = None, targets="all",
                      **kwargs) -> List[Explanation]:
        """Explain several examples; returns one Explanation per image, equal to
        ``explain()`` called on each. ``prompts``/``responses``: None or one
        per image; ``targets``: shared, or a list with one entry per image;
        other keyword arguments as for :meth:`explain`."""
        n = len(images)
        prompts = [None] * n if prompts is None else list(prompts)
        responses = [None] * n if responses is None else list(responses)
        per_image = isinstance(targets, (list, tuple)) and len(targets) == n and n > 0 and \
            all(t is None or isinstance(t, (list, tuple, str)) for t in targets) and \
            any(isinstance(t, (list, tuple)) for t in targets)
        tgts = list(targets) if per_image else [targets] * n
        for name, seq in (("prompts", prompts), ("responses", responses)):
            if len(seq) != n:
                raise InputError(f"{name} must have one entry per image ({n}), got {len(seq)}")
        return [self.explain(img, prompt=p, response=r, targets=t, **kwargs)
                for img, p, r, t in zip(images, prompts, responses, tgts)]


__all__ = ["Explainer", "DEFAULT_DMLLM_PROBE", "repeat_ratio"]
