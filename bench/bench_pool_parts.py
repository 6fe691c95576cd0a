"""Where the C++ pooling's time goes: the pass over the gradients, the product, the whole op.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_pool_parts.py [--reps-time 1.0]

Same case as ``dcam bench`` (B=1, T=64, N=576, D=4096). For fp32 and bf16
gradients it times, in this process, on the C++ backend:

- ``whole``: ``dcam.pool_gradients`` (grad_relu True, and False = signed
  channel weights);
- ``channel_weights``: its first half alone, the pass over the gradients;
- ``weighted_maps``: its second half alone, the product with the activations
  (weights of relu'd gradients, or signed ones) and the normalisation; its
  "of copy" is the gradients' bytes over its time, for scale only (it reads
  no gradient);
- ``streamed in chunks of k``: the explainer's path, ``channel_weights`` per
  chunk of k words (also timed alone) and one ``weighted_maps`` for all 64;
- ``pool_gradients per chunk of k``: the explainer's path before the split, a
  whole pooling per chunk;
- ``copy``: ``copy_`` of a tensor of the gradients' size (bytes read + written
  per s), timed in pairs with each call (``dcam.ops.bench.time_beside_copy``).

Each row gives the gradients' bytes per second and, as the median over the
pairs, that rate as a share of the copy's.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import dcam
from dcam.ops.bench import make_pool_inputs, time_beside_copy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # script_support, as `python bench/<this>.py` has it

from script_support import require_seconds  # noqa: E402

T, N, D, GRID = 64, 576, 4096, (24, 24)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps-time", type=float, default=1.0, help="seconds of repetitions per case (default 1.0)")
    args = ap.parse_args(argv)
    require_seconds(ap, args, "reps_time")  # (inf was taken as 40 pairs, NaN and 0 or less as 5, silently)
    if "cpp" not in dcam.available_backends():
        raise SystemExit("the C++ backend is not built here (python setup.py build_ext --inplace)")
    print(f"torch threads: {torch.get_num_threads()}; T={T} N={N} D={D}\n")
    print("| dtype | case | time | GB/s (grads read) | copy GB/s | of copy |")
    print("|---|---|---|---|---|---|")
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        acts, grads = make_pool_inputs(T, N, D, dtype)
        nbytes = grads.numel() * grads.element_size()
        cases = []
        for relu, kind in ((True, "grad_relu"), (False, "signed weights")):
            w = dcam.channel_weights(grads, grad_relu=relu, backend="cpp")
            cases += [(f"whole, {kind}", lambda relu=relu: dcam.pool_gradients(
                          acts, grads, GRID, grad_relu=relu, backend="cpp", check_finite=False)),
                      (f"channel_weights, {kind}", lambda relu=relu: dcam.channel_weights(
                          grads, grad_relu=relu, backend="cpp", check_finite=False)),
                      (f"weighted_maps, {kind}", lambda w=w: dcam.weighted_maps(
                          acts, w, GRID, backend="cpp", check_finite=False))]
            for k in (8, 16):
                def weights_in_chunks(relu=relu, k=k):
                    return torch.cat([dcam.channel_weights(grads[:, c:c + k], grad_relu=relu, backend="cpp",
                                                           check_finite=False) for c in range(0, T, k)], 1)

                def per_chunk(relu=relu, k=k):
                    return [dcam.pool_gradients(acts, grads[:, c:c + k], GRID, grad_relu=relu, backend="cpp",
                                                check_finite=False) for c in range(0, T, k)]
                cases += [(f"channel_weights in chunks of {k}, {kind}", weights_in_chunks),
                          (f"streamed in chunks of {k}, {kind}", lambda f=weights_in_chunks: dcam.weighted_maps(
                              acts, f(), GRID, backend="cpp", check_finite=False)),
                          (f"pool_gradients per chunk of {k} (the explainer before), {kind}", per_chunk)]
        for case, fn in cases:
            t, copy_bw, ratio = time_beside_copy(fn, nbytes, nbytes, min_time=args.reps_time)
            print(f"| {label} | {case} | {t * 1e3:.2f} ms | {nbytes / t / 1e9:.1f} | {copy_bw / 1e9:.1f} | "
                  f"{ratio:.0%} |", flush=True)

if __name__ == "__main__":
    main()
