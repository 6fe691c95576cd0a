"""Batches of images whose prompts differ in length, on the bundled model:
``Explainer.explain_batch`` with right padding (one forward and one backward
per chunk for all of them) against one ``explain()`` per image and against
the same batch without padding (one forward per layout, what explain_batch
did before padding: set through the adapter's ``pads_batches``).

Every image gets another prompt (so no two share a sequence layout) and its
own caption; all words are explained. Ratios are measured in one process,
best of ``ROUNDS`` interleaved runs each; the maps of the three ways are
compared too (they must agree to rounding).

With ``--lengths``, prompts of very different lengths instead: every other image
gets a prompt 210 words long (``LONG_PROMPT``), the others short ones, and
explain_batch (batches of similar padded work, :mod:`dcam.batching`) is
measured against the rule before it (item counts alone: short prompts padded
to the long ones' length), against one padded batch of all, and against one
``explain()`` per image.

    python bench/bench_batch.py [--n 8] [--lengths]

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
import dcam.explain  # noqa: E402
from dcam import zoo  # noqa: E402
from dcam.batching import similar_work  # noqa: E402
from dcam.explain import Explainer  # noqa: E402
from dcam.zoo.data import generate_sample  # noqa: E402

ROUNDS = 3
#: prompts of 1 to 8 words from the bundled vocabulary: no two images share a layout
PROMPTS = ["what", "name the objects", "what is in this image", "describe the image", "name the shapes",
           "what is in the image", "describe the shapes in this image", "name the objects in this image"]
#: --lengths: the long prompt of every other image (210 words: ~1.8x the sequence of a short one on the
#: bundled model, whose sequences may hold 512 positions)
LONG_PROMPT = " ".join(["describe the image"] * 70)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=len(PROMPTS), help=f"images in the batch (1 to {len(PROMPTS)})")
    ap.add_argument("--lengths", action="store_true",
                    help="every other prompt 210 words long: length-aware batches against the item rule")
    args = ap.parse_args(argv)
    n = args.n
    if not 1 <= n <= len(PROMPTS):  # (one prompt each: 0 and 20 were taken as 1 and 8)
        ap.error(f"--n must be 1 to {len(PROMPTS)} (one prompt of its own per image), got {n}")
    if args.lengths and n < 2:
        ap.error(f"--n must be 2 to {len(PROMPTS)} with --lengths (a short and a long prompt at least), got {n}")
    torch.set_num_threads(env_threads(ap))
    model, proc = zoo.load_default() if os.path.exists(os.path.join(zoo.WEIGHTS_DIR, "model.safetensors")) \
        else zoo.build_random(0)
    samples = [generate_sample((0, 3, 100 + i), image_size=proc.image_size) for i in range(n)]
    images, captions, prompts = [s.image for s in samples], [s.caption for s in samples], PROMPTS[:n]
    if args.lengths:
        prompts = [LONG_PROMPT if i % 2 else p for i, p in enumerate(prompts)]
    exp = Explainer(model, proc)
    exp.explain(images[0], response=captions[0])  # warm-up (the rows-only check runs once)

    def batch():
        return exp.explain_batch(images, prompts, captions)

    def per_layout():
        exp.adapter.pads_batches = False  # on this adapter only, over its class's True
        try:
            return exp.explain_batch(images, prompts, captions)
        finally:
            del exp.adapter.pads_batches

    def partitioned_by(rule):
        def run():
            dcam.explain.similar_work = rule
            try:
                return exp.explain_batch(images, prompts, captions)
            finally:
                dcam.explain.similar_work = similar_work
        return run

    # the partition before lengths counted: the work rule with every length equal (tests/test_batch_partition.py);
    # a rule takes explain_batch's arguments, Explainer.batch_slack last
    item_rule = partitioned_by(
        lambda index, lengths, counts, slack: similar_work(index, [1] * len(index), counts, slack))
    one_batch = partitioned_by(lambda index, lengths, counts, slack: [index])

    def one_at_a_time():
        return [exp.explain(im, prompt=p, response=c) for im, p, c in zip(images, prompts, captions)]

    ways = [("padded batch", batch), ("one forward per layout", per_layout)] if not args.lengths else \
        [("length-aware batches", batch), ("item rule (before)", item_rule), ("one padded batch", one_batch)]
    ways.append(("one explain() per image", one_at_a_time))
    batch()  # (the once-per-adapter padding checks run here, outside the timings)
    times, maps = {name: float("inf") for name, _ in ways}, {}
    for _ in range(ROUNDS):  # interleaved: a slower spell of a busy box falls on every way alike
        for name, fn in ways:
            t = time.perf_counter()
            maps[name] = fn()
            times[name] = min(times[name], time.perf_counter() - t)
    ref = maps["one explain() per image"]
    words = sum(len(e.tokens) for e in ref)
    lengths = [int(exp.adapter.prepare(im, p, exp.adapter.encode_response(c)).input_ids.shape[-1])
               for im, p, c in zip(images, prompts, captions)]
    print(f"{n} images, {words} words, prompts of {min(len(p.split()) for p in prompts)}-"
          f"{max(len(p.split()) for p in prompts)} words (sequences of {min(lengths)}-{max(lengths)} positions), "
          f"{torch.get_num_threads()} thread(s), best of {ROUNDS} interleaved")
    if args.lengths:
        counts = [len(e.tokens) for e in ref]
        print(f"  batches: {similar_work(list(range(n)), lengths, counts)} (lengths {lengths}, words {counts}); "
              f"item rule: {similar_work(list(range(n)), [1] * n, counts)}")
    for name, _ in ways:
        diff = max(float((a.maps - b.maps).abs().max()) for a, b in zip(maps[name], ref))
        print(f"  {name:26s} {times[name]:7.3f} s  x{times['one explain() per image'] / times[name]:.2f} "
              f"vs one at a time   max map difference {diff:.1e}")


if __name__ == "__main__":
    main()
