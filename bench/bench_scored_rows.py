"""Before/after of running the LM head and the last block at the scored rows only.

    python bench/bench_scored_rows.py [--hidden 1024] [--blocks 3] [--words 8] [--chunk 4]

The real-size bench's model (bench_real_size.py: LLaMA-style, bidirectional,
LLaDA's 126,464-token vocabulary, 2,880 image tokens), the block before the
last hooked, masked probe. ``after``: dcam as it is (dcam.probe.hooks.HeadAtRows
and dcam.probe.rows). ``before``: the same explainer with both switched off,
i.e. the head mapping every position to the whole vocabulary and the last
block run whole, as every family adapter did before. Each mode runs in a
fresh process (peak resident memory not inflated by the other); the maps of
the two are compared.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # script_support, as `python bench/<this>.py` has it

from script_support import require_at_least, require_model_sizes, run_child  # noqa: E402


def run_mode(args) -> dict:
    from PIL import Image

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_real_size import RealSizeAdapter, RealSizeDMLLM, _peak_bytes, _peak_reset
    from dcam.explain import Explainer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = RealSizeDMLLM(args.hidden, args.blocks, args.hidden // 128).eval()
    grid = (48, args.image_tokens // 48)
    adapter = RealSizeAdapter(model, args.image_tokens, grid)
    if args.mode == "before":
        adapter.output_head = lambda: None  # no head hook: full logits, gathered
        adapter.check_rows_only = lambda *a: False  # the last block whole
    image = Image.new("RGB", (grid[1] * 14, grid[0] * 14))
    response = [1000 + 7 * k for k in range(args.words)]
    Explainer(adapter=adapter, chunk_size=args.chunk).explain(image, response=response[:2], probe="masked")  # warm-up
    _peak_reset("cpu")
    t0 = time.perf_counter()
    e = Explainer(adapter=adapter, chunk_size=args.chunk).explain(image, response=response, probe="masked")
    seconds = time.perf_counter() - t0
    torch.save(e.maps, args.maps)
    return dict(mode=args.mode, s_per_word=seconds / args.words, peak_gb=_peak_bytes("cpu") / 1e9)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--image-tokens", type=int, default=2880, help="a multiple of 48")
    ap.add_argument("--words", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=4, help="words per batched backward (the dense head cotangent "
                                                         "of 'before' is chunk x 1.5 GB at 2,944 positions)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["before", "after"], help=argparse.SUPPRESS)
    ap.add_argument("--maps", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # checked before the model is built, not in a child's traceback (--words 0, --threads 0, ...)
    require_at_least(ap, args, ["words", "chunk", "threads"])
    require_at_least(ap, args, ["blocks"], 2)  # (the hooked block, the one before the last, needs one above it)
    require_model_sizes(ap, args)
    if args.mode:
        print(json.dumps(run_mode(args)), flush=True)
        return
    rows, maps = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("after", "before"):
            path = os.path.join(tmp, f"{mode}.pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--maps", path] + \
                [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("mode", "maps")]
            out = run_child(cmd).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            maps[mode] = torch.load(path)
    diff = float((maps["after"] - maps["before"]).abs().max())
    print(f"hidden {args.hidden}, {args.blocks} blocks, {args.image_tokens} image tokens, {args.words} words in "
          f"chunks of {args.chunk}, CPU float32, {args.threads} threads\n")
    print("| mode | s/word | peak RSS GB |\n|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['s_per_word']:.3f} | {r['peak_gb']:.2f} |")
    b, a = rows[1], rows[0]
    print(f"\n{b['s_per_word'] / a['s_per_word']:.1f}x faster, {b['peak_gb'] / a['peak_gb']:.1f}x less peak memory; "
          f"max |map difference| {diff:.2e}")


if __name__ == "__main__":
    main()
