"""``dcam eval``: the paper's tables on your model and data, in one command.

Data: --dataset shapes (the bundled grounded-shapes set) or a folder, whose
layout is detected: anno.json means the TAM/GranDf layout, an instances*.json
(in the folder or its annotations/) the COCO layout; the captions must be in
the model's vocabulary. Objects that overlap (COCO instances, a TAM "masks"
list) are each scored against their own whole mask. Writes the comparison
table (and with --ablation, --sweep, --faithfulness those tables; each header
names the Diffusion-CAM config as its changes from CamConfig()), charts,
example sheets and report.json into --out, and prints the comparison table. --profile FILE: a torch.profiler
trace of a few records of the comparison (--profile-records)."""
from __future__ import annotations

import os
import warnings

from ..errors import InputError
from . import common
from .profile import add_profile_option, add_window_option


def _fill(text: str):
    from ..eval.faithfulness import check_fill

    if text == "mean":
        return "mean"
    try:
        return check_fill([float(v) for v in text.split(",")])
    except (InputError, ValueError):
        raise InputError(f"--faith-fill must be 'mean' or R,G,B in 0..255, got {text!r}") from None


#: the sweep and faithfulness tables' settings when not given
TABLE_DEFAULTS = {"sweep_n": 50, "faith_n": 50, "faith_steps": 10, "faith_fill": "mean"}


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="reproduce the comparison / ablation tables on a grounded data set",
                       description=__doc__)
    p.add_argument("--dataset", default="shapes", help="'shapes' (bundled) or a COCO / TAM data folder")
    p.add_argument("--split", default=None,
                   help="split (shapes: train/val/test; COCO: picks instances_<split>*, which must be there; default: "
                        "shapes' test, a COCO folder's test split if it has one, else its val split; one that begins "
                        "several files' names is refused)")
    p.add_argument("--n", type=common.positive_int, default=200, help="records to evaluate")
    p.add_argument("--methods", default="all",
                   help=f"'all' or a comma list of {', '.join(common.METHOD_NAMES)}")
    p.add_argument("--ablation", action="store_true", help="also the Diffusion-CAM module ablation table")
    p.add_argument("--faithfulness", action="store_true", help="also deletion/insertion curves")
    p.add_argument("--probe", default=None, choices=common.PROBE_NAMES,
                   help="probe mode shared by every method (default: the model's)")
    p.add_argument("--layer", type=int, default=None,
                   help="block shared by every gradient method (default: the model's default block)")
    p.add_argument("--target-score", default=None, choices=common.TARGET_SCORE_NAMES,
                   help="target score shared by every gradient method (default: logit; tam has none)")
    p.add_argument("--out", default="eval_out", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder whole")
    p.add_argument("--sweep", action="store_true", help="Diffusion-CAM table over the model's probe modes and layers")
    p.add_argument("--sweep-probes", type=common.name_list(common.PROBE_NAMES), default=None,
                   help="comma list of probe modes for the sweep table (default: every mode the model has)")
    p.add_argument("--sweep-layers", type=common.int_list, default=None,
                   help="comma list of layers for the sweep (default: up to 6 blocks spread over all but the last)")
    # default None: given without its table they are refused (run), else TABLE_DEFAULTS fills them
    d = TABLE_DEFAULTS
    p.add_argument("--sweep-n", type=common.positive_int, default=None,
                   help=f"records used by the sweep (default: {d['sweep_n']})")
    p.add_argument("--faith-n", type=common.positive_int, default=None,
                   help=f"records used by the faithfulness curves (default: {d['faith_n']})")
    p.add_argument("--faith-steps", type=common.int_at_least(2), default=None,
                   help=f"points per deletion/insertion curve minus one, >= 2 (default: {d['faith_steps']})")
    p.add_argument("--faith-fill", default=None,
                   help=f"'mean' (the image's mean colour) or R,G,B for blanked cells (default: {d['faith_fill']})")
    p.add_argument("--examples", type=common.non_negative_int, default=4, help="example sheets to write")
    p.add_argument("--batch-size", type=common.positive_int, default=16, help="perturbed images per forward")
    # (the smallest side dcam.zoo.data.generate_sample draws a scene on; checked there too, for the Python API)
    p.add_argument("--image-size", type=common.int_at_least(32), default=None,
                   help="side of the generated shapes images in pixels, at least 32 (default: 64)")
    p.add_argument("--seed", type=common.non_negative_int, default=0, help="seed of the random faithfulness baseline")
    p.add_argument("--cam", action="append", default=None, metavar="NAME=VALUE", help=common.cam_help())
    add_profile_option(p, "--profile-records records of the comparison (each explained by every method, with "
                          "--ablation refined by every row too; not the sweep nor the faithfulness curves)")
    add_window_option(p, "--profile-records", "records of the comparison",
                      "each method's first explanation and one-time checks", "--n 1",
                      "Each adds about 10 MB of uncompressed trace with the bundled toy model and the 4 methods (all "
                      "200 of --n's default: 2 GB)")
    common.add_model_options(p)
    common.add_family_option(p)
    common.add_run_options(p)
    p.set_defaults(run=run, command="eval")


def run(args) -> int:
    from ..output import check_output_folder, refuse_inputs_inside
    from ..render.fonts import check_font_option
    from .profile import BatchWindow, TraceWriter, check_trace_path, window_size

    target = check_output_folder(args.out, args.overwrite)
    check_font_option()  # (a DCAM_FONT that is not a font: said before the evaluation, not after it)
    # --overwrite replaces --out whole: never over the data set or the model it reads
    inputs = [("the data set", None if args.dataset == "shapes" else args.dataset),
              ("the model", common.model_location(args))]
    refuse_inputs_inside(target, inputs)
    trace = check_trace_path(args.profile, args.out, "which is written whole", inputs, args.overwrite)
    records = window_size(args.profile_records, "--profile-records", "records", args.profile)
    # options of a table that was not asked for would be ignored without a word
    for option, value, table, wanted in (
            ("--faith-n", args.faith_n, "--faithfulness", args.faithfulness),
            ("--faith-steps", args.faith_steps, "--faithfulness", args.faithfulness),
            ("--faith-fill", args.faith_fill, "--faithfulness", args.faithfulness),
            ("--sweep-n", args.sweep_n, "--sweep", args.sweep or args.sweep_probes or args.sweep_layers)):
        if value is not None and not wanted:
            raise InputError(f"{option}: it sets the {table} table, which was not asked for (add {table})")
    for option, value in (("--faith-n", args.faith_n), ("--sweep-n", args.sweep_n)):
        if value is not None and args.n is not None and value > args.n:  # (cut to --n without a word)
            raise InputError(f"{option}: {value} records asked for, but --n evaluates {args.n} (the table uses "
                             "records of the evaluation); lower it or raise --n")
    for name, default in TABLE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.dataset != "shapes" and not os.path.isdir(args.dataset):
        raise InputError(f"--dataset: {args.dataset!r} is neither 'shapes' nor a folder")
    _refuse_what_the_data_set_ignores(args)
    fill = _fill(args.faith_fill)
    common.apply_run_options(args)
    model, processor = common.load_model_for(args)
    common.check_family(model, processor, args.family)
    config = common.cam_config_for(model, processor, args.cam, args.family)
    # the records' trace is exported as its window closes, before --out is written, and put in place after it:
    # a failure or Ctrl-C in between leaves no trace nor temporary file (.profile.BatchWindow)
    with TraceWriter(trace, args.quiet, deferred=True) as profile:
        window = BatchWindow(profile, records, ("record", "records"), export=True)
        try:
            report, table = _evaluate(args, model, processor, config, fill, target, window if trace else None)
        except InputError as exc:
            raise common.argument_error(exc, EVAL_OPTIONS) from None
        profile.commit_window(window, f"the tables were written to --out {args.out!r}")
    print(table)
    if report.get("skipped"):
        print(f"{len(report['skipped'])} record(s) skipped; reasons in {os.path.join(args.out, 'report.json')}")
    print(f"tables, charts and examples written to {args.out}")
    return 0


def _refuse_what_the_data_set_ignores(args) -> None:
    """--image-size sizes only the generated shapes, --split picks nothing in a TAM folder: given
    for another data set they were taken and ignored. Then their defaults are filled in."""
    if args.image_size is not None and args.dataset != "shapes":
        raise InputError("--image-size: only the generated shapes data set has a size to choose (a data folder's "
                         "images keep theirs); leave --image-size out")
    if args.split is not None and args.dataset != "shapes":
        from ..eval.datasets import detect_layout

        try:
            tam = detect_layout(args.dataset, args.split) == "tam"
        except InputError:  # not a data folder: evaluate() names what is wrong with it
            tam = False
        if tam:
            raise InputError("--split: a TAM data folder has no splits (only shapes and COCO do); leave --split out")
    args.image_size = 64 if args.image_size is None else args.image_size  # (--split None: the data set's default)


#: evaluate()'s arguments as dcam eval's options (:func:`common.argument_error`)
EVAL_OPTIONS = {"dataset": "--dataset", "methods": "--methods", "split": "--split", "image_size": "--image-size",
                "layer": "--layer", "target_score": "--target-score", "probe": "--probe",
                "sweep_layers": "--sweep-layers", "config": "--cam", "out_dir": "--out"}


def _evaluate(args, model, processor, config, fill, target, on_record):
    from ..eval import evaluate

    # evaluate() writes --out whole or not at all itself (a folder of the CLI's own around it was handed to it
    # as out_dir: a failed write named out_dir and that hidden temporary folder, not --out)
    with warnings.catch_warnings():
        if args.quiet:
            warnings.simplefilter("ignore")
        report = evaluate(model, processor, dataset=args.dataset, methods=args.methods, n=args.n,
                          ablation=args.ablation, faithfulness=args.faithfulness, out_dir=target,
                          overwrite=args.overwrite, layer=args.layer,
                          probe=args.probe, target_score=args.target_score, split=args.split, sweep=args.sweep,
                          sweep_probes=args.sweep_probes, sweep_layers=args.sweep_layers, sweep_n=args.sweep_n,
                          faith_n=args.faith_n, faith_steps=args.faith_steps, faith_fill=fill,
                          batch_size=args.batch_size, n_examples=args.examples, seed=args.seed,
                          image_size=args.image_size, verbose=not args.quiet, config=config,
                          family=args.family, on_record=on_record,
                          command_line=getattr(args, "command_line", None))
    with open(os.path.join(target, "main_table.md")) as f:
        table = f.read()
    return report, table
