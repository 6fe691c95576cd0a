"""What the layers above the C++ kernel cost a call: the extension, the wrappers, the op.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_op_overhead.py [--rounds 25]

Same case as ``dcam bench`` (B=1, T=64, N=576, D=4096, bf16, grad_relu). Each
path is timed in one process, round after round, every path once per round
(so they share the machine's state), through three layers:

- ``extension``: ``dcam._C`` called on numpy views (no torch op, no checks);
- ``backend="cpp"``: ``dcam.channel_weights`` / ``dcam.weighted_maps`` /
  ``dcam.pool_gradients`` with the C++ backend named (checks, wrappers);
- ``backend="auto"``: the same through the registered ``dcam::`` ops and the
  dispatcher (the explainer's path).

For each layer: one ``pool_gradients`` call, and the explainer's streamed
path (each chunk of 8 words' channel weights into one table: ``WeightStream``,
``dcam_channel_weights_into``; then one ``weighted_maps``), with the median
over the rounds of streamed / one call; beside it the path before session 31
(a ``channel_weights`` call per chunk, ``torch.cat`` / ``np.concatenate``).
Last, the time of a tiny ``channel_weights`` call per layer (warm caches:
the fixed cost of a call).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import dcam
from dcam.ops.bench import make_pool_inputs, per_chunk_calls, streamed_pooling

T, N, D, GRID, CHUNK = 64, 576, 4096, (24, 24), 8


def layers(acts, grads):
    """layer -> (one call, streamed path), zero-argument callables."""
    from dcam.ops.cpp import _C
    a_np, g_np = acts.view(torch.int16).numpy(), grads.view(torch.int16).numpy()

    def ext_streamed():
        w = np.concatenate([_C.channel_weights(g_np[:, c:c + CHUNK], True, False)[0] for c in range(0, T, CHUNK)], 1)
        return _C.weighted_maps(a_np, w)

    def ext_into():  # the extension as WeightStream calls it: every chunk into one table
        w = np.empty((1, T, D), np.float32)
        for c in range(0, T, CHUNK):
            _C.channel_weights_into(w, c, grads[:, c:c + CHUNK].data_ptr(), 2, CHUNK, N, True, False)
        return _C.weighted_maps(a_np, w)

    one_ext = lambda: _C.pool_gradients(a_np, g_np, True, False)  # noqa: E731
    out = {"extension": (one_ext, ext_streamed), "extension, into one table": (one_ext, ext_into)}
    for backend in ("cpp", "auto"):
        one = lambda b=backend: dcam.pool_gradients(acts, grads, GRID, backend=b, check_finite=False)  # noqa: E731
        out[f'backend="{backend}"'] = (one, streamed_pooling(acts, grads, GRID, CHUNK, backend))
        out[f'backend="{backend}", a channel_weights call per chunk'] = (
            one, per_chunk_calls(acts, grads, GRID, CHUNK, backend))
    return out


def tiny_call_us(reps: int = 2000):
    from dcam.ops.cpp import _C
    g = torch.randn(1, 1, 4, 8).bfloat16()
    g_np = g.view(torch.int16).numpy()
    calls = {"extension": lambda: _C.channel_weights(g_np, True, False),
             'backend="cpp"': lambda: dcam.channel_weights(g, backend="cpp", check_finite=False),
             'backend="auto"': lambda: dcam.channel_weights(g, check_finite=False)}
    out = {}
    for name, f in calls.items():
        for _ in range(200):
            f()
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        out[name] = (time.perf_counter() - t0) / reps * 1e6
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25, help="rounds of every path (default 25)")
    args = ap.parse_args(argv)
    if args.rounds < 1:  # (the medians of no round were a StatisticsError after 300 MB of inputs)
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    if "cpp" not in dcam.available_backends():
        raise SystemExit("the C++ backend is not built here (python setup.py build_ext --inplace)")
    acts, grads = make_pool_inputs(T, N, D, torch.bfloat16)
    paths = layers(acts, grads)
    times = {(layer, kind): [] for layer in paths for kind in ("one", "streamed")}
    for _ in range(args.rounds):
        for layer, (one, streamed) in paths.items():
            for kind, f in (("one", one), ("streamed", streamed)):
                t0 = time.perf_counter()
                f()
                times[layer, kind].append(time.perf_counter() - t0)
    print(f"torch threads: {torch.get_num_threads()}; T={T} N={N} D={D} bf16, chunks of {CHUNK}, "
          f"{args.rounds} rounds\n")
    print("| layer | one call | streamed | streamed / one call |")
    print("|---|---|---|---|")
    for layer in paths:
        one, st = times[layer, "one"], times[layer, "streamed"]
        ratio = statistics.median(s / o for s, o in zip(st, one))
        print(f"| {layer} | {statistics.median(one) * 1e3:.2f} ms | {statistics.median(st) * 1e3:.2f} ms | "
              f"{ratio:.3f} |")
    print("\n| layer | tiny channel_weights call (warm) |")
    print("|---|---|")
    for layer, us in tiny_call_us().items():
        print(f"| {layer} | {us:.1f} us |")


if __name__ == "__main__":
    main()
