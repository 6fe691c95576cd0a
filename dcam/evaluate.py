"""Reproduce the paper's tables on any model and data set with one call.

    from dcam.evaluate import evaluate
    report = evaluate(model, processor, dataset="shapes", methods="all", n=200,
                      ablation=True, faithfulness=True, out_dir="eval_out")

What it does, per record (image, caption, per-word ground truth, see
:mod:`dcam.datasets`):

1. **Comparison.** Every method (``"diffusion-cam"``, ``"grad-cam"``,
   ``"llava-cam"``, ``"tam"``) explains the caption (teacher-forced: the
   caption is the response) with ONE explainer pass per image; every method
   uses the same layer, probe mode and target score (``target_score="logit"``
   by default, so LLaVA-CAM runs on the logit too unless the whole comparison
   asks for ``"contrastive"``; the table header says which). Caption words are
   aligned to response tokens (a word split into several tokens gets the mean
   of their maps). Object words are scored with Obj-IoU, contrast,
   concentration and F3 against their object's mask, function words with
   Func-IoU (:mod:`dcam.metrics`).
2. **Ablation** (``ablation=True``): Diffusion-CAM with every module off
   (``baseline``: the normalised raw maps), one module on (``+AKD``,
   ``+DACG``, ``+CBA``, ``+SICD``), all on (``full``), and all on with
   ``sicd="context"``. Every variant is ``dcam.refine`` of the same raw maps
   (``e.raw_maps`` of the comparison's Diffusion-CAM explanation, no extra
   model pass; the context variant with ``e.extra["context_weights"]``), so
   the ``full`` row equals the comparison's Diffusion-CAM row. With an
   explainer that exposes neither, the raw maps come from one extra pass with
   every module off (the refinement then returns them unchanged) and the
   context variant from one more pass.
3. **Probe/layer sweep** (``sweep_probes``/``sweep_layers``, or
   ``sweep=True`` for the adapter's probe modes and a few layers): Diffusion-CAM
   per (probe, layer) on the first ``sweep_n`` records.
4. **Causal faithfulness** (``faithfulness=True``, beyond the paper) on the
   first ``faith_n`` records: deletion and insertion curves. The image is cut
   into the map's ``h x w`` grid cells; cells are blanked (set to the image's
   per-channel mean colour by default, ``faith_fill=(r, g, b)`` for a fixed
   colour) in the order of the word's map, most important first (deletion),
   or the blank image gets its cells back in that order (insertion); at each
   of ``faith_steps`` fractions the model is re-run (masked probe: every
   response slot masked, the probability of the word's token at its
   position; the ``full`` probe for models without a mask token; a word of
   several tokens averages them) and the area under each curve (trapezoid over
   the fraction in ``[0, 1]``) is reported per method, plus a random order
   (seeded). Lower deletion AUC and higher insertion AUC are better. The
   perturbed images are scored in batches of ``batch_size``.

Outputs in ``out_dir``: ``main_table.md/.json``, ``ablation_table.md/.json``,
``sweep_table.md/.json``, ``faithfulness_table.md/.json``, ``bars.png`` (and
``ablation_bars.png``), ``examples/example_NN.png`` (the image, then one
overlay per method, one row per object word), ``per_map.jsonl`` (every scored
map) and ``report.json`` (everything, including skipped records and why).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .config import CamConfig
from .datasets import EvalDataset, EvalRecord, open_dataset
from .metrics import MetricAccumulator, object_metrics, summarize

__all__ = [
    "evaluate", "ALL_METHODS", "ablation_configs", "align_words", "perturbation_curves", "patch_orders",
    "curve_auc", "token_probabilities", "markdown_table", "write_outputs",
]

ALL_METHODS = ("diffusion-cam", "grad-cam", "llava-cam", "tam")
METHOD_LABELS = {"diffusion-cam": "Diffusion-CAM", "grad-cam": "Grad-CAM", "llava-cam": "LLaVA-CAM", "tam": "TAM"}
ABLATION_ROWS = ("baseline", "+AKD", "+DACG", "+CBA", "+SICD", "full", "full (SICD context)")

ExplainerFactory = Callable[[str, Optional[CamConfig], Optional[int]], Any]


# --------------------------------------------------------------------------- configs

def ablation_configs(config: Optional[CamConfig] = None) -> Dict[str, CamConfig]:
    """The ablation variants of ``config`` (the paper's rows plus SICD context):
    every module off, one on, all on, all on with context SICD."""
    c = config or CamConfig()
    sicd_on = c.sicd if c.sicd != "off" else "reference"
    off = c.replace(akd=False, dacg=False, cba=False, sicd="off")
    return {
        "baseline": off,
        "+AKD": off.replace(akd=True),
        "+DACG": off.replace(dacg=True),
        "+CBA": off.replace(cba=True),
        "+SICD": off.replace(sicd="reference"),
        "full": c.replace(akd=True, dacg=True, cba=True, sicd="reference" if sicd_on == "context" else sicd_on),
        "full (SICD context)": c.replace(akd=True, dacg=True, cba=True, sicd="context"),
    }


# --------------------------------------------------------------------------- word alignment

_ALNUM = re.compile(r"[^0-9a-z]+")


def _norm(s: str) -> str:
    s = s.replace("\u2581", " ").replace("\u0120", " ").replace("##", "")
    return _ALNUM.sub("", s.lower())


def align_words(words: Sequence[str], tokens: Sequence[str]) -> List[List[int]]:
    """Token indices of every word: both sides are lower-cased and reduced to
    letters and digits, then the tokens' characters are matched against the
    words' characters in order. Tokens with no letters or digits belong to no
    word; a token that does not match where the words are (an unknown or
    special token) is skipped and the words it would have covered stay empty."""
    wchars: List[int] = []
    for i, w in enumerate(words):
        wchars.extend([i] * len(_norm(w)))
    wstr = "".join(_norm(w) for w in words)
    out: List[List[int]] = [[] for _ in words]
    p = 0
    for j, t in enumerate(tokens):
        s = _norm(t)
        if not s:
            continue
        if wstr.startswith(s, p):
            for k in range(p, p + len(s)):
                if j not in out[wchars[k]]:
                    out[wchars[k]].append(j)
            p += len(s)
        elif p < len(wstr):
            # resynchronise on a later word boundary where this token matches
            q = wstr.find(s, p)
            starts = {0} | {k for k in range(1, len(wchars)) if wchars[k] != wchars[k - 1]}
            while q != -1 and q not in starts:
                q = wstr.find(s, q + 1)
            if q != -1:
                for k in range(q, q + len(s)):
                    if j not in out[wchars[k]]:
                        out[wchars[k]].append(j)
                p = q + len(s)
    return out


def _word_maps(e, word_tokens: List[List[int]], maps: Optional[Tensor] = None) -> Dict[int, Tensor]:
    """Map of every aligned word: mean of its explained tokens' maps."""
    maps = e.maps if maps is None else maps
    where = {int(p): k for k, p in enumerate(e.positions)}
    out = {}
    for i, toks in enumerate(word_tokens):
        ks = [where[j] for j in toks if j in where]
        if ks:
            out[i] = maps[ks].float().mean(dim=0)
    return out


# --------------------------------------------------------------------------- faithfulness

def patch_orders(maps: Tensor) -> Tensor:
    """Grid cells of each map ``[R, h, w]`` from most to least important
    (ties: raster order) -> int64 ``[R, h*w]``."""
    flat = maps.reshape(maps.shape[0], -1).float()
    return torch.sort(-flat, dim=1, stable=True).indices


def _cell_index(H: int, W: int, grid: Tuple[int, int]) -> np.ndarray:
    h, w = grid
    ys = np.minimum((np.arange(H) * h) // H, h - 1)
    xs = np.minimum((np.arange(W) * w) // W, w - 1)
    return ys[:, None] * w + xs[None, :]


def curve_auc(values: np.ndarray) -> np.ndarray:
    """Trapezoid area under curves sampled at equally spaced fractions of
    ``[0, 1]``: ``values [..., K+1]`` -> ``[...]``."""
    v = np.asarray(values, dtype=np.float64)
    K = v.shape[-1] - 1
    if K < 1:
        return v[..., 0]
    return (v[..., 1:] + v[..., :-1]).sum(axis=-1) / (2.0 * K)


def _stack_inputs(preps) -> Dict[str, Any]:
    out = {}
    for k, v in preps[0].model_inputs.items():
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == 1:
            out[k] = torch.cat([p.model_inputs[k] for p in preps], dim=0)
        else:
            out[k] = v
    return out


def _probe_ids(adapter, prep, probe: str) -> Tensor:
    ids = prep.input_ids.clone()
    if probe == "masked":
        s = prep.response_start
        ids[0, s:s + prep.response_length] = int(adapter.mask_token_id)
    return ids


def faithfulness_probe(adapter) -> str:
    """``"masked"`` when the model has a mask token, else ``"full"``."""
    return "masked" if adapter.mask_token_id is not None and "masked" in adapter.probes else "full"


@torch.no_grad()
def token_probabilities(adapter, images: Sequence[Image.Image], response_ids: Sequence[int],
                        indices: Sequence[int], prompt: Optional[str] = None, probe: Optional[str] = None,
                        batch_size: int = 16) -> Tensor:
    """Probability of the response token at each response index in
    ``indices``, for every image: ``[len(images), len(indices)]`` float32.
    ``probe="masked"``: every response slot masked; ``"full"``: the response
    visible (teacher forcing)."""
    probe = probe or faithfulness_probe(adapter)
    idx = [int(i) for i in indices]
    out = []
    for s in range(0, len(images), batch_size):
        chunk = images[s:s + batch_size]
        preps = [adapter.prepare(im, prompt, list(response_ids)) for im in chunk]
        ids0 = _probe_ids(adapter, preps[0], probe)
        pos = adapter.logit_positions(torch.tensor([preps[0].response_start + i for i in idx], dtype=torch.long))
        tok = torch.tensor([preps[0].response_ids[i] for i in idx], dtype=torch.long)
        same = all(torch.equal(p.input_ids, preps[0].input_ids) for p in preps[1:])
        groups = [preps] if same else [[p] for p in preps]
        for g in groups:
            ids = _probe_ids(adapter, g[0], probe).expand(len(g), ids0.shape[1])
            logits = adapter.logits_at_rows(ids, _stack_inputs(g), pos)  # [B, P, V]
            lp = torch.log_softmax(logits.float(), dim=-1)
            out.append(lp.gather(2, tok.to(lp.device)[None, :, None].expand(len(g), -1, 1))[..., 0].exp().cpu())
    return torch.cat(out, dim=0)


def perturbation_curves(adapter, image: Image.Image, response_ids: Sequence[int], orders: Tensor,
                        row_tokens: Sequence[Sequence[int]], grid: Tuple[int, int], prompt: Optional[str] = None,
                        steps: int = 10, fill: Union[str, Sequence[float]] = "mean", probe: Optional[str] = None,
                        batch_size: int = 16) -> Tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves ``[R, steps+1]`` for ``R`` cell orders.

    orders: int64 ``[R, h*w]`` (most important first); row_tokens[r]: the
    response indices whose mean probability row ``r`` tracks. At step ``k``
    the first ``round(k/steps * h*w)`` cells are blanked (deletion) or the only
    ones kept (insertion). The intact and the blank image are shared by all
    rows; everything else is scored in batches."""
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    H, W = img.shape[:2]
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"fill must be 'mean' or an (r, g, b) colour, got {fill!r}")
        colour = img.reshape(-1, 3).mean(axis=0)
    else:
        colour = np.asarray(fill, dtype=np.float32).reshape(3)
    blank = np.broadcast_to(colour, img.shape)
    cell = _cell_index(H, W, grid)
    N = grid[0] * grid[1]
    R = orders.shape[0]
    counts = [int(round(k / steps * N)) for k in range(steps + 1)]
    images = [Image.fromarray(np.rint(img).astype(np.uint8)), Image.fromarray(np.rint(blank).astype(np.uint8))]
    slots = []  # (row, step, kind) -> image index
    ords = orders.cpu().numpy()
    for r in range(R):
        for k in range(1, steps):
            top = np.zeros(N, dtype=bool)
            top[ords[r, :counts[k]]] = True
            m = top[cell][..., None]
            images.append(Image.fromarray(np.rint(np.where(m, blank, img)).astype(np.uint8)))  # deletion
            images.append(Image.fromarray(np.rint(np.where(m, img, blank)).astype(np.uint8)))  # insertion
            slots.append((r, k))
    needed = sorted({int(t) for toks in row_tokens for t in toks})
    col = {t: c for c, t in enumerate(needed)}
    probs = token_probabilities(adapter, images, response_ids, needed, prompt, probe, batch_size).numpy()

    def row_prob(i, r):
        return float(np.mean([probs[i, col[int(t)]] for t in row_tokens[r]]))

    dele = np.zeros((R, steps + 1))
    ins = np.zeros((R, steps + 1))
    for r in range(R):
        dele[r, 0], dele[r, steps] = row_prob(0, r), row_prob(1, r)
        ins[r, 0], ins[r, steps] = row_prob(1, r), row_prob(0, r)
    for s, (r, k) in enumerate(slots):
        dele[r, k] = row_prob(2 + 2 * s, r)
        ins[r, k] = row_prob(3 + 2 * s, r)
    return dele, ins


# --------------------------------------------------------------------------- helpers

def _clean(x):
    """JSON-safe copy (NaN/inf -> None, tensors/arrays -> lists)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (Tensor, np.ndarray)):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fmt(v, scale=1.0, digits=2, suffix=""):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v * scale:.{digits}f}{suffix}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


METRIC_HEADER = ["Obj-IoU (%) ↑", "Contrast (x) ↑", "Concentration (%) ↑", "F3 (%) ↑", "mean per-map F3 (%)",
                 "Func-IoU (%) ↑", "object words", "function words"]


def _metric_cells(s: Dict[str, float]) -> List[str]:
    return [_fmt(s.get("obj_iou"), 100), _fmt(s.get("contrast"), 1, 2, "x"), _fmt(s.get("concentration"), 100),
            _fmt(s.get("f3"), 100), _fmt(s.get("f3_per_map"), 100), _fmt(s.get("func_iou"), 100),
            str(s.get("n_obj", 0)), str(s.get("n_func", 0))]


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
            r = acc.add_object(torch.stack([wmaps[i] for i in obj]), [rec.word_mask(i) for i in obj])
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
    picks = {usable[0], n // 4, n // 2, (3 * n) // 4, int(adapter.default_layer()), n - 2}
    return sorted(p for p in picks if 0 <= p < n - 1)


def _resolve_methods(methods) -> List[str]:
    from .explain import METHODS

    if methods is None or methods == "all":
        ms = list(ALL_METHODS)
    elif isinstance(methods, str):
        ms = [m.strip() for m in methods.split(",") if m.strip()]
    else:
        ms = list(methods)
    bad = [m for m in ms if m not in METHODS]
    if bad or not ms:
        raise ValueError(f"unknown method(s) {bad}; available: {sorted(METHODS)}")
    return list(dict.fromkeys(ms))


@dataclass
class _Ctx:
    factory: ExplainerFactory
    prompt: Optional[str]
    probe: Optional[str]
    target_score: str
    layer: Optional[int]


def _log(msg: str, verbose: bool):
    if verbose:
        print(f"[dcam eval] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- main entry

def evaluate(model_or_factory=None, processor=None, dataset: Union[str, EvalDataset, Sequence[EvalRecord]] = "shapes",
             methods="all", n: Optional[int] = 200, ablation: bool = False, faithfulness: bool = False,
             out_dir: Optional[str] = None, *, explainer_factory: Optional[ExplainerFactory] = None,
             layer: Optional[int] = None, probe: Optional[str] = None, target_score: str = "logit",
             config: Optional[CamConfig] = None, split: str = "test", prompt: Optional[str] = None,
             sweep: bool = False, sweep_probes: Optional[Sequence[str]] = None,
             sweep_layers: Optional[Sequence[int]] = None, sweep_n: int = 50, faith_n: int = 50,
             faith_steps: int = 10, faith_fill: Union[str, Sequence[float]] = "mean", batch_size: int = 16,
             n_examples: int = 4, seed: int = 0, image_size: int = 64, verbose: bool = False) -> dict:
    """Evaluate CAM methods on a grounded data set; see the module docstring.

    model_or_factory, processor: a model and its processor, or an explainer
        factory ``f(method, config, layer) -> dcam.Explainer`` (also accepted as
        ``explainer_factory=``).
    dataset: ``"shapes"``, a data folder (COCO or TAM layout), an
        :class:`~dcam.datasets.EvalDataset` or a list of records.
    methods: ``"all"``, a comma list or a list of method names.
    n: number of valid records to evaluate (None: all).
    layer / probe / target_score: shared by every method of the comparison.
    config: the Diffusion-CAM config (None: the model's default,
        :meth:`~dcam.adapters.ModelAdapter.default_config`; it is resolved once
        and shared by every method, ablation row and sweep cell).
    Returns the report dict (also written to ``out_dir/report.json``).
    """
    t0 = time.time()
    if explainer_factory is None:
        if model_or_factory is None:
            raise ValueError("pass a model and its processor, or an explainer factory")
        if isinstance(model_or_factory, torch.nn.Module) or processor is not None:
            from .explain import Explainer

            model = model_or_factory

            def explainer_factory(method, cfg, lay, _m=model, _p=processor):
                return Explainer(_m, _p, layer=lay, config=cfg, method=method)
        elif callable(model_or_factory):
            explainer_factory = model_or_factory
        else:
            raise ValueError("model_or_factory must be a model (with its processor) or an explainer factory")
    methods = _resolve_methods(methods)
    if target_score not in ("logit", "contrastive"):
        raise ValueError(f"target_score must be 'logit' or 'contrastive', got {target_score!r}")
    if n is not None and int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if int(faith_steps) < 2:
        raise ValueError(f"faith_steps must be >= 2, got {faith_steps}")

    if isinstance(dataset, str):
        ds: Union[EvalDataset, Sequence[EvalRecord]] = open_dataset(dataset, split=split, size=n or 200,
                                                                   image_size=image_size)
    else:
        ds = dataset
    records_iter: Iterable[EvalRecord] = ds.records(n) if isinstance(ds, EvalDataset) else list(ds)[:n]
    ds_name = ds.name if isinstance(ds, EvalDataset) else "records"

    first = explainer_factory(methods[0], config, layer)
    cfg = config if config is not None else getattr(first, "config", None) or CamConfig()
    explainers = {m: first if m == methods[0] else explainer_factory(m, cfg, layer) for m in methods}
    adapter = first.adapter
    ctx = _Ctx(explainer_factory, prompt, probe, target_score, layer)
    # the shared probe mode (explicit, so every method gets the same one)
    probe_used = probe or first.default_probe
    for m, ex in explainers.items():
        allowed = getattr(getattr(ex, "method", None), "probes", None)
        if allowed is not None and probe_used not in allowed:
            raise ValueError(f"method {m!r} does not support probe {probe_used!r} (supported: {', '.join(allowed)}); "
                             f"pick another --probe or leave {m} out of the comparison")
    abl_cfgs = ablation_configs(cfg) if ablation else {}
    extra_explainers: Dict[str, Any] = {}  # created only when an explanation lacks raw maps / context weights

    def _extra(name: str):
        if name not in extra_explainers:
            extra_explainers[name] = explainer_factory("diffusion-cam", abl_cfgs[name], layer)
        return extra_explainers[name]

    scorer = _Scorer()
    skipped_explain: List[Tuple[str, str]] = []
    examples: List[dict] = []
    faith_inputs: List[dict] = []
    sweep_records: List[EvalRecord] = []
    n_done = 0
    unaligned = 0
    used = {}
    rng = np.random.default_rng(seed)

    for rec in records_iter:
        try:
            exps = {m: explainers[m].explain(rec.image, prompt, response=rec.caption, targets="all",
                                             probe=probe_used, target_score=target_score) for m in methods}
        except ValueError as exc:
            skipped_explain.append((rec.record_id, f"explain failed: {exc}"))
            warnings.warn(f"{ds_name}: skipped record {rec.record_id}: explain failed: {exc}")
            continue
        e0 = exps[methods[0]]
        used = {"layer": e0.layer, "probe": e0.probe, "target_score": target_score}
        word_tokens = align_words(rec.words, e0.response_tokens)
        wmaps_by_method = {}
        for m, e in exps.items():
            wm = _word_maps(e, word_tokens)
            wmaps_by_method[m] = wm
            scorer.add(m, rec, wm, "main")
        unaligned += sum(1 for i in rec.object_indices + rec.function_indices
                         if i not in wmaps_by_method[methods[0]])

        if ablation:
            kw = dict(response=rec.caption, targets="all", probe=probe_used, target_score=target_score)
            src = exps.get("diffusion-cam")
            raw = getattr(src, "raw_maps", None) if src is not None else None
            if raw is None:
                # every module off: the refinement returns the raw maps unchanged (float32)
                src = _extra("baseline").explain(rec.image, prompt, **kw)
                raw = getattr(src, "raw_maps", None)
                raw = src.maps if raw is None else raw
            if not _ablate(scorer, rec, src, raw, abl_cfgs, word_tokens):
                e_ctx = _extra("full (SICD context)").explain(rec.image, prompt, **kw)
                scorer.add("full (SICD context)", rec, _word_maps(e_ctx, word_tokens), "ablation")

        if len(examples) < n_examples and rec.object_indices:
            examples.append({"record": rec, "maps": wmaps_by_method})
        if faithfulness and len(faith_inputs) < faith_n:
            objs = [i for i in rec.object_indices if i in wmaps_by_method[methods[0]]]
            if objs:
                faith_inputs.append({"record": rec, "words": objs, "tokens": [word_tokens[i] for i in objs],
                                     "maps": {m: torch.stack([wmaps_by_method[m][i] for i in objs]) for m in methods},
                                     "response_ids": e0.response_ids, "grid": tuple(e0.grid)})
        if len(sweep_records) < sweep_n:
            sweep_records.append(rec)
        n_done += 1
        if n_done % 10 == 0:
            _log(f"{n_done} records ({time.time() - t0:.0f}s)", verbose)

    skipped = list(getattr(ds, "skipped", [])) + skipped_explain
    if n_done == 0:
        raise ValueError(f"no record of {ds_name} could be evaluated"
                         + (f" (skipped: {skipped[:3]})" if skipped else ""))

    report: Dict[str, Any] = {
        "dataset": ds_name, "records": n_done, "skipped": [{"record": r, "reason": why} for r, why in skipped],
        "methods": methods, "layer": used.get("layer"), "probe": used.get("probe"),
        "target_score": target_score, "config": _config_json(cfg), "unaligned_words": unaligned,
        "main": {m: scorer.summary(m) for m in methods},
    }
    if ablation:
        report["ablation"] = {k: scorer.summary(k) for k in ABLATION_ROWS}
    probes_l, layers_l = sweep_probes, sweep_layers
    if sweep and probes_l is None:
        probes_l = list(adapter.probes)
    if sweep and layers_l is None:
        layers_l = _auto_layers(adapter)
    if probes_l or layers_l:
        report["sweep"] = _sweep(ctx, cfg, sweep_records, probes_l or [probe_used],
                                 layers_l or [used.get("layer")], adapter, verbose)
    if faithfulness:
        report["faithfulness"] = _faithfulness(adapter, faith_inputs, methods, prompt, faith_steps, faith_fill,
                                               batch_size, rng, verbose)
    report["seconds"] = time.time() - t0
    if out_dir:
        report["files"] = write_outputs(report, out_dir, examples=examples, per_map=scorer.rows)
    return _clean(report)


def _config_json(cfg: CamConfig) -> dict:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def _ablate(scorer: _Scorer, rec: EvalRecord, src, raw: Tensor, cfgs: Dict[str, CamConfig],
            word_tokens: List[List[int]]) -> bool:
    """Refine the same raw maps with every ablation config. Returns whether
    the context-SICD variant was done too (it needs the explanation's context
    weights, ``src.extra["context_weights"]``)."""
    from . import engine

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
        out = engine.refine(raw.float().reshape(1, T, h, w), config=c, steps=src.steps,
                            image_size=src.image.height, repeat_ratio=src.repeat_ratio, degenerate=deg, **kw)
        scorer.add(name, rec, _word_maps(src, word_tokens, out.maps[0]), "ablation")
    return done_ctx


def _sweep(ctx: _Ctx, cfg: CamConfig, records: List[EvalRecord], probes: Sequence[str],
           layers: Sequence[Optional[int]], adapter, verbose: bool) -> List[dict]:
    rows = []
    for lay in layers:
        try:
            ex = ctx.factory("diffusion-cam", cfg, lay)
        except ValueError as exc:
            rows.append({"probe": None, "layer": lay, "error": str(exc)})
            continue
        for pr in probes:
            if pr not in adapter.probes:
                rows.append({"probe": pr, "layer": ex.layer, "error": f"probe {pr!r} unsupported by the model"})
                continue
            sc = _Scorer()
            for rec in records:
                try:
                    e = ex.explain(rec.image, ctx.prompt, response=rec.caption, targets="all", probe=pr,
                                   target_score=ctx.target_score)
                except ValueError:
                    continue
                sc.add("dc", rec, _word_maps(e, align_words(rec.words, e.response_tokens)), "sweep",
                       keep_rows=False)
            rows.append({"probe": pr, "layer": ex.layer, "records": len(records), **sc.summary("dc")})
            _log(f"sweep probe={pr} layer={ex.layer} done", verbose)
    return rows


def _faithfulness(adapter, items: List[dict], methods: List[str], prompt, steps: int, fill, batch_size: int,
                  rng: np.random.Generator, verbose: bool) -> dict:
    probe = faithfulness_probe(adapter)
    names = list(methods) + ["random"]
    dels = {m: [] for m in names}
    inss = {m: [] for m in names}
    for it in items:
        rec = it["record"]
        W_ = len(it["words"])
        N = it["grid"][0] * it["grid"][1]
        orders = [patch_orders(it["maps"][m]) for m in methods]
        orders.append(torch.stack([torch.from_numpy(rng.permutation(N)) for _ in range(W_)]))
        allo = torch.cat(orders, dim=0)
        row_tokens = [tk for _ in names for tk in it["tokens"]]
        d, i = perturbation_curves(adapter, rec.image, it["response_ids"], allo, row_tokens, it["grid"], prompt,
                                   steps, fill, probe, batch_size)
        for k, m in enumerate(names):
            dels[m].append(d[k * W_:(k + 1) * W_])
            inss[m].append(i[k * W_:(k + 1) * W_])
        _log(f"faithfulness: record {rec.record_id} done", verbose)
    out = {"probe": probe, "steps": steps, "fill": fill if isinstance(fill, str) else list(fill),
           "records": len(items), "methods": {}}
    for m in names:
        if not dels[m]:
            continue
        D, I = np.concatenate(dels[m]), np.concatenate(inss[m])
        out["methods"][m] = {"deletion_auc": float(curve_auc(D).mean()), "insertion_auc": float(curve_auc(I).mean()),
                             "deletion_curve": D.mean(axis=0).tolist(), "insertion_curve": I.mean(axis=0).tolist(),
                             "words": int(D.shape[0])}
        out["methods"][m]["insertion_minus_deletion"] = (out["methods"][m]["insertion_auc"]
                                                         - out["methods"][m]["deletion_auc"])
    return out


# --------------------------------------------------------------------------- outputs

def _label(m: str) -> str:
    return METHOD_LABELS.get(m, m)


def write_outputs(report: dict, out_dir: str, examples: Sequence[dict] = (), per_map: Sequence[dict] = ()) -> dict:
    """Write the tables (Markdown + JSON), charts, example sheets, per-map
    rows and the report into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    files: Dict[str, Any] = {}
    head = (f"Data set: {report['dataset']} ({report['records']} records, {len(report['skipped'])} skipped). "
            f"Every method: layer {report['layer']}, probe `{report['probe']}`, target score "
            f"`{report['target_score']}`.\n\n")

    def write(name, text, obj):
        p_md, p_js = os.path.join(out_dir, name + ".md"), os.path.join(out_dir, name + ".json")
        with open(p_md, "w") as f:
            f.write(text)
        with open(p_js, "w") as f:
            json.dump(_clean(obj), f, indent=2)
        files[name] = [p_md, p_js]

    rows = [[_label(m)] + _metric_cells(s) for m, s in report["main"].items()]
    write("main_table", "## Comparison\n\n" + head + markdown_table(["Method"] + METRIC_HEADER, rows),
          {"header": head.strip(), "rows": report["main"]})
    if "ablation" in report:
        rows = [[k] + _metric_cells(s) for k, s in report["ablation"].items()]
        write("ablation_table", "## Ablation (Diffusion-CAM)\n\n" + head
              + "Every row refines the same raw maps; `baseline` has every module off, `+X` only X on, "
              + "`full` all on (SICD reference), the last row all on with SICD context.\n\n"
              + markdown_table(["Variant"] + METRIC_HEADER, rows), {"header": head.strip(), "rows": report["ablation"]})
    if "sweep" in report:
        rows = []
        for r in report["sweep"]:
            if "error" in r:
                rows.append([str(r.get("probe")), str(r.get("layer"))] + ["n/a"] * 6 + [r["error"]])
            else:
                rows.append([r["probe"], str(r["layer"])] + _metric_cells(r)[:6] + [""])
        write("sweep_table", "## Diffusion-CAM over probe modes and layers\n\n"
              + f"Data set: {report['dataset']}, first {report['sweep'][0].get('records', 0) if report['sweep'] else 0} "
              + f"records, target score `{report['target_score']}`.\n\n"
              + markdown_table(["Probe", "Layer"] + METRIC_HEADER[:6] + ["note"], rows), {"rows": report["sweep"]})
    if "faithfulness" in report:
        fa = report["faithfulness"]
        rows = [[_label(m), _fmt(v["deletion_auc"], 1, 4), _fmt(v["insertion_auc"], 1, 4),
                 _fmt(v["insertion_minus_deletion"], 1, 4), str(v["words"])] for m, v in fa["methods"].items()]
        fill = fa["fill"] if isinstance(fa["fill"], str) else f"rgb{tuple(fa['fill'])}"
        write("faithfulness_table", "## Causal faithfulness (deletion / insertion)\n\n"
              + f"First {fa['records']} records; grid cells blanked with fill `{fill}` "
              + f"(`mean`: the image's mean colour), {fa['steps']} steps; probability of the word's token, "
              + f"probe `{fa['probe']}`. Deletion AUC lower is better, insertion AUC higher is better.\n\n"
              + markdown_table(["Method", "Deletion AUC ↓", "Insertion AUC ↑", "Ins − Del ↑", "words"], rows), fa)
    files["bars"] = _bar_chart(report["main"], os.path.join(out_dir, "bars.png"), "Comparison")
    if "ablation" in report:
        files["ablation_bars"] = _bar_chart(report["ablation"], os.path.join(out_dir, "ablation_bars.png"),
                                            "Ablation (Diffusion-CAM)")
    files["examples"] = [_example_sheet(ex, os.path.join(out_dir, "examples", f"example_{k:02d}.png"))
                         for k, ex in enumerate(examples)]
    p = os.path.join(out_dir, "per_map.jsonl")
    with open(p, "w") as f:
        for r in per_map:
            f.write(json.dumps(_clean(r)) + "\n")
    files["per_map"] = p
    files["report"] = os.path.join(out_dir, "report.json")
    with open(files["report"], "w") as f:
        json.dump(_clean({**report, "files": files}), f, indent=2)
    return files


def _bar_chart(rows: Dict[str, Dict[str, float]], path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(rows)
    panels = [("obj_iou", "Obj-IoU (%)", 100), ("contrast", "Contrast (x)", 1),
              ("concentration", "Concentration (%)", 100), ("f3", "F3 (%)", 100)]
    fig, axes = plt.subplots(1, 4, figsize=(3.2 * 4, 3.6))
    colours = plt.get_cmap("tab10")(np.arange(len(names)) % 10)
    for ax, (k, lab, sc) in zip(axes, panels):
        vals = [rows[n].get(k) for n in names]
        vals = [v * sc if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else 0.0 for v in vals]
        ax.bar(range(len(names)), vals, color=colours)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([_label(n) for n in names], rotation=40, ha="right", fontsize=8)
        ax.set_title(lab, fontsize=10)
        for x, v in enumerate(vals):
            ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _example_sheet(ex: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .overlay import overlay

    rec: EvalRecord = ex["record"]
    methods = list(ex["maps"])
    words = [i for i in rec.object_indices if all(i in ex["maps"][m] for m in methods)][:6]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nr, nc = max(1, len(words)), 1 + len(methods)
    fig, axes = plt.subplots(nr, nc, figsize=(2.2 * nc, 2.3 * nr), squeeze=False)
    for r in range(nr):
        ax = axes[r][0]
        ax.imshow(np.asarray(rec.image))
        if words:
            gt = rec.word_mask(words[r]) > 0
            ax.contour(gt.astype(float), levels=[0.5], colors="white", linewidths=0.8)
            ax.set_ylabel(rec.words[words[r]], fontsize=10)
        if r == 0:
            ax.set_title("image + GT", fontsize=9)
        for c, m in enumerate(methods, start=1):
            ax = axes[r][c]
            if words:
                mp = ex["maps"][m][words[r]]
                ax.imshow(np.asarray(overlay(rec.image, mp, alpha=0.5)))
                res = object_metrics(mp[None], rec.word_mask(words[r])[None])
                ax.set_xlabel(f"IoU {100 * res['obj_iou'][0].item():.0f}  F3 {100 * res['f3'][0].item():.0f}",
                              fontsize=8)
            if r == 0:
                ax.set_title(_label(m), fontsize=9)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{rec.record_id}: {rec.caption}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
