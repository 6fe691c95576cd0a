"""dcam explain IMAGE [IMAGE | DIR ...]: explain every word (or --tokens) the model writes about each image.

One image file: its files go straight into --out. Several images (or a folder,
even of one image): each into its own subfolder of --out, one progress bar, a summary
line; an image that fails is reported and skipped, and the command exits with
code 2 at the end if any failed (after the others are done). --out is written
whole or not at all: a failure or Ctrl-C leaves the old folder untouched.

Accepted images: any file Pillow reads (PNG, JPEG, WebP, TIFF, BMP, GIF, ...);
EXIF orientation is applied, transparency composited on --background, 16-bit
and float images scaled by their range, animated images give their first
frame (each conversion is stated in meta.json's notes).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, List, Tuple

from ..batch_inputs import example_text
from ..errors import InputError, one_line
from ..targets import parse_target_text
from . import common
from .profile import add_profile_option

#: Largest --max-side: an 8192 x 8192 overlay (67 M pixels) stays under
#: Pillow's default decompression-bomb limit (89 M pixels).
MAX_SIDE_LIMIT = 8192

#: File extensions taken from a folder given as input.


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain a model's words on one or more images",
                       description=__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    p.add_argument("--prompt", default=None, help="prompt text (default: the model's default prompt)")
    p.add_argument("--response", default=None,
                   help="explain this response (case and trailing punctuation are normalised when the tokenizer "
                        "does not know them) (default: the model writes one)")
    p.add_argument("--tokens", default=None, metavar="WORDS",
                   help="words, phrases (\"red circle\": one map) or word numbers counted from 0 (negative from "
                        "the end) to explain, separated by commas (also \"，\" and \"、\"): --tokens \"red circle, 0\"; "
                        "in double quotes a word as written: --tokens '\"1,000\", \"3\"' (default: every word; every "
                        "token of split words: --granularity tokens)")
    p.add_argument("--target-score", default=None, choices=common.TARGET_SCORE_NAMES,
                   help="score whose gradient is pooled: the word's own logit, or the published contrastive sum "
                        "(default: logit; contrastive for llava-cam)")
    p.add_argument("--out", default="dcam_explain", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder whole")
    p.add_argument("--max-side", type=common.int_in(16, MAX_SIDE_LIMIT), default=1024,
                   help="longest side of the saved overlays in pixels, 16 to 8192 (every PNG then opens with "
                        "Pillow's default size limit; the maps keep full precision)")
    p.add_argument("--background", type=common.colour, default="white",
                   help="colour transparent pixels are composited on: white, black, #rrggbb or r,g,b")
    p.add_argument("--trajectory", action="store_true",
                   help="also map every word on every denoising step of the model's own generation "
                        "(trajectory.safetensors, trajectory/NN_word.gif, trajectory_sheet.png)")
    # (None: dcam.render.html.PAGE_TRAJECTORY_BYTES, as dcam view --trajectory-bytes)
    p.add_argument("--trajectory-bytes", type=common.positive_int, default=None, metavar="N",
                   help="with --trajectory: bytes of maps the trajectory may add to index.html; past them it shows "
                        "evenly spaced steps, the first and last among them, and says so (the saved files keep "
                        "every step) (default: 1048576, 1 MiB)")
    p.add_argument("--response-length", type=common.positive_int, default=None, metavar="N",
                   help="tokens the model generates when --response is not given (a diffusion model's canvas, a "
                        "causal model's longest answer; default: the model's own)")
    p.add_argument("--batch-size", type=common.positive_int, default=8,
                   help="images explained together when several are given (shared forwards and backwards: "
                        "padded to one length, in batches of similar padded work and at most --chunk-size)")
    common.add_batch_slack_option(p)
    add_profile_option(p)
    common.add_model_options(p)
    common.add_family_option(p)
    common.add_method_options(p)
    common.add_run_options(p)
    p.set_defaults(run=run, command="explain")


def parse_targets(spec):
    """``--tokens`` as the Explainer's ``targets`` (:func:`dcam.targets.parse_target_text`:
    "all", or comma-separated words, phrases and word numbers); not given: every word."""
    if spec is None:
        return "all"
    try:
        return parse_target_text(spec)
    except ValueError as exc:
        raise InputError(f"--tokens: {exc}") from None


def expand_inputs(paths: List[str]) -> List[str]:
    """Files as given; folders replaced by their image files (sorted, not recursive)."""
    from ..images import IMAGE_EXTENSIONS  # here: `dcam --help` imports neither numpy nor PIL

    out: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            try:
                names = os.listdir(p)
            except OSError as exc:  # (an unreadable folder was a PermissionError traceback)
                raise InputError(f"IMAGE: cannot read the folder {p!r} ({exc.strerror or exc})") from None
            found = sorted(os.path.join(p, f) for f in names
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(p, f)))
            if not found:
                raise InputError(f"IMAGE: the folder {p!r} holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        else:
            out.append(p)
    return out


#: names in --out beside the subfolders
LISTING = "images.json"


def subfolder_names(paths: List[str]) -> List[str]:
    """One distinct subfolder name per input (the file's stem, numbered on clashes).
    A numbered name is never another input's stem ("a.png a.jpg a_2.png" gave two
    "a_2"), and no name is the listing's (an input "images.json.png")."""
    stems = [os.path.splitext(os.path.basename(p))[0] or "image" for p in paths]
    taken = {LISTING}
    names = []
    for i, stem in enumerate(stems):
        name, k = stem, 1
        # the first of a stem keeps it; a later one, or one a listing or a numbered name took, counts on
        while name in taken or (k > 1 and name in stems):
            k += 1
            name = f"{stem}_{k}"
        taken.add(name)
        names.append(name)
    return names


#: explain()'s arguments as dcam explain's options (:func:`common.argument_error`)
EXPLAIN_OPTIONS = {"targets": "--tokens", "steps": "--steps", "response": "--response", "probe": "--probe",
                   "prompt": "--prompt", "image": "IMAGE", "trajectory": "--trajectory", "view": "--view",
                   "memory_budget": "--memory-budget", "target_score": "--target-score", "model": "--model",
                   "response_length": "--response-length"}


def _request(args, background) -> dict:
    """What one image's explanation is asked for, batched or not (the batch once left --prompt out)."""
    return dict(targets=args.targets, probe=args.probe, target_score=args.target_score, steps=args.steps,
                response_length=args.response_length, background=background)


def _explain_one(exp, path: str, args, background):
    try:
        return exp.explain(path, prompt=args.prompt, response=args.response, trajectory=args.trajectory,
                           **_request(args, background))
    except InputError as exc:
        raise common.argument_error(exc, EXPLAIN_OPTIONS) from None


def _explain_some(exp, paths: List[str], args, background) -> List[Tuple[str, object, str]]:
    """(path, explanation or None, error or "") per image: one explain_batch
    (batched forwards), image by image when the batch refuses something."""
    if len(paths) > 1 and not args.trajectory:
        try:  # (a bad image's error in its place, said as explaining it alone says it; the others kept)
            es = exp.explain_batch(paths, prompts=[args.prompt] * len(paths), responses=[args.response] * len(paths),
                                   errors="return", **_request(args, background))
            return [(p, None, _why(InputError(example_text(e, i)))) if isinstance(e, InputError) else (p, e, "")
                    for i, (p, e) in enumerate(zip(paths, es))]
        except InputError:
            pass  # refused as a batch (its shared --tokens, --memory-budget): find out which image, one at a time
    out = []
    for p in paths:
        try:
            out.append((p, _explain_one(exp, p, args, background), ""))
        except InputError as exc:
            out.append((p, None, _why(exc)))
    return out


def _why(exc: InputError) -> str:
    """An image's error as the list of failed images says it: in the CLI's words, without "IMAGE: "."""
    why = one_line(str(common.argument_error(exc, EXPLAIN_OPTIONS)))
    return why[len("IMAGE: "):] if why.startswith("IMAGE: ") else why


def report(e, folder: str) -> None:
    print(f"response: {e.response}")
    for note in e.notes:
        print(f"note: {note}")
    # a phrase: an item of several tokens whose text holds a space (a one-token item with one, the "<id N>" of
    # an id the tokenizer cannot spell, counted as a phrase); it is listed with commas, its words ran into the next
    n = len(e)
    phrases = sum(1 for t, slots in zip(e.tokens, e.pieces) if len(slots) > 1 and " " in t.strip())
    what = (f"{n} word{'s' if n != 1 else ''}" if not phrases else
            f"{n} target{'s' if n != 1 else ''} ({phrases} phrase{'s' if phrases != 1 else ''})")
    layer = f", layer {e.layer}" if e.meta()["layer"] is not None else ""  # (tam hooks no layer: it said "layer 0")
    print(f"explained {what} with {e.method} (probe {e.probe}{layer}, {e.steps} steps): "
          f"{(', ' if phrases else ' ').join(e.tokens)}")
    extra = ", trajectory.safetensors, trajectory/NN_<word>.gif, trajectory_sheet.png" if e.trajectory else ""
    print(f"written to {folder!r}: image.png, contact_sheet.png, NN_<word>.png, maps.safetensors, meta.json, "
          f"index.html{extra}")


def run(args) -> int:
    from ..output import check_output_folder, refuse_inputs_inside
    from ..render.fonts import check_font_option
    from .profile import TraceWriter, check_trace_path

    target = check_output_folder(args.out, args.overwrite)
    args.targets = parse_targets(args.tokens)  # refused here, before any image or model is read
    check_font_option()  # (a DCAM_FONT that is not a font: said before the model runs, not after)
    if args.response_length is not None and args.response is not None:
        raise InputError("--response-length: sets the length of a generated response; with --response given "
                         "there is none to generate (leave one of the two out)")
    if args.trajectory_bytes is not None and not args.trajectory:
        raise InputError("--trajectory-bytes: sets how much of a trajectory index.html shows; without --trajectory "
                         "there is none (add --trajectory or leave it out)")
    background = args.background
    inputs = expand_inputs(args.images)
    if len(inputs) == 1 and not os.path.exists(inputs[0]):
        raise InputError(f"IMAGE: no such file {inputs[0]!r}")
    # --overwrite replaces --out whole: never over an input image or the model's own files
    refuse_inputs_inside(target, [("the input image", p) for p in inputs] +
                         [("the model", common.model_location(args))])
    trace = check_trace_path(args.profile, args.out, "which is written whole",
                             [("the input image", p) for p in inputs] + [("the model", common.model_location(args))],
                             args.overwrite)
    common.apply_run_options(args)
    common.log("loading the model", args.quiet)
    model, processor = common.load_model_for(args)
    exp = common.explainer_for(model, processor, args)
    t0 = time.perf_counter()
    # the trace is exported before --out is written and put in place after it: a failure or Ctrl-C
    # in between leaves neither half (--out was written and then reported as not written)
    with TraceWriter(trace, args.quiet) as profile:
        # a folder is "several images" however many it holds: a script's DIR gets one layout (one image in it
        # was written flat into --out, two into subfolders)
        if len(inputs) != 1 or any(os.path.isdir(p) for p in args.images):
            return _run_many(exp, inputs, args, background, target, profile)
        e = _explain_one(exp, inputs[0], args, background)
        took = time.perf_counter() - t0  # the explanation's time, not the trace's export (seconds of its own)
        profile.stop()
        # (the export said apart: it is no part of the explanation, and takes most of a short command's time)
        exported = f", the trace exported in {profile.writing_seconds:.1f} s" if profile.started else ""
        common.log(f"explained in {took:.1f} s{exported}; writing {target}", args.quiet)
        common.save_explanation(e, target, args, args.max_side, args.trajectory_bytes)
        profile.commit(args.out)
    report(e, args.out)
    return 0


def _run_many(exp, inputs: List[str], args, background, target: str, profile) -> int:
    from tqdm import tqdm

    from ..output import AtomicFolder

    failed: List[Tuple[str, str]] = []
    done: Dict[str, int] = {}
    listing: List[dict] = []  # images.json: which input each subfolder holds (a.png and b/a.png -> a, a_2)
    with AtomicFolder(target, overwrite=args.overwrite, option="--out") as tmp:
        names = subfolder_names(inputs)  # one per input, even when a file is given twice
        with tqdm(total=len(inputs), desc="explain", unit="image", file=sys.stderr, disable=args.quiet) as bar:
            for b0 in range(0, len(inputs), args.batch_size):
                batch = _explain_some(exp, inputs[b0:b0 + args.batch_size], args, background)
                for name, (path, e, why) in zip(names[b0:b0 + args.batch_size], batch):
                    bar.update(1)
                    if e is None:
                        failed.append((path, why))
                        listing.append({"image": path, "error": why})
                        continue
                    listing.append({"image": path, "folder": name, "words": len(e)})
                    folder = os.path.join(tmp, name)
                    os.makedirs(folder)
                    common.record_command(e, args)
                    e.write_files(folder, max_side=args.max_side, trajectory_bytes=args.trajectory_bytes)
                    done[name] = len(e)
        for path, why in failed:  # (repr: a name holding a newline made two lines of one error)
            print(f"dcam explain: error: {path!r}: {why}", file=sys.stderr)
        if not done:
            raise InputError(f"none of the {len(inputs)} images could be explained; nothing was written")
        with open(os.path.join(tmp, LISTING), "w") as f:
            json.dump(listing, f, indent=1)
        profile.stop()  # (the per-image writes are in the trace: they are part of the loop)
    profile.commit(args.out)
    print(f"explained {len(done)} of {len(inputs)} images ({sum(done.values())} words) into {args.out!r}"
          + (f"; {len(failed)} failed" if failed else ""))
    return 2 if failed else 0
