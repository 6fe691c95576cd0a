"""``dcam eval``: the paper's tables on your model and data, in one command.

    dcam eval [--dataset shapes|DIR] [--split test] [--n 200] [--methods all]
              [--ablation] [--faithfulness] [--probe MODE] [--layer N]
              [--target-score logit|contrastive] [--model DIR] [--out DIR]
              [--sweep | --sweep-probes P,Q --sweep-layers 0,1] [--sweep-n 50]
              [--faith-n 50] [--faith-steps 10] [--faith-fill mean|R,G,B]
              [--examples 4] [--threads N] [--quiet]

DIR data sets are auto-detected: ``anno.json`` -> TAM/GranDf layout, an
``instances*.json`` (in DIR or DIR/annotations) -> COCO layout (see
:mod:`dcam.datasets`). The default model is the bundled one. Writes the tables
(Markdown + JSON), charts, example sheets and ``report.json`` to ``--out``
(default ``eval_out``) and prints the main table.

``add_subparsers(subparsers)`` registers ``eval``; ``run(args) -> int``.
User errors are printed on one line on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional

from .cli import CliError, call_handler  # one CliError for every subcommand


def _int_list(s: Optional[str], name: str) -> Optional[List[int]]:
    if s is None:
        return None
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"{name} must be a comma-separated list of ints, got {s!r}")


def _fill(s: str):
    if s == "mean":
        return "mean"
    try:
        vals = [float(v) for v in s.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 3 or not all(0 <= v <= 255 for v in vals):
        raise CliError(f"--faith-fill must be 'mean' or R,G,B in 0..255, got {s!r}")
    return tuple(vals)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli_explain import CAM_HELP

    p.add_argument("--dataset", default="shapes", help="'shapes' (bundled) or a COCO / TAM data folder")
    p.add_argument("--split", default="test", help="split (shapes: train/val/test; COCO: picks instances_<split>*)")
    p.add_argument("--n", type=int, default=200, help="number of records to evaluate (default 200)")
    p.add_argument("--methods", default="all", help="'all' or a comma list of diffusion-cam,grad-cam,llava-cam,tam")
    p.add_argument("--ablation", action="store_true", help="also the Diffusion-CAM module ablation table")
    p.add_argument("--faithfulness", action="store_true", help="also deletion/insertion curves")
    p.add_argument("--probe", default=None, help="probe mode shared by every method (full, masked, remask)")
    p.add_argument("--layer", type=int, default=None, help="block shared by every gradient method")
    p.add_argument("--target-score", default="logit", choices=("logit", "contrastive"),
                   help="target score shared by every gradient method (default logit)")
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--out", default="eval_out", help="output folder (default eval_out)")
    p.add_argument("--sweep", action="store_true",
                   help="Diffusion-CAM table over the model's probe modes and a few layers")
    p.add_argument("--sweep-probes", default=None, help="comma list of probe modes for the sweep table")
    p.add_argument("--sweep-layers", default=None, help="comma list of layers for the sweep table")
    p.add_argument("--sweep-n", type=int, default=50, help="records used by the sweep (default 50)")
    p.add_argument("--faith-n", type=int, default=50, help="records used by the faithfulness curves (default 50)")
    p.add_argument("--faith-steps", type=int, default=10, help="points per deletion/insertion curve - 1")
    p.add_argument("--faith-fill", default="mean", help="'mean' (image mean colour) or R,G,B for blanked cells")
    p.add_argument("--examples", type=int, default=4, help="example sheets to write (default 4)")
    p.add_argument("--batch-size", type=int, default=16, help="perturbed images per forward (default 16)")
    p.add_argument("--image-size", type=int, default=64, help="shapes image size (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random faithfulness baseline")
    p.add_argument("--cam", action="append", default=None, metavar="NAME=VALUE", help=CAM_HELP)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def add_subparsers(subparsers) -> None:
    p = subparsers.add_parser("eval", help="reproduce the comparison / ablation tables on a grounded data set",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(run=run)


def _check(args) -> None:
    for name in ("n", "sweep_n", "faith_n", "batch_size"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.faith_steps < 2:
        raise CliError(f"--faith-steps must be >= 2, got {args.faith_steps}")
    if args.examples < 0:
        raise CliError(f"--examples must be >= 0, got {args.examples}")
    if args.dataset != "shapes" and not os.path.isdir(args.dataset):
        raise CliError(f"--dataset: {args.dataset!r} is neither 'shapes' nor a folder")


def _execute(args) -> int:
    import torch

    from .evaluate import evaluate

    _check(args)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    from .cli_explain import cam_config, load_model

    model, processor = load_model(args.model)
    config = cam_config(model, processor, args.cam)
    probes = [s.strip() for s in args.sweep_probes.split(",") if s.strip()] if args.sweep_probes else None
    with warnings.catch_warnings():
        if args.quiet:
            warnings.simplefilter("ignore")
        report = evaluate(model, processor, dataset=args.dataset, methods=args.methods, n=args.n,
                          ablation=args.ablation, faithfulness=args.faithfulness, out_dir=args.out,
                          layer=args.layer, probe=args.probe, target_score=args.target_score, split=args.split,
                          sweep=args.sweep, sweep_probes=probes,
                          sweep_layers=_int_list(args.sweep_layers, "--sweep-layers"), sweep_n=args.sweep_n,
                          faith_n=args.faith_n, faith_steps=args.faith_steps, faith_fill=_fill(args.faith_fill),
                          batch_size=args.batch_size, n_examples=args.examples, seed=args.seed,
                          image_size=args.image_size, verbose=not args.quiet, config=config)
    with open(os.path.join(args.out, "main_table.md")) as f:
        print(f.read())
    if report.get("skipped"):
        print(f"{len(report['skipped'])} record(s) skipped; reasons in {os.path.join(args.out, 'report.json')}")
    print(f"tables, charts and examples written to {args.out}")
    return 0


def run(args) -> int:
    """Handler of ``dcam eval``: 0 on success, 2 on a user error (one line on stderr)."""
    return call_handler("eval", _execute, args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dcam eval", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
