"""What differentiating the words' scores through the LM head's input saves.

    python bench/bench_head_memory.py [--words 8,64] [--hidden 256] [--image-tokens 1152] [--chunk 4]

The model of ``bench_real_size.py`` (LLaDA's vocabulary of 126,464) at a small
hidden size, where the head's share of the probe's memory shows. For each T,
in a process of its own and on one thread, the probe's peak resident memory
above the loaded model and the explanation's time, two ways: ``input`` (the
library: ``dcam.probe.gradients.head_scores``) and ``logits`` (the scores
differentiated through the logits, as before session 15: every cotangent
carries a dense rows x vocabulary gradient through the head). Set
``MALLOC_MMAP_THRESHOLD_=131072`` to keep glibc's heap fragmentation out of
the figures (RESULTS.md does).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # script_support, as `python bench/bench_head_memory.py` has it

from script_support import require_at_least, require_model_sizes, run_child  # noqa: E402


def measure(T: int, chunk: int, hidden: int, image_tokens: int, through: str) -> dict:
    import torch
    from PIL import Image

    sys.path.insert(0, HERE)
    import bench_real_size as brs
    import dcam.probe.gradients as G
    from dcam.explain import Explainer

    torch.set_num_threads(1)
    if through == "logits":
        G.head_scores = lambda *a: a[-1]  # the scores' own gradient through the logits
    torch.manual_seed(0)
    model = brs.RealSizeDMLLM(hidden, 2, max(1, hidden // 128)).eval()
    grid = (48, image_tokens // 48)
    adapter = brs.RealSizeAdapter(model, image_tokens, grid)
    image = Image.new("RGB", (grid[1] * 14, grid[0] * 14))
    exp = Explainer(adapter=adapter, layer=0, chunk_size=chunk)
    exp.explain(image, response=[1000, 1007], probe="masked")  # warm-up
    with open("/proc/self/status") as f:
        base = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    brs._peak_reset("cpu")
    t0 = time.perf_counter()
    exp.explain(image, response=[1000 + (7 * k) % 5000 for k in range(T)], probe="masked")
    seconds = time.perf_counter() - t0
    return dict(T=T, through=through, probe_mb=(brs._peak_bytes("cpu") - base) / 1e6, seconds=seconds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=lambda s: [int(v) for v in s.split(",")], default=[8, 64])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--image-tokens", type=int, default=1152)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--one", nargs=2, metavar=("T", "THROUGH"), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args(argv)
    # (--words 0 and --image-tokens 0 passed, to end in a child's traceback)
    require_at_least(ap, args, ["words", "chunk"])
    require_model_sizes(ap, args)
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.chunk, args.hidden, args.image_tokens, args.one[1])))
        return 0
    rows = []
    for through in ("logits", "input"):
        for T in args.words:
            out = run_child([sys.executable, __file__, "--one", str(T), through, "--chunk", str(args.chunk),
                             "--hidden", str(args.hidden), "--image-tokens", str(args.image_tokens)])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"hidden {args.hidden}, 2 blocks (block 0 hooked), vocabulary 126464, {args.image_tokens} image tokens, "
          f"chunk {args.chunk}, one thread\n")
    print("| scores differentiated through | T | probe memory MB | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| the head's {r['through']} | {r['T']} | {r['probe_mb']:.1f} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
