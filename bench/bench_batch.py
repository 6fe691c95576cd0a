"""Batches of images whose prompts differ in length, on the bundled model:
``Explainer.explain_batch`` with right padding (one forward and one backward
per chunk for all of them) against one ``explain()`` per image and against
the same batch without padding (one forward per layout, what explain_batch
did before padding: set through the adapter's ``pads_batches``).

Every image gets another prompt (so no two share a sequence layout) and its
own caption; all words are explained. Ratios are measured in one process,
best of ``ROUNDS`` interleaved runs each; the maps of the three ways are
compared too (they must agree to rounding).

    python bench/bench_batch.py [--n 8]

Threads: 1 (``DCAM_BENCH_THREADS`` to change).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # script_support

from script_support import env_threads  # noqa: E402
from dcam import zoo  # noqa: E402
from dcam.explain import Explainer  # noqa: E402
from dcam.zoo.data import generate_sample  # noqa: E402

ROUNDS = 3
#: prompts of 1 to 8 words from the bundled vocabulary: no two images share a layout
PROMPTS = ["what", "name the objects", "what is in this image", "describe the image", "name the shapes",
           "what is in the image", "describe the shapes in this image", "name the objects in this image"]


def _best(fn):
    best = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=len(PROMPTS), help=f"images in the batch (1 to {len(PROMPTS)})")
    args = ap.parse_args(argv)
    n = args.n
    if not 1 <= n <= len(PROMPTS):  # (one prompt each: 0 and 20 were taken as 1 and 8)
        ap.error(f"--n must be 1 to {len(PROMPTS)} (one prompt of its own per image), got {n}")
    torch.set_num_threads(env_threads(ap))
    model, proc = zoo.load_default() if os.path.exists(os.path.join(zoo.WEIGHTS_DIR, "model.safetensors")) \
        else zoo.build_random(0)
    samples = [generate_sample((0, 3, 100 + i), image_size=proc.image_size) for i in range(n)]
    images, captions, prompts = [s.image for s in samples], [s.caption for s in samples], PROMPTS[:n]
    exp = Explainer(model, proc)
    exp.explain(images[0], response=captions[0])  # warm-up (the rows-only check runs once)

    def padded():
        return exp.explain_batch(images, prompts, captions)

    def per_layout():
        exp.adapter.pads_batches = False  # on this adapter only, over its class's True
        try:
            return exp.explain_batch(images, prompts, captions)
        finally:
            del exp.adapter.pads_batches

    def one_at_a_time():
        return [exp.explain(im, prompt=p, response=c) for im, p, c in zip(images, prompts, captions)]

    times = {}
    for name, fn in (("padded batch", padded), ("one forward per layout", per_layout),
                     ("one explain() per image", one_at_a_time)):
        times[name], out = _best(fn)
        times[name + " maps"] = out
    ref = times["one explain() per image maps"]
    words = sum(len(e.tokens) for e in ref)
    print(f"{n} images, {words} words, prompts of {len(prompts[0].split())}-{max(len(p.split()) for p in prompts)} "
          f"words, {torch.get_num_threads()} thread(s), best of {ROUNDS}")
    for name in ("padded batch", "one forward per layout", "one explain() per image"):
        diff = max(float((a.maps - b.maps).abs().max()) for a, b in zip(times[name + " maps"], ref))
        print(f"  {name:26s} {times[name]:7.3f} s  x{times['one explain() per image'] / times[name]:.2f} "
              f"vs one at a time   max map difference {diff:.1e}")


if __name__ == "__main__":
    main()
