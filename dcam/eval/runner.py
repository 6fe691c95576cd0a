"""Reproduce the paper's tables on any model and data set with one call.

    from dcam.eval import evaluate
    report = evaluate(model, processor, dataset="shapes", methods="all", n=200,
                      ablation=True, faithfulness=True, out_dir="eval_out")

Per record (image, caption, per-word ground truth, see :mod:`dcam.eval.datasets`):

1. **Comparison.** Every method explains the caption (teacher-forced: the
   caption is the response) with one explainer pass per image; every method
   uses the same layer, probe mode and target score. Caption words are
   aligned to the explained words (:func:`dcam.eval.alignment.word_maps`, on
   the decoded text; a caption word several items cover gets the mean of
   their maps). Object words are scored
   with Obj-IoU, contrast, concentration and F3 against their object's mask,
   function words with Func-IoU (:mod:`dcam.eval.metrics`).
2. **Ablation** (``ablation=True``): Diffusion-CAM with every module off
   (``baseline``), one module on (``+AKD``, ``+DACG``, ``+CBA``, ``+SICD``),
   all on (``full``), and all on with ``sicd="context"``; every variant is
   ``dcam.refine`` of the same raw maps (no extra model pass).
3. **Probe/layer sweep** (``sweep=True`` or ``sweep_probes``/``sweep_layers``).
4. **Causal faithfulness** (``faithfulness=True``): :mod:`dcam.eval.faithfulness`.

Outputs in ``out_dir`` (:mod:`dcam.eval.report`): ``main_table.md/.json``,
``ablation_table``, ``sweep_table``, ``faithfulness_table``, ``bars.png``,
``examples/example_NN.png``, ``per_map.jsonl``, ``report.json``.
"""
from __future__ import annotations

import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import DcamUserWarning, InputError, one_line, positive_int
from ..methods import get_method
from ..ops.config import CamConfig
from ..output import AtomicFolder, check_output_folder, moved_paths
from ..probe.modes import PROBES, check_probe_request
from ..render.overlay import FULL_BOX
from .alignment import word_maps, word_slots
from .datasets import EvalDataset, EvalRecord, open_dataset
from .datasets.base import RecordError, check_record
from .faithfulness import check_fill, faithfulness_report
from .metrics import MetricAccumulator, summarize
from .report import json_ready, log as _log, rerun_record, skipped_text, write_outputs

ALL_METHODS = ("diffusion-cam", "grad-cam", "llava-cam", "tam")
ABLATION_ROWS = ("baseline", "+AKD", "+DACG", "+CBA", "+SICD", "full", "full (SICD context)")

ExplainerFactory = Callable[[str, Optional[CamConfig], Optional[int]], Any]


def ablation_configs(config: Optional[CamConfig] = None) -> Dict[str, CamConfig]:
    """The ablation variants of ``config``: every module off, one on, all on, all on with context
    SICD. (Not the release's modes, which keep SICD on in all but its baseline and zero raw values
    below 0.4 in that: docs/ALGORITHM.md.)"""
    c = config or CamConfig()
    sicd_on = c.sicd if c.sicd != "off" else "reference"
    off = c.replace(akd=False, dacg=False, cba=False, sicd="off")
    return {"baseline": off, "+AKD": off.replace(akd=True), "+DACG": off.replace(dacg=True),
            "+CBA": off.replace(cba=True), "+SICD": off.replace(sicd="reference"),
            "full": c.replace(akd=True, dacg=True, cba=True, sicd="reference" if sicd_on == "context" else sicd_on),
            "full (SICD context)": c.replace(akd=True, dacg=True, cba=True, sicd="context")}


class _Scorer:
    """Per-variant accumulators and per-map rows."""

    def __init__(self):
        self.acc: Dict[str, MetricAccumulator] = {}
        self.rows: List[dict] = []

    def add(self, key: str, rec: EvalRecord, wmaps: Dict[int, Tensor], table: str, keep_rows: bool = True):
        acc = self.acc.setdefault(key, MetricAccumulator())
        obj = [i for i in rec.object_indices if i in wmaps]
        fun = [i for i in rec.function_indices if i in wmaps]
        if obj:
            r = acc.add_object(torch.stack([wmaps[i] for i in obj]), [rec.word_truth(i) for i in obj])
            if keep_rows:
                for k, i in enumerate(obj):
                    self.rows.append({"table": table, "variant": key, "record": rec.record_id, "word_index": i,
                                      "word": rec.words[i], "kind": "object",
                                      **{m: r[m][k].item() for m in ("obj_iou", "contrast", "concentration", "f3",
                                                                     "threshold")}})
        if fun:
            r = acc.add_function(torch.stack([wmaps[i] for i in fun]), rec.size)
            if keep_rows:
                for k, i in enumerate(fun):
                    self.rows.append({"table": table, "variant": key, "record": rec.record_id, "word_index": i,
                                      "word": rec.words[i], "kind": "function",
                                      "func_iou": r["func_iou"][k].item(), "threshold": r["threshold"][k].item()})

    def summary(self, key: str) -> Dict[str, float]:
        return self.acc[key].summary() if key in self.acc else summarize()


def _auto_layers(adapter) -> List[int]:
    n = len(adapter.blocks())
    usable = list(range(n - 1))  # the last block is refused (zero image-token gradients)
    if len(usable) <= 4:
        return usable
    picks = {usable[0], n // 4, n // 2, (3 * n) // 4, adapter.resolve_layer(None), n - 2}
    return sorted(p for p in picks if 0 <= p < n - 1)


def _names(argument: str, value, what: str) -> list:
    """``value``, a comma list in one string or a list of names, as a list (anything else was a
    TypeError, or a string read one character per name): InputError naming ``argument``."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, bytes) or not isinstance(value, Iterable):
        raise InputError(f"{argument} must be a comma list or a list of {what}, got {type(value).__name__}")
    return list(value)


def _resolve_methods(methods) -> List[str]:
    from ..methods import METHODS

    if methods is None or methods == "all":
        ms = list(ALL_METHODS)
    else:
        ms = _names("methods", methods, "method names")
    bad = [m for m in ms if m not in METHODS]
    if not ms:
        raise InputError(f"methods: none given; available: {', '.join(sorted(METHODS))}")
    if bad:
        raise InputError(f"methods: unknown method(s) {', '.join(map(repr, bad))}; available: "
                         f"{', '.join(sorted(METHODS))}")
    return list(dict.fromkeys(ms))


@dataclass
class _Ctx:
    factory: ExplainerFactory
    prompt: Optional[str]
    probe: Optional[str]
    target_score: str
    layer: Optional[int]


def _factory(model_or_factory, processor, explainer_factory, family: Optional[str] = None) -> ExplainerFactory:
    """``f(method, config, layer) -> Explainer`` from a model and processor (as ``family`` when given), or the
    factory given."""
    if explainer_factory is not None:
        return explainer_factory
    if model_or_factory is None:
        raise InputError("pass a model and its processor, or an explainer factory")
    if isinstance(model_or_factory, torch.nn.Module) or processor is not None:
        from ..explain import Explainer

        def factory(method, cfg, lay, _m=model_or_factory, _p=processor):
            return Explainer(_m, _p, layer=lay, config=cfg, method=method, **({"family": family} if family else {}))
        return factory
    if callable(model_or_factory):
        return model_or_factory
    raise InputError("model_or_factory must be a model (with its processor) or an explainer factory")


def _made(factory: ExplainerFactory, method: str, cfg: Optional[CamConfig], layer: Optional[int]):
    """``factory``'s explainer of ``method`` with the comparison's config and layer where the
    method uses them, None where it does not (an explainer refuses a config or a layer its
    method would only record)."""
    m = get_method(method)
    return factory(method, cfg if m.uses_config else None, layer if m.needs_gradients else None)


def _open_records(dataset, split: Optional[str], n: Optional[int], image_size: int):
    """(records iterator, the data set or list, its name). Every record the loader gives: the caller
    stops after ``n`` evaluated ones (a record whose explanation fails is replaced by the next one,
    as one whose files are bad is)."""
    ds = open_dataset(dataset, split=split, size=n or 200, image_size=image_size) if isinstance(dataset, str) \
        else dataset
    records: Iterable[EvalRecord] = ds.records() if isinstance(ds, EvalDataset) else list(ds)
    return records, ds, (ds.name if isinstance(ds, EvalDataset) else "records")


class _Comparison:
    """Explains each record with every method and accumulates everything the
    report needs: scores per method and ablation row, examples, the inputs of
    the faithfulness curves and of the sweep."""

    def __init__(self, factory: ExplainerFactory, methods: List[str], config: Optional[CamConfig],
                 layer: Optional[int], probe: Optional[str], target_score: str, prompt: Optional[str],
                 ablation: bool, limits: Dict[str, int]):
        first = _made(factory, methods[0], config, layer)
        self.cfg = config if config is not None else getattr(first, "config", None) or CamConfig()
        self.explainers = {m: first if m == methods[0] else _made(factory, m, self.cfg, layer) for m in methods}
        self.adapter, self.factory, self.methods, self.layer = first.adapter, factory, methods, layer
        self.probe = probe or first.default_probe  # explicit, so every method gets the same one
        # refused before the first record (each record failed alone: "no record could be evaluated")
        check_probe_request(first.adapter, None, self.probe, want_grads=False)
        for m, ex in self.explainers.items():
            allowed = getattr(getattr(ex, "method", None), "probes", None)
            if allowed is not None and self.probe not in allowed:
                raise InputError(f"method {m!r} does not support probe {self.probe!r} (supported: "
                                 f"{', '.join(allowed)}); pick another --probe or leave {m} out of the comparison")
        self.target_score, self.prompt, self.limits = target_score, prompt, limits
        self.abl_cfgs = ablation_configs(self.cfg) if ablation else {}
        self.extra: Dict[str, Any] = {}  # explainers made only when an explanation lacks raw maps / context weights
        self.scorer = _Scorer()
        self.skipped: List[Tuple[str, str]] = []
        self.examples: List[dict] = []
        self.faith_inputs: List[dict] = []
        self.sweep_records: List[EvalRecord] = []
        self.done, self.unaligned, self.used = 0, 0, {}

    def _extra(self, name: str):
        if name not in self.extra:
            self.extra[name] = self.factory("diffusion-cam", self.abl_cfgs[name], self.layer)
        return self.extra[name]

    def _explain_kw(self) -> dict:
        return dict(response=None, targets="all", probe=self.probe, target_score=self.target_score)

    def add(self, rec: EvalRecord, ds_name: str) -> None:
        kw = dict(self._explain_kw(), response=rec.caption)
        try:  # (a method that differentiates no score takes none)
            exps = {m: self.explainers[m].explain(rec.image, self.prompt, **(
                kw if get_method(m).needs_gradients else dict(kw, target_score=None))) for m in self.methods}
        except InputError as exc:
            self.skipped.append((rec.record_id, f"explain failed: {exc}"))
            warnings.warn(f"{ds_name}: skipped record {rec.record_id}: explain failed: {exc}", DcamUserWarning)
            return
        e0 = exps[self.methods[0]]
        # the hooked layer of the methods that hook one (tam, listed first, reported layer 0 for a
        # grad-cam run at --layer 1); None when no method does
        hooked = [exps[m] for m in self.methods if get_method(m).needs_gradients]
        self.used = {"layer": hooked[0].layer if hooked else None, "probe": e0.probe,
                     "target_score": self.target_score if hooked else None}
        word_tokens = word_slots(e0, rec.words)
        wmaps = {m: word_maps(e, rec.words) for m, e in exps.items()}
        for m in self.methods:
            self.scorer.add(m, rec, wmaps[m], "main")
        self.unaligned += sum(1 for i in rec.object_indices + rec.function_indices if i not in wmaps[self.methods[0]])
        if self.abl_cfgs:
            self._ablation(rec, exps.get("diffusion-cam"), word_tokens, kw)
        if len(self.examples) < self.limits["examples"] and rec.object_indices:
            self.examples.append({"record": rec, "maps": wmaps})
        objs = [i for i in rec.object_indices if i in wmaps[self.methods[0]]]
        if len(self.faith_inputs) < self.limits["faith"] and objs:
            # the cells are ranked on the token grid the model saw (its crop of the image, e0.box, e0.cells)
            grid_maps = {m: word_maps(e, rec.words, placed=False) for m, e in exps.items()}
            self.faith_inputs.append({"record": rec, "words": objs, "tokens": [word_tokens[i] for i in objs],
                                      "maps": {m: torch.stack([grid_maps[m][i] for i in objs]) for m in self.methods},
                                      "response_ids": e0.response_ids, "grid": tuple(e0.grid),
                                      "box": tuple(getattr(e0, "box", FULL_BOX)), "cells": getattr(e0, "cells", None)})
        if len(self.sweep_records) < self.limits["sweep"]:
            self.sweep_records.append(rec)
        self.done += 1

    def _ablation(self, rec: EvalRecord, src, word_tokens, kw: dict) -> None:
        raw = getattr(src, "raw_maps", None) if src is not None else None
        if raw is None:  # every module off: the refinement returns the raw maps unchanged (float32)
            src = self._extra("baseline").explain(rec.image, self.prompt, **kw)
            raw = src.maps if getattr(src, "raw_maps", None) is None else src.raw_maps
        if not _ablate(self.scorer, rec, src, raw, self.abl_cfgs, word_tokens):
            e_ctx = self._extra("full (SICD context)").explain(rec.image, self.prompt, **kw)
            self.scorer.add("full (SICD context)", rec, word_maps(e_ctx, rec.words), "ablation")


def _refuse_unused(methods: List[str], config, layer, diffusion_cam_extras: bool, target_score=None) -> None:
    """A config, a layer or a target score that no method of the comparison (nor an ablation or
    sweep, which run diffusion-cam) would use is refused rather than reported as used."""
    if diffusion_cam_extras:
        return
    if layer is not None and not any(get_method(m).needs_gradients for m in methods):
        raise InputError(f"layer: none of the methods ({', '.join(methods)}) hooks a layer (tam reads the model's "
                         "final states); leave layer out")
    if target_score is not None and not any(get_method(m).needs_gradients for m in methods):
        raise InputError(f"target_score: none of the methods ({', '.join(methods)}) differentiates a score (tam "
                         "reads the model's final states); leave target_score out")
    if config is not None and not any(get_method(m).uses_config for m in methods):
        raise InputError(f"config: none of the methods ({', '.join(methods)}) applies a CamConfig (only "
                         "diffusion-cam, its ablation and its sweep do); leave config out")


def _check_counts(n, sweep_n, faith_n, batch_size, faith_steps, seed, n_examples, sweep_probes, image_size,
                  verbose) -> Optional[int]:
    """evaluate()'s counts, image_size, verbose (and sweep probes) checked (InputErrors naming them); returns ``n``."""
    for pr in sweep_probes or ():  # (an unknown one was an error row of the sweep table)
        if pr not in PROBES:
            raise InputError(f"sweep_probes: {pr!r} is not a probe ({', '.join(PROBES)})")
    n = positive_int("n", n)
    for name, value in (("sweep_n", sweep_n), ("faith_n", faith_n), ("batch_size", batch_size)):
        positive_int(name, value, allow_none=False)
    if positive_int("faith_steps", faith_steps, allow_none=False) < 2:
        raise InputError(f"faith_steps must be >= 2, got {faith_steps}")
    # n_examples=-1 was taken (and meant 0), a negative seed refused by numpy at the end, image_size='64' taken;
    # image_size's range is the shapes generator's (dcam.zoo.data.generate_sample)
    for name, value, low in (("n_examples", n_examples, 0), ("seed", seed, 0), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise InputError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(verbose, bool):
        raise InputError(f"verbose must be a bool, got {verbose!r}")
    return n


def _check_sweep_and_prompt(sweep_probes, sweep_layers, prompt) -> Optional[List[str]]:
    """``sweep_probes`` as a list (one string: a comma list, as for methods), ``sweep_layers`` and
    ``prompt`` checked, before any record is read (``5`` was a TypeError, or every record failed alone
    with an error naming the data set); returns the probes."""
    if sweep_probes is not None:
        sweep_probes = _names("sweep_probes", sweep_probes, "probe names")
        if not sweep_probes:
            raise InputError(f"sweep_probes: none given; probes: {', '.join(PROBES)}")
    if sweep_layers is not None and (isinstance(sweep_layers, (str, bytes)) or not isinstance(sweep_layers, Iterable)):
        raise InputError(f"sweep_layers must be a list of layer indices, got {type(sweep_layers).__name__}")
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be a string or None, got {type(prompt).__name__}")
    return sweep_probes


def _check_dataset(dataset) -> None:
    if not isinstance(dataset, (str, EvalDataset, list, tuple)):
        raise InputError(f"dataset must be 'shapes', a data folder, an EvalDataset or a list of EvalRecords, "
                         f"got {type(dataset).__name__}")
    if isinstance(dataset, (list, tuple)) and not dataset:  # (was "no record of records could be evaluated")
        raise InputError("dataset is an empty list: no record to evaluate")
    if isinstance(dataset, (list, tuple)):  # (one that is not a record was an AttributeError mid-run)
        bad = next((k for k, r in enumerate(dataset) if not isinstance(r, EvalRecord)), None)
        if bad is not None:
            raise InputError(f"dataset[{bad}] must be an EvalRecord, got {type(dataset[bad]).__name__}")
        # the loaders' checks, before any work (a mask of another size was stretched onto the image, a word
        # label absent from the mask left that word out of the scores silently)
        for k, rec in enumerate(dataset):
            try:
                check_record(rec)
            except RecordError as exc:
                raise InputError(f"dataset[{k}] (record {rec.record_id!r}): {one_line(str(exc))}") from None


def evaluate(model_or_factory=None, processor=None, dataset: Union[str, EvalDataset, Sequence[EvalRecord]] = "shapes",
             methods="all", n: Optional[int] = 200, ablation: bool = False, faithfulness: bool = False,
             out_dir: Optional[str] = None, *, explainer_factory: Optional[ExplainerFactory] = None,
             layer: Optional[int] = None, probe: Optional[str] = None, target_score: Optional[str] = None,
             config: Optional[CamConfig] = None, split: Optional[str] = None, prompt: Optional[str] = None,
             sweep: bool = False, sweep_probes: Optional[Sequence[str]] = None,
             sweep_layers: Optional[Sequence[int]] = None, sweep_n: int = 50, faith_n: int = 50,
             faith_steps: int = 10, faith_fill: Union[str, Sequence[float]] = "mean", batch_size: int = 16,
             n_examples: int = 4, seed: int = 0, image_size: int = 64, verbose: bool = False,
             family: Optional[str] = None, overwrite: bool = False, on_record: Optional[Callable] = None,
             command_line: Optional[Sequence[str]] = None) -> dict:
    """Evaluate CAM methods on a grounded data set; see the module docstring.

    model_or_factory, processor: a model and its processor, or an explainer
        factory ``f(method, config, layer) -> dcam.Explainer`` (also accepted as
        ``explainer_factory=``; config and layer are None for a method that applies
        no CamConfig or hooks no layer).
    dataset: ``"shapes"``, a data folder (COCO or TAM layout), an
        :class:`~dcam.eval.datasets.EvalDataset` or a list of records.
    methods: ``"all"``, a comma list or a list of method names (``sweep_probes`` likewise: probe names).
    n: number of valid records to evaluate (None: all).
    layer / probe / target_score: shared by every method of the comparison (target_score None:
        "logit" for the gradient methods; a layer or score no method uses is refused).
    family: the adapter family to treat the model as (``dcam families``; None: detected).
    out_dir: where the tables, charts and report go, written whole or not at all; a folder that
        is not empty is refused unless ``overwrite`` (which replaces it whole).
    config: the Diffusion-CAM config (None: the model's default, :meth:`~dcam.probe.ModelAdapter.default_config`;
        it is resolved once and shared by every method, ablation row and sweep cell).
    on_record: ``f(k, n)`` as evaluated record ``k`` (from 0) of the comparison begins, then ``f(done, done)``.
    command_line: the command that ran it (``dcam eval``'s arguments), recorded in the report's ``provenance``.
    Returns the report dict (also written to ``out_dir/report.json``).
    """
    t0 = time.time()
    factory = _factory(model_or_factory, processor, explainer_factory, family)
    methods = _resolve_methods(methods)
    sweep_probes = _check_sweep_and_prompt(sweep_probes, sweep_layers, prompt)
    if target_score not in (None, "logit", "contrastive"):
        raise InputError(f"target_score must be 'logit' or 'contrastive', got {target_score!r}")
    given_score, target_score = target_score, target_score or "logit"
    n = _check_counts(n, sweep_n, faith_n, batch_size, faith_steps, seed, n_examples, sweep_probes, image_size, verbose)
    if out_dir is not None:  # before the work, not after it (a file there failed once everything had run)
        out_dir = check_output_folder(out_dir, overwrite, "out_dir")
    faith_fill = check_fill(faith_fill, "faith_fill")
    _check_dataset(dataset)
    records, ds, ds_name = _open_records(dataset, split, n, image_size)
    _refuse_unused(methods, config, layer, bool(ablation or sweep or sweep_probes or sweep_layers), given_score)
    cmp = _Comparison(factory, methods, config, layer, probe, target_score, prompt, ablation,
                      {"examples": n_examples, "faith": faith_n if faithfulness else 0, "sweep": sweep_n})
    for lay in sweep_layers or ():  # the layers asked for are checked before any record is explained
        try:
            factory("diffusion-cam", cmp.cfg, lay)
        except InputError as exc:
            raise InputError(f"sweep_layers: {one_line(str(exc))}") from None
    _compare(cmp, records, n, ds_name, t0, verbose, on_record or (lambda k, n: None))
    skipped = list(getattr(ds, "skipped", [])) + cmp.skipped
    if cmp.done == 0:
        raise InputError(f"dataset: no record of {ds_name} could be evaluated"
                         + (f"; {skipped_text(skipped)}" if skipped else ""))
    # the config of a comparison where nothing applies one (grad-cam, tam) is none, not the default's
    config_used = any(get_method(m).uses_config for m in methods) or bool(ablation or sweep or sweep_probes or sweep_layers)
    report: Dict[str, Any] = {
        "dataset": ds_name, "records": cmp.done, "skipped": [{"record": r, "reason": why} for r, why in skipped],
        "methods": methods, "layer": cmp.used.get("layer"), "probe": cmp.used.get("probe"),
        "target_score": cmp.used.get("target_score", target_score), "config": cmp.cfg.as_dict() if config_used else None, "unaligned_words": cmp.unaligned,
        "main": {m: cmp.scorer.summary(m) for m in methods}}
    if ablation:
        report["ablation"] = {k: cmp.scorer.summary(k) for k in ABLATION_ROWS}
    probes_l = sweep_probes if sweep_probes is not None or not sweep else list(cmp.adapter.probes)
    layers_l = sweep_layers if sweep_layers is not None or not sweep else _auto_layers(cmp.adapter)
    if probes_l or layers_l:
        report["sweep"] = _sweep(_Ctx(factory, prompt, probe, target_score, layer), cmp.cfg, cmp.sweep_records,
                                 probes_l or [cmp.probe], layers_l or [cmp.used.get("layer")], cmp.adapter, verbose)
    if faithfulness:
        report["faithfulness"] = faithfulness_report(cmp.adapter, cmp.faith_inputs, methods, prompt, faith_steps,
                                                     faith_fill, batch_size, np.random.default_rng(seed), verbose)
    report["seconds"] = time.time() - t0
    report.update(rerun_record(locals(), command_line))  # the settings, seed, code and command that rerun it
    if out_dir:
        report["files"] = _write(report, out_dir, overwrite, cmp)
    return json_ready(report)


def _compare(cmp: _Comparison, records: Iterable[EvalRecord], n: Optional[int], ds_name: str, t0: float,
             verbose: bool, on_record: Callable[[int, Optional[int]], None]) -> None:
    """Every method on ``records`` until ``n`` are evaluated (a record that fails is replaced by the next)."""
    for rec in records:
        if n is not None and cmp.done >= n:
            break
        on_record(cmp.done, n)
        before = cmp.done
        cmp.add(rec, ds_name)
        if cmp.done != before and cmp.done % 10 == 0:
            _log(f"{cmp.done} records ({time.time() - t0:.0f}s)", verbose)
    on_record(cmp.done, cmp.done)


def _write(report: dict, out_dir: str, overwrite: bool, cmp: _Comparison) -> dict:
    """The report's files written into ``out_dir`` whole or not at all, the folder replaced only
    with ``overwrite`` (a second run into it kept the first one's faithfulness tables beside its
    own report) -> their paths."""
    with AtomicFolder(out_dir, overwrite, "out_dir") as tmp:
        files = write_outputs(report, tmp, examples=cmp.examples, per_map=cmp.scorer.rows)
    return moved_paths(files, tmp, out_dir)


def _ablate(scorer: _Scorer, rec: EvalRecord, src, raw: Tensor, cfgs: Dict[str, CamConfig],
            word_tokens: List[List[int]]) -> bool:
    """Refine the same raw maps with every ablation config. Returns whether
    the context-SICD variant was done too (it needs the explanation's context
    weights, ``src.extra["context_weights"]``)."""
    from .. import ops

    raw = raw.reshape(-1, *raw.shape[-2:])
    T, h, w = raw.shape
    deg = src.stats.get("degenerate") if isinstance(src.stats, dict) else None
    deg = deg.bool().reshape(1, T) if deg is not None else None
    cw = (getattr(src, "extra", None) or {}).get("context_weights")
    done_ctx = False
    for name, c in cfgs.items():
        kw = {}
        if c.sicd == "context":
            if cw is None or tuple(cw.shape) != (T, T):
                continue
            kw["context_weights"] = cw.float().reshape(1, T, T)
            done_ctx = True
        out = ops.refine(raw.float().reshape(1, T, h, w), config=c, steps=src.steps,
                            image_size=src.image.height, repeat_ratio=src.repeat_ratio, degenerate=deg, **kw)
        scorer.add(name, rec, word_maps(src, rec.words, out.maps[0]), "ablation")
    return done_ctx


def _sweep(ctx: _Ctx, cfg: CamConfig, records: List[EvalRecord], probes: Sequence[str],
           layers: Sequence[Optional[int]], adapter, verbose: bool) -> List[dict]:
    rows = []
    for lay in layers:
        try:
            ex = ctx.factory("diffusion-cam", cfg, lay)
        except InputError as exc:  # a layer the model refuses: its row says why
            rows.append({"probe": None, "layer": lay, "error": str(exc)})
            continue
        for pr in probes:
            if pr not in adapter.probes:
                rows.append({"probe": pr, "layer": ex.layer, "error": f"probe {pr!r} unsupported by the model"})
                continue
            sc = _Scorer()
            skipped = []
            for rec in records:
                try:
                    e = ex.explain(rec.image, ctx.prompt, response=rec.caption, targets="all", probe=pr,
                                   target_score=ctx.target_score)
                except InputError as exc:  # counted and said, as in the comparison (a bug still raises)
                    skipped.append(f"{rec.record_id}: {exc}")
                    continue
                sc.add("dc", rec, word_maps(e, rec.words), "sweep",
                       keep_rows=False)
            row = {"probe": pr, "layer": ex.layer, "records": len(records) - len(skipped), **sc.summary("dc")}
            if skipped:
                row["skipped"] = skipped
            rows.append(row)
            _log(f"sweep probe={pr} layer={ex.layer} done", verbose)
    return rows
