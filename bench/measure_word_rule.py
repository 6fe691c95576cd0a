"""How to explain a word (or phrase) of several tokens: measured on the bundled benchmark.

On the first --n grounded-shapes test images with two or more objects, every
object's phrase ("yellow square": two tokens of the toy's word-level
vocabulary, the same situation as a word split into pieces) is explained
with the bundled model three ways:

- ``sum``: one item whose score is the sum of its tokens' scores, so one
  gradient and one Diffusion-CAM map (what dcam does: ``targets=["yellow square"]``);
- ``mean``: one map per token, the phrase's map the mean of its tokens' maps;
- ``max``: the same with the element-wise maximum.

Reported per rule: the grounding rate (the map's mass on the named object
exceeds its mass on every other object) and the paper's Obj-IoU / contrast /
concentration / F3 against the object's mask, with the same probe, layer and
config (the model's defaults).

    python bench/measure_word_rule.py --n 50
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from dcam import zoo
from dcam.eval.grounding import grounding_samples, object_word_success
from dcam.eval.metrics import MetricAccumulator
from dcam.explain import Explainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # script_support, as `python bench/<this>.py` has it

from script_support import require_at_least  # noqa: E402


def phrases_of(sample):
    """(phrase text, word indices, object label) of every object of a caption "a c s and a c s ..."."""
    out = []
    for i, label in enumerate(sample.word_labels):
        if label > 0 and (i == 0 or sample.word_labels[i - 1] != label):
            out.append((f"{sample.words[i]} {sample.words[i + 1]}", [i, i + 1], int(label)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    require_at_least(ap, args, ["n", "threads"])  # (--threads 0 was torch's RuntimeError, --n 0 an empty table)
    torch.set_num_threads(args.threads)
    model, processor = zoo.load_default()
    exp = Explainer(model, processor)
    samples = grounding_samples(args.n, image_size=int(model.config.image_size))
    hits = {r: 0 for r in ("sum", "mean", "max")}
    acc = {r: MetricAccumulator() for r in hits}
    n_phr, t0 = 0, time.perf_counter()
    for s in samples:
        ph = phrases_of(s)
        per_token = exp.explain(s.image, response=s.caption, granularity="tokens")
        by_slot = {k: per_token.maps[j] for j, k in enumerate(per_token.response_indices)}
        summed = exp.explain(s.image, response=s.caption, targets=[p for p, _, _ in ph])
        # several objects may share a phrase: the explanation lists every occurrence in order
        occ = {tuple(pieces): m for pieces, m in zip(summed.pieces, summed.maps)}
        maps = {"sum": [occ[tuple(idx)] for _, idx, _ in ph],
                "mean": [torch.stack([by_slot[i] for i in idx]).mean(0) for _, idx, _ in ph],
                "max": [torch.stack([by_slot[i] for i in idx]).amax(0) for _, idx, _ in ph]}
        labels = [lab for _, _, lab in ph]
        for rule, ms in maps.items():
            stack = torch.stack(ms)
            ok = object_word_success(stack, list(range(len(ph))), labels, s.mask)
            hits[rule] += sum(ok)
            acc[rule].add_object(stack, [np.where(s.mask == lab, lab, 0) for lab in labels])
        n_phr += len(ph)
    print(f"{n_phr} object phrases on {len(samples)} test images (bundled model, probe {exp.default_probe}, "
          f"layer {exp.layer}), {time.perf_counter() - t0:.0f} s")
    print("| rule | grounding rate | Obj-IoU (%) | contrast (x) | concentration (%) | F3 (%) |")
    print("|---|---|---|---|---|---|")
    for rule in hits:
        sm = acc[rule].summary()
        print(f"| {rule} | {hits[rule] / max(1, n_phr):.3f} | {100 * sm['obj_iou']:.2f} | {sm['contrast']:.2f} | "
              f"{100 * sm['concentration']:.2f} | {100 * sm['f3']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
