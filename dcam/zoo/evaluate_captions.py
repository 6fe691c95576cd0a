"""Caption accuracy of a ShapesDMLLM on grounded-shapes, with its own diffusion sampler.

    python -m dcam.zoo.evaluate_captions [--n 200] [--split test] [--steps 12] [--weights DIR]

Prints the exact-match accuracy (generated caption == reference caption) and
per-attribute accuracies (object count, colour and shape of the j-th object).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List, Optional

import torch

from .data import ShapesDataset


def _parse(caption: str) -> List[tuple]:
    objs = []
    for chunk in caption.split(" and "):
        w = chunk.split()
        objs.append(tuple(w[1:3]) if len(w) == 3 and w[0] == "a" else (None, None))
    return objs


@torch.no_grad()
def generate_captions(model, processor, images, steps: Optional[int] = None, batch_size: int = 50) -> List[str]:
    """Captions of ``images`` sampled with ``model.generate_diffusion``."""
    out: List[str] = []
    for i in range(0, len(images), batch_size):
        enc = processor(list(images[i:i + batch_size]))
        ids = model.generate_diffusion(enc["input_ids"], enc["pixel_values"], steps=steps,
                                       response_length=enc["response_length"])
        out += processor.batch_decode(ids)
    return out


def caption_accuracy(model, processor, n: int = 200, split: str = "test", steps: Optional[int] = None,
                     batch_size: int = 50, return_captions: bool = False) -> Dict[str, float]:
    """Exact-match and per-attribute caption accuracy on the first ``n`` samples of ``split``.

    Returns a dict: ``exact`` (fraction of captions equal to the reference),
    ``count`` (right number of objects), ``colour`` / ``shape`` (fraction of
    reference objects whose j-th generated object has the right colour /
    shape), ``exact_by_k`` (exact match per number of objects), ``n``, ``steps``.
    """
    ds = ShapesDataset(split, n, image_size=processor.image_size, cache=False)
    samples = list(ds)
    gens = generate_captions(model, processor, [s.image for s in samples], steps=steps, batch_size=batch_size)
    exact = count = col = shp = nobj = 0
    by_k: Dict[int, List[int]] = {}
    for s, g in zip(samples, gens):
        ok = g == s.caption
        exact += ok
        by_k.setdefault(len(s.objects), []).append(int(ok))
        go = _parse(g)
        count += len(go) == len(s.objects)
        for j, ob in enumerate(s.objects):
            nobj += 1
            if j < len(go):
                col += go[j][0] == ob["colour"]
                shp += go[j][1] == ob["shape"]
    res = dict(exact=exact / max(n, 1), count=count / max(n, 1), colour=col / max(nobj, 1),
               shape=shp / max(nobj, 1), exact_by_k={k: sum(v) / len(v) for k, v in sorted(by_k.items())},
               n=n, split=split, steps=steps if steps is not None else int(model.config.response_length))
    if return_captions:
        res["captions"] = [(s.caption, g) for s, g in zip(samples, gens)]
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--steps", type=int, default=None, help="diffusion steps (default: response_length)")
    ap.add_argument("--weights", default=None, help="weights directory (default: the bundled ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", type=int, default=0, help="print this many wrong captions")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from . import load_default, load_pretrained
    model, processor = load_pretrained(args.weights) if args.weights else load_default()
    t0 = time.time()
    res = caption_accuracy(model, processor, n=args.n, split=args.split, steps=args.steps,
                           return_captions=args.show > 0)
    caps = res.pop("captions", [])
    res["seconds"] = round(time.time() - t0, 2)
    print(json.dumps(res, indent=2))
    wrong = [(r, g) for r, g in caps if r != g][:args.show]
    for r, g in wrong:
        print(f"ref: {r}\ngen: {g}\n")
    return res


if __name__ == "__main__":
    main()
