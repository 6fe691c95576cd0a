"""``dcam grounding``: the grounding rate of the maps on grounded-shapes images.

For every object word (colour or shape) of the reference caption of the first
--n images with two or more objects, the word's map counts as grounded when
its mass on the named object exceeds its mass on every other object. Printed
per probe mode and layer, next to a uniform map (chance) and a perfect class
detector. --profile FILE: a torch.profiler trace of a few of the images
(--profile-images)."""
from __future__ import annotations

import json
import os

from . import common
from .profile import add_profile_option, add_window_option


def add_parser(sub) -> None:
    p = sub.add_parser("grounding", help="grounding rate of the maps on grounded-shapes images", description=__doc__)
    p.add_argument("--n", type=common.positive_int, default=50,
                   help="images with at least 2 objects; the time grows in proportion: each image is generated "
                        "(a few ms) and explained once per probe mode and layer (9 times for the bundled model), "
                        "about 0.05 s each on one CPU thread, so --n 100 takes about a minute and --n 10000 "
                        "over an hour; the memory does not grow with --n (one image at a time)")
    p.add_argument("--probes", type=common.name_list(common.PROBE_NAMES), default=None,
                   help="comma-separated probe modes (default: every mode the method takes)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="grounded-shapes split the images come from")
    p.add_argument("--layers", type=common.int_list, default=None,
                   help="comma-separated blocks (default: every block but the last; tam hooks none)")
    p.add_argument("--method", default="diffusion-cam", choices=common.METHOD_NAMES, help="map method")
    p.add_argument("--target-score", default=None, choices=common.TARGET_SCORE_NAMES,
                   help="score whose gradient is pooled (default: the method's, logit; tam has none)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write the results as JSON to FILE (default: no JSON file; an existing FILE is "
                        "refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json or --profile FILE")
    p.add_argument("--cam", action="append", default=None, metavar="NAME=VALUE", help=common.cam_help())
    p.add_argument("--variants", action="store_true",
                   help="also score diagnostic maps from the same probe (raw pooled map, gradient norm, LayerCAM)")
    add_profile_option(p, "--profile-images images (each explained once per probe mode and layer)")
    add_window_option(p, "--profile-images", "images", "each setting's first explanation and one-time checks",
                      "--n 1", "Each adds about 14 MB of uncompressed trace with the bundled toy model's 9 "
                      "settings (all 50 of --n's default: 0.7 GB)")
    common.add_model_options(p)
    common.add_run_options(p)
    p.set_defaults(run=run, command="grounding")


def run(args) -> int:
    from ..errors import InputError
    from ..output import check_output_file, write_text_atomic
    from .profile import BatchWindow, TraceWriter, window_size

    inputs = [("the model", common.model_location(args))]
    json_path = check_output_file(args.json, "--json", inputs, args.overwrite)
    trace = check_output_file(args.profile, "--profile", inputs, args.overwrite)
    if trace is not None and json_path is not None and os.path.realpath(trace) == os.path.realpath(json_path):
        raise InputError(f"--profile: {args.profile!r} is the --json file too; choose another file for one of them")
    images = window_size(args.profile_images, "--profile-images", "images", args.profile)
    # (imported after the checks: it loads the evaluation stack, seconds on a busy machine, and a refused
    # --json answered only after them)
    from ..eval.grounding import format_grounding, grounding_report

    common.apply_run_options(args)
    model, processor = common.load_model_for(args)
    config = common.cam_config_for(model, processor, args.cam)
    # the images' trace is exported as its window closes and put in place once the table is printed and --json
    # written: a failure or Ctrl-C before leaves no trace nor temporary file (.profile.BatchWindow)
    with TraceWriter(trace, args.quiet, deferred=True) as profile:
        window = BatchWindow(profile, images, ("image", "images"), export=True)
        try:
            rep = grounding_report(model, processor, n=args.n, probes=args.probes, layers=args.layers,
                                   method=args.method, target_score=args.target_score, progress=not args.quiet,
                                   variants=args.variants, config=config, split=args.split,
                                   on_image=window if trace else None)
        except InputError as exc:  # named by its option, as explain and eval name theirs ("config: ..." was printed)
            raise common.argument_error(exc, {"layer": "--layers", "layers": "--layers", "config": "--cam",
                                              "target_score": "--target-score", "probe": "--probes",
                                              "method": "--method"}) from None
        print(format_grounding(rep))
        if json_path:
            write_text_atomic(json_path, json.dumps(rep, indent=2), "--json")
        profile.commit_window(window, "the table was printed" + (f" and written to --json {args.json!r}"
                                                                 if json_path else ""))
    return 0
