"""Explain every word a (diffusion) multimodal LLM wrote, with a map per word.

    exp = dcam.Explainer(model, processor, layer=None, config=None, method="diffusion-cam")
    e = exp.explain(image, prompt=None, response=None, targets="all")
    es = exp.explain_batch(images, prompts=None, responses=None)        # batched forwards
    e.tokens, e.maps, e.stats, e.overlay("circle"), e.save("out/")       # dcam.explanation.Explanation

Pipeline of :meth:`Explainer.explain_batch` (``explain`` is a batch of one):

1. read each image (:mod:`dcam.images`) and build the inputs with the model's adapter
   (:mod:`dcam.probe.adapters`); when no response is given, generate it with the model's own
   sampler and record the number of denoising steps ``S`` it used (a given response records
   ``steps`` or the adapter's default);
2. select the explained items (:mod:`dcam.targets`: words by default, a word of several tokens
   being one item, or tokens, or phrases); pad/eos slots are never explained;
3. probe the hooked block (:func:`dcam.probe.probe_batch`): examples with the
   same sequence layout share one forward, and so do examples of other lengths
   where the family is padded (:mod:`dcam.probe.padding`), in batches of similar
   padded work (:mod:`dcam.batching`); one backward per chunk of
   cotangents serves every example of the batch; each chunk of gradients is
   reduced as soon as it exists (methods that can; Diffusion-CAM to its words'
   channel weights, the maps then made in one product), so the gradients
   held do not grow with the number of words (``chunk_size``, or
   ``memory_budget``), nor do the logits (scores are taken through the LM
   head's input, and the forward's logits are let go before the backwards);
4. turn them into maps with the chosen method (:mod:`dcam.methods`): the
   default ``"diffusion-cam"`` pools and refines with :mod:`dcam.ops`
   (``steps=S``, ``image_size`` = the image's height in pixels, the
   response's ``repeat_ratio``).

Images with several views (anyres): ``view=None`` explains the adapter's
default view (the stitched high-resolution grid where there is one);
``view="base"``/``"highres"`` a named view; ``view="all"`` every view
(``Explanation.view_maps``).

Default probe: :data:`DEFAULT_DMLLM_PROBE` for diffusion models, ``"full"``
for others (the only mode a model without a mask token has).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch

from .batch_inputs import check_errors, entries as _entries, example_error, for_example
from .batching import WORK_SLACK, check_slack, similar_work
from .errors import InputError, NonFiniteError, model_overflow, positive_int
from .example import Example, ExampleBuilder
from .explanation import Explanation
from .images import WHITE
from .methods import MethodInputs, get_method
from .ops.backends import BACKENDS
from .provenance import explainer_record
from .ops.config import CamConfig
from .probe import ModelAdapter, Targets, auto_adapter, batch_key, check_probe_request, probe_batch
from .probe.adapters.checks import check_members
from .probe.rows import block_dtype
from .probe.hooks import check_weights, exclusive
from .probe.memory import BudgetError, check_budget_holds_model, chunk_for_budget, parse_size
from .probe.modes import check_target_score
from .probe.padding import check_padding
from .profiling import stage
from .targets import check_granularity, items_asked, repeat_ratio, targets_asked

#: Default probe mode for diffusion MLLMs: the mode whose Diffusion-CAM maps
#: localised best on the grounding benchmark with the bundled weights and their
#: recommended config (``dcam grounding --n 50 --variants``; 50 test images,
#: 244 object words, uniform-map chance 0.410). Diffusion-CAM rates, layers
#: 0/1/2: full 0.828/0.791/0.525, masked 0.828/0.799/0.545, remask
#: 0.824/0.775/0.516. masked ties full at layer 0 and is what a masked
#: diffusion model sees at its first denoising step (full scores logits the
#: model never trained at visible positions); remask needs one forward per target.
DEFAULT_DMLLM_PROBE = "masked"


#: The adapter methods whose results carry the views of an image.
VIEW_MAKERS = ("prepare", "locate_views", "_views")


def declared_image_views(adapter: ModelAdapter) -> Optional[tuple]:
    """``adapter.image_views``, unless a subclass below the class that declares them
    makes images its own way (overrides :data:`VIEW_MAKERS`): a user's adapter built
    on a bundled one may add views the bundled declaration does not know (None)."""
    for cls in type(adapter).__mro__:
        if "image_views" in vars(cls):
            return None if cls.image_views is None else tuple(cls.image_views)
        if any(name in vars(cls) for name in VIEW_MAKERS):
            return None
    return None


def check_view(adapter: ModelAdapter, view: Optional[str]) -> Optional[str]:
    """``view`` if this adapter's images can have it: None, ``"default"``, ``"all"``
    or one of its :func:`declared_image_views` (any name where they are not known;
    the image then decides). ``"default"`` is returned as None: the model's default view."""
    if view is None:
        return None
    if not isinstance(view, str):
        raise InputError(f"view must be a view name, got {type(view).__name__}")
    known = declared_image_views(adapter)
    if known is not None and view not in ("default", "all") + tuple(known):
        raise InputError(f"view: this model's images have no view {view!r} "
                         f"(views: {', '.join(('default',) + tuple(known) + ('all',))})")
    # None everywhere after this: "default" kept as a name refused an image whose default view has no
    # tokens (None falls back to the others with a note) and made a run differ from one without --view
    return None if view == "default" else view


class Explainer:
    """Explains the words of a model's response with a map per word.

    model, processor: a supported pair (``dcam families``); or pass ``adapter=``.
    layer: the block to hook (None: the adapter's default; negative indices
        count from the end; the last block is refused, its image-token
        gradients are identically zero).
    config: the pooling and refinement config (``method="diffusion-cam"``;
        None: the adapter's :meth:`~dcam.probe.ModelAdapter.default_config`).
    method: ``"diffusion-cam"`` (default), ``"grad-cam"``, ``"llava-cam"``, ``"tam"``.
    chunk_size: gradients per batched backward: cotangents x the batch's examples, so a batch
        of B examples takes ``chunk_size // B`` cotangents at a time and its gradients take
        what one example's do (a batch has at most ``chunk_size`` examples); the graph above
        the hook still grows with B (``memory_budget`` counts both). Rows per remask batch.
    memory_budget: bytes (or ``"8GB"``) the probe may use; chooses the chunk
        size from the model and sequence sizes (overrides ``chunk_size``).
    granularity: ``"words"`` (default: the pieces of a word are one item) or ``"tokens"``.
    view: the image view to explain (None: the model's default; see the module docstring).
    backend: the operators' backend (``"auto"``: chosen by device).
    batch_slack: how much padded work a batch of :meth:`explain_batch` may waste, as a fraction
        of its examples' own (:func:`dcam.batching.similar_work`; default 0.25, sized on a CPU,
        where a batch is no faster than its examples apart); ``math.inf`` keeps every example
        that can share a padded forward in one batch (on a GPU that one example leaves idle).
    """

    def __init__(self, model=None, processor=None, layer: Optional[int] = None, config: Optional[CamConfig] = None,
                 method: str = "diffusion-cam", adapter: Optional[ModelAdapter] = None, chunk_size: int = 16,
                 backend: str = "auto", memory_budget=None, granularity: str = "words",
                 view: Optional[str] = None, batch_slack: float = WORK_SLACK, **adapter_kwargs):
        self.method = get_method(method)
        self.method_name = method
        if adapter is not None and not isinstance(adapter, ModelAdapter):  # (a class, or a model, went on to fail)
            raise InputError(f"adapter must be a ModelAdapter instance, got {type(adapter).__name__}")
        if adapter is not None and adapter_kwargs:  # (taken and ignored: the adapter is already made)
            raise InputError(f"{sorted(adapter_kwargs)[0]}: an option of the adapter dcam makes; with adapter= "
                             "given, pass it to that adapter instead")
        if adapter is not None and model is not None and model is not adapter.model:
            raise InputError("adapter: it wraps another model than the one given (pass either, or the same)")
        self.adapter = adapter if adapter is not None else auto_adapter(model, processor, **adapter_kwargs)
        self.adapter.check_image_tokens()
        check_members(self.adapter)  # (an int of eos ids, one block: a TypeError deep inside dcam)
        self.model = self.adapter.model
        check_weights(self.model)  # (an inference-mode or meta model failed inside its first probe)
        self.processor = self.adapter.processor
        # what the method would never use is refused, not recorded in the explanation as if used
        if config is not None and not self.method.uses_config:
            raise InputError(f"config: the {method} method refines nothing (only diffusion-cam applies a "
                             "CamConfig); leave config out")
        if layer is not None and not self.method.needs_gradients:
            raise InputError(f"layer: the {method} method hooks no layer (it reads the model's final states); "
                             "leave layer out")
        self.layer = check_probe_request(self.adapter, layer, want_grads=self.method.needs_gradients)
        if self.method.needs_last_hidden and self.adapter.final_norm() is None:  # (a TypeError inside tam)
            raise InputError(f"method: {method} reads the model's final hidden states, and "
                             f"{type(self.adapter).__name__}.final_norm() names no module (the one whose output "
                             "the LM head reads); implement it in the adapter or pick another method")
        self.config = config if config is not None else self.adapter.default_config()
        if not isinstance(self.config, CamConfig):
            raise InputError(f"config must be a dcam.CamConfig, got {type(self.config).__name__}")
        self.chunk_size = positive_int("chunk_size", chunk_size, allow_none=False)
        self.batch_slack = check_slack("batch_slack", batch_slack)
        self.memory_budget = None if memory_budget is None else parse_size(memory_budget)
        if self.memory_budget is not None:
            # known before any input: refused here, before a run or an output folder is started
            check_budget_holds_model(self.model, self.memory_budget)
        self.granularity = check_granularity(granularity)
        self.view = check_view(self.adapter, view)
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend != "auto":
            if not self.method.uses_config:  # (taken and ignored)
                raise InputError(f"backend: the {self.method_name} method computes its maps in PyTorch itself "
                                 "(only diffusion-cam runs dcam's operators); leave backend out")
            from .ops.backends import check_backend

            # where the maps will be made: refused here, not after the whole probe has run
            check_backend(backend, next((p.device for p in self.model.parameters()), torch.device("cpu")))
        self.backend = backend

    @property
    def default_probe(self) -> str:
        """:data:`DEFAULT_DMLLM_PROBE` for diffusion models that support it (and
        methods that accept it), else ``"full"``."""
        # (an adapter without a mask token cannot mask, whatever its probes list says)
        ok = self.adapter.is_diffusion and DEFAULT_DMLLM_PROBE in self.adapter.probes and \
            self.adapter.mask_token_id is not None and \
            (self.method.probes is None or DEFAULT_DMLLM_PROBE in self.method.probes)
        return DEFAULT_DMLLM_PROBE if ok else "full"

    # ------------------------------------------------------------------ explaining
    def explain(self, image, prompt: Optional[str] = None, response: Union[None, str, Sequence[int]] = None,
                targets="all", probe: Optional[str] = None, target_score: Optional[str] = None,
                steps: Optional[int] = None, response_length: Optional[int] = None,
                background: Sequence[int] = WHITE, view: Optional[str] = None,
                granularity: Optional[str] = None, trajectory: bool = False) -> Explanation:
        """Explain the response to (image, prompt); see the module docstring.

        image: a path, a PIL image or an array (:mod:`dcam.images`);
            transparency is composited on ``background``.
        response: None (generate it), text, or a list of ids (exact: the model's own, an explanation's
            ``response_ids``, its special tokens left out of the words as a generation's; text may hold none).
        targets: ``"all"``, ``"words"`` or ``"tokens"`` (every word or every token), word numbers,
            words or phrases (:mod:`dcam.targets`).
        probe: ``"full"``, ``"masked"`` or ``"remask"`` (None: :attr:`default_probe`).
        target_score: ``"logit"`` or ``"contrastive"`` (None: the method's default).
        steps: denoising steps for generation (None: the adapter's default);
            with a given response, the number recorded for AKD.
        view, granularity: override the explainer's.
        trajectory: also map every word on every denoising state of the model's own generation
            (:mod:`dcam.trajectory`; the response is generated: ``response`` None): ``e.trajectory``.
        """
        if not isinstance(trajectory, bool):  # trajectory="no" is truthy: it ran a trajectory
            raise InputError(f"trajectory must be True or False, got {trajectory!r}")
        if trajectory:
            return self._explain_with_trajectory(image, prompt, response, targets, probe, target_score, steps,
                                                 response_length, background, granularity, view)
        return self.explain_batch([image], [prompt], [response], targets_per_image=[targets], probe=probe,
                                  target_score=target_score, steps=steps, response_length=response_length,
                                  background=background, view=view, granularity=granularity)[0]

    @exclusive
    def explain_batch(self, images: Sequence, prompts: Optional[Sequence[Optional[str]]] = None,
                      responses: Optional[Sequence] = None, targets="all",
                      targets_per_image: Optional[Sequence] = None, probe: Optional[str] = None, target_score: Optional[str] = None, steps: Optional[int] = None,
                      response_length: Optional[int] = None, background: Sequence[int] = WHITE,
                      view: Optional[str] = None, granularity: Optional[str] = None,
                      errors: str = "raise") -> List[Union[Explanation, InputError]]:
        """Explain several examples with batched forwards and backwards; returns
        one Explanation per image, equal to :meth:`explain` on each up to the rounding of a
        padded forward (reductions of another length: ~1e-6 in the gradients, which the maps'
        min-max normalisation and thresholds can grow: at most 8.2e-4 in float32 on the tiny
        stand-ins, ~2e-4 in most families; measured per family in docs/FAMILIES.md). Examples share forwards and backwards in batches of similar
        padded work (:func:`dcam.batching.similar_work`): in a batch, examples of other lengths
        (other prompts, responses, image sizes) are padded on the right to its longest, each
        family's way (:mod:`dcam.probe.padding`; DiffusionGemma's only while a prompt fits its
        encoder's sliding window, docs/FAMILIES.md), and an example much shorter than another,
        or of far fewer words, gets a batch of its own rather than pay the other's length or
        backwards.

        prompts / responses: None, or one per image. targets: shared by every
        image (``"all"``, words, numbers); targets_per_image: one entry per image instead.
        errors: ``"raise"`` (the first bad example raises, naming it) or ``"return"`` (a bad example's
        InputError in its place, the others explained without it; :mod:`dcam.batch_inputs`)."""
        return self._explain_batch(images, prompts, responses, targets, targets_per_image, probe, target_score,
                                   steps, response_length, background, view, granularity, errors)

    def _explain_batch(self, images, prompts, responses, targets, targets_per_image, probe, target_score, steps,
                       response_length, background, view, granularity, errors,
                       generated: bool = False) -> List[Union[Explanation, InputError]]:
        """:meth:`explain_batch`; ``generated``: the responses are ids the model generated before (dcam's own
        route for a trajectory's response; a caller's ids are a given response, whatever their class)."""
        failed = check_errors(errors)  # index -> the example's InputError, with errors="return"
        probe, target_score = self._checked_request(probe, target_score)
        # (None is the default: "", 0 or [] became the default granularity without a word)
        granularity = self.granularity if granularity is None else check_granularity(granularity)
        view = check_view(self.adapter, view) if view is not None else self.view
        images = _entries("images", images)
        n = len(images)
        if targets_per_image is not None and not (isinstance(targets, str) and targets == "all"):
            raise InputError("targets: give targets (shared by every image) or targets_per_image, not both")
        prompts = [None] * n if prompts is None else _entries("prompts", prompts)
        responses = [None] * n if responses is None else _entries("responses", responses)
        tgts = [targets] * n if targets_per_image is None else _entries("targets_per_image", targets_per_image)
        for name, seq in (("prompts", prompts), ("responses", responses), ("targets_per_image", tgts)):
            if len(seq) != n:
                raise InputError(f"{name} must have one entry per image ({n}), got {len(seq)}")
        if response_length is not None and all(r is not None for r in responses):  # as the CLI refuses it
            raise InputError("response_length: sets a generated response's length; every response is given")
        build = ExampleBuilder(self, positive_int("steps", steps), positive_int("response_length", response_length),
                               background, granularity, view, generated=generated)
        # what needs no response is checked for every example before the first response is generated
        # (a bad fourth image was found after three generations, minutes each on a real dMLLM)
        if targets_per_image is None:
            targets_asked(items_asked(targets, granularity)[1])  # shared: named as itself, not as example 0's
        def precheck(img, p, t):
            return build.load(img, p), targets_asked(items_asked(t, granularity)[1])
        loaded = {i: for_example(precheck, i, n, failed, img, p, t)
                  for i, (img, p, t) in enumerate(zip(images, prompts, tgts))}
        # examples with a given response first: they need no generation, so a bad response (ids past the
        # vocabulary, eos tokens only) or a target not in it is found before the others' are generated; with
        # errors="return" one that fails after its generation is left out, the others' generations kept
        order = sorted((i for i in range(n) if loaded[i] is not None), key=lambda i: responses[i] is None)
        built = {i: for_example(build, i, n, failed, images[i], prompts[i], responses[i], tgts[i],
                                loaded=loaded[i][0]) for i in order}
        examples = {i: ex for i, ex in sorted(built.items()) if ex is not None}  # the good ones, in order
        del loaded, built
        self._check_budget_of_each(examples, n)
        results: Dict[int, Union[Explanation, InputError]] = dict(failed or {})
        check_padding(self.adapter, [ex.prep for ex in examples.values()] if probe != "remask" else [])
        groups: Dict[tuple, List[int]] = {}  # (remask pads none: its probes are checked by nothing above)
        for i, ex in examples.items():
            groups.setdefault(batch_key(ex.prep, self.adapter), []).append(i)
        # remask probes example by example (a row per item): its batches are never padded with items
        parts = [p for idx in groups.values()
                 for p in (similar_work(idx, [int(examples[i].prep.input_ids.shape[-1]) for i in idx],
                                        [len(examples[i].items) for i in idx], self.batch_slack)
                           if probe != "remask" else [idx])]
        if self.memory_budget is None and self.method.needs_gradients and probe != "remask":
            # chunk_size counts gradients per backward (cotangents x examples): at least one
            # cotangent each, so a batch of more examples than that would hold more
            cap = self.chunk_size
            parts = [p[k:k + cap] for p in parts for k in range(0, len(p), cap)]
        for idx in parts:
            together = self._explain_together([examples[i] for i in idx], idx, n, probe, target_score, failed)
            results.update(zip(idx, together))
        return [results[i] for i in range(n)]

    # ------------------------------------------------------------------ internals
    @exclusive
    def _explain_with_trajectory(self, image, prompt, response, targets, probe, target_score, steps,
                                 response_length, background, granularity, view) -> Explanation:
        """The trajectory of the model's own generation, and the explanation of the finished response."""
        from .trajectory import check_trajectory_request, explain_trajectory

        if response is not None:
            raise InputError("trajectory: a trajectory follows the model's own generation; leave response unset")
        check_trajectory_request(self)
        # checked before the generation runs, not after it (view= was dropped here, an unknown
        # one included; a bad probe or target score was found only after the whole trajectory)
        view = check_view(self.adapter, view) if view is not None else self.view
        self._checked_request(probe, target_score)
        if granularity is not None:
            check_granularity(granularity)
        view = "default" if view is None else view  # (None below is the explainer's view again, not the model's)
        with stage("dcam.trajectory"):
            traj = explain_trajectory(self, image, prompt=prompt, steps=steps, response_length=response_length,
                                      targets=targets, background=background, granularity=granularity, view=view)
        # the model's ids, not the user's: checked as its generation (a bad one is the adapter's mistake)
        (e,) = self._explain_batch([image], [prompt], [traj.response_ids], "all", [targets], probe, target_score,
                                   traj.steps, None, background, view, granularity, "raise", generated=True)
        e.steps_source, e.trajectory = "generation", traj
        e.notes = list(dict.fromkeys(traj.notes + e.notes))
        return e

    def _checked_request(self, probe: Optional[str], target_score: Optional[str]):
        """(probe, target score) with the defaults filled in, refused when the model or
        the method does not take them."""
        # (None is the default: "" or 0 became the default probe / score without a word)
        probe = self.default_probe if probe is None else probe
        check_probe_request(self.adapter, self.layer, probe, self.method.needs_gradients, self.method.probes)
        if target_score is not None and not self.method.needs_gradients:  # (taken, and it changed the scores)
            raise InputError(f"target_score: the {self.method_name} method differentiates no score; leave "
                             "target_score out")
        return probe, check_target_score(self.method.default_target_score if target_score is None else target_score)

    def _check_budget_of_each(self, examples: Dict[int, Example], n: int) -> None:
        """Every example of a batch (``examples``: by index, of ``n``) fits the memory budget alone, or
        the batch is refused before its first probe, naming each that does not (the first part was
        probed whole, then thrown away); with errors="return" too: the budget is the caller's option."""
        if self.memory_budget is None or not self.method.needs_gradients or n == 1:
            return
        over, why = [], ""
        for i, ex in examples.items():
            try:
                self._chunk_size([ex], 1)
            except BudgetError as exc:
                over.append(i)
                why = why or str(exc)
        if len(over) == 1:
            raise BudgetError(f"example {over[0]} of the batch (images[{over[0]}]): {why}")
        if over:
            more = f" and {len(over) - 8} more" if len(over) > 8 else ""
            raise BudgetError(f"examples {', '.join(map(str, over[:8]))}{more} of the batch (images["
                              f"{'], images['.join(map(str, over[:8]))}]) do not fit memory_budget alone; the "
                              f"first: {why}")

    def _chunk_size(self, examples: List[Example], rows: int) -> int:
        if self.memory_budget is None or not self.method.needs_gradients:
            # (a method without gradients holds the model and one forward: the budget's check of the
            # model when the explainer was made is all there is to it). A batch's backward computes
            # cotangents x rows gradients: 16 cotangents of 8 examples held 8x one example's, and
            # ran ~8% slower on a CPU than 2 cotangents at a time (bench/bench_batch.py)
            return max(1, self.chunk_size // rows)
        above = len(self.adapter.blocks()) - 1 - self.layer
        # the batch's largest example: a one-word first response capped every other one's chunk at 1
        return chunk_for_budget(self.model, max(ex.prep.input_ids.shape[1] for ex in examples), above,
                                max(len(ex.items) for ex in examples), self.memory_budget, rows=rows,
                                scored_rows=max(ex.n_tokens for ex in examples) + 1)

    def _explain_together(self, examples: List[Example], index: List[int], n: int, probe: str,
                          target_score: str, failed: Optional[dict] = None) -> List[Union[Explanation, InputError]]:
        """Examples of one :func:`~dcam.probe.batch_key` (``index``: their places in a batch of ``n``),
        in as few probes as the memory budget lets one forward hold; with ``failed`` (errors="return")
        an example refused alone is its InputError in the list (and kept in ``failed``)."""
        rows = len(examples) if probe != "remask" else 1
        try:
            chunk = self._chunk_size(examples, rows)
        except BudgetError:
            if len(examples) == 1:  # (in a batch of several, each example was checked alone beforehand)
                raise
            # each example fits alone (_check_budget_of_each): a batch too wide for the budget is halved,
            # not refused as if its sequence did not fit
            h = len(examples) // 2
            return (self._explain_together(examples[:h], index[:h], n, probe, target_score, failed)
                    + self._explain_together(examples[h:], index[h:], n, probe, target_score, failed))
        try:
            return self._explain_group(examples, probe, target_score, chunk)
        except BudgetError:
            raise
        except InputError as exc:
            if len(examples) == 1:  # (said as its example's; kept in failed with errors="return")
                return [example_error(exc, index[0], n, failed)]
        # refused inside the batched probe (a target score one example cannot take): which example
        # it is about shows alone
        alone = [for_example(self._explain_together, index[b], 1, failed, [ex], [index[b]], n, probe, target_score)
                 for b, ex in enumerate(examples)]
        if failed is None or not any(index[b] in failed for b in range(len(examples))):
            raise AssertionError("a batch refused what each of its examples took alone")
        return [failed[index[b]] if e is None else e[0] for b, e in enumerate(alone)]

    def _explain_group(self, examples: List[Example], probe: str, target_score: str,
                       chunk: int) -> List[Explanation]:
        """Examples of one batch key: one probe, maps reduced as gradients arrive."""
        m = self.method
        partial: List[dict] = [{} for _ in examples]  # example -> view name -> its ChunkReducer

        def sink(b: int, items, acts, grads):
            ex = examples[b]
            for view in ex.views:  # each view's slice of the span is its own map
                sl = ex.view_slices[view.name]
                with stage("dcam.reduce"):
                    if view.name not in partial[b]:
                        partial[b][view.name] = m.reducer(self._inputs(ex, None, view), len(ex.items))
                    partial[b][view.name].add(items, acts[:, sl], grads[:, :, sl])

        try:
            results = probe_batch(self.adapter, [ex.prep for ex in examples],
                                  [Targets.of(ex.positions, ex.token_ids, ex.groups) for ex in examples], self.layer,
                                  probe=probe, target_score=target_score,
                                  chunk_size=chunk,
                                  want_grads=m.needs_gradients, want_last_hidden=m.needs_last_hidden,
                                  grad_sink=sink if m.streams and m.needs_gradients else None)
            return [self._explanation(ex, res, partial[b], probe, target_score)
                    for b, (ex, res) in enumerate(zip(examples, results))]
        except NonFiniteError as exc:  # inside an explanation, the tensor is the model's
            raise model_overflow(self.model, exc) from None

    def _inputs(self, ex: Example, res, view) -> MethodInputs:
        return MethodInputs(result=res, grid=tuple(view.grid), token_ids=torch.tensor(ex.item_ids),
                            config=self.config, steps=int(ex.steps), image_size=ex.prep.image_height,
                            repeat_ratio=repeat_ratio(ex.explainable_ids), adapter=self.adapter, backend=self.backend,
                            item_token_ids=[[ex.response_ids[s] for s in it.slots] for it in ex.items])

    def _view_result(self, ex: Example, res, view, reducer):
        inputs = self._inputs(ex, res.sliced(ex.view_slices[view.name]) if res is not None else None, view)
        if reducer is not None:  # streamed: what every chunk of items reduced to
            return reducer.finish(inputs)
        return self.method.compute_maps(inputs)

    def _explanation(self, ex: Example, res, reducers: dict, probe: str, target_score: str) -> Explanation:
        outs = {}
        for v in ex.views:
            with stage("dcam.maps"):
                outs[v.name] = self._view_result(ex, res, v, reducers.get(v.name))
        main = outs[ex.views[0].name]
        a = self.adapter
        # view="all" gives every view with tokens, also where only one has any (was {} then)
        every_view = len(outs) > 1 or (ex.view_name == "all" and ex.views[0].name != "default")
        return Explanation(
            **ex.word_fields(), maps=main.maps.float().cpu(),
            stats={k: v.cpu() for k, v in main.stats.items()}, image=ex.prep.image, response=ex.response_text,
            response_ids=list(ex.response_ids), response_tokens=a.token_strings(ex.response_ids), prompt=ex.prompt,
            # what the method never used is None, as meta.json and a load say (tam carried the default CamConfig,
            # a "logit" score and a layer; grad-cam the CamConfig)
            steps=int(ex.steps), steps_source=ex.steps_source, method=self.method_name, probe=probe,
            layer=self.layer if self.method.needs_gradients else None,
            target_score=target_score if self.method.needs_gradients else None, grid=tuple(ex.views[0].grid),
            repeat_ratio=repeat_ratio(ex.explainable_ids), scores=res.scores.cpu(),
            config=self.config if self.method.uses_config else None, model_name=type(self.model).__name__,
            raw_maps=None if main.raw_maps is None else main.raw_maps.float().cpu(), notes=ex.notes,
            # a model without named views has its one "default" view: no view to report (as documented); a
            # multi-view image names the view explained, its default one included (reported None before)
            granularity=ex.granularity, view=ex.views[0].name if ex.views[0].name != "default" else None,
            box=tuple(ex.views[0].box), cells=ex.views[0].cells,
            view_maps={k: o.maps.float().cpu() for k, o in outs.items()} if every_view else {},
            view_boxes={v.name: tuple(v.box) for v in ex.views} if every_view else {},
            view_cells={v.name: v.cells for v in ex.views if v.cells is not None} if every_view else {},
            extra={"distractor": res.distractor, "context_weights": res.context_weights.cpu(),
                   "provenance": explainer_record(self)},
            model_dtype=str(block_dtype(self.adapter.blocks()[-1])).replace("torch.", ""),
            device=str(next((p.device for p in self.model.parameters()), "cpu")),
        )


__all__ = ["Explainer", "DEFAULT_DMLLM_PROBE", "repeat_ratio"]
