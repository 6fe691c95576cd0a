"""Trajectories on the grounding benchmark: do the maps at the step a word was
decided localise better than the finished response's, or the first step's?

    python -m dcam.trajectory.report --n 50 [--picture docs/img] [--json out.json]

On the grounding set (:func:`dcam.eval.grounding.grounding_samples`: the first
``n`` test-split images with two or more objects) the bundled model generates
its own caption (greedy, its default steps) while the trajectory is recorded.
Every object word of the generated caption (a colour or shape word of an
``a <colour> <shape>`` phrase naming exactly one object of the image; the
reference labels when the caption is the reference) is scored, for three maps:

* ``first step``: ``maps[0]``, every slot masked (= the default ``masked``
  probe of an explanation);
* ``decision step``: ``maps[decided_at]``, the state the sampler committed the word from;
* ``final``: the finished response with the word's slot masked again (remask).

Numbers: the grounding rate (:func:`dcam.eval.grounding.object_word_success`:
more map mass on the named object than on every other object) and F3
(:func:`dcam.eval.metrics.object_metrics` against the named object's mask:
F3 of the means, and the mean per-map F3); the same split by words decided in
the first / second half of the steps; the agreement of decision and final
maps; and the cost of a trajectory relative to one explanation (wall time in
this process, both with the model's generation, interleaved).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError, one_line

KINDS = ("first step", "decision step", "final")


def object_labels(sample, words: Sequence[str]) -> Dict[int, int]:
    """{word index: mask label} for the object words of a generated caption:
    the reference labels when the caption is the reference; otherwise each
    ``<colour> <shape>`` pair that names exactly one object of the image."""
    from ..zoo.data import COLOURS

    words = [w.lower() for w in words]
    if words == [w.lower() for w in sample.words]:
        return {i: int(l) for i, l in enumerate(sample.word_labels) if l > 0}
    out = {}
    for i in range(len(words) - 1):
        if words[i] in COLOURS:
            hits = [o for o in sample.objects if o["colour"] == words[i] and o["shape"] == words[i + 1]]
            if len(hits) == 1:
                out[i] = out[i + 1] = int(hits[0]["label"])
    return out


def _score(maps: torch.Tensor, labels: List[int], mask: np.ndarray):
    """(grounded flags, per-map object metrics) of maps [M, h, w] naming ``labels``."""
    from ..eval.grounding import object_word_success
    from ..eval.metrics import object_metrics

    ok = object_word_success(maps, list(range(len(labels))), labels, mask)
    own = [np.where(mask == l, mask, 0) for l in labels]
    return ok, object_metrics(maps, own)


class _Tally:
    """Grounded flags and object metrics of one map kind, per word group."""

    def __init__(self):
        self.ok: Dict[str, List[bool]] = {}
        self.metrics: Dict[str, Dict[str, List[float]]] = {}

    def add(self, group: str, ok, met):
        self.ok.setdefault(group, []).extend(bool(v) for v in ok)
        m = self.metrics.setdefault(group, {k: [] for k in ("obj_iou", "contrast", "concentration", "f3")})
        for k in m:
            m[k].extend(met[k].tolist())

    def summary(self, group: str) -> dict:
        from ..eval.metrics import summarize

        s = summarize(self.metrics.get(group, {k: [] for k in ("obj_iou", "contrast", "concentration", "f3")}))
        ok = self.ok.get(group, [])
        return {"n": len(ok), "grounding": float(np.mean(ok)) if ok else float("nan"), "f3": s["f3"],
                "f3_per_map": s["f3_per_map"]}


def measure(n: int = 50, model=None, processor=None, progress: bool = True, timing_every: int = 1,
            layer: Optional[int] = None) -> dict:
    # long: one pass over the images that scores three map kinds, groups and timing together
    """The measurement of the module docstring; returns a JSON-ready dict."""
    from tqdm import tqdm

    from ..eval.grounding import grounding_samples
    from ..explain import Explainer
    from .core import explain_trajectory

    if model is None:
        from ..zoo import load_default

        model, processor = load_default()
    exp = Explainer(model, processor, layer=layer)
    samples = grounding_samples(n, image_size=int(getattr(model.config, "image_size", 64)))
    tallies = {k: _Tally() for k in KINDS}
    same_caption, agree, moves, scored, unscored = 0, [], [], 0, 0
    decided_by_kind: Dict[str, List[float]] = {"colour": [], "shape": []}
    t_traj, t_exp, costs, steps = [], [], [], None
    for i, s in enumerate(tqdm(samples, desc="trajectories", file=sys.stderr, disable=not progress)):
        timed = i % timing_every == 0
        t0 = time.perf_counter()
        tr = explain_trajectory(exp, s.image)
        t1 = time.perf_counter()
        if timed:
            exp.explain(s.image)
            t_exp.append(time.perf_counter() - t1)
            t_traj.append(t1 - t0)
        costs.append(tr.cost)
        steps = tr.steps
        words = [w.lower() for w in tr.tokens]
        same_caption += int(words == [w.lower() for w in s.words])
        labels = object_labels(s, words)
        n_objectish = sum(1 for w in words if w not in ("a", "and"))
        unscored += n_objectish - len(labels)
        if not labels:
            continue
        idx = sorted(labels)
        lab = [labels[k] for k in idx]
        scored += len(idx)
        sel = torch.tensor(idx)
        d = tr.decided_at[sel]
        maps = {"first step": tr.maps[0, sel], "decision step": tr.maps[d, sel], "final": tr.final_maps[sel]}
        half = ["early" if int(v) < tr.steps / 2 else "late" for v in d]
        for kind, mp in maps.items():
            ok, met = _score(mp, lab, s.mask)
            tallies[kind].add("all", ok, met)
            for g in ("early", "late"):
                pick = [j for j, h in enumerate(half) if h == g]
                if pick:
                    tallies[kind].add(g, [ok[j] for j in pick], {k: v[pick] for k, v in met.items()})
        agree.extend(bool(tr.numbers["agrees"][k]) for k in idx)
        moves.extend(float(tr.numbers["mean_movement"][k]) for k in idx)
        from ..zoo.data import COLOURS

        for k in idx:
            decided_by_kind["colour" if words[k] in COLOURS else "shape"].append(int(tr.decided_at[k]))
    return {
        "n_images": len(samples), "steps": steps, "same_caption": same_caption, "object_words": scored,
        "unscored_words": unscored,
        "rates": {k: {g: tallies[k].summary(g) for g in ("all", "early", "late")} for k in KINDS},
        "decision_final_agree": float(np.mean(agree)) if agree else float("nan"),
        "mean_movement": float(np.nanmean(moves)) if moves else float("nan"),
        "mean_decided_at": {k: (float(np.mean(v)) if v else float("nan")) for k, v in decided_by_kind.items()},
        "seconds_trajectory": float(np.sum(t_traj)), "seconds_explanation": float(np.sum(t_exp)),
        "cost_ratio": float(np.sum(t_traj) / max(np.sum(t_exp), 1e-12)),
        "mean_cost": {k: float(np.mean([c[k] for c in costs])) for k in costs[0]} if costs else {},
        "threads": torch.get_num_threads(), "layer": exp.layer,
    }


def format_report(rep: dict) -> str:
    lines = [f"trajectories on {rep['n_images']} grounding images (test split), {rep['steps']} steps, "
             f"layer {rep['layer']}; "
             f"generated captions equal to the reference: {rep['same_caption']}/{rep['n_images']}; "
             f"{rep['object_words']} object words scored ({rep['unscored_words']} colour/shape words not "
             "naming one object of the image left out)",
             "",
             "| map | words | grounding | F3 | F3 per map | early: words / grounding / F3 "
             "| late: words / grounding / F3 |",
             "|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        r = rep["rates"][kind]
        a, e, l = r["all"], r["early"], r["late"]
        lines.append(f"| {kind} | {a['n']} | {a['grounding']:.3f} | {a['f3']:.3f} | {a['f3_per_map']:.3f} | "
                     f"{e['n']} / {e['grounding']:.3f} / {e['f3']:.3f} | {l['n']} / {l['grounding']:.3f} / "
                     f"{l['f3']:.3f} |")
    md = rep["mean_decided_at"]
    c = rep["mean_cost"]
    lines += ["",
              f"early: decided in the first half of the steps (decided_at < S/2); mean decision step: colour "
              f"words {md['colour']:.2f}, shape words {md['shape']:.2f}",
              f"decision-step map agrees with the final map (Otsu-mask IoU >= 0.5): "
              f"{rep['decision_final_agree']:.3f}; mean map movement between consecutive steps (1 - IoU): "
              f"{rep['mean_movement']:.4f}",
              f"cost: a trajectory took {rep['cost_ratio']:.1f}x one explanation (both with generation; "
              f"{rep['seconds_trajectory']:.1f} s vs {rep['seconds_explanation']:.1f} s in total, "
              f"{rep['threads']} CPU thread(s)); per trajectory {c.get('forwards', 0):.1f} forwards over "
              f"{c.get('rows', 0):.1f} rows, {c.get('cotangents', 0):.1f} cotangents"]
    return "\n".join(lines)


def write_picture(folder: str, model=None, processor=None, sample: int = 0, word: Optional[str] = None) -> str:
    """``folder/trajectory_<word>.png``: one word's frames (the grounding set's
    image ``sample``; ``word`` None: the object word whose map moves most)."""
    import os

    from ..eval.grounding import grounding_samples
    from ..explain import Explainer
    from .core import explain_trajectory
    from .render import strip

    if model is None:
        from ..zoo import load_default

        model, processor = load_default()
    s = grounding_samples(sample + 1)[sample]
    tr = explain_trajectory(Explainer(model, processor), s.image)
    if word is None:
        cand = [k for k, w in enumerate(tr.tokens) if w not in ("a", "and")] or list(range(len(tr.tokens)))
        word = tr.tokens[max(cand, key=lambda k: float(tr.numbers["mean_movement"][k]))]
    path = os.path.join(folder, f"trajectory_{word}.png")
    strip(tr, word, side=192).save(path)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcam.trajectory.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50, help="grounding images (default 50; 0: only the picture)")
    p.add_argument("--json", help="also write the numbers to this file (an existing one: --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--picture", help="write trajectory_<word>.png (one word's frames) into this folder")
    p.add_argument("--picture-sample", type=int, default=0, help="the grounding image of the picture (default 0)")
    p.add_argument("--picture-word", help="its word (default: the object word whose map moves most)")
    p.add_argument("--layer", type=int, help="the block to hook (default: the model's)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    if args.n < 0 or (args.n == 0 and not args.picture):
        p.error("--n must be >= 1 (0 only with --picture)")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.picture_sample < 0:
        p.error(f"--picture-sample must be >= 0, got {args.picture_sample}")
    try:
        return _report(args)
    except InputError as exc:  # one line, as dcam's commands (--layer 99, a --picture-word not in the response)
        option = "--picture-word" if str(exc).startswith("word") else "--layer" if "layer" in str(exc) else None
        text = one_line(str(exc))
        print(f"{p.prog}: error: {option + ': ' if option and not text.startswith('--') else ''}{text}",
              file=sys.stderr)
        return 2


def _report(args) -> int:
    from ..output import check_existing_folder, check_output_file, write_text_atomic

    # the outputs are checked before minutes of measuring, not after
    from ..zoo import WEIGHTS_DIR

    check_output_file(args.json, "--json", [("the model", WEIGHTS_DIR)], args.overwrite)
    if args.picture:
        try:
            check_existing_folder(args.picture)
        except InputError:
            raise InputError(f"--picture: {args.picture!r} is not an existing folder") from None
    torch.set_num_threads(args.threads)
    rep = measure(args.n, layer=args.layer) if args.n else None
    if rep is not None:
        print(format_report(rep))
    if args.json and rep is not None:
        write_text_atomic(args.json, json.dumps(rep, indent=2), "--json")
    if args.picture:
        print(f"picture: {write_picture(args.picture, sample=args.picture_sample, word=args.picture_word)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
