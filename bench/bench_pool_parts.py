"""Where the C++ pooling's time goes: the pass over the gradients alone vs the whole op.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_pool_parts.py [--reps-time 1.0]

Same case as ``dcam bench`` (B=1, T=64, N=576, D=4096). For fp32 and bf16
gradients it times, in this process:

- ``whole``: ``dcam.pool_gradients(..., backend="cpp")`` with random activations
  (grad_relu True, and False = signed channel weights);
- ``gradient pass``: the same call with all-zero activations: the C++ product
  compacts the nonzero activations first, so with none it does no multiply and
  what is left is the pass over the gradients (plus a scan of the activations);
- ``copy``: ``copy_`` of a tensor of the gradients' size (bytes read + written per s),
  timed in pairs with each call (``dcam.ops.bench.time_beside_copy``).

Each row gives the gradients' bytes read per second and, as the median over
the pairs, that rate as a share of the copy's. The difference between
``whole`` and ``gradient pass`` is what the product with the activations costs
beyond the stream.
"""
from __future__ import annotations

import argparse

import torch

import dcam
from dcam.ops.bench import make_pool_inputs, time_beside_copy

T, N, D, GRID = 64, 576, 4096, (24, 24)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps-time", type=float, default=1.0, help="seconds of repetitions per case (default 1.0)")
    args = ap.parse_args(argv)
    if "cpp" not in dcam.available_backends():
        raise SystemExit("the C++ backend is not built here (python setup.py build_ext --inplace)")
    print(f"torch threads: {torch.get_num_threads()}; T={T} N={N} D={D}\n")
    print("| dtype | case | time | GB/s (grads read) | copy GB/s | of copy |")
    print("|---|---|---|---|---|---|")
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        acts, grads = make_pool_inputs(T, N, D, dtype)
        nbytes = grads.numel() * grads.element_size()
        zero = torch.zeros_like(acts)
        for case, a, relu in (("whole, grad_relu", acts, True), ("whole, signed weights", acts, False),
                              ("gradient pass (grad_relu)", zero, True), ("gradient pass (signed)", zero, False)):
            t, copy_bw, ratio = time_beside_copy(
                lambda a=a, relu=relu: dcam.pool_gradients(a, grads, GRID, grad_relu=relu, backend="cpp",
                                                           check_finite=False),
                nbytes, nbytes, min_time=args.reps_time)
            print(f"| {label} | {case} | {t * 1e3:.2f} ms | {nbytes / t / 1e9:.1f} | {copy_bw / 1e9:.1f} | "
                  f"{ratio:.0%} |", flush=True)


if __name__ == "__main__":
    main()
