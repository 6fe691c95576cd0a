"""``dcam demo`` and ``dcam explain`` (and the grounding report).

    dcam demo [--out DIR] [--seed N]
        a grounded-shapes test image (dcam.data), captioned by the bundled
        model, every word explained; overlays + contact sheet written to DIR.
    dcam explain IMAGE [--prompt TEXT] [--response TEXT] [--model DIR] [--tokens WORDS]
                       [--method NAME] [--probe MODE] [--layer N] [--out DIR]
        the same for any image; the default model is the bundled one.
    python -m dcam.cli_explain grounding [--n 50] [--probes full,masked,remask] [--layers 0,1,2]
        the grounding benchmark (see :func:`grounding_report`).

``add_subparsers(subparsers)`` registers ``demo`` and ``explain`` with the
``dcam`` command (:mod:`dcam.cli`); each handler is ``run(args) -> int``. User
errors (unreadable image, unknown word, a model without an image token, bad
option values) raise :class:`CliError`; :func:`main` (and ``dcam.cli.main``)
print them on one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .cli import CliError, run_parser  # one CliError for every subcommand


def _log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[dcam] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- model loading

def load_model(model_dir: Optional[str] = None):
    """(model, processor): the bundled zoo model, a zoo directory, or a
    transformers checkpoint directory (DiffusionGemma / LLaVA-style). Raises
    CliError when it cannot be loaded or has no image token."""
    from . import zoo

    if model_dir is None:
        if not os.path.exists(os.path.join(zoo.WEIGHTS_DIR, "model.safetensors")):
            raise CliError(f"the bundled weights are missing ({zoo.WEIGHTS_DIR}); train them with "
                           "`python -m dcam.zoo.train` or pass --model DIR")
        return zoo.load_default()
    if not os.path.isdir(model_dir):
        raise CliError(f"--model: {model_dir!r} is not a directory")
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(cfg_path):
        raise CliError(f"--model: no config.json in {model_dir!r}")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise CliError(f"--model: cannot read {cfg_path}: {exc}") from exc
    if cfg.get("model_type") == zoo.ShapesDMLLMConfig.model_type:
        return zoo.load_pretrained(model_dir)
    text_cfg = cfg.get("text_config") or {}
    if cfg.get("image_token_id", cfg.get("image_token_index", text_cfg.get("image_token_id"))) is None:
        raise CliError(f"--model: the model in {model_dir!r} ({cfg.get('model_type', '?')}) has no image token; "
                       "it cannot be explained")
    import transformers

    try:
        if cfg.get("model_type") == "diffusion_gemma":
            model = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(model_dir, local_files_only=True)
        else:
            model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
        processor = transformers.AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"--model: cannot load {model_dir!r}: {str(exc).splitlines()[0]}") from exc
    return model.eval(), processor


def _parse_tokens(spec: Optional[str]):
    if spec is None or spec.strip() in ("", "all"):
        return "all"
    items = [t for t in spec.replace(",", " ").split() if t]
    return [int(t) if t.lstrip("-").isdigit() else t for t in items]


def cam_config(model, processor, settings: Optional[Sequence[str]]):
    """The model's default CamConfig with ``--cam name=value`` settings applied
    (None when there are none: the explainer then uses the model's default)."""
    if not settings:
        return None
    from .adapters import auto_adapter

    try:
        return auto_adapter(model, processor).default_config().apply(settings)
    except ValueError as exc:
        raise CliError(f"--cam: {exc}") from exc


CAM_HELP = ("set a CamConfig field, e.g. --cam grad_relu=true --cam sicd=context (repeatable; applied on top of "
            "the model's default config)")


def _explainer(model, processor, args):
    from .explain import Explainer

    config = cam_config(model, processor, args.cam)
    try:
        return Explainer(model, processor, layer=args.layer, method=args.method, config=config,
                         chunk_size=args.chunk_size)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _write(e, out_dir: str, quiet: bool) -> dict:
    _log(f"writing {len(e)} overlays, the contact sheet and the maps to {out_dir}", quiet)
    try:
        return e.save(out_dir, alpha=0.5)
    except OSError as exc:
        raise CliError(f"--out: cannot write to {out_dir!r}: {exc}") from exc


def _report(e, paths: dict, extra: Optional[Dict[str, str]] = None) -> None:
    print(f"response: {e.response}")
    for k, v in (extra or {}).items():
        print(f"{k}: {v}")
    print(f"explained {len(e)} tokens with {e.method} (probe {e.probe}, layer {e.layer}, {e.steps} steps): "
          f"{' '.join(e.tokens)}")
    print(f"contact sheet: {paths['contact_sheet']}")
    print(f"overlays: {os.path.dirname(paths['contact_sheet'])}/NN_<word>.png ({len(paths['overlays'])} files)")
    print(f"maps: {paths['maps']}")
    print(f"meta: {paths['meta']}")


# --------------------------------------------------------------------------- handlers

def run_demo(args) -> int:
    from .data import generate_sample, split_seed

    if args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    _log("loading the bundled model", args.quiet)
    model, processor = load_model(getattr(args, "model", None))
    exp = _explainer(model, processor, args)
    size = int(getattr(model.config, "image_size", 64))
    sample = generate_sample(split_seed("test", args.seed), image_size=size)
    _log(f"captioning test image {args.seed} and explaining every word", args.quiet)
    t0 = time.perf_counter()
    try:
        e = exp.explain(sample.image, steps=args.steps, probe=args.probe)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    _log(f"done in {time.perf_counter() - t0:.1f} s", args.quiet)
    paths = _write(e, args.out, args.quiet)
    _report(e, paths, {"reference caption": sample.caption})
    return 0


def run_explain(args) -> int:
    from .adapters import load_image

    try:
        image = load_image(args.image)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    _log("loading the model", args.quiet)
    model, processor = load_model(args.model)
    exp = _explainer(model, processor, args)
    targets = _parse_tokens(args.tokens)
    t0 = time.perf_counter()
    _log("generating the response and explaining it" if args.response is None else "explaining the response",
         args.quiet)
    try:
        e = exp.explain(image, prompt=args.prompt, response=args.response, targets=targets, probe=args.probe,
                        target_score=args.target_score, steps=args.steps)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    _log(f"done in {time.perf_counter() - t0:.1f} s", args.quiet)
    paths = _write(e, args.out, args.quiet)
    _report(e, paths)
    return 0


def run(args) -> int:
    """Entry point of the subcommands registered here (``args.explain_command``)."""
    handlers = {"demo": run_demo, "explain": run_explain, "grounding": run_grounding}
    return int(handlers[args.explain_command](args) or 0)


def _common(p: argparse.ArgumentParser) -> None:
    from .explain import METHODS

    p.add_argument("--method", default="diffusion-cam", choices=sorted(METHODS), help="map method")
    p.add_argument("--probe", default=None, choices=["full", "masked", "remask"],
                   help="probe mode (default: the model's default)")
    p.add_argument("--layer", type=int, default=None, help="block to hook (default: the model's default)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps for generation")
    p.add_argument("--chunk-size", type=int, default=16, help="targets per batched backward")
    p.add_argument("--cam", action="append", default=None, metavar="NAME=VALUE", help=CAM_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def add_subparsers(subparsers) -> None:
    """Register ``demo`` and ``explain`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("demo", help="caption a generated shapes image and explain every word",
                              description="Generate a grounded-shapes test image, let the bundled model caption "
                                          "it, explain every word and write overlays and a contact sheet.")
    p.add_argument("--out", default="dcam_demo", help="output directory (default: dcam_demo)")
    p.add_argument("--seed", type=int, default=0, help="index of the test image (default 0)")
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    _common(p)
    p.set_defaults(run=run, explain_command="demo")

    p = subparsers.add_parser("explain", help="explain a model's words on an image",
                              description="Explain every word (or --tokens) the model writes about IMAGE.")
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("--prompt", default=None, help="prompt text (default: the model's default prompt)")
    p.add_argument("--response", default=None, help="explain this response instead of generating one")
    p.add_argument("--model", default=None, metavar="DIR", help="model directory (default: the bundled model)")
    p.add_argument("--tokens", default=None, metavar="WORDS",
                   help="words (or response indices) to explain, comma/space separated (default: all)")
    p.add_argument("--target-score", default=None, choices=["logit", "contrastive"])
    p.add_argument("--out", default="dcam_explain", help="output directory (default: dcam_explain)")
    _common(p)
    p.set_defaults(run=run, explain_command="explain")


def add_grounding_subparser(subparsers) -> None:
    """Register ``grounding`` (the grounding report)."""
    p = subparsers.add_parser("grounding", help="grounding rate of the maps on shapes test images",
                              description=grounding_report.__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50, help="images with >= 2 objects (default 50)")
    p.add_argument("--probes", default="full,masked,remask")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="grounded-shapes split the images come from (default test)")
    p.add_argument("--layers", default=None, help="comma-separated blocks (default: every block but the last)")
    p.add_argument("--method", default="diffusion-cam")
    p.add_argument("--target-score", default="logit", choices=["logit", "contrastive"])
    p.add_argument("--model", default=None, metavar="DIR")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--cam", action="append", default=None, metavar="NAME=VALUE", help=CAM_HELP)
    p.add_argument("--variants", action="store_true",
                   help="also score diagnostic maps from the same probe (raw pooled map, gradient norm, LayerCAM)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on a small shared machine; default: torch's)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run, explain_command="grounding")


# --------------------------------------------------------------------------- grounding

def object_word_success(maps, words_idx: Sequence[int], word_labels: Sequence[int], mask: np.ndarray) -> List[bool]:
    """For each object word ``words_idx[k]`` (a caption word index), whether its
    map ``maps[k]`` (bilinearly upsampled to the mask) puts more mass on the
    named object than on every other object."""
    from .overlay import upsample_map

    labels = [int(l) for l in np.unique(mask) if l > 0]
    out = []
    for k, i in enumerate(words_idx):
        hm = upsample_map(maps[k], mask.shape)
        mass = {l: float(hm[mask == l].sum()) for l in labels}
        own = mass[int(word_labels[i])]
        out.append(all(own > v for l, v in mass.items() if l != int(word_labels[i])))
    return out


def grounding_samples(n: int = 50, split: str = "test", min_objects: int = 2, image_size: int = 64):
    """The first ``n`` samples of ``split`` with at least ``min_objects`` objects."""
    from .data import ShapesDataset

    ds = ShapesDataset(split, size=100 * n + 100, image_size=image_size, cache=False)
    out = []
    for s in ds:
        if len(s.objects) >= min_objects:
            out.append(s)
            if len(out) == n:
                break
    return out


def grounding_report(model=None, processor=None, n: int = 50, probes: Sequence[str] = ("full", "masked", "remask"),
                     layers: Optional[Sequence[int]] = None, method: str = "diffusion-cam",
                     target_score: str = "logit", config=None, progress: bool = True,
                     variants: bool = False, split: str = "test") -> dict:
    """Grounding rate of the maps on grounded-shapes test images.

    On the first ``n`` images of ``split`` (test by default; validation: "val")
    with two or more objects, the reference
    caption is explained (teacher-forced, so every word has a ground-truth
    object); for every object word (colour or shape) the map is bilinearly
    upsampled to the label mask and counts as grounded when its mass on the
    named object exceeds its mass on every other object of the image. Returns
    ``{"rates": {probe: {layer: rate}}, "rates_by_kind": {probe: {layer:
    {"colour": rate, "shape": rate}}}, "chance": rate of a uniform map,
    "class_detector": rate of :func:`class_detector_maps`,
    "n_images", "n_words"}``.

    variants: also score, from the same probe, maps that are not the
    method's (diagnostics, ``"variant_rates": {name: {probe: {layer: rate}}}``):
    ``"raw"`` (the pooled map of SPEC section 1 before refinement),
    ``"grad-norm"`` (``||G_t[n]||``, the per-token gradient norm) and
    ``"layercam"`` (``mean_d relu(relu(G_t[n, d]) * A[n, d])``, element-wise
    weighting instead of the per-channel mean over tokens).
    """
    from .data import COLOURS
    from .explain import Explainer

    if model is None:
        model, processor = load_model(None)
    size = int(getattr(model.config, "image_size", 64))
    samples = grounding_samples(n, split=split, image_size=size)
    exp0 = Explainer(model, processor, method=method, config=config)
    nblocks = len(exp0.adapter.blocks())
    layers = list(range(nblocks - 1)) if layers is None else [exp0.adapter.resolve_layer(l) for l in layers]
    rates: Dict[str, Dict[int, float]] = {}
    variant_rates: Dict[str, Dict[str, Dict[int, float]]] = {}
    chance_hits, class_hits, n_words = 0, 0, 0
    n_kind = {"colour": 0, "shape": 0}
    by_kind: Dict[str, Dict[int, Dict[str, float]]] = {}
    for s in samples:
        idx = [i for i, l in enumerate(s.word_labels) if l > 0]
        n_words += len(idx)
        for i in idx:
            n_kind["colour" if s.words[i] in COLOURS else "shape"] += 1
        uniform = np.ones((len(idx), 2, 2), np.float32)
        # a uniform map's mass is the object's area: ties (equal areas) count as failures
        chance_hits += sum(object_word_success(uniform, idx, s.word_labels, s.mask))
        class_hits += sum(object_word_success(class_detector_maps(s, idx), idx, s.word_labels, s.mask))
    total = len(probes) * len(layers)
    try:
        from tqdm import tqdm

        bar = tqdm(total=total * len(samples), desc="grounding", file=sys.stderr, disable=not progress)
    except ImportError:  # pragma: no cover
        bar = None
    for probe in probes:
        rates[probe] = {}
        for layer in layers:
            exp = Explainer(model, processor, layer=layer, method=method, config=config)
            hits, kind_hits = 0, {"colour": 0, "shape": 0}
            v_hits: Dict[str, int] = {}
            for s in samples:
                idx = [i for i, l in enumerate(s.word_labels) if l > 0]
                e = exp.explain(s.image, response=s.caption, targets=idx, probe=probe, target_score=target_score)
                ok = object_word_success(e.maps, idx, s.word_labels, s.mask)
                hits += sum(ok)
                if variants:
                    for name, vm in _variant_maps(exp, e, s, idx, probe, target_score).items():
                        v_hits[name] = v_hits.get(name, 0) + sum(object_word_success(vm, idx, s.word_labels, s.mask))
                for i, good in zip(idx, ok):
                    kind_hits["colour" if s.words[i] in COLOURS else "shape"] += int(good)
                if bar is not None:
                    bar.update(1)
            rates[probe][layer] = hits / max(1, n_words)
            by_kind.setdefault(probe, {})[layer] = {k: v / max(1, n_kind[k]) for k, v in kind_hits.items()}
            for name, v in v_hits.items():
                variant_rates.setdefault(name, {}).setdefault(probe, {})[layer] = v / max(1, n_words)
    if bar is not None:
        bar.close()
    out = {"rates": rates, "rates_by_kind": by_kind, "chance": chance_hits / max(1, n_words),
           "class_detector": class_hits / max(1, n_words),
           "n_images": len(samples), "n_words": n_words, "split": split, "method": method, "target_score": target_score,
           "default_layer": exp0.layer, "config_changes": config_changes(exp0.config)}
    if variants:
        out["variant_rates"] = variant_rates
    return out


def class_detector_maps(sample, words_idx: Sequence[int]) -> np.ndarray:
    """For each object word, the map of a perfect class detector: 1 on every
    object of the named colour (or shape), 0 elsewhere. What a map that
    finds "what the word reads" but not which instance scores at best (same-class
    objects tie on density and the larger one wins on mass)."""
    from .data import COLOURS

    out = np.zeros((len(words_idx),) + sample.mask.shape, np.float32)
    for k, i in enumerate(words_idx):
        key = "colour" if sample.words[i] in COLOURS else "shape"
        for j, obj in enumerate(sample.objects):
            if obj[key] == sample.words[i]:
                out[k][sample.mask == j + 1] = 1.0
    return out


def _variant_maps(exp, e, s, idx, probe, target_score) -> dict:
    """Diagnostic maps of :func:`grounding_report` (``variants=True``)."""
    from .adapters.probing import probe as run_probe

    a = exp.adapter
    prep = a.prepare(s.image, None, e.response_ids)
    pos = [prep.response_start + i for i in idx]
    r = run_probe(a, prep, pos, [prep.response_ids[i] for i in idx], exp.layer, probe=probe,
                  target_score=target_score, chunk_size=exp.chunk_size)
    A, G = r.per_target_acts().float(), r.per_target_grads().float()  # [T, N, D]
    T, (h, w) = len(idx), prep.grid
    out = {"grad-norm": G.norm(dim=2), "layercam": (G.clamp(min=0) * A).clamp(min=0).mean(2)}
    out = {k: (v / (v.amax(1, keepdim=True) + 1e-12)).reshape(T, h, w) for k, v in out.items()}
    if e.raw_maps is not None:
        out["raw"] = e.raw_maps
    return out


def config_changes(config) -> dict:
    """The fields of ``config`` that differ from ``CamConfig()``'s."""
    from dataclasses import asdict

    from .config import CamConfig

    base = asdict(CamConfig())
    return {k: v for k, v in asdict(config).items() if v != base[k]}


def format_grounding(rep: dict) -> str:
    layers = sorted({l for r in rep["rates"].values() for l in r})
    changes = ", ".join(f"{k}={v}" for k, v in rep.get("config_changes", {}).items()) or "none"
    lines = [f"grounding rate ({rep['method']}, {rep['target_score']} score) on {rep['n_images']} "
             f"{rep.get('split', 'test')}-split images, "
             f"{rep['n_words']} object words; uniform-map chance {rep['chance']:.3f}",
             f"config: CamConfig() with {changes}",
             f"a perfect class detector (every object of the named colour/shape) scores "
             f"{rep.get('class_detector', float('nan')):.3f}",
             "probe     " + "".join(f"  layer {l}" + ("*" if l == rep.get("default_layer") else " ") for l in layers)]
    for probe, r in rep["rates"].items():
        lines.append(f"{probe:<10}" + "".join(f"  {r[l]:7.3f} " for l in layers))
    lines.append("by word kind (colour / shape):")
    for probe, r in rep.get("rates_by_kind", {}).items():
        lines.append(f"{probe:<10}" + "".join(f"  {r[l]['colour']:.2f}/{r[l]['shape']:.2f}" for l in layers))
    for name, vr in rep.get("variant_rates", {}).items():
        lines.append(f"diagnostic map {name!r} (same probe):")
        for probe, r in vr.items():
            lines.append(f"{probe:<10}" + "".join(f"  {r[l]:7.3f} " for l in layers))
    return "\n".join(lines)


def run_grounding(args) -> int:
    if args.n < 1:
        raise CliError(f"--n must be >= 1, got {args.n}")
    probes = [p for p in args.probes.split(",") if p]
    bad = [p for p in probes if p not in ("full", "masked", "remask")]
    if bad:
        raise CliError(f"--probes: unknown probe(s) {bad}")
    layers = [int(l) for l in args.layers.split(",")] if args.layers else None
    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    model, processor = load_model(args.model)
    try:
        rep = grounding_report(model, processor, n=args.n, probes=probes, layers=layers, method=args.method,
                               target_score=args.target_score, progress=not args.quiet, variants=args.variants,
                               config=cam_config(model, processor, args.cam), split=args.split)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(format_grounding(rep))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
    return 0


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dcam.cli_explain")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_subparsers(sub)
    add_grounding_subparser(sub)
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` and run; user errors -> one line on stderr, exit code 2."""
    return run_parser(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
