"""``dcam demo``: a generated grounded-shapes test image, captioned by the
bundled model, every word explained; overlays, contact sheet and maps written
to --out."""
from __future__ import annotations

import time

from . import common


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="caption a generated shapes image with the bundled model and explain every word",
                       description=__doc__)
    p.add_argument("--out", default="dcam_demo", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder whole")
    p.add_argument("--seed", type=common.non_negative_int, default=0, help="index of the generated test image")
    common.add_model_options(p, hidden=True)
    common.add_method_options(p)
    common.add_run_options(p)
    p.set_defaults(run=run, command="demo")


def run(args) -> int:
    from ..output import check_output_folder, refuse_inputs_inside
    from ..render.fonts import check_font_option
    from ..zoo.data import generate_sample, split_seed
    from .explain import report

    target = check_output_folder(args.out, args.overwrite)
    refuse_inputs_inside(target, [("the model", common.model_location(args))])
    check_font_option()  # (a DCAM_FONT that is not a font: said before the model runs, not after)
    common.apply_run_options(args)
    common.log("loading the bundled model", args.quiet)
    model, processor = common.load_model_for(args)
    exp = common.explainer_for(model, processor, args)
    sample = generate_sample(split_seed("test", args.seed), image_size=int(getattr(model.config, "image_size", 64)))
    common.log(f"captioning test image {args.seed} and explaining every word", args.quiet)
    t0 = time.perf_counter()
    e = exp.explain(sample.image, steps=args.steps, probe=args.probe)
    common.log(f"done in {time.perf_counter() - t0:.1f} s; writing {target}", args.quiet)
    common.save_explanation(e, target, args)
    print(f"reference caption: {sample.caption}")
    report(e, args.out)
    return 0
